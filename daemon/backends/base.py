"""The small interfaces every inference backend implements, and nothing else.

A backend takes a batch of letterboxed float32 NCHW images and returns the raw YOLO head
outputs (one array per head, batch first). Decoding and NMS stay outside (``vision/yolo.py``,
called by :class:`daemon.detector.Detector`), so every backend is scored by the same
post-processing.

**A new backend** is one module in this folder with a class that has :class:`Backend`'s
attributes and methods, one branch in ``backends/__init__.py:create_backend`` and, for
``model.backend: auto``, a probe in ``backends/select.py``. Nothing else changes: the daemon,
``detectd annotate`` and the benchmarks open every backend through ``daemon/detector.py``.

A backend that keeps several batches in flight also implements one of the pipelined shapes below;
the detector checks which one **once**, when it opens the model (``isinstance`` on these
runtime-checkable protocols), never per batch:

- :class:`SlotPipelinedBackend` (OpenVINO): the host letterboxes into the next request's own
  input buffer (``input_slot``), ``submit(n)`` starts it, ``collect(ticket)`` waits for it;
- :class:`FramePipelinedBackend` (TensorRT): decoded frames go to the device as they are
  (``submit_yuv``) and are letterboxed there; ``collect(ticket)`` waits for the outputs.

Either may add :class:`CompletionSource` (``set_on_complete`` + ``ready``): the callback wakes the
per-frame loop as soon as a job is done, and the loop collects every ready job at once instead of
blocking on the oldest. Without it the loop keeps the older behaviour: it collects the oldest job
when no frame is waiting, or when the in-flight limit is reached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from daemon.errors import DetectdError


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxruntime" | "openvino" | "tensorrt"
    precision: str  # "fp32" | "int8" | "fp16"
    max_batch: int

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """(N, 3, H, W) float32 RGB 0..1 -> raw head outputs, each float32 (N, A*(5+C), h, w).
        Synchronous: returns when the outputs are on the host."""
        ...

    def close(self) -> None:
        ...


@runtime_checkable
class PipelinedBackend(Backend, Protocol):
    """Submit now, collect later: the per-frame loop decodes boxes and publishes batch k while
    batch k+1 computes. How a batch is submitted is one of the two shapes below."""

    def collect(self, ticket: Any) -> list[np.ndarray]:
        """Wait for ``ticket``; its raw head outputs (as :meth:`Backend.infer` returns them)."""
        ...


@runtime_checkable
class SlotPipelinedBackend(PipelinedBackend, Protocol):
    """Up to ``in_flight`` batches run at once, each from its own host input buffer."""

    in_flight: int

    def input_slot(self, n: int) -> np.ndarray:
        """The (n, 3, H, W) float32 buffer the next ``submit(n)`` sends; fill it first."""
        ...

    def submit(self, n: int) -> Any:
        """Start inference on the first ``n`` images of that buffer; returns a ticket. The
        arrays ``collect`` returns for it stay valid until that buffer is submitted again."""
        ...


@runtime_checkable
class FramePipelinedBackend(PipelinedBackend, Protocol):
    """Decoded frames are copied to the device as they are and letterboxed there."""

    def submit_yuv(self, frames: Sequence[Any], infos: Sequence[Any] | None = None,
                   tags: Sequence[Any] | None = None) -> Any:
        """PyAV frames (or RGB uint8 arrays) + their letterbox placements -> a ticket. The frames
        are copied before it returns (the caller may release them); blocks while every slot is
        in flight."""
        ...


@runtime_checkable
class CompletionSource(Protocol):
    """A pipelined backend that says when a job is done (COMMON interface of issues 13/15)."""

    def set_on_complete(self, callback: Callable[[], None] | None) -> None:
        """``callback`` is called from any thread whenever a submitted job's outputs are ready;
        it must only wake someone (``Scheduler.wake``), never block or collect. None unsets it."""
        ...

    def ready(self, ticket: Any) -> bool:
        """Non-blocking: ``collect(ticket)`` would return at once."""
        ...


class BackendError(DetectdError, RuntimeError):
    """A backend could not be created or run; the message names the model file and the cause."""


def warmup(backend: Backend, width: int, height: int, runs: int = 2) -> None:
    """Run the backend on grey input so the first real frame does not pay for lazy init."""
    x = np.full((1, 3, height, width), 0.5, np.float32)
    for _ in range(runs):
        backend.infer(x)
