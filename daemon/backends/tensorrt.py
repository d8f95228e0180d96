"""The TensorRT backend: build (or load from the engine cache), warm up, run N in-flight slots.

Kept thin and written against TensorRT's documented Python API, 10.x and 11.x:

- build: ``trt.Builder`` -> ``create_network(flags)`` -> ``trt.OnnxParser.parse`` ->
  ``create_builder_config`` (one optimization profile over batch 1..max_batch, a persisted
  timing cache via ``create_timing_cache``/``set_timing_cache``, an ``IProgressMonitor`` where the
  version has it) -> ``build_serialized_network``. Precision (:func:`build_recipe`):
  TensorRT 11 only has strongly typed networks, so precision comes from the model itself: INT8
  from the Q/DQ ONNX (``detectd calibrate --target tensorrt``; a model without Q/DQ nodes is
  refused), FP16 from an FP16-cast copy of the FP32 ONNX (:func:`to_fp16_onnx`, which refuses
  Q/DQ models), FP32 from the FP32 ONNX. TensorRT 10 builds the INT8 Q/DQ model strongly typed
  too (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, present in every 10.x; 10.12 deprecates
  weak typing), falling back to explicit quantization in a weakly typed network
  (``BuilderFlag.INT8`` + ``FP16``) only where the flag is missing; FP16 with
  ``BuilderFlag.FP16``. The recipe (typing, flags, FP16 transform version) is part of the
  engine cache key. A timing cache TensorRT rejects is deleted and replaced by an empty one.
  ``cancel`` (a ``threading.Event``, e.g. the daemon's stop event) makes the progress monitor's
  ``step_complete`` return False, which abandons the build (:class:`BuildCancelled`).
- load: ``trt.Runtime.deserialize_cuda_engine`` through :class:`EngineCache` (a None there is a
  cache miss and a rebuild); then one warm-up inference before the daemon reports ready.
- run: per slot, ``create_execution_context`` with ``set_tensor_address`` bound once to that
  slot's device buffers, then per batch ``set_input_shape`` + ``execute_async_v3(stream)``; the
  copies, the GPU letterbox and the completion events are :class:`GpuPipeline`'s.
- TensorRT's logger goes to Python logging (``daemon.backends.tensorrt.trt``).

Failing safe (docs/gpu.md): TensorRT < 10 is refused (``_trt``); the letterbox kernel is compiled
before an engine is built or loaded; a Q/DQ model is never built as fp32/fp16
(:func:`check_float_model`); ``set_timing_cache``'s result and a None ``get_timing_cache`` are
handled; the engine's input must be float32 LINEAR (:func:`check_io_format`); ``close`` releases
the execution contexts before the buffers they are bound to, then the engine and runtime.

What ran where: docs/gpu.md. TensorRT cannot be installed on this project's
machines, so this module's TensorRT calls have run only where ``tensorrt`` imports.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.backends.base import BackendError
from daemon.backends.engine_cache import EngineCache, EngineKey, atomic_write_bytes, default_engine_dir, sha256_file
from daemon.errors import Cancelled

log = logging.getLogger(__name__)
trt_log = logging.getLogger(__name__ + ".trt")

__all__ = ["BuildCancelled", "BuildRecipe", "TensorRTBackend", "build_engine", "build_recipe",
           "check_int8_model", "create_tensorrt_backend", "engine_key", "load_timing_cache",
           "to_fp16_onnx"]

# What the engine's input is fed with: part of the engine cache key (daemon.vision.gpu_letterbox).
PREPROCESS = {"layout": "NCHW", "colour": "RGB", "scale": "1/255", "pad": 0.5,
              "resize": "swscale-bilinear-tent", "kernel": "letterbox_u8rgb_to_f32nchw/1",
              "yuv": "bt601-limited/letterbox_yuv420_to_f32nchw/1"}

# Bumped whenever to_fp16_onnx changes what it writes: part of the engine cache key.
FP16_TRANSFORM_VERSION = 2


@dataclass(frozen=True)
class BuildRecipe:
    strongly_typed: bool
    flags: tuple[str, ...]  # trt.BuilderFlag member names to set
    onnx_transform: str | None  # "fp16": build from an FP16-cast copy of the model


    def to_dict(self) -> dict[str, Any]:
        """The recipe as it goes into the engine cache key."""
        return {"strongly_typed": self.strongly_typed, "flags": sorted(self.flags),
                "onnx_transform": self.onnx_transform,
                "fp16_transform_version": FP16_TRANSFORM_VERSION if self.onnx_transform == "fp16" else None}


def build_recipe(trt_major: int, precision: str, strongly_typed_available: bool = True) -> BuildRecipe:
    """How to get ``precision`` out of TensorRT ``trt_major`` (see the module docstring).

    ``strongly_typed_available``: whether ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
    exists (every 10.x release has it; pass ``hasattr(...)``). INT8 from a Q/DQ model is built
    strongly typed wherever it can be: TensorRT 10.12 deprecates weakly typed networks and the
    INT8/FP16 builder flags, and 11 removes them; in a strongly typed network the Q/DQ pairs
    fix the INT8 layers and every other layer keeps the model's FP32. Only a 10.x without the
    flag falls back to the weakly typed recipe (``BuilderFlag.INT8`` + ``FP16``).
    """
    if precision not in ("int8", "fp16", "fp32"):
        raise ValueError(f"precision must be int8, fp16 or fp32, got {precision!r}")
    if trt_major >= 11:
        return BuildRecipe(True, (), "fp16" if precision == "fp16" else None)
    if trt_major == 10:
        if precision == "int8" and strongly_typed_available:
            return BuildRecipe(True, (), None)
        flags = {"int8": ("INT8", "FP16"), "fp16": ("FP16",), "fp32": ()}[precision]
        return BuildRecipe(False, flags, None)
    raise ValueError(f"TensorRT {trt_major}.x is not supported (10.x or 11.x needed)")


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def qdq_node_count(model: Any) -> int:
    """How many QuantizeLinear/DequantizeLinear nodes an ONNX ``ModelProto`` has (main graph)."""
    return sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)


def check_int8_model(onnx_path: Path, data: bytes | None = None) -> None:
    """Refuse an INT8 build from a model without Q/DQ nodes: TensorRT would build it in float
    (strongly typed) or fail (11.x has no calibrator), and the cache would call it int8."""
    import onnx

    model = onnx.load_from_string(data if data is not None else Path(onnx_path).read_bytes())
    if qdq_node_count(model) == 0:
        raise BackendError(
            f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes, so TensorRT cannot build "
            "an INT8 engine from it: build int8 from the Q/DQ model of `detectd calibrate "
            "--target tensorrt` (what `detectd build-engine` picks without --onnx), or use "
            "--precision fp16/fp32 with this model")


def check_float_model(onnx_path: Path, precision: str, data: bytes | None = None) -> None:
    """Refuse an fp32/fp16 build from a Q/DQ model: its Q/DQ pairs make the network INT8 (a
    strongly typed network -- TensorRT 11's only kind -- computes what the model says), so the
    engine would be INT8 while the cache key and the logs say ``precision``."""
    import onnx

    model = onnx.load_from_string(data if data is not None else Path(onnx_path).read_bytes())
    if qdq_node_count(model):
        raise BackendError(
            f"{onnx_path} is an INT8 model (it has QuantizeLinear/DequantizeLinear nodes): TensorRT "
            f"would build it as INT8, not {precision}. Use --precision int8 with it, or build "
            f"{precision} from the FP32 model (`detectd export-onnx`)")


def to_fp16_onnx(model_bytes: bytes) -> bytes:
    """An FP16 copy of an FP32 ONNX model with FP32 inputs/outputs (Casts at the edges), for
    strongly typed builds. Float initializers become float16 except the ones an operator needs
    in float32 (``Resize`` scales/roi). Runs in ONNX Runtime too, which is how it is tested."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    if qdq_node_count(model):
        raise ValueError("to_fp16_onnx: the model has QuantizeLinear/DequantizeLinear nodes (an "
                         "INT8 Q/DQ model); an FP16 engine is built from the FP32 model, not a Q/DQ one")
    g = model.graph
    keep32: set[str] = set()
    for node in g.node:
        if node.op_type in ("Resize", "Upsample"):
            keep32.update(node.input[1:])
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT and node.output[0] not in keep32:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
    float_inputs = {i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    float_outputs = [o.name for o in g.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    rename = {n: f"{n}__fp16" for n in float_inputs}
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    out_rename = {n: f"{n}__fp16" for n in float_outputs}
    for node in g.node:
        for k, name in enumerate(node.output):
            if name in out_rename:
                node.output[k] = out_rename[name]
        for k, name in enumerate(node.input):
            if name in out_rename:
                node.input[k] = out_rename[name]
    casts_in = [helper.make_node("Cast", [n], [rename[n]], to=TensorProto.FLOAT16, name=f"{n}_to_fp16")
                for n in float_inputs]
    casts_out = [helper.make_node("Cast", [out_rename[n]], [n], to=TensorProto.FLOAT, name=f"{n}_to_fp32")
                 for n in float_outputs]
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float32 annotations; shapes are re-inferred by the consumer
    return model.SerializeToString()


# ------------------------------------------------------------------------------------------------
# TensorRT glue (only runs where ``tensorrt`` imports)
# ------------------------------------------------------------------------------------------------


def _trt() -> Any:
    from daemon.backends.select import tensorrt_version_reason

    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed: `pip install 'detectd[gpu]'` on a machine "
            f"with an NVIDIA GPU, or use model.backend: onnxruntime ({exc})") from exc
    too_old = tensorrt_version_reason(str(getattr(trt, "__version__", "0")))
    if too_old:
        raise BackendError(f"model.backend: tensorrt: {too_old}")
    return trt


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging (TensorRT's INFO is chatty: DEBUG)."""
    S = trt.ILogger.Severity
    levels = {S.INTERNAL_ERROR: logging.CRITICAL, S.ERROR: logging.ERROR,
              S.WARNING: logging.WARNING, S.INFO: logging.DEBUG, S.VERBOSE: logging.DEBUG}

    class PythonLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            trt_log.log(levels.get(severity, logging.INFO), "%s", msg)

    return PythonLogger()


def make_progress_monitor(trt: Any, report: Callable[[str], None],
                          cancel: threading.Event | None = None) -> Any | None:
    """An ``IProgressMonitor`` (TensorRT >= 10.0) reporting phases and steps; returning False
    from ``step_complete`` cancels the build (used on shutdown)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._steps[phase_name] = num_steps
            report(f"build: {phase_name} ({num_steps} steps)" if parent_phase is None
                   else f"build:   {parent_phase} > {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._steps.get(phase_name, 0)
            if total >= 10 and (step + 1) % max(1, total // 10) == 0:
                report(f"build:   {phase_name} {step + 1}/{total}")
            return not (cancel is not None and cancel.is_set())

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._steps.pop(phase_name, None)

    return Progress()


class BuildCancelled(BackendError, Cancelled):
    """The build was cancelled through the ``cancel`` event (a stop request): nothing cached."""


def recipe_for(trt: Any, precision: str) -> BuildRecipe:
    return build_recipe(_major(trt), precision,
                        hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """``config.create_timing_cache`` from ``path``; a file TensorRT rejects (truncated, from
    another version) is logged, deleted and replaced by an empty cache, so a bad cache costs
    build time, never the build."""
    data = b""
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read the TensorRT timing cache %s (%s): starting empty", path, exc)
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as exc:  # TensorRT raises RuntimeError/TypeError variants
            cache, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "TensorRT returned no cache"
        if cache is not None:
            log.info("TensorRT timing cache loaded: %s (%d bytes)", path, len(data))
            return cache
        log.warning("TensorRT timing cache %s is unusable (%s): deleted, starting with an empty one",
                    path, why)
        try:
            assert path is not None
            path.unlink()
        except OSError:
            pass
    return config.create_timing_cache(b"")


def build_engine(onnx_path: Path, precision: str, max_batch: int, *, timing_cache: Path | None = None,
                 opt_batch: int | None = None, report: Callable[[str], None] = log.info,
                 cancel: threading.Event | None = None, logger: Any = None) -> bytes:
    """Build a serialized plan from ``onnx_path`` (see :func:`build_recipe`)."""
    trt = _trt()
    logger = logger or make_logger(trt)
    recipe = recipe_for(trt, precision)
    data = Path(onnx_path).read_bytes()
    if precision == "int8":
        check_int8_model(onnx_path, data)
    else:
        check_float_model(onnx_path, precision, data)
    if recipe.onnx_transform == "fp16":
        data = to_fp16_onnx(data)
    if cancel is not None and cancel.is_set():
        raise BuildCancelled(f"engine build from {onnx_path} cancelled before it started")
    builder = trt.Builder(logger)
    flags = 0
    if recipe.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for name in recipe.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        c, h, w = tuple(t.shape)[1:]
        if min(c, h, w) < 1:
            raise BackendError(f"input {t.name} needs fixed C, H, W; got {tuple(t.shape)}")
        opt = opt_batch or max_batch
        profile.set_shape(t.name, (1, c, h, w), (opt, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    cache = load_timing_cache(config, timing_cache)
    if not config.set_timing_cache(cache, False):
        # The cache does not match this TensorRT/device: build without it (slower, same engine).
        log.warning("TensorRT did not accept the timing cache %s (another version or GPU?): building "
                    "with an empty one", timing_cache)
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            log.warning("TensorRT refused an empty timing cache too: building without one")
    monitor = make_progress_monitor(trt, report, cancel)
    if monitor is not None:
        config.progress_monitor = monitor
    elif cancel is not None:
        log.warning("TensorRT %s has no IProgressMonitor: a stop request cannot interrupt the "
                    "build, it takes effect when the build ends", trt.__version__)
    report(f"building a TensorRT {trt.__version__} {precision} engine from {Path(onnx_path).name} "
           f"(batch 1..{max_batch}); this takes a minute or more the first time")
    plan = builder.build_serialized_network(network, config)
    if cancel is not None and cancel.is_set():
        # step_complete returned False: TensorRT abandons the build and returns None.
        raise BuildCancelled(f"engine build from {onnx_path} cancelled (stop requested)")
    if plan is None:
        raise BackendError(f"TensorRT could not build an engine from {onnx_path} (see the log above)")
    if timing_cache is not None:
        used = config.get_timing_cache()  # None when no cache was attached
        if used is None:
            log.warning("TensorRT has no timing cache to save: the next build starts from scratch")
        else:
            atomic_write_bytes(timing_cache, bytes(memoryview(used.serialize())))
    return bytes(memoryview(plan))


def engine_key(onnx_path: Path, precision: str, max_batch: int, width: int, height: int,
               trt_version: str, gpu_name: str, compute_capability: str,
               recipe: BuildRecipe | None = None) -> EngineKey:
    """The cache key; ``recipe`` (default: the one for ``trt_version``, strongly typed available)
    goes in too, so a change of build flags or of the FP16 transform never reuses a plan."""
    if recipe is None:
        recipe = build_recipe(int(trt_version.split(".")[0]), precision)
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path), tensorrt_version=trt_version, gpu_name=gpu_name,
        compute_capability=compute_capability, precision=precision, max_batch=max_batch,
        preprocess={**PREPROCESS, "width": width, "height": height}, model_name=Path(onnx_path).stem,
        build=recipe.to_dict())


class _ContextExecutor:
    """One slot's execution context, its tensor addresses bound to that slot's buffers."""

    def __init__(self, engine: Any, input_name: str, output_names: Sequence[str], slot: Any,
                 chw: tuple[int, int, int]) -> None:
        self.ctx = engine.create_execution_context()
        if self.ctx is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self.input_name, self.chw = input_name, chw
        self.ctx.set_tensor_address(input_name, slot.input_ptr)
        for name, ptr in zip(output_names, slot.output_ptrs):
            self.ctx.set_tensor_address(name, ptr)
        self._batch = 0

    def execute(self, stream: Any, batch: int) -> None:
        if batch != self._batch:
            if not self.ctx.set_input_shape(self.input_name, (batch, *self.chw)):
                raise BackendError(f"batch {batch} is outside the engine's optimization profile")
            self._batch = batch
        if not self.ctx.execute_async_v3(_stream_handle(stream)):
            raise BackendError("execute_async_v3 failed (see the TensorRT log)")

    def close(self) -> None:
        """Release the execution context (before the buffers it is bound to are freed)."""
        self.ctx = None


def _stream_handle(stream: Any) -> int:
    try:
        return int(stream)
    except TypeError:
        return int(stream.getPtr())


def check_io_format(trt: Any, engine: Any, name: str) -> None:
    """The GPU letterbox writes float32 NCHW (linear): refuse an engine whose input is anything
    else (an engine built elsewhere with reformat-free I/O, e.g. FP16 or CHW32 input)."""
    dtype = engine.get_tensor_dtype(name)
    if dtype != trt.DataType.FLOAT:
        raise BackendError(f"the engine's input {name!r} is {dtype}, not float32: detectd feeds float32 "
                           "NCHW; rebuild the engine with `detectd build-engine`")
    fmt = engine.get_tensor_format(name) if hasattr(engine, "get_tensor_format") else trt.TensorFormat.LINEAR
    if fmt != trt.TensorFormat.LINEAR:
        raise BackendError(f"the engine's input {name!r} has format {fmt}, not LINEAR (NCHW): rebuild "
                           "the engine with `detectd build-engine`")


class TensorRTBackend:
    """``Backend`` + ``infer_frames``; ``submit_frames``/``collect`` for callers that pipeline."""

    name = "tensorrt"
    # Reads decoder surfaces where they are: NVDEC frames (format "cuda") go to submit_yuv as
    # they are, so ``decode: auto`` picks NVDEC for it (Detector.device_frames).
    device_frames = True

    def __init__(self, engine: Any, precision: str, max_batch: int, width: int, height: int,
                 input_name: str, output_names: Sequence[str], device: Any, num_slots: int = 2,
                 letterbox: Any = None) -> None:
        from daemon.backends.cuda import GpuPipeline, OutputSpec

        trt = _trt()
        self.engine, self.precision, self.max_batch = engine, precision, max_batch
        self.width, self.height = width, height
        self.output_names = list(output_names)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [input_name] or set(self.output_names) - set(names):
            raise BackendError(f"engine tensors {names} do not match the model ({input_name}, {output_names})")
        check_io_format(trt, engine, input_name)
        # Output sizes at max batch: ask a context, since they depend on the input shape.
        probe = engine.create_execution_context()
        if probe is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        if not probe.set_input_shape(input_name, (max_batch, 3, height, width)):
            raise BackendError(f"batch {max_batch} is outside the engine's optimization profile")
        specs = []
        for n in self.output_names:
            shape = tuple(probe.get_tensor_shape(n))
            dtype = trt.nptype(engine.get_tensor_dtype(n))
            specs.append(OutputSpec(n, shape[1:], dtype))
        del probe
        chw = (3, height, width)
        self.pipeline = GpuPipeline(
            device, width, height, max_batch, specs,
            lambda slot: _ContextExecutor(engine, input_name, self.output_names, slot, chw), num_slots,
            letterbox=letterbox)

    # The completion interface of pipelined backends (GpuPipeline.set_on_complete / ready).
    def set_on_complete(self, callback: Callable[[], None] | None) -> None:
        self.pipeline.set_on_complete(callback)

    def ready(self, ticket: Any) -> bool:
        return self.pipeline.ready(ticket)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Letterboxed float32 NCHW -> raw head outputs; chunks of max_batch use alternating slots."""
        outs: list[list[np.ndarray]] = []
        in_flight: list[Any] = []
        for i in range(0, batch.shape[0], self.max_batch):
            if len(in_flight) >= self.pipeline.ring.n:
                outs.append(self.pipeline.collect(in_flight.pop(0)))
            in_flight.append(self.pipeline.submit_batch(batch[i:i + self.max_batch], timeout=None))
        outs.extend(self.pipeline.collect(t) for t in in_flight)
        return [np.concatenate([o[k] for o in outs]) for k in range(len(self.output_names))]

    def submit_frames(self, images: Sequence[np.ndarray], infos: Sequence[Any], tags: Sequence[Any] | None = None) -> Any:
        return self.pipeline.submit_frames(images, infos, tags, timeout=None)

    def collect(self, ticket: Any) -> list[np.ndarray]:
        return self.pipeline.collect(ticket)

    def submit_yuv(self, frames: Sequence[Any], infos: Sequence[Any] | None = None,
                   tags: Sequence[Any] | None = None) -> Any:
        """Decoded PyAV frames (yuv420p/nv12 planes go to the GPU as they are; other formats via
        RGB24) -> a ticket; see :meth:`GpuPipeline.submit_yuv`. Blocks while every slot is in
        flight."""
        return self.pipeline.submit_yuv(frames, infos, tags, timeout=None)

    def infer_frames(self, images: Sequence[Any], infos: Sequence[Any] | None = None
                     ) -> list[list[np.ndarray]]:
        """Decoded frames -> per frame, its head outputs (each with batch dimension 1). Frames
        are PyAV ``VideoFrame``s (the YUV kernel for yuv420p/nv12, RGB otherwise) or RGB uint8
        arrays; ``infos`` may be None (computed). Chunks of ``max_batch`` go to alternating
        slots, so chunk k+1 copies while k computes."""
        chunks = [range(i, min(i + self.max_batch, len(images))) for i in range(0, len(images), self.max_batch)]
        results: list[list[np.ndarray]] = []
        in_flight: list[tuple[Any, range]] = []
        for ch in chunks:
            if len(in_flight) >= self.pipeline.ring.n:
                t, r = in_flight.pop(0)
                results.extend(_split(self.collect(t), len(r)))
            sub_infos = None if infos is None else [infos[i] for i in ch]
            in_flight.append((self.pipeline.submit_yuv([images[i] for i in ch], sub_infos, None, timeout=None), ch))
        for t, r in in_flight:
            results.extend(_split(self.collect(t), len(r)))
        return results

    def close(self) -> None:
        """Contexts and buffers first (GpuPipeline.close), then the engine, then the runtime,
        then the retained primary context (``CudaDevice.close``)."""
        self.pipeline.close()
        self.engine = None
        for attr in ("_runtime", "_logger"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        self.pipeline.device.close()


def _split(outputs: list[np.ndarray], n: int) -> list[list[np.ndarray]]:
    return [[o[i:i + 1] for o in outputs] for i in range(n)]


def create_tensorrt_backend(model_path: Any, info: Any, model_cfg: Any, *, num_slots: int = 2,
                            report: Callable[[str], None] = log.info,
                            cancel: threading.Event | None = None) -> TensorRTBackend:
    """Load the engine for this model from the cache, building it on a miss (not warmed up:
    :meth:`daemon.detector.Detector.open` does that, once, for every backend).

    ``model_path`` is the ONNX file to build from: the Q/DQ model (``target="tensorrt"``) for
    ``int8`` (a model without Q/DQ nodes is refused), the FP32 model for ``fp16``/``fp32``.
    ``cancel``: set it (the daemon passes its stop event) to abandon a build in progress through
    TensorRT's progress monitor; :class:`BuildCancelled` is raised and nothing is cached.
    """
    from daemon.backends.cuda import CudaDevice, CudaError, cuda_unavailable_reason
    from daemon.vision.gpu_letterbox import GpuLetterbox

    trt = _trt()
    why = cuda_unavailable_reason()
    if why:
        raise BackendError(f"model.backend: tensorrt needs a CUDA GPU: {why}")
    try:
        device = CudaDevice(int(os.environ.get("DETECTD_CUDA_DEVICE", "0")))
    except CudaError as exc:
        raise BackendError(f"model.backend: tensorrt cannot start the GPU pipeline: {exc}") from exc
    letterbox: Any = None
    try:
        try:
            # The kernel before the engine: without NVRTC this fails now, not after a minutes-long build.
            letterbox = GpuLetterbox(device)
        except CudaError as exc:
            raise BackendError(f"model.backend: tensorrt cannot start the GPU pipeline: {exc}") from exc
        backend = _load_engine(trt, device, letterbox, model_path, info, model_cfg, num_slots, report, cancel)
    except BaseException:
        # A failed or cancelled load/build: the kernel tables and the retained primary context
        # are released here (on success the backend owns them and close() releases them).
        if letterbox is not None:
            letterbox.close()
        device.close()
        raise
    # No warm-up here: daemon.detector.Detector.open warms every backend once (READY waits).
    return backend


def _load_engine(trt: Any, device: Any, letterbox: Any, model_path: Any, info: Any, model_cfg: Any,
                 num_slots: int, report: Callable[[str], None],
                 cancel: threading.Event | None) -> TensorRTBackend:
    """The engine from the cache (or built) and the backend around it; the caller releases
    ``letterbox`` and ``device`` when this raises."""
    onnx_path = Path(model_path)
    max_batch = int(getattr(model_cfg, "max_batch", 1))
    precision = str(getattr(model_cfg, "precision", "fp32"))
    if cancel is not None and cancel.is_set():
        raise BuildCancelled("stop requested before the TensorRT engine was loaded")
    key = engine_key(onnx_path, precision, max_batch, info.width, info.height,
                     str(trt.__version__), device.name, device.compute_capability,
                     recipe_for(trt, precision))
    cache = EngineCache(default_engine_dir(getattr(model_cfg, "cache_dir", None)))
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)

    loaded = cache.load_or_build(
        key,
        lambda: build_engine(onnx_path, precision, max_batch, timing_cache=cache.timing_cache_path(key),
                             report=report, cancel=cancel, logger=logger),
        runtime.deserialize_cuda_engine,
    )
    report(f"TensorRT engine {'built' if loaded.built else 'loaded'}: {loaded.plan_path}")
    backend = TensorRTBackend(loaded.engine, precision, max_batch, info.width, info.height,
                              info.input_name, info.output_names, device, num_slots, letterbox)
    backend._runtime = runtime  # type: ignore[attr-defined]  # outlives the engine
    backend._logger = logger  # type: ignore[attr-defined]
    return backend
