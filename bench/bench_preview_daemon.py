"""What the preview page costs the real daemon: frames/s of ``detectd run`` on the demo file
(``realtime: false``, every frame processed) with the preview disabled, enabled with no viewer,
and enabled with one viewer reading the MJPEG stream as a browser does. Modes are interleaved
round by round (a noisy neighbour hurts all three alike) and the median round is reported.
Targets (issue 7): no viewer within 2 %, one viewer within 5 % of disabled.

    .venv/bin/python bench/bench_preview_daemon.py [--rounds 3] [--json bench/results/preview_daemon.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.models.assets import fetch_demo_video  # noqa: E402
from tests.harness import DaemonProcess, free_port  # noqa: E402  (the one daemon-process harness)


def one_run(video: Path, mode: str, frames: int) -> tuple[float, int]:
    """(frames/s, JPEGs the viewer received). The daemon runs under ``tests.harness.DaemonProcess``
    (the one daemon-process harness): launched, not awaited, as before -- the first 20 messages
    (model warm-up) are left out of the rate either way."""
    prev = free_port()
    jpegs = [0]
    stop = threading.Event()

    def viewer() -> None:
        url = f"http://127.0.0.1:{prev}/stream/cam.mjpg"
        while not stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    while not stop.is_set():
                        b = r.read1(1 << 16)
                        if not b:
                            break
                        jpegs[0] += b.count(b"Content-Type: image/jpeg")
            except OSError:
                time.sleep(0.2)

    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProcess(Path(tmp), [{"id": "cam", "url": str(video), "loop": True}], subscribe=b"detections/",
                          model={"backend": "onnxruntime", "threads": 2, "precision": "fp32"},
                          preview={"enabled": mode != "disabled", "listen": f"127.0.0.1:{prev}", "fps": 5},
                          logging={"status_interval": 0, "level": "warning"})
        assert d.sub is not None and d.proc is None
        d.launch()
        t = threading.Thread(target=viewer, daemon=True)
        if mode == "viewer":
            t.start()
        times: list[float] = []
        try:
            while len(times) < frames + 20:
                if d.proc is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited {d.proc.returncode}: {d.log()[-2000:]}")
                if d.sub.poll(200):
                    d.sub.recv_multipart()
                    times.append(time.perf_counter())
        finally:
            stop.set()
            d.close()  # SIGTERM, wait (then SIGKILL), close the SUB socket
    return frames / (times[-1] - times[19]), jpegs[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "preview_daemon.json"))
    args = ap.parse_args()
    video = fetch_demo_video(progress=False)
    modes = ("disabled", "no_viewer", "viewer")
    rows: dict[str, list[float]] = {m: [] for m in modes}
    jpegs = 0
    for r in range(args.rounds):
        for m in modes:
            fps, j = one_run(video, m, args.frames)
            rows[m].append(fps)
            jpegs += j
        print(f"round {r + 1}: " + ", ".join(f"{m} {rows[m][-1]:.1f}" for m in modes), flush=True)
    med = {m: float(np.median(v)) for m, v in rows.items()}
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores; detectd run, demo 640x272, fp32, 2 threads")
    for m in modes:
        print(f"{m:<10} {med[m]:6.1f} frames/s  {med[m] / med['disabled']:.3f}x disabled  rounds {['%.1f' % x for x in rows[m]]}")
    print(f"viewer received {jpegs} JPEGs in all")
    out = {"benchmark": "preview_daemon", "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "throughput": [{"name": f"preview {m}", "fps": med[m], "rounds": rows[m]} for m in modes],
           "ratio_no_viewer": med["no_viewer"] / med["disabled"], "ratio_viewer": med["viewer"] / med["disabled"],
           "viewer_jpegs": jpegs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
