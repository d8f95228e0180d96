"""The GPU path fails safe, tested on this machine (no GPU, no TensorRT, no NVRTC): NVRTC
missing, TensorRT too old, a GPU backend that does not start under ``auto`` and when asked for,
the engine build's checks (timing cache results, Q/DQ model at fp32, the input's dtype/format),
an executor that fails, and NVDEC decoding falling back to the CPU with its reason exported.

TensorRT cannot be installed here, so where TensorRT itself must answer, a TEST DOUBLE stands in:
``TensorRTDouble`` (a module object installed as ``tensorrt`` for one test), implementing only
the calls the code under test makes, with the documented signatures. Nothing else is doubled:
the NVRTC probe, the CUDA probe, PyAV, the decoder, the model and the CPU backends are real.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.backends.base import BackendError


class TensorRTDouble(types.ModuleType):
    """TEST DOUBLE of the ``tensorrt`` module (not TensorRT): version, enums, and a builder chain
    that records what it was asked. ``accept_timing_cache``/``has_timing_cache`` script what
    ``IBuilderConfig.set_timing_cache`` returns and whether ``get_timing_cache`` gives None;
    ``build_fails``: ``build_serialized_network`` returns None, as TensorRT does on a failed build."""

    def __init__(self, version: str, accept_timing_cache: bool = True, has_timing_cache: bool = True,
                 build_fails: bool = False) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[str] = []
        double = self

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        severity = Severity

        class ILogger:
            Severity = severity

            def __init__(self) -> None:
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class BuilderFlag:
            INT8, FP16 = 2, 0

        class DataType:
            FLOAT, HALF, INT8 = "FLOAT", "HALF", "INT8"

        class TensorFormat:
            LINEAR, CHW32 = "LINEAR", "CHW32"

        class TimingCache:
            def serialize(self) -> bytes:
                return b"timing"

        class Config:
            progress_monitor = None

            def set_flag(self, flag: Any) -> None:
                double.calls.append(f"set_flag {flag}")

            def add_optimization_profile(self, profile: Any) -> int:
                return 0

            def create_timing_cache(self, data: bytes) -> TimingCache:
                return TimingCache()

            def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
                double.calls.append("set_timing_cache")
                return accept_timing_cache

            def get_timing_cache(self) -> TimingCache | None:
                return TimingCache() if has_timing_cache else None

        class Input:
            name, shape = "images", (-1, 3, 416, 416)

        class Network:
            num_inputs = 1

            def get_input(self, i: int) -> Input:
                return Input()

        class Profile:
            def set_shape(self, name: str, *shapes: Any) -> None:
                pass

        class Builder:
            def __init__(self, logger: Any) -> None:
                double.calls.append("Builder")

            def create_network(self, flags: int) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Any, config: Any) -> bytes:
                double.calls.append("build_serialized_network")
                return None if build_fails else b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Any, logger: Any) -> None:
                pass

            def parse(self, data: bytes, path: str) -> bool:
                return True

        class Runtime:
            def __init__(self, logger: Any) -> None:
                double.calls.append("Runtime")

            def deserialize_cuda_engine(self, plan: bytes) -> Any:
                double.calls.append("deserialize_cuda_engine")
                return None

        for name, obj in dict(locals()).items():
            if isinstance(obj, type):
                setattr(self, name, obj)


@pytest.fixture
def trt_double(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(version: str, **kw: Any) -> TensorRTDouble:
        double = TensorRTDouble(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", double)
        return double

    return install


def _onnx(path: Path, qdq: bool) -> Path:
    """A tiny real ONNX model: Identity, or a QuantizeLinear/DequantizeLinear pair."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])
    if qdq:
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.02]),
                 helper.make_tensor("z", TensorProto.INT8, [], [0])]
        nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"])]
    else:
        inits, nodes = [], [helper.make_node("Identity", ["images"], ["out"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


# --- NVRTC and TensorRT probes ----------------------------------------------------------------


def test_nvrtc_missing_is_named_and_keeps_auto_off_the_gpu(trt_double: Any) -> None:
    """This machine has no NVRTC (nor cuda-python): the real probe says so, and ``auto`` does not
    pick TensorRT even where a GPU and a usable TensorRT (the double, 10.x) would be present."""
    from daemon.backends.cuda import nvrtc_unavailable_reason
    from daemon.backends.select import probe_tensorrt, select_backend

    why = nvrtc_unavailable_reason()
    if why is None:
        pytest.skip("NVRTC loads here")
    assert "NVRTC" in why
    trt_double("10.13.0")
    assert "NVRTC" in (probe_tensorrt() or "")
    sel = select_backend("auto", gpu_probe=lambda: None, openvino_probe=lambda: "no openvino")
    assert sel.backend == "onnxruntime" and "NVRTC" in sel.reason


def test_tensorrt_too_old_is_refused_by_auto_and_explicitly(trt_double: Any) -> None:
    from daemon.backends.select import probe_tensorrt, select_backend
    from daemon.backends.tensorrt import _trt

    trt_double("8.6.1")
    assert "8.6.1 is too old" in (probe_tensorrt() or "")
    sel = select_backend("auto", gpu_probe=lambda: None, openvino_probe=lambda: "no openvino")
    assert sel.backend == "onnxruntime" and "8.6.1 is too old" in sel.reason
    with pytest.raises(BackendError, match="model.backend: tensorrt: TensorRT 8.6.1 is too old.*10 or newer"):
        _trt()


def test_explicit_tensorrt_without_a_gpu_is_a_clear_error_and_builds_nothing(trt_double: Any,
                                                                            fp32_onnx: Path) -> None:
    from daemon.backends import create_backend
    from daemon.config import ModelConfig
    from daemon.models.info import ModelInfo

    double = trt_double("10.13.0")
    with pytest.raises(BackendError, match="model.backend: tensorrt needs a CUDA GPU"):
        create_backend("tensorrt", fp32_onnx, ModelInfo.from_onnx(fp32_onnx),
                       ModelConfig(backend="tensorrt", precision="fp32"))
    assert "Builder" not in double.calls and "build_serialized_network" not in double.calls


def test_auto_falls_back_to_the_cpu_when_the_gpu_backend_fails_to_start(
        trt_double: Any, fp32_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``auto`` chose TensorRT (as on a GPU machine); starting it fails (here: no GPU): the
    daemon gets the CPU backend and a WARNING with the cause. Asked for explicitly: an error."""
    from daemon.backends import start_backend
    from daemon.config import ModelConfig
    from daemon.models.info import ModelInfo

    trt_double("10.13.0")
    cfg = ModelConfig(backend="auto", precision="fp32", threads=1)
    targets: list[str] = []

    def resolve(target: str) -> Path:
        targets.append(target)
        return fp32_onnx

    with caplog.at_level(logging.WARNING, logger="daemon.backends"):
        backend, path, info = start_backend("auto", cfg, resolve, ModelInfo.from_onnx,
                                            choose=lambda req: ("tensorrt", "test: as on a GPU machine"))
    try:
        assert backend.name in ("onnxruntime", "openvino")
        out = backend.infer(np.full((1, 3, info.height, info.width), 0.5, np.float32))
        assert out and out[0].shape[0] == 1
    finally:
        backend.close()
    assert targets == ["tensorrt", "cpu"]  # the CPU backend's own INT8 variant is resolved anew
    assert "tensorrt failed to start" in caplog.text and "needs a CUDA GPU" in caplog.text
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        start_backend("tensorrt", ModelConfig(backend="tensorrt", precision="fp32"), resolve,
                      ModelInfo.from_onnx, choose=lambda req: ("tensorrt", "set by model.backend"))


class _TensorRTBackendDouble:
    """TEST DOUBLE of a started TensorRT backend (no GPU here) whose first inference fails the
    way a GPU can at warm-up (a kernel launch error, out of memory); it records ``close``."""

    name, precision, max_batch = "tensorrt", "fp32", 1

    def __init__(self) -> None:
        self.closed = False

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        raise RuntimeError("TEST DOUBLE: cuLaunchKernel failed: CUDA_ERROR_LAUNCH_FAILED")

    def close(self) -> None:
        self.closed = True


def test_a_gpu_backend_failing_its_warm_up_falls_back_under_auto_and_is_an_error_when_asked_for(
        monkeypatch: pytest.MonkeyPatch, fp32_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through ``Detector.open`` (the daemon's start-up): ``auto`` picks TensorRT (as on a GPU
    machine), the engine loads, the warm-up fails: the GPU backend is closed and the CPU backend
    serves, with a WARNING naming the step and the cause. ``model.backend: tensorrt``: an error."""
    import daemon.backends as backends
    import daemon.backends.tensorrt as tensorrt
    from daemon.config import ModelConfig
    from daemon.detector import Detector

    started: list[_TensorRTBackendDouble] = []

    def create(*args: Any, **kw: Any) -> _TensorRTBackendDouble:
        started.append(_TensorRTBackendDouble())
        return started[-1]

    monkeypatch.setattr(tensorrt, "create_tensorrt_backend", create)
    monkeypatch.setattr(backends, "choose_backend", lambda req: ("tensorrt", "test: as on a GPU machine"))
    with caplog.at_level(logging.WARNING, logger="daemon.backends"):
        det = Detector.open(ModelConfig(backend="auto", precision="fp32", threads=1), model_path=fp32_onnx,
                            progress=False)
    try:
        assert det.backend.name in ("onnxruntime", "openvino") and not det.device_frames
        assert det.backend.infer(np.full((1, 3, det.info.height, det.info.width), 0.5, np.float32))
    finally:
        det.backend.close()
    assert len(started) == 1 and started[0].closed
    assert "tensorrt failed to warm up" in caplog.text and "CUDA_ERROR_LAUNCH_FAILED" in caplog.text
    with pytest.raises(BackendError, match="model.backend: tensorrt could not warm up.*CUDA_ERROR_LAUNCH_FAILED"):
        Detector.open(ModelConfig(backend="tensorrt", precision="fp32"), model_path=fp32_onnx, progress=False)
    assert len(started) == 2 and started[1].closed


def test_decode_auto_follows_the_backends_device_frames_capability(fp32_onnx: Path) -> None:
    """``Detector.device_frames`` (what the daemon hands ``nvdec.set_gpu_backend``) comes from the
    backend's ``device_frames`` attribute on a frame-pipelined backend, not from its name."""
    from daemon.config import ModelConfig
    from daemon.detector import Detector
    from daemon.models.info import ModelInfo

    class FrameBackend(_TensorRTBackendDouble):
        """TEST DOUBLE of a frame-pipelined GPU backend (the ``FramePipelinedBackend`` calls)."""

        name = "some-gpu"

        def __init__(self, device_frames: bool) -> None:
            super().__init__()
            self.device_frames = device_frames

        def submit_yuv(self, frames: Any, infos: Any = None, tags: Any = None) -> Any:
            return 0

        def collect(self, ticket: Any) -> list[np.ndarray]:
            return []

    info = ModelInfo.from_onnx(fp32_onnx)
    assert Detector(FrameBackend(True), info, ModelConfig()).device_frames
    assert not Detector(FrameBackend(False), info, ModelConfig()).device_frames
    assert not Detector(_TensorRTBackendDouble(), info, ModelConfig()).device_frames  # sync, named tensorrt


class _CudaDeviceDouble:
    """TEST DOUBLE of ``CudaDevice`` (no GPU here): identity for the engine key, ``close``
    (the release of the retained primary context) recorded."""

    name, compute_capability = "TEST DOUBLE GPU", "9.0"

    def __init__(self, ordinal: int = 0) -> None:
        self.released = 0

    def close(self) -> None:
        self.released += 1


class _GpuLetterboxDouble:
    """TEST DOUBLE of ``GpuLetterbox`` (NVRTC and a GPU are absent here): ``close`` recorded."""

    made: list["_GpuLetterboxDouble"] = []

    def __init__(self, device: Any) -> None:
        self.device, self.closed = device, False
        self.made.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("how", ["build fails", "cancelled"])
def test_a_failed_or_cancelled_engine_build_releases_the_letterbox_and_the_context(
        trt_double: Any, monkeypatch: pytest.MonkeyPatch, fp32_onnx: Path, tmp_path: Path, how: str) -> None:
    """``create_tensorrt_backend`` compiles the kernel (letterbox) before the engine build; when
    the build then fails or is cancelled, the letterbox's device tables and the retained primary
    context are released, and nothing is cached."""
    import daemon.backends.cuda as cuda
    import daemon.vision.gpu_letterbox as gpu_letterbox
    from daemon.backends.tensorrt import BuildCancelled, create_tensorrt_backend
    from daemon.config import ModelConfig
    from daemon.models.info import ModelInfo

    double = trt_double("10.13.0", build_fails=how == "build fails")
    monkeypatch.setattr(cuda, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda, "CudaDevice", _CudaDeviceDouble)
    monkeypatch.setattr(gpu_letterbox, "GpuLetterbox", _GpuLetterboxDouble)
    monkeypatch.setattr(_GpuLetterboxDouble, "made", [])
    cancel = threading.Event()
    cfg = ModelConfig(backend="tensorrt", precision="fp32", cache_dir=str(tmp_path))
    if how == "cancelled":
        cancel.set()
        with pytest.raises(BuildCancelled):
            create_tensorrt_backend(fp32_onnx, ModelInfo.from_onnx(fp32_onnx), cfg, cancel=cancel)
        assert "build_serialized_network" not in double.calls
    else:
        with pytest.raises(BackendError, match="could not build an engine"):
            create_tensorrt_backend(fp32_onnx, ModelInfo.from_onnx(fp32_onnx), cfg, cancel=cancel,
                                    report=lambda line: None)
        assert "build_serialized_network" in double.calls
    (lb,) = _GpuLetterboxDouble.made
    assert lb.closed and lb.device.released == 1
    assert not list(tmp_path.rglob("*.plan")) and not list(tmp_path.rglob("*.engine"))


# --- the engine build's checks ----------------------------------------------------------------


def test_rejected_and_missing_timing_caches_are_handled(trt_double: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from daemon.backends.tensorrt import build_engine

    double = trt_double("10.13.0", accept_timing_cache=False, has_timing_cache=False)
    tc = tmp_path / "timing.cache"
    with caplog.at_level(logging.WARNING, logger="daemon.backends.tensorrt"):
        plan = build_engine(_onnx(tmp_path / "m.onnx", qdq=False), "fp32", 2, timing_cache=tc)
    assert plan == b"plan"
    assert double.calls.count("set_timing_cache") == 2  # the rejected one, then an empty one
    assert "did not accept the timing cache" in caplog.text
    assert "no timing cache to save" in caplog.text and not tc.exists()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_qdq_model_is_not_built_as_float(trt_double: Any, tmp_path: Path, precision: str) -> None:
    """TensorRT 11 builds every network strongly typed: a Q/DQ model asked for at fp32/fp16 would
    be an INT8 engine under a float cache key. Refused before TensorRT builds anything."""
    from daemon.backends.tensorrt import build_engine, engine_key

    double = trt_double("11.4.0")
    qdq = _onnx(tmp_path / "q.onnx", qdq=True)
    with pytest.raises(BackendError, match=f"INT8 model.*not {precision}"):
        build_engine(qdq, precision, 1)
    assert "build_serialized_network" not in double.calls
    assert build_engine(_onnx(tmp_path / "f.onnx", qdq=False), precision, 1) == b"plan"
    # int8 from the Q/DQ model is what it is, and keyed so
    assert build_engine(qdq, "int8", 1) == b"plan"
    k8 = engine_key(qdq, "int8", 1, 4, 4, "11.4.0", "GPU", "9.0")
    k32 = engine_key(qdq, "fp32", 1, 4, 4, "11.4.0", "GPU", "9.0")
    assert k8.digest() != k32.digest()


class _Engine:
    """TEST DOUBLE of a TensorRT engine's I/O description."""

    def __init__(self, dtype: str, fmt: str) -> None:
        self.dtype, self.fmt = dtype, fmt

    def get_tensor_dtype(self, name: str) -> str:
        return self.dtype

    def get_tensor_format(self, name: str) -> str:
        return self.fmt


@pytest.mark.parametrize("dtype,fmt,error", [("FLOAT", "LINEAR", None), ("HALF", "LINEAR", "not float32"),
                                             ("FLOAT", "CHW32", "not LINEAR")])
def test_engine_input_dtype_and_format_are_checked(trt_double: Any, dtype: str, fmt: str, error: str | None) -> None:
    from daemon.backends.tensorrt import check_io_format

    trt = trt_double("10.13.0")
    if error is None:
        check_io_format(trt, _Engine(dtype, fmt), "images")
    else:
        with pytest.raises(BackendError, match=f"'images'.*{error}"):
            check_io_format(trt, _Engine(dtype, fmt), "images")


def test_a_failing_execution_is_an_error_not_a_silent_result(trt_double: Any) -> None:
    """``execute_async_v3`` returning False (TEST DOUBLE context) raises; GpuPipeline._submit then
    syncs the slot's stream and frees the slot (run on the H200: tests/test_gpu_nvdec.py)."""
    from daemon.backends.tensorrt import _ContextExecutor

    class Ctx:
        def set_tensor_address(self, name: str, ptr: int) -> bool:
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            return True

        def execute_async_v3(self, stream: int) -> bool:
            return False

    class Engine:
        def create_execution_context(self) -> Ctx:
            return Ctx()

    ex = _ContextExecutor(Engine(), "images", ["out"], types.SimpleNamespace(input_ptr=16, output_ptrs=[32]), (3, 4, 4))
    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        ex.execute(7, 1)
    ex.close()
    assert ex.ctx is None


# --- NVDEC falls back to the CPU --------------------------------------------------------------


def test_decode_plan_branches() -> None:
    from daemon.sources.nvdec import plan

    ok = lambda: None  # noqa: E731
    assert plan("cpu").reason == "cpu_requested"
    assert plan("auto", gpu_backend=False).reason == "not_gpu_backend"
    assert plan("auto", True, gpu_probe=ok, pyav_probe=ok).decoder == "nvdec"
    assert plan("cuda", False, gpu_probe=ok, pyav_probe=ok).decoder == "nvdec"  # downloaded frames
    assert plan("cuda", True, gpu_probe=ok, pyav_probe=lambda: "no cuda").reason == "pyav_no_cuda"
    assert plan("cuda", True, gpu_probe=lambda: ("context", "flags"), pyav_probe=ok).reason == "context"
    real = plan("cuda", True)  # this machine: no GPU
    assert real.decoder == "cpu" and real.reason in ("no_gpu", "pyav_no_cuda")


@pytest.mark.parametrize("codec,w,h,has,reason", [
    ("h264", 1920, 1080, True, None), ("h264", 32, 32, True, "size"), ("h264", 4096, 2160, True, None),
    ("h264", 7680, 4320, True, "size"), ("hevc", 7680, 4320, True, None), ("prores", 1920, 1080, False, "codec"),
])
def test_nvdec_limits(codec: str, w: int, h: int, has: bool, reason: str | None) -> None:
    from daemon.sources.nvdec import stream_problem

    p = stream_problem(codec, w, h, has)
    assert (p.reason if p else None) == reason


class _Sink:
    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.got = threading.Event()

    def put(self, frame: Any, stop: threading.Event | None = None) -> bool:
        self.frames.append(frame.native.format.name)
        frame.native = None
        if len(self.frames) >= 3:
            self.got.set()
        return True

    def is_full(self, stream: str) -> bool:
        return False


def test_decode_cuda_without_a_gpu_decodes_on_the_cpu_and_says_why(demo_video: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry

    from daemon.config import StreamConfig
    from daemon.metrics import Metrics
    from daemon.sources.nvdec import plan
    from daemon.sources.pyav import StreamSource

    if plan("cuda", True).decoder == "nvdec":
        pytest.skip("NVDEC works here")
    metrics = Metrics(CollectorRegistry())
    sink = _Sink()
    with caplog.at_level(logging.WARNING, logger="daemon.sources.nvdec"):
        src = StreamSource(StreamConfig(id="cam", url=str(demo_video), decode="cuda"), sink, metrics,
                           lambda *a, **k: None)
        src.start()
        assert sink.got.wait(30)
        src.stop()
        src.join(10)
    assert sink.frames[:3] == ["yuv420p"] * 3
    reason = plan("cuda", True).reason
    assert metrics.registry.get_sample_value(
        "detectd_stream_decoder_info", {"stream": "cam", "decoder": "cpu", "reason": reason}) == 1
    assert f"stream cam: decoding on the CPU, not NVDEC ({reason})" in caplog.text
