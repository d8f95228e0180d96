"""``model.backend: auto``: TensorRT when it imports and a GPU answers, else OpenVINO where it
imports, else ONNX Runtime.

A pure function of three probes, so every branch is tested on a CPU with injected probes; the
real probes import ``tensorrt``, ask the CUDA driver (through cuda-python) for a device, and
import ``openvino`` and look for its CPU device. The choice and its reason are logged once, so
an operator sees why a GPU machine fell back, and why a CPU machine runs ONNX Runtime.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["Selection", "probe_gpu", "probe_openvino", "probe_tensorrt", "select_backend"]

# How cuda_unavailable_reason starts when cuda-python itself is missing (then nothing is known
# about the GPU).
NO_CUDA_PYTHON = "cuda-python is not installed"

# A probe returns None when the thing is usable, else a one-line reason why not.
Probe = Callable[[], "str | None"]


@dataclass(frozen=True)
class Selection:
    backend: str  # "tensorrt" | "openvino" | "onnxruntime"
    reason: str


def probe_tensorrt() -> str | None:
    try:
        importlib.import_module("tensorrt")  # only whether it imports matters here
    except Exception as exc:  # ImportError, or a broken install raising OSError at load
        return f"the tensorrt package does not import ({type(exc).__name__}: {exc})"
    return None


def probe_gpu() -> str | None:
    from daemon.backends.cuda import cuda_unavailable_reason

    return cuda_unavailable_reason()


def probe_openvino() -> str | None:
    from daemon.backends.openvino import openvino_unavailable_reason

    return openvino_unavailable_reason()


def _cpu(gpu_why: str, openvino_probe: Probe) -> Selection:
    """The CPU backend once TensorRT is out, with the GPU part of the reason kept."""
    no_ov = openvino_probe()
    if no_ov is None:
        return Selection("openvino", f"{gpu_why}; openvino imports: OpenVINO on the CPU")
    return Selection("onnxruntime", f"{gpu_why}; {no_ov}: ONNX Runtime on the CPU "
                     "(`pip install openvino` for the faster CPU engine)")


def select_backend(requested: str = "auto", *, tensorrt_probe: Probe = probe_tensorrt,
                   gpu_probe: Probe = probe_gpu, openvino_probe: Probe = probe_openvino,
                   log_choice: bool = True) -> Selection:
    """The backend to run for ``model.backend`` = ``requested``, and why."""
    if requested != "auto":
        sel = Selection(requested, f"model.backend is {requested!r}")
    else:
        no_gpu = gpu_probe()
        no_trt = tensorrt_probe() if no_gpu is None else None
        if no_gpu is not None and no_gpu.startswith(NO_CUDA_PYTHON):
            # Not knowing is not the same as not having: say what is missing.
            sel = _cpu(f"auto: TensorRT not usable here ({no_gpu}; on an NVIDIA machine "
                       "`pip install 'detectd[gpu]'` enables TensorRT)", openvino_probe)
        elif no_gpu is not None:
            sel = _cpu(f"auto: no GPU ({no_gpu})", openvino_probe)
        elif no_trt is not None:
            sel = _cpu(f"auto: a GPU is present but {no_trt}", openvino_probe)
        else:
            sel = Selection("tensorrt", "auto: tensorrt imports and a CUDA GPU is present")
    if log_choice:
        log.info("inference backend: %s (%s)", sel.backend, sel.reason)
    return sel
