"""What does it cost to make odd frames safe? (a) validate frames in-process, as detectd does,
against (b) isolating each stream's decoding in its own process, as Frigate isolates ffmpeg.

(a) is detectd's real source path: ``StreamSource`` (decode with PyAV, ``FrameGuard``: pixel
format / size check and damage tracking) handing frames to a sink that letterboxes them (the
libswscale pass the model input needs).
(b) is a prototype good enough to measure: one child process per stream decodes with PyAV and
writes each frame's yuv420p planes to a pipe (Frigate's ffmpeg -> pipe layout); the parent
reads them into a ``VideoFrame`` and letterboxes it the same way. A native abort in a child ends
only that pipe. Shared memory would save the pipe's copy, not the second process's decode state,
interpreter and per-frame wakeups.

Both decode the demo video (640x272 H.264, 250 frames) as fast as they can, with 1 stream and
with 16 streams, in interleaved rounds (a b a b ...) so that load from other processes on the
machine hits both alike. Reported per mode: frames/s (all streams), CPU seconds per frame (user
+ system of this process and its children, from getrusage), CPU cores busy, and the peak RSS of
the daemon's process plus the sum over the decoding processes. Output: ``bench/results/bench_isolation.json``.

Run: ``python bench/bench_isolation.py [--streams 1,16] [--rounds 3] [--loops 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av  # noqa: E402
import numpy as np  # noqa: E402

from daemon.config import StreamConfig  # noqa: E402
from daemon.frames import Frame  # noqa: E402
from daemon.metrics import Metrics  # noqa: E402
from daemon.models.assets import fetch_demo_video  # noqa: E402
from daemon.sources.pyav import StreamSource  # noqa: E402
from daemon.vision.letterbox import letterbox_av, letterbox_frame  # noqa: E402

HEADER = struct.Struct("<II")  # width, height of the yuv420p frame that follows


class LetterboxSink:
    """The pipeline's first native step for every frame: scale + RGB for the model input."""

    def __init__(self) -> None:
        self.frames = 0
        self.lock = threading.Lock()
        self.buf = threading.local()

    def is_full(self, stream: str) -> bool:
        return False

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        out = getattr(self.buf, "out", None)
        if out is None:
            out = self.buf.out = np.empty((3, 416, 416), np.float32)
        letterbox_frame(frame, 416, 416, out=out)
        frame.native = None
        with self.lock:
            self.frames += 1
        return True


def run_inprocess(video: str, streams: int, loops: int) -> int:
    sink = LetterboxSink()
    metrics = Metrics()
    sources = []
    for i in range(streams):
        cfg = StreamConfig(id=f"s{i}", url=video)
        metrics.init_stream(cfg.id)
        sources.append(StreamSource(cfg, sink, metrics, lambda *a, **k: None))
    for _ in range(loops):
        for s in sources:
            s.start()
        for s in sources:
            s.join()
        sources = [StreamSource(s.cfg, sink, metrics, lambda *a, **k: None) for s in sources]
    return sink.frames


def child(video: str, loops: int) -> None:
    """(b)'s decoding process: frames as yuv420p planes on stdout."""
    out = sys.stdout.buffer
    for _ in range(loops):
        with av.open(video) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"  # as the daemon does for files
            for f in c.decode(s):
                if f.format.name != "yuv420p":
                    f = f.reformat(format="yuv420p")
                a = f.to_ndarray()  # (h * 3 / 2, w) uint8, planes back to back
                out.write(HEADER.pack(f.width, f.height))
                out.write(a.tobytes())
    # Trailer: width 0, then this process's peak RSS in KiB. VmHWM, not ru_maxrss: the latter
    # survives exec, so every child would report the parent's peak from before it.
    hwm = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    out.write(HEADER.pack(0, hwm))
    out.flush()


CHILD_RSS_KIB: list[int] = []


def run_isolated(video: str, streams: int, loops: int) -> int:
    total = [0]
    lock = threading.Lock()
    CHILD_RSS_KIB.clear()

    def reader(p: subprocess.Popen[bytes]) -> None:
        assert p.stdout is not None
        out = np.empty((3, 416, 416), np.float32)
        n = 0
        while True:
            head = p.stdout.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            w, h = HEADER.unpack(head)
            if w == 0:
                with lock:
                    CHILD_RSS_KIB.append(h)
                continue
            data = p.stdout.read(w * h * 3 // 2)
            a = np.frombuffer(data, np.uint8).reshape(h * 3 // 2, w)
            letterbox_av(av.VideoFrame.from_ndarray(a, format="yuv420p"), 416, 416, out=out)
            n += 1
        p.wait()
        with lock:
            total[0] += n

    procs = [subprocess.Popen([sys.executable, __file__, "--child", video, "--loops", str(loops)],
                              stdout=subprocess.PIPE, bufsize=1 << 20) for _ in range(streams)]
    threads = [threading.Thread(target=reader, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


def cpu() -> tuple[float, float, int, int]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime, s.ru_maxrss, c.ru_maxrss


def measure(mode: str, video: str, streams: int, loops: int) -> dict[str, Any]:
    c0 = cpu()
    t0 = time.perf_counter()
    frames = (run_inprocess if mode == "validate" else run_isolated)(video, streams, loops)
    wall = time.perf_counter() - t0
    c1 = cpu()
    cpu_s = (c1[0] - c0[0]) + (c1[1] - c0[1])
    return {"frames": frames, "seconds": round(wall, 3), "frames_per_s": round(frames / wall, 1),
            "cpu_ms_per_frame": round(1000 * cpu_s / frames, 3), "cores_busy": round(cpu_s / wall, 2),
            # The daemon's own process; (b) adds one decoding process per stream.
            "peak_rss_mib_parent": round(c1[2] / 1024, 1),
            "rss_mib_children_sum": round(sum(CHILD_RSS_KIB) / 1024, 1) if mode == "isolate" else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loops", type=int, default=1)
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_isolation.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.loops)
        return 0
    video = str(fetch_demo_video(progress=False))
    results: dict[str, Any] = {}
    for n in (int(x) for x in args.streams.split(",")):
        runs: dict[str, list[dict[str, Any]]] = {"validate": [], "isolate": []}
        for r in range(args.rounds):
            order = ("validate", "isolate") if r % 2 == 0 else ("isolate", "validate")
            for mode in order:
                runs[mode].append(measure(mode, video, n, args.loops))
                print(n, mode, runs[mode][-1], flush=True)
        med = {m: {k: float(np.median([x[k] for x in v])) for k in v[0]} for m, v in runs.items()}
        results[f"{n}_streams"] = {
            "runs": runs, "median": med,
            "isolate_vs_validate": {
                "frames_per_s_ratio": round(med["isolate"]["frames_per_s"] / med["validate"]["frames_per_s"], 3),
                "cpu_per_frame_ratio": round(med["isolate"]["cpu_ms_per_frame"] / med["validate"]["cpu_ms_per_frame"], 3),
            },
        }
        print(n, "streams:", results[f"{n}_streams"]["isolate_vs_validate"], flush=True)
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(), "pyav": av.__version__,
            "ffmpeg": ".".join(map(str, av.ffmpeg_version_info)) if hasattr(av, "ffmpeg_version_info") else None,
            "rounds": args.rounds, "loops": args.loops, "video": "bikes.mp4 640x272 H.264, 250 frames"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
