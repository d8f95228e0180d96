"""The model, opened once and run the same way by every caller: letterbox -> infer -> decode + NMS.

:meth:`Detector.open` is the whole recipe, written once: choose the backend (``model.backend``,
``backends/select.py``) -> prepare the ONNX file (export, INT8, gate: ``daemon/prepare.py``) ->
:class:`ModelInfo` -> create the backend -> warm it up (once) -> log what was loaded. The daemon,
``detectd annotate``, ``detectd build-engine`` and the benchmarks all open models here.

Two ways to run it:

- :meth:`Detector.detect` for simple callers (annotate, benchmarks, tools): frames in,
  :class:`Detections` out, synchronous.
- :meth:`Detector.submit` -> :class:`Job` -> :meth:`Detector.collect` -> :class:`Detected` for the
  per-frame loop (``daemon/pipeline.py``), which keeps up to :attr:`Detector.in_flight` jobs in
  flight so decoding boxes and publishing overlap inference. A synchronous backend's submit just
  infers (its job is complete at once, ``in_flight`` is 1); a pipelined backend
  (``backends/base.py``: ``SlotPipelinedBackend``, ``FramePipelinedBackend``) is recognised once,
  here, never per batch.

Timings are returned, not recorded: the detector knows no metrics, the pipeline observes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from daemon.backends import start_backend
from daemon.backends.base import (Backend, CompletionSource, FramePipelinedBackend,
                                  SlotPipelinedBackend, warmup)
from daemon.config import ModelConfig
from daemon.frames import Detections, Frame
from daemon.models.info import ModelInfo
from daemon.vision.letterbox import LetterboxInfo, letterbox_av, letterbox_frame, letterbox_params, letterbox_rgb
from daemon.vision.yolo import postprocess

log = logging.getLogger("detectd")

__all__ = ["Detected", "Detector", "Job", "letterbox_any"]

# What a letterbox may raise on a frame the sources let through: it costs that frame, never the
# loop (sources refuse what would abort natively: daemon/sources/validate.py).
FRAME_ERRORS = (ValueError, av.FFmpegError, OSError)


def letterbox_any(image: Any, width: int, height: int, out: np.ndarray | None = None,
                  orient: str = "") -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox a :class:`Frame`, an RGB uint8 (H, W, 3) array or a PyAV ``VideoFrame`` (turned
    for display by ``orient``, see ``vision/orient.py``) into float32 (3, height, width)."""
    if isinstance(image, Frame):
        return letterbox_frame(image, width, height, out)
    if isinstance(image, np.ndarray):
        return letterbox_rgb(image, width, height, out)
    if orient:
        from daemon.vision.orient import letterbox_oriented

        return letterbox_oriented(image, orient, width, height, out)
    return letterbox_av(image, width, height, out)


@dataclass
class Job:
    """One submitted batch. ``frames`` are the ones letterboxed (``rejected`` are not: each with
    the error that cost it); ``preprocess_s`` the seconds each took (1:1 with ``frames``)."""

    frames: list[Frame]
    infos: list[LetterboxInfo]
    preprocess_s: list[float]
    t_submit: float  # time.perf_counter() when the backend had the batch
    ticket: Any = None  # pipelined backends: theirs, for collect/ready
    outputs: list[np.ndarray] | None = None  # synchronous backends: already computed
    infer_s: float = 0.0
    rejected: list[tuple[Frame, Exception]] = field(default_factory=list)


@dataclass
class Detected:
    """A collected job: one :class:`Detections` per frame; ``infer_s`` is the batch's inference
    time (synchronous) or submit-to-collected time (pipelined), ``post_s`` decode + NMS seconds
    per frame."""

    frames: list[Frame]
    detections: list[Detections]
    infer_s: float
    post_s: float


