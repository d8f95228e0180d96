"""The daemon's own loop on the GPU: NVDEC streams -> ``daemon.sources.streams.Streams`` ->
``daemon.scheduler.Scheduler`` -> ``daemon.detector.Detector`` -> ``daemon.pipeline.Pipeline`` ->
the real ZeroMQ ``Publisher`` (via ``FanOut``), with a STAND-IN engine backend in TensorRT's place.

``StandInEngineBackend`` (plainly not TensorRT, which cannot be installed on the GPU machine) is a
``FramePipelinedBackend`` + ``CompletionSource`` built on the real ``GpuPipeline`` and device
letterbox, exactly as ``TensorRTBackend`` is; its executor reads the whole letterboxed batch
(``standin_checksum``) and fills the two YOLOv3-Tiny heads (255x13x13, 255x26x26) with -20, so
the daemon's postprocessing runs on real-shaped outputs and finds no box. Run by
``bench/gpu_check.py`` (step ``daemon_loop``); needs a CUDA GPU.

Figures: frames/s published and CPU cores used (process CPU time / wall time) over a steady
window after start-up; completion-to-publish latency = the time the sink got a frame's result
minus the time the completion thread reported its batch done (the ``on_complete`` callback, which
wakes the loop), p50/p99.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from daemon.backends.cuda import CudaDevice, GpuPipeline, OutputSpec, check

W = H = 416
NEG20 = struct.unpack("<I", struct.pack("<f", -20.0))[0]  # sigmoid(-20) ~ 2e-9: no box anywhere
HEADS = (("standin_head_13", 13, ((81, 82), (135, 169), (344, 319))),
         ("standin_head_26", 26, ((10, 14), (23, 27), (37, 58))))


class StandInHeads:
    """Executor STAND-IN (not TensorRT): reads the slot's input, writes constant head outputs."""

    def __init__(self, dev: CudaDevice, kernel: Any, slot: Any, specs: Sequence[OutputSpec], max_batch: int) -> None:
        self.dev, self.k, self.slot, self.specs = dev, kernel, slot, list(specs)
        self.scratch = dev.alloc(max_batch * 8 * 4)

    def execute(self, stream: Any, batch: int) -> None:
        self.dev.launch(self.k, (batch, 1, 1), (256, 1, 1), stream,
                        [ctypes.c_void_p(self.slot.input_ptr), ctypes.c_int(3 * H * W),
                         ctypes.c_void_p(self.scratch)])
        for ptr, spec in zip(self.slot.output_ptrs, self.specs):
            check(self.dev.driver.cuMemsetD32Async(ptr, NEG20, batch * spec.nbytes // 4, stream),
                  "cuMemsetD32Async")

    def close(self) -> None:
        if self.scratch:
            self.dev.free(self.scratch)
            self.scratch = 0


class StandInEngineBackend:
    """STAND-IN engine backend (not TensorRT): the ``TensorRTBackend`` interface over the real
    ``GpuPipeline``; records when each batch completes (for the latency figure)."""

    name, precision, device_frames = "standin", "fp32", True

    def __init__(self, dev: CudaDevice, kernels: dict[str, Any], max_batch: int, num_slots: int = 3) -> None:
        self.max_batch = max_batch
        specs = [OutputSpec(n, (255, g, g)) for n, g, _ in HEADS]
        self.pipeline = GpuPipeline(dev, W, H, max_batch, specs,
                                    lambda slot: StandInHeads(dev, kernels["standin_checksum"], slot, specs, max_batch),
                                    num_slots)
        self._lock = threading.Lock()
        self.done_at: dict[int, float] = {}  # ticket seq -> perf_counter when reported complete
        self.seq_of: dict[tuple[Any, Any], int] = {}  # (stream, frame index) -> ticket seq
        self.frames_submitted = 0
        self.frames_from_device = 0  # read in place from NVDEC surfaces (no host copy)

    def set_on_complete(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            self.pipeline.set_on_complete(None)
            return

        def on_complete() -> None:
            # The completion thread marks a submission ready (GpuPipeline._ready), then calls
            # this: every marked one not stamped yet completed now. A submission that the loop
            # collected before completion was reported (in-flight limit) gets no stamp and no
            # latency sample.
            now = time.perf_counter()
            with self.pipeline._cv:
                seqs = list(self.pipeline._ready)
            with self._lock:
                for seq in seqs:
                    self.done_at.setdefault(seq, now)
            callback()

        self.pipeline.set_on_complete(on_complete)

    def ready(self, ticket: Any) -> bool:
        return self.pipeline.ready(ticket)

    def submit_yuv(self, frames: Sequence[Any], infos: Sequence[Any] | None = None,
                   tags: Sequence[Any] | None = None) -> Any:
        t = self.pipeline.submit_yuv(frames, infos, tags, timeout=None)
        self.frames_submitted += len(frames)
        self.frames_from_device += self.pipeline.last_device_frames
        with self._lock:
            for tag in tags or []:
                self.seq_of[tag] = t.seq
        return t

    def collect(self, ticket: Any) -> list[np.ndarray]:
        return self.pipeline.collect(ticket)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.pipeline.collect(self.pipeline.submit_batch(batch, timeout=None))

    def close(self) -> None:
        self.pipeline.close()


class RecordingSink:
    """A ``Sink`` that notes when each frame's result reached the sinks (next to the Publisher)."""

    def __init__(self) -> None:
        self.published: list[tuple[float, str, int]] = []

    def add_stream(self, stream: str) -> None:
        pass

    def remove_stream(self, stream: str, reason: str | None = None) -> None:
        pass

    def publish_result(self, result: Any, labels: list[str], model: dict[str, str]) -> bool:
        self.published.append((time.perf_counter(), result.frame.stream, result.frame.index))
        return True

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        return True

    def post_event(self, stream: str, event: str, reason: str | None = None, **extra: Any) -> None:
        pass

    def flush_events(self) -> int:
        return 0

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def _cpu_seconds() -> float:
    return time.process_time()  # every thread of the process: decoders, completion, the loop


def run_loop(dev: CudaDevice, kernels: dict[str, Any], clip: Path, streams: int, realtime: bool,
             seconds: float = 3.0, warm_s: float = 1.5, max_batch: int = 8,
             backend: Any = None) -> dict[str, Any]:
    """One configuration through the daemon's loop; see the module docstring. ``backend``:
    another backend with StandInEngineBackend's attributes (a dry run of this harness)."""
    from daemon.config import ModelConfig, StreamConfig
    from daemon.detector import Detector
    from daemon.metrics import Metrics
    from daemon.models.info import ModelInfo
    from daemon.pipeline import Pipeline
    from daemon.publish.sink import FanOut
    from daemon.publish.publisher import Publisher
    from daemon.scheduler import Scheduler
    from daemon.sources import nvdec
    from daemon.sources.streams import Streams
    from daemon.vision.yolo import HeadSpec

    heads = [HeadSpec(n, np.asarray(a, np.float32), 80) for n, _, a in HEADS]
    info = ModelInfo(Path("standin.onnx"), "images", W, H, heads, [f"class{i}" for i in range(80)], "standin")
    backend = backend or StandInEngineBackend(dev, kernels, max_batch)
    metrics = Metrics()
    detector = Detector(backend, info, ModelConfig(max_batch=max_batch))  # type: ignore[arg-type]
    nvdec.set_gpu_backend(detector.device_frames)
    scheduler = Scheduler(metrics, max_batch, 0.005)
    rec = RecordingSink()
    with socket.socket() as probe:  # a free loopback port for the real Publisher
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pub = Publisher(f"tcp://127.0.0.1:{port}", metrics)
    sink = FanOut([pub, rec])
    stop = threading.Event()
    srcs = Streams(scheduler, metrics, sink.post_event, stop)
    pipeline = Pipeline(scheduler, detector, sink, metrics, srcs, {"name": "standin", "precision": "fp32",
                                                                   "backend": "standin"})
    try:
        for i in range(streams):  # as daemon.app.App.add_stream does
            s = StreamConfig(id=f"s{i}", url=str(clip), loop=True, realtime=realtime, decode="cuda")
            sink.add_stream(s.id)
            scheduler.add_stream(s.id, size=s.queue_size, live=s.is_live, max_age=s.max_age_ms / 1000)
            srcs.start(s)
        t_start = time.perf_counter()
        t_warm, t_end = t_start + warm_s, t_start + warm_s + seconds
        c0 = w0 = c1 = w1 = 0.0
        while True:
            now = time.perf_counter()
            if not c0 and now >= t_warm:
                c0, w0 = _cpu_seconds(), now
            if now >= t_end:
                c1, w1 = _cpu_seconds(), now
                break
            pipeline.step()
    finally:
        stop.set()  # as daemon.app.App.shutdown: sources, then what is in flight, then the rest
        srcs.stop_all()
        scheduler.close()
        pipeline.flush()
        srcs.join_all(3.0)
        detector.close()  # closes the backend
        sink.close()  # the Publisher's goodbye and socket
    window = [(t, s, k) for t, s, k in rec.published if w0 <= t < w1]
    lat = [(t - backend.done_at[backend.seq_of[(s, k)]]) * 1e3 for t, s, k in window
           if (s, k) in backend.seq_of and backend.seq_of[(s, k)] in backend.done_at]
    a = np.asarray(lat) if lat else np.zeros(1)
    return {"streams": streams, "realtime": realtime, "clip": clip.name, "frames": len(window),
            "fps": len(window) / (w1 - w0), "cpu_cores": (c1 - c0) / (w1 - w0),
            "completion_to_publish_ms_p50": float(np.percentile(a, 50)),
            "completion_to_publish_ms_p99": float(np.percentile(a, 99)),
            "completion_to_publish_ms_max": float(a.max()), "latency_samples": len(lat),
            "frames_submitted": backend.frames_submitted, "frames_read_on_device": backend.frames_from_device,
            "published_total": len(rec.published)}


def daemon_loop(dev: CudaDevice, kernels: dict[str, Any], clip: Path, seconds: float = 3.0) -> dict[str, Any]:
    rows = []
    for streams, realtime in ((8, False), (1, True), (8, True)):
        print(f"   daemon loop: {streams} x {clip.name}{' realtime' if realtime else ''} ...", flush=True)
        try:
            # Real-time rows: 4 s at the clip's 25 frames/s per stream, >= 100 latency samples.
            r = run_loop(dev, kernels, clip, streams, realtime, max(seconds, 4.0) if realtime else seconds)
        except Exception as exc:  # one configuration failing must not hide the others
            import traceback

            r = {"streams": streams, "realtime": realtime, "error": f"{type(exc).__name__}: {exc}",
                 "trace": traceback.format_exc()}
        print(f"   {r}", flush=True)
        rows.append(r)
    return {"rows": rows, "stand_in": "StandInEngineBackend (a STAND-IN for the TensorRT engine over the real "
            "GpuPipeline and device letterbox; heads filled with -20, no boxes)",
            "pass": all("error" not in r and r["frames"] > 0 for r in rows)}
