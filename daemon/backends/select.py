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

__all__ = ["Selection", "probe_gpu", "probe_nvrtc", "probe_openvino", "probe_tensorrt", "select_backend",
           "tensorrt_version_reason"]

# How cuda_unavailable_reason starts when cuda-python itself is missing (then nothing is known
# about the GPU).
NO_CUDA_PYTHON = "cuda-python is not installed"

# A probe returns None when the thing is usable, else a one-line reason why not.
Probe = Callable[[], "str | None"]


@dataclass(frozen=True)
class Selection:
    backend: str  # "tensorrt" | "openvino" | "onnxruntime"
    reason: str


MIN_TENSORRT_MAJOR = 10  # the API daemon/backends/tensorrt.py is written against (10.x, 11.x)


def tensorrt_version_reason(version: str) -> str | None:
    """None for a TensorRT version detectd supports (10.x or newer), else why not."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"TensorRT reports an unreadable version {version!r}"
    if major < MIN_TENSORRT_MAJOR:
        return (f"TensorRT {version} is too old: detectd needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
                "(`pip install 'detectd[gpu]'`)")
    return None


def probe_tensorrt() -> str | None:
    """None when the TensorRT backend can start here, as far as can be known without building:
    ``tensorrt`` imports and is 10.x or newer, and NVRTC (which compiles the letterbox kernel at
    start) loads."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install raising OSError at load
        return f"the tensorrt package does not import ({type(exc).__name__}: {exc})"
    too_old = tensorrt_version_reason(getattr(trt, "__version__", "0"))
    if too_old:
        return too_old
    no_nvrtc = probe_nvrtc()
    return f"{no_nvrtc} (the GPU letterbox kernel is compiled with NVRTC)" if no_nvrtc else None


def probe_nvrtc() -> str | None:
    from daemon.backends.cuda import nvrtc_unavailable_reason

    return nvrtc_unavailable_reason()


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
    """The backend to run for ``model.backend`` = ``requested``, and why. ``auto`` takes
    TensorRT only when all of the GPU path's start-up needs answer: a CUDA device, NVRTC (the
    letterbox kernel is compiled at start) and TensorRT >= 10."""
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
