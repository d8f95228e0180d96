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
from daemon.vision.letterbox import letterbox_av, letterbox_params

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
def test_gpu_check_script(tmp_path: Path, gpu_media: Path) -> None:
    """The GPU check's correctness steps (NVDEC letterbox, kernel vs CPU, attribution, overlap)
    must pass (the figures are bench/gpu_check.py's own run)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "bench" / "gpu_check.py"), "--out", str(tmp_path),
                        "--media", str(gpu_media), "--only", "nvdec_letterbox,letterbox,attribution,overlap_1080p"],
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-4000:], r.stderr[-4000:])
    assert r.returncode == 0


# --- TensorRT ---------------------------------------------------------------------------------


def _onnx() -> Path:
    from daemon.models.assets import cache_dir

    models = sorted((cache_dir() / "models").glob("yolov3-tiny-*.onnx"))
    models = [m for m in models if ".int8-" not in m.name and "qdq" not in m.name]
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


@pytest.mark.gpu
@pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")
def test_gpu_yuv_letterbox_matches_its_twin(device: Any) -> None:
    """The YUV kernel (yuv420p planes and nv12) against its float64 twin, odd sizes included,
    in one batch with an RGB frame (mixed formats in one submission)."""
    av = pytest.importorskip("av", reason="PyAV missing")
    from daemon.backends.cuda import GpuPipeline, OutputSpec
    from daemon.vision.gpu_letterbox import letterbox_yuv_reference
    from daemon.vision.letterbox import letterbox_av

    w = h = 416
    pipe = GpuPipeline(device, w, h, 3, [OutputSpec("input", (3, h, w))],
                       lambda slot: CopyInput(device, slot, 3 * h * w * 4), num_slots=2)
    try:
        for img in _frames():
            f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            n = f.reformat(format="nv12")
            got = pipe.collect(pipe.submit_yuv([f, n, img]))[0]
            ih, iw = img.shape[:2]
            planes = iw * ih + 2 * ((iw + 1) // 2) * ((ih + 1) // 2)  # ~1.5 B/px
            assert pipe.last_h2d_bytes == 2 * planes + img.nbytes  # two YUV frames + one RGB (3 B/px)
            ref, _ = letterbox_yuv_reference(f, w, h)
            assert np.abs(got[0] - ref).max() <= 1e-4
            assert np.abs(got[1] - ref).max() <= 1e-4
            assert np.abs(got[2] - letterbox_reference(img, w, h)[0]).max() <= 1e-4
            cpu, _ = letterbox_av(f, w, h)  # the gate: the CPU letterbox (libswscale)
            # uniform noise (233x101) reaches 0.990/255 in the twin already: 0.03/255 for float32
            assert np.abs(got[0] - cpu).max() <= 1.03 / 255 and np.abs(got[1] - cpu).max() <= 1.03 / 255
    finally:
        pipe.close()


@pytest.mark.gpu
@pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")
def test_gpu_yuv_letterbox_equals_the_cpu_letterbox_on_decoded_frames(device: Any, gpu_media: Path) -> None:
    """Decoded frames carry their siting/matrix/range (H.264: chroma sited left; JPEG:
    yuvj420p, full range, centred): the kernel follows them as libswscale does, within 1/255 of
    ``letterbox_av``, odd sizes included."""
    av = pytest.importorskip("av", reason="PyAV missing")
    from daemon.backends.cuda import GpuPipeline, OutputSpec

    media = gpu_media
    if not (media / "bikes.mp4").is_file():
        pytest.skip(f"bikes.mp4 not in {media} (pass --media DIR or run `detectd fetch-model`)")
    with av.open(str(media / "bikes.mp4")) as c:
        f0 = next(c.decode(video=0))
    frames = [f0] + [f0.reformat(width=w, height=h, format="yuv420p")
                     for w, h in [(1277, 719), (233, 101), (1920, 1080)]]
    if (media / "bus.jpg").is_file():
        with av.open(str(media / "bus.jpg")) as c:
            frames.append(next(c.decode(video=0)))
    w = h = 416
    pipe = GpuPipeline(device, w, h, 1, [OutputSpec("input", (3, h, w))],
                       lambda slot: CopyInput(device, slot, 3 * h * w * 4), num_slots=2)
    try:
        for f in frames:
            got = pipe.collect(pipe.submit_yuv([f]))[0][0]
            d = np.abs(got - letterbox_av(f, w, h)[0]).max() * 255
            assert d <= 1.0, f"{f.format.name} {f.width}x{f.height}: {d:.3f}/255"
    finally:
        pipe.close()


# --- TensorRT: int8 Q/DQ engine, corrupt plan past the checksum, timing cache ----------------


def _qdq_onnx() -> Path:
    from daemon.models.assets import cache_dir

    models = sorted((cache_dir() / "models").glob("yolov3-tiny-*.int8-tensorrt.*.onnx"))
    if not models:
        pytest.skip("no TensorRT Q/DQ model in the cache (run `detectd calibrate --target tensorrt`)")
    return models[0]


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
def test_tensorrt_int8_engine_agrees_with_onnxruntime_on_the_same_qdq_model(tmp_path: Path, gpu_media: Path) -> None:
    """The INT8 engine built from the Q/DQ model against ONNX Runtime running that same model,
    on real letterboxed frames; int8 rounding differs between the two, so the bound is loose
    (5% of the output range) and the mean error must be small."""
    import onnxruntime as ort

    av = pytest.importorskip("av", reason="PyAV missing")
    from daemon.backends.tensorrt import create_tensorrt_backend
    from daemon.models.info import ModelInfo
    from daemon.vision.letterbox import letterbox_av

    path = _qdq_onnx()
    info = ModelInfo.from_onnx(path)
    video = gpu_media / "bikes.mp4"
    if not video.is_file():
        pytest.skip("bikes.mp4 not in the cache")
    with av.open(str(video)) as c:
        x = np.stack([letterbox_av(f, info.width, info.height)[0]
                      for _, f in zip(range(2), c.decode(video=0))])
    backend = create_tensorrt_backend(path, info, _Cfg("int8", 2, str(tmp_path)))
    try:
        got = backend.infer(x)
    finally:
        backend.close()
    want = ort.InferenceSession(str(path)).run(info.output_names, {info.input_name: x})
    for a, b in zip(want, got):
        assert a.shape == b.shape
        rng = float(np.abs(a).max())
        assert np.abs(a - b).max() <= 0.05 * rng and np.abs(a - b).mean() <= 0.01 * rng


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
def test_tensorrt_plan_corrupt_past_its_checksum_is_a_miss(tmp_path: Path) -> None:
    """A corrupt plan whose key file vouches for it (plan_sha256/plan_size rewritten) passes the
    cache's own check, reaches deserialize_cuda_engine, fails there and is rebuilt."""
    import json

    from daemon.backends.engine_cache import sha256_bytes
    from daemon.backends.tensorrt import create_tensorrt_backend
    from daemon.models.info import ModelInfo

    path = _onnx()
    info = ModelInfo.from_onnx(path)
    create_tensorrt_backend(path, info, _Cfg("fp32", 1, str(tmp_path))).close()
    plan = next((tmp_path / "engines").glob("*.plan"))
    key_file = plan.with_suffix(".json")
    bad = bytearray(plan.read_bytes())
    bad[len(bad) // 2: len(bad) // 2 + 4096] = b"\xa5" * 4096
    bad[:16] = b"\0" * 16  # the header too: deserialization must refuse it
    plan.write_bytes(bytes(bad))
    meta = json.loads(key_file.read_text())
    meta["plan_sha256"], meta["plan_size"] = sha256_bytes(bytes(bad)), len(bad)
    key_file.write_text(json.dumps(meta))
    reports: list[str] = []
    create_tensorrt_backend(path, info, _Cfg("fp32", 1, str(tmp_path)), report=reports.append).close()
    assert any("built" in r for r in reports)
    assert plan.read_bytes() != bytes(bad)


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
def test_tensorrt_timing_cache_written_reused_and_survives_corruption(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from daemon.backends.tensorrt import build_engine

    path = _onnx()
    tc = tmp_path / "timing.cache"
    build_engine(path, "fp32", 1, timing_cache=tc)
    first = tc.read_bytes()
    assert len(first) > 0
    with caplog.at_level(logging.INFO, logger="daemon.backends.tensorrt"):
        build_engine(path, "fp32", 1, timing_cache=tc)  # reuses it
    assert "timing cache loaded" in caplog.text
    assert len(tc.read_bytes()) >= len(first)
    tc.write_bytes(b"not a timing cache")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daemon.backends.tensorrt"):
        assert build_engine(path, "fp32", 1, timing_cache=tc)  # builds anyway
    assert "unusable" in caplog.text
    assert tc.read_bytes() != b"not a timing cache"  # replaced by the new build's cache


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_GPU is not None or _NO_TRT is not None, reason=f"TensorRT GPU test: {_NO_GPU or _NO_TRT}")
def test_tensorrt_build_cancelled_by_the_stop_event(tmp_path: Path) -> None:
    import threading

    from daemon.backends.tensorrt import BuildCancelled, create_tensorrt_backend
    from daemon.models.info import ModelInfo

    path = _onnx()
    stop = threading.Event()
    stop.set()
    with pytest.raises(BuildCancelled):
        create_tensorrt_backend(path, ModelInfo.from_onnx(path), _Cfg("fp32", 1, str(tmp_path)), cancel=stop)
    assert not list((tmp_path / "engines").glob("*.plan")) if (tmp_path / "engines").exists() else True
