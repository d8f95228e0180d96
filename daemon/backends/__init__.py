"""Inference backends behind one small interface (``base.Backend``), chosen by ``model.backend``."""

from __future__ import annotations

import logging
from typing import Any

from daemon.backends.base import Backend, BackendError

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "choose_backend", "create_backend"]


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend name, why). ``auto`` picks TensorRT when it imports and a GPU is present.
    The choice is logged once (INFO ``inference backend: NAME (why)``), here or by the probe."""
    if requested != "auto":
        log.info("inference backend: %s (set by model.backend)", requested)
        return requested, "set by model.backend"
    try:
        from daemon.backends.select import select_backend  # GPU probe, when present; logs it
    except ImportError:
        log.info("inference backend: onnxruntime (auto: no GPU backend module)")
        return "onnxruntime", "auto: no GPU backend module"
    choice = select_backend(requested)
    if isinstance(choice, tuple):
        return choice[0], choice[1]
    return getattr(choice, "backend", str(choice)), getattr(choice, "reason", "auto")


def create_backend(name: str, model_path: Any, info: Any, model_cfg: Any, cancel: Any = None) -> Backend:
    """``cancel``: an event that abandons a long preparation (a TensorRT engine build)."""
    if name == "onnxruntime":
        if model_cfg.precision == "fp16":
            raise BackendError("model.precision: fp16 exists for TensorRT engines only; "
                               "use fp32 or int8 with onnxruntime")
        from daemon.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, info.input_name, info.output_names,
                                  precision=model_cfg.precision, threads=model_cfg.threads,
                                  max_batch=model_cfg.max_batch)
    if name == "tensorrt":
        try:
            from daemon.backends.tensorrt import create_tensorrt_backend
        except ImportError as exc:
            raise BackendError(f"model.backend: tensorrt is not available here: {exc}") from exc
        return create_tensorrt_backend(model_path, info, model_cfg, cancel=cancel)
    raise BackendError(f"model.backend: unknown backend {name!r}")
