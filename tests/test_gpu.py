"""GPU tests: run where an NVIDIA GPU and cuda-python are present (``gpu``), and where TensorRT
imports too (``tensorrt``); skipped elsewhere with the reason printed (``pytest -rs``).

One command on a machine with a GPU and TensorRT::

    .venv/bin/python -m pytest -rs -m "gpu or tensorrt" tests/test_gpu.py tests/test_gpu_cpu_side.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.backends.cuda import cuda_unavailable_reason
from daemon.backends.select import probe_tensorrt
from daemon.vision.gpu_letterbox import letterbox_reference
from daemon.vision.letterbox import letterbox_params

_NO_GPU = cuda_unavailable_reason()
_NO_TRT = probe_tensorrt()



@pytest.fixture(scope="module")
def device() -> Any:
    from daemon.backends.cuda import CudaDevice

    return CudaDevice(0)


class CopyInput:
    """Stand-in executor (not an engine): copies the network input out, to read the letterbox."""

    def __init__(self, dev: Any, slot: Any, size: int) -> None:
        self.dev, self.slot, self.size = dev, slot, size

    def execute(self, stream: Any, batch: int) -> None:
        from daemon.backends.cuda import check

        check(self.dev.driver.cuMemcpyDtoDAsync(self.slot.output_ptrs[0], self.slot.input_ptr,
                                                batch * self.size, stream))


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:721, 0:1283]
    smooth = np.stack([127 + 120 * np.sin(xx / 7 + yy / 11), 127 + 120 * np.cos(xx / 13),
                       yy * 255 // 721], -1).astype(np.uint8)
    return [np.ascontiguousarray(smooth[:h, :w]) for w, h in [(1283, 721), (640, 272), (809, 1), (33, 417)]] + [
        rng.integers(0, 256, (101, 233, 3), dtype=np.uint8)]


@pytest.mark.gpu
@pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")
def test_gpu_letterbox_matches_reference(device: Any) -> None:
    from daemon.backends.cuda import GpuPipeline, OutputSpec

    w = h = 416
    pipe = GpuPipeline(device, w, h, 2, [OutputSpec("input", (3, h, w))],
                       lambda slot: CopyInput(device, slot, 3 * h * w * 4), num_slots=2)
    try:
        for img in _frames():
            info = letterbox_params(img.shape[1], img.shape[0], w, h)
            got = pipe.collect(pipe.submit_frames([img, img[::-1].copy()], [info, info]))[0]
            ref, _ = letterbox_reference(img, w, h)
            ref2, _ = letterbox_reference(img[::-1].copy(), w, h)
            assert np.abs(got[0] - ref).max() <= 1e-4
            assert np.abs(got[1] - ref2).max() <= 1e-4
    finally:
        pipe.close()


@pytest.mark.gpu
@pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")
def test_stale_ticket_returns_nothing_on_gpu(device: Any) -> None:
    from daemon.backends.cuda import GpuPipeline, OutputSpec, StaleTicket

    pipe = GpuPipeline(device, 64, 64, 1, [OutputSpec("input", (3, 64, 64))],
                       lambda slot: CopyInput(device, slot, 3 * 64 * 64 * 4), num_slots=1)
    try:
        img = np.zeros((10, 20, 3), np.uint8)
        info = letterbox_params(20, 10, 64, 64)
        t = pipe.submit_frames([img], [info])
        pipe.collect(t)
        pipe.submit_frames([img + 9], [info])
        with pytest.raises(StaleTicket):
            pipe.collect(t)
    finally:
        pipe.close()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")
def test_gpu_check_script(tmp_path: Path) -> None:
    """The whole GPU check (letterbox, attribution, overlap, throughput) must pass."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-4000:], r.stderr[-4000:])
    assert r.returncode == 0


# --- TensorRT ---------------------------------------------------------------------------------


def _onnx() -> Path:
    from daemon.models.assets import cache_dir

    models = sorted((cache_dir() / "models").glob("yolov3-tiny-*.onnx"))
    models = [m for m in models if "int8" not in m.name and "qdq" not in m.name]
    if not models:
        pytest.skip("no exported YOLOv3-Tiny ONNX in the cache (run `detectd export-onnx`)")
    return models[0]


class _Cfg:
    def __init__(self, precision: str, max_batch: int, cache_dir: str) -> None:
        self.precision, self.max_batch, self.cache_dir = precision, max_batch, cache_dir


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-2), ("fp16", 0.1)])
def test_tensorrt_engine_agrees_with_onnxruntime(precision: str, tol: float, tmp_path: Path) -> None:
    import onnxruntime as ort

    from daemon.backends.tensorrt import create_tensorrt_backend
    from daemon.models.info import ModelInfo

    path = _onnx()
    info = ModelInfo.from_onnx(path)
    backend = create_tensorrt_backend(path, info, _Cfg(precision, 4, str(tmp_path)))
    try:
        x = np.random.default_rng(0).random((3, 3, info.height, info.width), dtype=np.float32)
        sess = ort.InferenceSession(str(path))
        want = sess.run(info.output_names, {info.input_name: x})
        got = backend.infer(x)
        for a, b in zip(want, got):
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= tol * np.abs(a).max()
        # Raw frames through the GPU letterbox give what the CPU letterbox + infer give.
        img = np.random.default_rng(1).integers(0, 256, (271, 641, 3), dtype=np.uint8)
        li = letterbox_params(641, 271, info.width, info.height)
        per_frame = backend.infer_frames([img] * 5, [li] * 5)
        ref = backend.infer(letterbox_reference(img, info.width, info.height)[0][None])
        assert len(per_frame) == 5
        for outs in per_frame:
            for a, b in zip(outs, ref):
                assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())
    finally:
        backend.close()
    # Second load: a cache hit, no rebuild.
    plans = list((tmp_path / "engines").glob("*.plan"))
    assert len(plans) == 1
    mtime = plans[0].stat().st_mtime_ns
    create_tensorrt_backend(path, info, _Cfg(precision, 4, str(tmp_path))).close()
    assert plans[0].stat().st_mtime_ns == mtime


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
def test_tensorrt_corrupt_plan_is_rebuilt(tmp_path: Path) -> None:
    from daemon.backends.tensorrt import create_tensorrt_backend
    from daemon.models.info import ModelInfo

    path = _onnx()
    info = ModelInfo.from_onnx(path)
    create_tensorrt_backend(path, info, _Cfg("fp32", 1, str(tmp_path))).close()
    plan = next((tmp_path / "engines").glob("*.plan"))
    plan.write_bytes(b"\0" * plan.stat().st_size)
    create_tensorrt_backend(path, info, _Cfg("fp32", 1, str(tmp_path))).close()
    assert plan.read_bytes() != b"\0" * plan.stat().st_size
