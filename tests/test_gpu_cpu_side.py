"""The GPU path's CPU-side logic, run everywhere: backend selection, slot bookkeeping, the
letterbox filter the GPU kernel implements, and the TensorRT build recipe per version.

The GPU itself is exercised by tests/test_gpu.py (marked ``gpu``/``tensorrt``) and
bench/gpu_check.py.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from daemon.backends.cuda import SlotBusy, SlotRing, StaleTicket, check, CudaError
from daemon.backends.select import select_backend
from daemon.vision.gpu_letterbox import letterbox_reference, resize_taps
from daemon.vision.letterbox import letterbox_params, letterbox_rgb

# --- backend selection ----------------------------------------------------------------------


def ok() -> None:
    return None


@pytest.mark.parametrize("gpu,trt,expected,why", [
    (ok, ok, "tensorrt", "tensorrt imports and a CUDA GPU"),
    (lambda: "no CUDA device", ok, "onnxruntime", "no GPU (no CUDA device)"),
    (ok, lambda: "the tensorrt package does not import", "onnxruntime", "a GPU is present but"),
    (lambda: "cuda-python is not installed (No module named 'cuda')", lambda: "nope", "onnxruntime",
     "TensorRT not usable here (cuda-python is not installed"),
])
def test_auto_selection(gpu, trt, expected: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="daemon.backends.select"):
        # OpenVINO unavailable here: these cases are about the GPU branch (tests/test_openvino.py
        # covers the CPU engines' order).
        sel = select_backend("auto", tensorrt_probe=trt, gpu_probe=gpu,
                             openvino_probe=lambda: "the openvino package does not import")
    assert sel.backend == expected and why in sel.reason
    assert expected in caplog.text and why in caplog.text
    if "cuda-python" in why:
        assert "no GPU" not in sel.reason  # missing cuda-python says nothing about the GPU


@pytest.mark.parametrize("name", ["onnxruntime", "tensorrt"])
def test_explicit_backend_is_not_probed(name: str) -> None:
    def boom() -> str:
        raise AssertionError("probed")

    assert select_backend(name, tensorrt_probe=boom, gpu_probe=boom).backend == name


def test_real_probes_on_this_machine() -> None:
    # Whatever this machine has, the real probes answer without raising.
    sel = select_backend("auto")
    assert sel.backend in ("tensorrt", "openvino", "onnxruntime") and sel.reason


# --- slot bookkeeping -----------------------------------------------------------------------


def test_slots_hand_out_distinct_slots_and_return_tags() -> None:
    ring = SlotRing(2)
    a = ring.acquire(["f0", "f1"])
    b = ring.acquire(["f2"])
    assert a.slot != b.slot and ring.in_flight == 2
    with pytest.raises(SlotBusy):
        ring.acquire(["f3"])
    assert ring.oldest() == a
    assert ring.release(b) == ("f2",)  # out of order is fine: tags follow the ticket
    assert ring.release(a) == ("f0", "f1")
    assert ring.in_flight == 0 and ring.oldest() is None


def test_stale_ticket_is_refused() -> None:
    ring = SlotRing(1)
    a = ring.acquire(["f0"])
    ring.release(a)
    b = ring.acquire(["f1"])  # same slot, next generation
    assert b.slot == a.slot and b.generation == a.generation + 1
    assert not ring.holds(a) and ring.holds(b)
    with pytest.raises(StaleTicket):
        ring.release(a)  # a's results are gone; f1's must not be handed out as f0's
    assert ring.release(b) == ("f1",)
    with pytest.raises(StaleTicket):
        ring.release(b)  # twice


def test_acquire_waits_for_a_release() -> None:
    ring = SlotRing(1)
    t = ring.acquire(["a"])
    threading.Timer(0.05, ring.release, args=(t,)).start()
    assert ring.acquire(["b"], timeout=5).tags == ("b",)


def test_many_threads_never_share_a_slot() -> None:
    ring, owners, errors = SlotRing(3), {}, []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(200):
            t = ring.acquire([(k, i)], timeout=10)
            with lock:
                if t.slot in owners:
                    errors.append((t.slot, owners[t.slot], (k, i)))
                owners[t.slot] = (k, i)
            with lock:
                del owners[t.slot]
            assert ring.release(t) == ((k, i),)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and ring.in_flight == 0


# --- cuda-python result checking ------------------------------------------------------------


class FakeErr(int):
    """Stand-in for a cuda-python error enum (an int subclass with a name)."""

    @property
    def name(self) -> str:
        return "CUDA_ERROR_OUT_OF_MEMORY" if self else "CUDA_SUCCESS"


def test_check_unwraps_values_and_raises() -> None:
    assert check((FakeErr(0),)) is None
    assert check((FakeErr(0), 7)) == 7
    assert check((FakeErr(0), 7, 8)) == (7, 8)
    with pytest.raises(CudaError, match="cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY"):
        check((FakeErr(2), None), "cuMemAlloc")


# --- the letterbox filter -------------------------------------------------------------------


@pytest.mark.parametrize("src,dst", [(640, 416), (1920, 416), (809, 312), (101, 180), (416, 416), (7, 3)])
def test_taps_are_normalized_and_in_range(src: int, dst: int) -> None:
    idx, w = resize_taps(src, dst)
    assert idx.shape == w.shape and idx.shape[0] == dst
    assert idx.min() >= 0 and idx.max() < src
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert (w >= 0).all()


def test_identity_resize_is_exact() -> None:
    img = np.random.default_rng(0).integers(0, 256, (416, 416, 3), dtype=np.uint8)
    out, info = letterbox_reference(img, 416, 416)
    assert info.new_w == 416 and info.pad_x == 0
    np.testing.assert_allclose(out, img.transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_padding_and_geometry_match_the_cpu_letterbox() -> None:
    img = np.full((272, 640, 3), 200, np.uint8)
    out, info = letterbox_reference(img, 416, 416)
    assert info == letterbox_params(640, 272, 416, 416)
    assert (out[:, : info.pad_y] == 0.5).all() and (out[:, info.pad_y + info.new_h :] == 0.5).all()
    np.testing.assert_allclose(out[:, info.pad_y : info.pad_y + info.new_h], 200 / 255, atol=1e-6)


def _media(name: str) -> Path:
    from daemon.models.assets import cache_dir

    p = cache_dir() / "media" / name
    if not p.is_file():
        pytest.skip(f"{name} not in the cache (run `detectd fetch-model`)")
    return p


def _decode(path: Path, count: int = 1) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if len(out) == count:
                break
    return out


@pytest.mark.parametrize("crop", [(None, None), (1079, 809), (1079, 601), (333, 217)])
def test_reference_equals_libswscale_where_swscale_is_exact(crop: tuple[int | None, int | None]) -> None:
    """On frames with an odd height libswscale's BILINEAR takes its exact path, and the GPU
    kernel's filter (letterbox_reference) agrees with PyAV's letterbox within 1/255. (On even
    sizes FFmpeg 8's swscale departs from its own filter by up to ~6/255 at colour edges; see
    gpu_letterbox's docstring and the GPU check's report.)"""
    img = _decode(_media("bus.jpg"))[0]
    h, w = crop
    if h is not None:
        img = np.ascontiguousarray(img[:h, :w])
    else:
        img = np.ascontiguousarray(_decode(_media("bikes.mp4"))[0][:271])
    cpu, _ = letterbox_rgb(img, 416, 416)
    ref, _ = letterbox_reference(img, 416, 416)
    assert np.abs(cpu - ref).max() <= 1.0 / 255


# --- TensorRT build recipe --------------------------------------------------------------------


def test_build_recipe_per_version() -> None:
    from daemon.backends.tensorrt import build_recipe

    r11 = build_recipe(11, "int8")
    assert r11.strongly_typed and r11.flags == () and r11.onnx_transform is None
    assert build_recipe(11, "fp16").onnx_transform == "fp16"
    assert build_recipe(11, "fp32").flags == ()
    r10 = build_recipe(10, "int8")  # STRONGLY_TYPED exists in every 10.x
    assert r10.strongly_typed and r10.flags == ()
    r10w = build_recipe(10, "int8", strongly_typed_available=False)
    assert not r10w.strongly_typed and set(r10w.flags) == {"INT8", "FP16"}
    assert build_recipe(10, "fp16").flags == ("FP16",)
    assert build_recipe(10, "fp32").flags == ()
    with pytest.raises(ValueError):
        build_recipe(9, "int8")


def test_fp16_copy_runs_and_agrees_with_fp32() -> None:
    """The FP16 model TensorRT 11 builds its fp16 engine from, checked in ONNX Runtime."""
    import onnxruntime as ort

    from daemon.backends.tensorrt import to_fp16_onnx
    from daemon.models.assets import cache_dir

    models = _fp32_models()
    if not models:
        pytest.skip("no exported FP32 YOLOv3-Tiny ONNX in the cache (run `detectd export-onnx`)")
    data = models[0].read_bytes()
    fp32, fp16 = ort.InferenceSession(data), ort.InferenceSession(to_fp16_onnx(data))
    name = fp32.get_inputs()[0].name
    x = np.random.default_rng(0).random((2, 3, fp32.get_inputs()[0].shape[2], fp32.get_inputs()[0].shape[3]),
                                        dtype=np.float32)
    for a, b in zip(fp32.run(None, {name: x}), fp16.run(None, {name: x})):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def _fp32_models() -> list[Path]:
    """Exported FP32 models only: the cache also holds INT8 Q/DQ variants (``*.int8-*.onnx``)."""
    import onnx

    from daemon.backends.tensorrt import qdq_node_count
    from daemon.models.assets import cache_dir

    out = []
    for p in sorted((cache_dir() / "models").glob("yolov3-tiny-*.onnx")):
        if ".int8-" in p.name or qdq_node_count(onnx.load(str(p), load_external_data=False)):
            continue
        out.append(p)
    return out


def _qdq_models() -> list[Path]:
    from daemon.models.assets import cache_dir

    return sorted((cache_dir() / "models").glob("yolov3-tiny-*.int8-*.onnx"))


def test_fp16_transform_refuses_qdq_models() -> None:
    from daemon.backends.tensorrt import to_fp16_onnx

    models = _qdq_models()
    if not models:
        pytest.skip("no INT8 Q/DQ model in the cache (run `detectd calibrate`)")
    with pytest.raises(ValueError, match="QuantizeLinear/DequantizeLinear"):
        to_fp16_onnx(models[0].read_bytes())


def test_int8_build_refuses_a_model_without_qdq(tmp_path: Path) -> None:
    """Checked before TensorRT is touched, so it runs here: the error names the file."""
    from daemon.backends.base import BackendError
    from daemon.backends.tensorrt import check_int8_model

    models = _fp32_models()
    if not models:
        pytest.skip("no exported FP32 YOLOv3-Tiny ONNX in the cache")
    with pytest.raises(BackendError, match=f"{models[0].name}.*no QuantizeLinear/DequantizeLinear"):
        check_int8_model(models[0])
    for q in _qdq_models():
        check_int8_model(q)  # a Q/DQ model passes


def test_engine_key_includes_recipe(tmp_path: Path) -> None:
    from daemon.backends.engine_cache import KEY_FORMAT
    from daemon.backends.tensorrt import build_recipe, engine_key

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"model")
    args = (onnx_file, "int8", 4, 416, 416, "10.13.0", "NVIDIA H100", "9.0")
    strong = engine_key(*args, recipe=build_recipe(10, "int8"))
    weak = engine_key(*args, recipe=build_recipe(10, "int8", strongly_typed_available=False))
    assert strong != weak and strong.digest() != weak.digest()
    assert strong.build["strongly_typed"] is True and weak.build["flags"] == ["FP16", "INT8"]
    assert KEY_FORMAT >= 2 and strong.key_format == KEY_FORMAT
    fp16 = engine_key(onnx_file, "fp16", 4, 416, 416, "11.0.0", "NVIDIA H100", "9.0")
    assert fp16.build["onnx_transform"] == "fp16" and fp16.build["fp16_transform_version"] >= 1


def test_build_engine_without_tensorrt_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from daemon.backends.select import probe_tensorrt
    from daemon.commands import build_engine

    if probe_tensorrt() is None:
        pytest.skip("tensorrt imports here")
    parser = argparse.ArgumentParser()
    build_engine.register(parser.add_subparsers())
    args = parser.parse_args(["build-engine", "--precision", "fp16", "--max-batch", "4"])
    assert args.func(args) == 2
    assert "TensorRT is needed" in capsys.readouterr().err
