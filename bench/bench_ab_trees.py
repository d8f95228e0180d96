"""Two source trees side by side: ``detectd run`` on the demo video from each (bench/e2e.py's
``bench_daemon``), in interleaved rounds (a shared machine drifts; only ratios measured together
mean much). Used to check that a change of structure costs nothing (issue 11).

Per tree and engine: frames/s from a ZeroMQ subscriber (250 published messages, files with
``realtime: false``); the daemon's CPU milliseconds per frame (user + system, all threads: the
figure a busy shared machine disturbs least); and its own mean milliseconds per frame of every
stage besides decode and inference (preprocess, postprocess, publish: what the loop adds).

    .venv/bin/python bench/bench_ab_trees.py --b /path/to/other/tree [--a .] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from daemon.models import assets  # noqa: E402
from e2e import STAGE_LOG, bench_daemon  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, default=ROOT)
    ap.add_argument("--b", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="onnxruntime:fp32,openvino:fp32,openvino:int8")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ab_trees.json")
    args = ap.parse_args()
    video = assets.fetch_demo_video(progress=False)
    engines = [tuple(e.split(":")) for e in args.engines.split(",")]
    rows: dict[str, dict[str, list[list[float]]]] = {f"{b}:{p}": {"a": [], "b": []} for b, p in engines}
    for r in range(args.rounds):
        for b, p in engines:
            sides = [("a", args.a), ("b", args.b)]
            for side, tree in sides if r % 2 == 0 else sides[::-1]:  # alternate who goes first
                cpu: list[float] = []
                fps = bench_daemon(video, args.threads, p, root=tree.resolve(), backend=b, cpu=cpu)
                extra = sum(v for k, v in STAGE_LOG[p].items() if k not in ("decode", "infer"))
                rows[f"{b}:{p}"][side].append([fps, extra, 1000 * cpu[0]])
                print(f"round {r + 1} {b}:{p} {side}: {fps:.1f} frames/s, {1000 * cpu[0]:.1f} CPU ms/frame, "
                      f"{extra:.2f} ms/frame besides decode+infer", flush=True)
    summary = {}
    for k, v in rows.items():
        fa, fb = (float(np.median([x[0] for x in v[s]])) for s in ("a", "b"))
        ea, eb = (float(np.median([x[1] for x in v[s]])) for s in ("a", "b"))
        ca, cb = (float(np.median([x[2] for x in v[s]])) for s in ("a", "b"))
        summary[k] = {"fps_a": fa, "fps_b": fb, "fps_a_over_b": fa / fb, "other_ms_a": ea, "other_ms_b": eb,
                      "cpu_ms_per_frame_a": ca, "cpu_ms_per_frame_b": cb, "cpu_a_over_b": ca / cb}
        print(f"{k}: a {fa:.1f} vs b {fb:.1f} frames/s ({fa / fb:.2f}x); CPU a {ca:.1f} vs b {cb:.1f} ms/frame "
              f"({ca / cb:.2f}x); besides decode+infer a {ea:.2f} ms, b {eb:.2f} ms per frame")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"a": args.a.name or str(args.a), "b": args.b.name, "threads": args.threads,
                                     "rounds": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