class Detector:
    """A warm backend and what it needs to turn frames into :class:`Detections`.

    ``mode`` is ``sync``, ``slots`` (host letterbox into the backend's request buffers) or
    ``frames`` (frames to the device as decoded); ``in_flight`` how many jobs may be pending
    (1 for ``sync``: collect right after submit). ``device_frames``: the backend takes decoded
    frames that live on the GPU (NVDEC surfaces) as they are -- a backend capability, the class
    attribute ``device_frames = True`` (TensorRT); ``decode: auto`` picks NVDEC for it."""

    def __init__(self, backend: Backend, info: ModelInfo, model_cfg: ModelConfig,
                 path: Path | None = None) -> None:
        self.backend = backend
        self.info = info
        self.model_cfg = model_cfg
        self.path = path if path is not None else info.path
        self.labels = info.labels
        self._slots: SlotPipelinedBackend | None = None
        self._frames: FramePipelinedBackend | None = None
        if isinstance(backend, SlotPipelinedBackend):
            self._slots, self.mode, self.in_flight = backend, "slots", max(1, int(backend.in_flight))
        elif isinstance(backend, FramePipelinedBackend):
            # One batch in flight while the previous one is decoded and published.
            self._frames, self.mode, self.in_flight = backend, "frames", 2
        else:
            self.mode, self.in_flight = "sync", 1
        self.device_frames = self._frames is not None and bool(getattr(backend, "device_frames", False))
        self.completion: CompletionSource | None = (
            backend if self.mode != "sync" and isinstance(backend, CompletionSource) else None)
        self._buf = np.empty((max(1, model_cfg.max_batch), 3, info.height, info.width), np.float32)

    @classmethod
    def open(cls, model_cfg: ModelConfig, *, cancel: threading.Event | None = None,
             progress: bool = True, report: Callable[[str], None] | None = None,
             model_path: Path | None = None) -> "Detector":
        """Choose, prepare, load and warm the model of ``model_cfg``.

        ``cancel`` (the daemon's stop event) abandons a first-start calibration or an engine
        build: ``CalibrationCancelled`` / ``BuildCancelled`` are raised and nothing is cached.
        ``report`` receives an engine build's progress lines (``detectd build-engine``).
        ``model_path``: an ONNX file to run as it is, skipping preparation (export, INT8).
        Raises ``BackendError`` (the backend cannot load or run the model), ``ModelInfoError``
        (the ONNX file is not a YOLO detector detectd understands), ``AssetError``/``OSError``
        (fetching or caching the model), ``CalibrationError`` (INT8 refused by its gate).
        """
        from daemon.prepare import prepare_model

        t0 = time.perf_counter()
        # Under auto, a GPU backend that fails at any step up to and including its warm-up (the
        # only warm-up: READY waits for it) is closed and replaced by the CPU (start_backend).
        backend, path, info = start_backend(
            model_cfg.backend, model_cfg,
            lambda target: model_path if model_path is not None else prepare_model(
                model_cfg, target=target, progress=progress, cancel=cancel),
            ModelInfo.from_onnx, cancel=cancel, report=report,
            warm=lambda b, i: warmup(b, i.width, i.height))
        log.info("model %s (%s, %s) loaded and warm in %.2fs: input %dx%d, %d classes",
                 path.name, backend.name, backend.precision, time.perf_counter() - t0,
                 info.width, info.height, len(info.labels))
        from daemon.models.assets import verified_files

        verified = verified_files()
        if verified:  # one line, not one per file and use (those are DEBUG)
            log.info("assets verified (SHA-256) in the cache: %s", ", ".join(p.name for p in verified))
        return cls(backend, info, model_cfg, path)

    # -- simple callers ----------------------------------------------------------------------
    def detect(self, images: Sequence[Any], *, orient: str = "", conf: float | None = None,
               nms: float | None = None) -> list[Detections]:
        """Frames (``Frame``, RGB uint8 arrays or PyAV frames) -> one :class:`Detections` per
        frame, boxes in the frame's own (displayed) pixels. Runs in chunks of ``model.max_batch``;
        ``conf``/``nms`` default to the model config's thresholds. A frame that cannot be
        letterboxed raises (ValueError / av.FFmpegError)."""
        out: list[Detections] = []
        step = self._buf.shape[0]
        for i in range(0, len(images), step):
            chunk = images[i:i + step]
            infos = [letterbox_any(im, self.info.width, self.info.height, self._buf[k], orient)[1]
                     for k, im in enumerate(chunk)]
            outputs = self.backend.infer(self._buf[:len(chunk)])
            out += self.postprocess(outputs, infos, conf, nms)
        return out

    def postprocess(self, outputs: Sequence[np.ndarray], infos: Sequence[LetterboxInfo],
                    conf: float | None = None, nms: float | None = None) -> list[Detections]:
        """Raw head outputs -> one :class:`Detections` per letterbox placement (YOLO decode +
        per-class NMS, ``vision/yolo.py``)."""
        mc = self.model_cfg
        return postprocess(outputs, infos, self.info.heads, mc.conf_threshold if conf is None else conf,
                           mc.nms_threshold if nms is None else nms)

    # -- the per-frame loop ------------------------------------------------------------------
    def submit(self, batch: list[Frame], *, release: bool = True) -> Job:
        """Start a batch (at most ``model.max_batch`` frames). ``release``: drop each frame's
        decoder buffer (``Frame.native``) as soon as it is no longer needed (the preview keeps it
        while someone watches). A frame that cannot be letterboxed goes to ``job.rejected``; when
        none could be, ``job.frames`` is empty and nothing was submitted (do not collect it)."""
        w, h = self.info.width, self.info.height
        if self._frames is not None:
            t0 = time.perf_counter()
            infos = [letterbox_params(f.width, f.height, w, h) for f in batch]
            # A frame turned for display (phone video) is converted and turned on the CPU (RGB,
            # 3 B/px over the bus): the YUV kernel reads planes as stored (docs/sources.md).
            ticket = self._frames.submit_yuv([f.rgb() if f.orient else f.native for f in batch], infos,
                                             tags=[(f.stream, f.index) for f in batch])
            t_submit = time.perf_counter()
            if release:
                for f in batch:
                    f.native = None  # copied to pinned memory by submit
            each = (t_submit - t0) / len(batch)
            return Job(list(batch), infos, [each] * len(batch), t_submit, ticket=ticket)
        buf = self._slots.input_slot(len(batch)) if self._slots is not None else self._buf
        job = Job([], [], [], 0.0)
        for frame in batch:
            t0 = time.perf_counter()
            try:
                job.infos.append(letterbox_frame(frame, w, h, out=buf[len(job.frames)])[1])
            except FRAME_ERRORS as exc:
                job.rejected.append((frame, exc))
                continue
            job.frames.append(frame)
            if release:
                frame.native = None  # release the decoder's buffer early
            job.preprocess_s.append(time.perf_counter() - t0)
        n = len(job.frames)
        if not n:
            return job
        if self._slots is not None:
            job.ticket = self._slots.submit(n)
            job.t_submit = time.perf_counter()
        else:
            t0 = time.perf_counter()
            job.outputs = self.backend.infer(buf[:n])
            job.t_submit = time.perf_counter()
            job.infer_s = job.t_submit - t0
        return job

    def ready(self, job: Job) -> bool:
        """Non-blocking: :meth:`collect` would not wait. True for a synchronous job; for a
        pipelined backend without completion reporting, False (the caller falls back to
        collecting the oldest job when idle)."""
        if job.outputs is not None:
            return True
        return self.completion is not None and self.completion.ready(job.ticket)

    def set_on_complete(self, callback: Callable[[], None] | None) -> bool:
        """Have ``callback`` called (any thread) when a pipelined job completes; False when the
        backend cannot say (synchronous, or pipelined without ``CompletionSource``)."""
        if self.completion is None:
            return False
        self.completion.set_on_complete(callback)
        return True

    def collect(self, job: Job) -> Detected:
        """Wait for ``job`` (pipelined) and decode its boxes. Jobs of one detector are collected
        in submission order (the backends' tickets require it)."""
        if job.outputs is None:
            backend: Any = self._slots if self._slots is not None else self._frames
            outputs = backend.collect(job.ticket)
            infer_s = time.perf_counter() - job.t_submit
        else:
            outputs, infer_s = job.outputs, job.infer_s
        t0 = time.perf_counter()
        dets = self.postprocess(outputs, job.infos)
        return Detected(job.frames, dets, infer_s, (time.perf_counter() - t0) / len(job.frames))

    def close(self) -> None:
        if self.completion is not None:
            self.completion.set_on_complete(None)
        self.backend.close()
