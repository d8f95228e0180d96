"""Cross-stream batching: daemon frames/s with ``model.max_batch`` 1 vs 4 vs 8 across 8 file
streams read with ``realtime: false`` (as fast as the pipeline takes them, nothing dropped).

Each setting runs a real ``detectd run`` process; after a warm-up, frames/s is the increase of
``detectd_frames_published_total`` (all streams) over the measured window, read from /metrics.
The batch sizes actually formed come from ``detectd_batch_size``.

    .venv/bin/python bench/bench_batching.py [--seconds 30] [--batches 1 4 8] [--threads 2]

Also the helpers the other daemon benchmarks share (starting a daemon through the tests'
harness, tests/harness.py, and /metrics scraping).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from tests.harness import DaemonProcess, free_port  # noqa: E402  (the one daemon-process harness)

__all__ = ["ROOT", "DaemonProcess", "bench_daemon", "demo_video", "free_port", "machine", "measure",
           "per_stream", "scrape", "total", "write_result"]


def demo_video() -> Path:
    from daemon.models import assets

    return Path(assets.fetch_demo_video(progress=False))


def bench_daemon(streams: list[dict[str, Any]], workdir: Path, name: str, **sections: Any) -> DaemonProcess:
    """A launched (not yet ready) ``detectd run``: ONNX Runtime, 2 threads, a status line every
    10 s unless ``sections`` say otherwise; ``workdir/NAME.yaml`` and ``NAME.log``."""
    sections["logging"] = {"status_interval": 10, **sections.get("logging", {})}
    return DaemonProcess(workdir, streams, name=name, **sections).launch()


def scrape(d: DaemonProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The daemon's /metrics parsed: sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(d.scrape()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def measure(d: DaemonProcess, warmup: float, seconds: float) -> tuple[Any, Any, float, float]:
    """Wait until ready, warm up, scrape twice ``seconds`` apart, stop: (a, b, t0, t1)."""
    try:
        d.wait_ready(120)
        time.sleep(warmup)
        a, t0 = scrape(d), time.monotonic()
        time.sleep(seconds)
        b, t1 = scrape(d), time.monotonic()
    finally:
        d.stop(30)
    return a, b, t0, t1


def total(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def per_stream(m: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for lab, v in m.get(name, []):
        if "stream" in lab:
            out[lab["stream"]] = out.get(lab["stream"], 0.0) + v
    return out


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "loadavg": os.getloadavg(), "python": platform.python_version()}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def run_one(video: Path, max_batch: int, n_streams: int, threads: int, warmup: float, seconds: float,
            workdir: Path) -> dict[str, Any]:
    streams = [{"id": f"f{i}", "url": str(video), "loop": True, "realtime": False, "queue_size": 8}
               for i in range(n_streams)]
    d = bench_daemon(streams, workdir, f"batch{max_batch}",
                     model={"max_batch": max_batch, "max_wait_ms": 10, "threads": threads})
    a, b, t0, t1 = measure(d, warmup, seconds)
    frames = total(b, "detectd_frames_published_total") - total(a, "detectd_frames_published_total")
    batches = total(b, "detectd_batch_size_count") - total(a, "detectd_batch_size_count")
    bsum = total(b, "detectd_batch_size_sum") - total(a, "detectd_batch_size_sum")
    inf = (total(b, "detectd_stage_seconds_sum", stage="infer") - total(a, "detectd_stage_seconds_sum", stage="infer"))
    per = {k: per_stream(b, "detectd_frames_published_total")[k] - v
           for k, v in per_stream(a, "detectd_frames_published_total").items()}
    dropped = total(b, "detectd_frames_dropped_total") - total(a, "detectd_frames_dropped_total")
    return {"max_batch": max_batch, "frames_per_s": frames / (t1 - t0), "frames": frames,
            "seconds": t1 - t0, "mean_batch": bsum / batches if batches else 0.0,
            "infer_ms_per_frame": 1000 * inf / bsum / max(1.0, bsum / max(batches, 1)) if bsum else None,
            "per_stream_frames": per, "dropped": dropped}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window per setting")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="bench_batching")
    a = ap.parse_args()
    video = demo_video()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in a.batches:
            r = run_one(video, mb, a.streams, a.threads, a.warmup, a.seconds, Path(tmp))
            rows.append(r)
            print(f"max_batch {mb}: {r['frames_per_s']:.2f} frames/s across {a.streams} streams "
                  f"(mean batch {r['mean_batch']:.2f}, {r['frames']:.0f} frames in {r['seconds']:.1f}s, "
                  f"dropped {r['dropped']:.0f})", flush=True)
    base = rows[0]["frames_per_s"] or 1.0
    for r in rows:
        r["speedup_vs_first"] = r["frames_per_s"] / base
    path = write_result(a.json, {"benchmark": "batching", "streams": a.streams, "threads": a.threads,
                                 "video": video.name, "realtime": False, "rows": rows,
                                 "machine": machine(), "at": time.time()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
