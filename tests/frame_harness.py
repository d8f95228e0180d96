"""Run one video through detectd's real source path and every native call a frame reaches,
in this process, and print one JSON line: run by tests/test_sources_guard.py in a subprocess, so
an abort inside native code shows as the child's signal instead of killing the test run.

``python -m tests.frame_harness VIDEO [--damage mark|skip|off] [--max-frames N]``

Per frame (as the daemon does): ``StreamSource`` decodes and guards it; then the letterbox for
the model (libswscale scale + RGB), ``Frame.rgb()``, the preview's render (scale, draw) and JPEG
encode, and the GPU path's CPU side (``yuv_planes`` for yuv420p/nv12 frames). Output:
``{"frames": n, "damaged": [Frame.index of damaged frames], "pts": [...], "index": [Frame.index...],
"decoded": n, "events": [...], "dropped": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np

from daemon.config import StreamConfig
from daemon.frames import Detections, Frame, FrameResult
from daemon.metrics import DROP_REASONS, Metrics
from daemon.preview import JpegEncoder, PreviewHub
from daemon.sources.pyav import StreamSource
from daemon.vision.gpu_letterbox import YUV_FORMATS, yuv_planes
from daemon.vision.letterbox import letterbox_frame


class Sink:
    """The scheduler's side, doing at once what the pipeline threads would do with a frame."""

    def __init__(self, limit: int) -> None:
        self.hub = PreviewHub(max_width=64)
        self.encoder = JpegEncoder()
        self.frames: list[Frame] = []
        self.limit = limit
        self.done = threading.Event()

    def is_full(self, stream: str) -> bool:
        return False

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        letterbox_frame(frame, 416, 416)
        if frame.native.format.name in YUV_FORMATS:
            yuv_planes(frame.native)
        # A box over the whole frame: drawing reaches every edge of even a 1x1 picture.
        dets = Detections(np.array([[0, 0, frame.width, frame.height]], np.float32),
                          np.array([0.9], np.float32), np.array([0], np.int32))
        rgb = self.hub._render(frame, dets, ["person"])
        self.encoder.encode(rgb)
        full = Frame(stream=frame.stream, index=frame.index, width=frame.width, height=frame.height,
                     pts=frame.pts, captured_at=frame.captured_at, t_decoded=frame.t_decoded,
                     native=frame.native)
        full.rgb()
        self.hub.offer(FrameResult(frame, dets), ["person"])
        frame.native = None
        self.frames.append(frame)
        if len(self.frames) >= self.limit:
            self.done.set()
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("video")
    ap.add_argument("--damage", default="mark")
    ap.add_argument("--max-frames", type=int, default=1000)
    ap.add_argument("--live", type=float, default=0.0,
                    help="read the file as a live source (live: true, fast backoff) for this many seconds")
    args = ap.parse_args()
    events: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if args.live:
        extra = {"live": True, "backoff_base": 0.1, "backoff_cap": 0.2, "stall_timeout": 2.0}
    cfg = StreamConfig(id="cam", url=args.video, damage=args.damage, **extra)
    metrics = Metrics()
    metrics.init_stream("cam")
    sink = Sink(args.max_frames)

    def on_event(sid: str, event: str, reason: str | None, **extra: Any) -> None:
        events.append({"event": event, "reason": reason, **extra})

    src = StreamSource(cfg, sink, metrics, on_event)
    src.start()
    t_end = time.monotonic() + args.live
    while not src.finished.wait(0.05):
        if sink.done.is_set() or (args.live and time.monotonic() > t_end):
            src.stop()
    src.join(10)
    get = metrics.registry.get_sample_value
    print(json.dumps({
        "frames": len(sink.frames),
        "damaged": [f.index for f in sink.frames if f.damaged],
        "pts": [f.pts for f in sink.frames],
        "index": [f.index for f in sink.frames],
        "decoded": get("detectd_frames_decoded_total", {"stream": "cam"}),
        "events": events,
        "failed": src.failed,
        "errors_unsupported": get("detectd_stream_errors_total", {"stream": "cam", "kind": "unsupported"}),
        "dropped": {r: get("detectd_frames_dropped_total", {"stream": "cam", "reason": r}) for r in DROP_REASONS},
        "frames_damaged": get("detectd_frames_damaged_total", {"stream": "cam"}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
