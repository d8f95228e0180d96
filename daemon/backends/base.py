"""The one small interface every inference backend implements.

A backend takes a batch of letterboxed float32 NCHW images and returns the raw YOLO head
outputs (one array per head, batch first). Decoding and NMS stay outside, in numpy, so that every
backend is scored by the same post-processing.

What the pipeline calls (``daemon/app.py``): :meth:`Backend.infer` and :meth:`Backend.close` on
every backend; beyond them, two kinds of backend keep batches in flight:

* TensorRT (``backends/tensorrt.py``) takes decoded frames as they are, ``submit_yuv(frames,
  infos, tags=...)`` (YUV planes, letterboxed on the device), and returns them with
  ``collect(ticket)``;
* OpenVINO (``backends/openvino.py``) hands out its next request's input buffer,
  ``input_slot(n)``, which the pipeline letterboxes into, then ``submit(n)`` and
  ``collect(ticket)``, with up to ``in_flight`` requests running.

TensorRT's ``infer_frames`` / ``submit_frames`` (RGB frames letterboxed on the device) serve
tests and benchmarks; the pipeline does not call them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from daemon.errors import DetectdError


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxruntime" | "openvino" | "tensorrt"
    precision: str  # "fp32" | "int8" | "fp16"
    max_batch: int

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """(N, 3, H, W) float32 -> raw head outputs, each (N, A*(5+C), h, w)."""
        ...

    def close(self) -> None:
        ...


class BackendError(DetectdError, RuntimeError):
    """A backend could not be created or run; the message names the model file and the cause."""


def warmup(backend: Backend, width: int, height: int, runs: int = 2) -> None:
    """Run the backend on grey input so the first real frame does not pay for lazy init."""
    x = np.full((1, 3, height, width), 0.5, np.float32)
    for _ in range(runs):
        backend.infer(x)

