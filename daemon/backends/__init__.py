"""Inference backends behind one small interface (``base.Backend``), chosen by ``model.backend``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from daemon.backends.base import Backend, BackendError

log = logging.getLogger(__name__)

__all__ = ["Backend", "BackendError", "choose_backend", "create_backend", "int8_variant", "start_backend"]


def int8_variant(backend: str) -> str:
    """The INT8 Q/DQ variant (``daemon.quant.qdq.TARGETS``) a backend computes faithfully.
    OpenVINO runs the ``cpu`` variant: on the symmetric ``tensorrt`` one its low-precision
    transformations compute the route (Concat) quantization differently from the ONNX
    semantics and lose about a fifth of the FP32 boxes (measured: docs/openvino.md)."""
    return "tensorrt" if backend == "tensorrt" else "cpu"


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend name, why). ``auto``: TensorRT when it imports and a GPU is present, else
    OpenVINO where it imports, else ONNX Runtime (``select.select_backend``). The choice is
    logged once (INFO ``inference backend: NAME (why)``), here or by the probe."""
    if requested != "auto":
        log.info("inference backend: %s (set by model.backend)", requested)
        return requested, "set by model.backend"
    try:
        from daemon.backends.select import select_backend  # GPU probe, when present; logs it
    except ImportError:
        log.info("inference backend: onnxruntime (auto: no GPU backend module)")
        return "onnxruntime", "auto: no GPU backend module"
    choice = select_backend(requested)  # logs the choice and why
    if isinstance(choice, tuple):
        return choice[0], choice[1]
    return getattr(choice, "backend", str(choice)), getattr(choice, "reason", "auto")


def create_backend(name: str, model_path: Any, info: Any, model_cfg: Any, cancel: Any = None,
                   report: Callable[[str], None] | None = None) -> Backend:
    """A loaded backend (not warmed up: :meth:`daemon.detector.Detector.open` does that once).
    ``cancel``: an event that abandons a long preparation (a TensorRT engine build); ``report``:
    where an engine build's progress lines go (default: the log)."""
    if name == "onnxruntime":
        if model_cfg.precision == "fp16":
            raise BackendError("model.precision: fp16 exists for TensorRT engines only; "
                               "use fp32 or int8 with onnxruntime")
        from daemon.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, info.input_name, info.output_names,
                                  precision=model_cfg.precision, threads=model_cfg.threads,
                                  max_batch=model_cfg.max_batch)
    if name == "openvino":
        if model_cfg.precision == "fp16":
            raise BackendError("model.precision: fp16 exists for TensorRT engines only; "
                               "use fp32 or int8 with openvino")
        try:
            from daemon.backends.openvino import OpenVinoBackend
        except ImportError as exc:
            raise BackendError(f"model.backend: openvino is not available here: {exc} "
                               "(`pip install openvino`, or model.backend: onnxruntime)") from exc
        from daemon.models import assets

        return OpenVinoBackend(model_path, info.input_name, info.output_names,
                               precision=model_cfg.precision, threads=model_cfg.threads,
                               max_batch=model_cfg.max_batch, hint=model_cfg.performance_hint,
                               in_flight=model_cfg.infer_requests,
                               cache_dir=assets.cache_dir(model_cfg.cache_dir) / "openvino")
    if name == "tensorrt":
        try:
            from daemon.backends.tensorrt import create_tensorrt_backend
        except ImportError as exc:
            raise BackendError(f"model.backend: tensorrt is not available here: {exc}") from exc
        if report is not None:
            return create_tensorrt_backend(model_path, info, model_cfg, cancel=cancel, report=report)
        return create_tensorrt_backend(model_path, info, model_cfg, cancel=cancel)
    raise BackendError(f"model.backend: unknown backend {name!r}")


def start_backend(requested: str, model_cfg: Any, resolve: Any, info_of: Any, cancel: Any = None,
                  choose: Any = None, report: Callable[[str], None] | None = None,
                  warm: Callable[[Backend, Any], None] | None = None,
                  ) -> tuple[Backend, Any, Any]:
    """Choose, prepare, create and warm the backend for ``model.backend = requested``:
    ``(backend, model path, model info)``.

    ``resolve(target)`` gives the ONNX model for an INT8 variant (``int8_variant``),
    ``info_of(path)`` its ``ModelInfo``, ``warm(backend, info)`` runs the warm-up (the first
    inference: on a GPU it is where a context or kernel first runs). Under ``auto`` a GPU backend
    that fails at any of these steps -- preparing its model variant, no NVRTC, an engine that
    does not build, a context that cannot be created, out of GPU memory, a warm-up that fails --
    is closed, logged (WARNING, with the cause) and replaced by the CPU backend ``auto`` picks
    without the GPU; a stop request (``Cancelled``: a build or calibration abandoned) is not a
    failure and propagates. Asked for explicitly, a failure to create or warm the backend is
    raised as a :class:`BackendError` naming ``model.backend`` and the cause (errors preparing
    the model -- ``CalibrationError``, ``AssetError`` -- keep their own type). ``choose``: the
    selection function (tests inject one); ``report``: as for :func:`create_backend`.
    """
    from daemon.errors import Cancelled

    name, _why = (choose or choose_backend)(requested)
    stage = "prepare"  # resolve/info_of; an exception from a later step carries its own
    try:
        return _start(name, model_cfg, resolve, info_of, cancel, report, warm)
    except Exception as exc:
        stage = getattr(exc, _STAGE, stage)
        if isinstance(exc, Cancelled):
            raise
        if requested != "auto" or name != "tensorrt":
            if isinstance(exc, BackendError) or stage == "prepare":
                raise
            raise BackendError(f"model.backend: {name} could not {stage}: {type(exc).__name__}: {exc}") from exc
        from daemon.backends.select import select_backend

        why = f"{type(exc).__name__}: {exc}"
        sel = select_backend("auto", gpu_probe=lambda: f"the TensorRT backend failed to start ({why})",
                             log_choice=False)
        log.warning("inference backend: tensorrt failed to %s (%s); falling back to %s", stage, why, sel.backend)
        try:
            return _start(sel.backend, model_cfg, resolve, info_of, cancel, report, warm)
        except Exception as exc2:
            stage2 = getattr(exc2, _STAGE, "prepare")
            if stage2 == "prepare" or isinstance(exc2, BackendError):
                raise
            raise BackendError(f"model.backend: auto: the fallback {sel.backend} could not {stage2}: "
                               f"{type(exc2).__name__}: {exc2}") from exc2


_STAGE = "detectd_start_stage"  # the attribute naming the step an exception of _start came from


def _start(name: str, model_cfg: Any, resolve: Any, info_of: Any, cancel: Any,
           report: Callable[[str], None] | None,
           warm: Callable[[Backend, Any], None] | None) -> tuple[Backend, Any, Any]:
    """One attempt of :func:`start_backend`; an exception raised after preparation carries the
    step it failed in (attribute ``_STAGE``: ``start``, ``warm up``), and a backend created
    before the failure is closed (a GPU backend holds device memory and a context)."""
    path = resolve(int8_variant(name))
    info = info_of(path)
    try:
        backend = create_backend(name, path, info, model_cfg, cancel=cancel, report=report)
    except Exception as exc:
        setattr(exc, _STAGE, "start")
        raise
    try:
        if warm is not None:
            warm(backend, info)
    except BaseException as exc:
        try:
            backend.close()
        except Exception:  # the warm-up's error is the one to report
            log.debug("closing %s after a failed warm-up", name, exc_info=True)
        if isinstance(exc, Exception):
            setattr(exc, _STAGE, "warm up")
        raise
    return backend, path, info
