"""INT8 calibration: KL search, histograms, Q/DQ structure, TensorRT cache, real-frame agreement."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from daemon.quant import cache as cache_mod
from daemon.quant import calibrate as cal
from daemon.quant import qdq
from daemon.quant.entropy import entropy_threshold, kl_divergences
from daemon.quant.histogram import ActivationCollector, TensorHistogram, TensorStats

RNG = np.random.default_rng(7)


# ------------------------------------------------------------------ KL threshold search


def _abs_hist(x: np.ndarray, bins: int = 2048) -> tuple[np.ndarray, float]:
    a = np.abs(x)
    m = float(a.max())
    return np.histogram(a, bins=bins, range=(0.0, m))[0], m


def test_uniform_keeps_the_whole_range() -> None:
    hist, m = _abs_hist(RNG.uniform(-5, 5, 1_000_000))
    r = entropy_threshold(hist, m)
    assert r.bin_index >= 1900
    assert r.threshold >= 0.95 * m


def test_rare_huge_outliers_are_clipped_to_a_few_sigma() -> None:
    x = np.concatenate([RNG.normal(0, 1, 1_000_000), [60.0, -80.0, 100.0]])
    hist, m = _abs_hist(x)
    r = entropy_threshold(hist, m)
    assert m == 100.0
    # 128 bins of 100/2048 is the smallest candidate (6.25); the bulk ends near 5 sigma
    assert 4.0 < r.threshold < 0.2 * m


def test_kl_is_zero_where_quantization_loses_nothing() -> None:
    # 128 equally filled bins: 128 levels represent them exactly at i = 128
    hist = np.zeros(2048)
    hist[:128] = 1000.0
    div = kl_divergences(hist)
    assert div[0] == pytest.approx(0.0, abs=1e-9)
    assert entropy_threshold(hist, 2048.0).threshold == pytest.approx(128.5)


def test_all_zero_tensor_gets_no_threshold() -> None:
    r = entropy_threshold(np.zeros(2048), 0.0)
    assert r.threshold == 0.0
    assert qdq.symmetric_int8(r.threshold).scale > 0


def test_growing_histogram_matches_one_shot_histogram() -> None:
    parts = [RNG.laplace(0, 1, 50_000) * s for s in (0.5, 1, 4, 1, 9)]
    h = TensorHistogram()
    for p in parts:
        h.add(p.astype(np.float32))
    counts, amax = h.histogram()
    allx = np.concatenate(parts).astype(np.float32)
    ref, m = _abs_hist(allx)
    assert amax == pytest.approx(m)
    assert counts.sum() == pytest.approx(allx.size)
    assert np.abs(counts - ref).sum() / ref.sum() < 0.02
    assert h.min == pytest.approx(allx.min()) and h.max == pytest.approx(allx.max())
    assert entropy_threshold(counts, amax).threshold == pytest.approx(
        entropy_threshold(ref, m).threshold, rel=0.05)


# ------------------------------------------------------------------ a small handmade detector


def _tiny_model() -> onnx.ModelProto:
    """Conv-LeakyRelu-MaxPool-Conv-LeakyRelu, a 1x1 conv -> Resize -> Concat -> head conv: the
    op set of YOLOv3-Tiny, dynamic batch, float weights."""
    def conv(name: str, cin: int, cout: int, k: int, x: str) -> list[onnx.NodeProto]:
        w = (RNG.normal(0, 1.0 / np.sqrt(cin * k * k), (cout, cin, k, k))).astype(np.float32)
        b = RNG.normal(0, 0.1, cout).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.weight"),
                      numpy_helper.from_array(b, f"{name}.bias")])
        return [helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [name],
                                 kernel_shape=[k, k], pads=[k // 2] * 4)]

    inits: list[TensorProto] = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32),
                                                        "up.scales")]
    nodes = conv("c0", 3, 8, 3, "images")
    nodes += [helper.make_node("LeakyRelu", ["c0"], ["l0"], alpha=0.1),
              helper.make_node("MaxPool", ["l0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2])]
    nodes += conv("c1", 8, 16, 3, "p0")
    nodes += [helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.1),
              helper.make_node("MaxPool", ["l1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2])]
    nodes += conv("c2", 16, 8, 1, "p1")
    nodes += [helper.make_node("LeakyRelu", ["c2"], ["l2"], alpha=0.1),
              helper.make_node("Resize", ["l2", "", "up.scales"], ["u2"], mode="nearest"),
              helper.make_node("Concat", ["u2", "l1"], ["cat"], axis=1)]
    nodes += conv("head", 24, 12, 1, "cat")
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("head", TensorProto.FLOAT, ["batch", 12, 16, 16])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.append(onnx.StringStringEntryProto(key="detectd.labels", value="[]"))
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def tiny() -> tuple[onnx.ModelProto, dict[str, TensorStats], np.ndarray]:
    model = _tiny_model()
    frames = RNG.uniform(0, 1, (24, 3, 32, 32)).astype(np.float32)
    col = ActivationCollector(model, threads=1)
    for i in range(0, 16, 4):
        col.add_batch(frames[i:i + 4])
    stats = cal.stats_from_histograms(col.histograms, cal.CalibrationSettings(method="entropy"))
    return model, stats, frames[16:]


def _producers(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in m.graph.node for o in n.output}


def _value(m: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == name)


def _sqnr(ref: np.ndarray, approx: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / ((ref - approx) ** 2).sum()))


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"images": x})[0]


def test_tensorrt_layout_quantizes_every_conv_input_and_weight(tiny) -> None:
    model, stats, x = tiny
    q = qdq.quantize_model(model, stats, "tensorrt", {"detectd.calibration_key": "k"})
    onnx.checker.check_model(q, full_check=True)
    prod = _producers(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4
    for conv in convs:
        dq = prod[conv.input[0]]
        assert dq.op_type == "DequantizeLinear"
        qn = prod[dq.input[0]]
        assert qn.op_type == "QuantizeLinear"
        for node in (qn, dq):
            assert float(_value(q, node.input[1])) > 0
            zp = _value(q, node.input[2])
            assert zp.dtype == np.int8 and int(zp) == 0
        wdq = prod[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        assert helper.get_attribute_value(wdq.attribute[0]) == 0  # axis
        w = _value(q, wdq.input[0])
        scale = _value(q, wdq.input[1])
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],) and (scale > 0).all()
        zp = _value(q, wdq.input[2])
        assert zp.dtype == np.int8 and not zp.any()
        assert _value(q, conv.input[2]).dtype == np.float32  # biases stay float
        assert np.abs(w).max() == 127  # symmetric max: some weight reaches full scale
    props = {p.key: p.value for p in q.metadata_props}
    assert props["detectd.precision"] == "int8" and props["detectd.quant_target"] == "tensorrt"
    assert props["detectd.labels"] == "[]" and props["detectd.calibration_key"] == "k"
    assert _sqnr(_run(model, x), _run(q, x)) > 20


def test_cpu_layout_runs_uint8_activations_in_onnxruntime(tiny) -> None:
    model, stats, x = tiny
    q = qdq.quantize_model(model, stats, "cpu")
    onnx.checker.check_model(q, full_check=True)
    prod = _producers(q)
    for conv in (n for n in q.graph.node if n.op_type == "Conv"):
        dq = prod[conv.input[0]]
        assert dq.op_type == "DequantizeLinear"
        assert _value(q, dq.input[2]).dtype == np.uint8
        assert _value(q, prod[conv.input[2]].input[0]).dtype == np.int32  # int32 bias
    # MaxPool and Resize share their input's parameters, so ORT runs them on uint8
    params = qdq.cpu_params(model, stats)
    assert params["p0"] == params["l0"] and params["u2"] == params["l2"]
    assert _sqnr(_run(model, x), _run(q, x)) > 18


def test_model_without_statistics_for_a_conv_input_is_refused(tiny) -> None:
    model, stats, _ = tiny
    partial = {k: v for k, v in stats.items() if k != "p0"}
    with pytest.raises(KeyError, match="p0"):
        qdq.quantize_model(model, partial, "tensorrt")


# ------------------------------------------------------------------ TensorRT cache


def _independent_parse(text: str) -> tuple[str, dict[str, float]]:
    """A reader written from TensorRT's documented format, sharing no code with detectd."""
    lines = text.strip().split("\n")
    assert re.fullmatch(r"TRT-\d+-EntropyCalibration2", lines[0]), lines[0]
    out = {}
    for line in lines[1:]:
        name, value = line.rsplit(":", 1)
        value = value.strip()
        assert re.fullmatch(r"[0-9a-f]{8}", value), line
        out[name] = struct.unpack("!f", bytes.fromhex(value))[0]
    return lines[0], out


def test_cache_format_round_trips_and_matches_known_encoding(tmp_path: Path) -> None:
    assert cache_mod.scale_to_hex(1.0 / 127.0) == "3c010204"
    assert cache_mod.trt_version_number("8.6.1") == 8601
    assert cache_mod.trt_version_number("10.3.0") == 100300
    stats = {"images": TensorStats("images", 0.0, 1.0, 1.0),
             "conv_0": TensorStats("conv_0", -3.0, 5.0, 4.0)}
    table = tmp_path / "c.table"
    info = {"model_sha256": "m", "set_sha256": "s", "settings_sha256": "x"}
    cache_mod.write_cache(table, cache_mod.CacheContents("m:s:x", info, stats), version=8601)
    header, scales = _independent_parse(table.read_text())
    assert header == "TRT-8601-EntropyCalibration2"
    assert scales["conv_0"] == pytest.approx(4.0 / 127.0, rel=1e-7)
    back = cache_mod.read_cache(table, "m:s:x")
    assert back.stats == stats
    with pytest.raises(cache_mod.CacheMismatch, match="another calibration set"):
        cache_mod.read_cache(table, "m:OTHER:x")
    with pytest.raises(cache_mod.CacheMismatch, match="another model"):
        cache_mod.read_cache(table, "OTHER:s:x")
    assert cache_mod.retag_header(table.read_text(), 100300).startswith("TRT-100300-")


# ------------------------------------------------------------------ real frames


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, fp32_onnx: Path, demo_video: Path):
    out = tmp_path_factory.mktemp("int8") / "yolo.int8.onnx"
    settings = cal.CalibrationSettings(count=40, holdout=20, every=3)
    report = cal.calibrate(fp32_onnx, str(demo_video), target="tensorrt", out=out,
                           settings=settings)
    return out, settings, report


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_held_out_frames(calibrated) -> None:
    out, _, report = calibrated
    assert report.frames_calibrated == 40 and report.frames_scored == 20
    assert report.reference_detections > 20  # the frames show cars and people
    for target in ("tensorrt", "cpu"):
        v = report.variants[target]
        assert v.map50 is not None and v.map50 >= 0.90, (target, v.map50)
        assert v.size_bytes <= 0.3 * report.fp32_size_bytes
        assert len(v.worst_tensors_sqnr_db) == 5
    assert Path(report.variants["cpu"].path) == out.with_name("yolo.int8.cpu.onnx")
    assert "mAP@0.5" in report.summary()


@pytest.mark.slow
def test_cache_lists_every_conv_input_with_the_models_scale(calibrated) -> None:
    out, _, report = calibrated
    _, scales = _independent_parse(Path(report.cache).read_text())
    m = onnx.load(str(out))
    prod = _producers(m)
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        qn = prod[prod[conv.input[0]].input[0]]
        assert float(_value(m, qn.input[1])) == pytest.approx(scales[qn.input[0]], rel=1e-6)


@pytest.mark.slow
def test_unchanged_model_and_set_reuse_the_cache(calibrated, fp32_onnx: Path,
                                                 demo_video: Path, tmp_path: Path) -> None:
    out, settings, first = calibrated
    again = tmp_path / "again.onnx"
    report = cal.calibrate(fp32_onnx, str(demo_video), target="cpu", out=again,
                           cache=first.cache, settings=settings)
    assert report.cache_reused and report.frames_calibrated == 0
    assert again.read_bytes() == Path(first.variants["cpu"].path).read_bytes()
    # another calibration set: the cache is not used, and the report says why
    (tmp_path / "imgs").mkdir()
    listing = tmp_path / "imgs" / "list.txt"
    from daemon.models import assets

    photos = assets.fetch_photos(progress=False)
    listing.write_text("\n".join(str(p) for p in photos.values()) + "\n")
    third = cal.calibrate(fp32_onnx, str(listing), target="cpu", out=tmp_path / "p.onnx",
                          cache=first.cache, settings=cal.CalibrationSettings(count=2, holdout=0))
    assert not third.cache_reused and "another calibration set" in third.cache_note


def test_bad_sources_are_reported(tmp_path: Path, fp32_onnx: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(cal.CalibrationError, match="empty"):
        cal.calibrate(fp32_onnx, str(empty), out=tmp_path / "a.onnx")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg at all")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path / 'missing.jpg'}\n{junk}\n")
    with pytest.raises(cal.CalibrationError, match=r"no usable frame \(1 not a readable file"):
        cal.calibrate(fp32_onnx, str(bad), out=tmp_path / "b.onnx")
    with pytest.raises(cal.CalibrationError, match="no such file"):
        cal.calibrate(fp32_onnx, str(tmp_path / "nowhere"), out=tmp_path / "c.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_model_whose_input_does_not_match_is_refused(tmp_path: Path, demo_video: Path) -> None:
    m = _tiny_model()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1  # one channel
    path = tmp_path / "gray.onnx"
    onnx.save(m, str(path))
    with pytest.raises(cal.CalibrationError, match=r"shape|input"):
        cal.calibrate(path, str(demo_video), out=tmp_path / "g.int8.onnx")


def test_interrupted_calibration_leaves_nothing(tmp_path: Path, fp32_onnx: Path,
                                                demo_video: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cal.calibrate(fp32_onnx, str(demo_video), out=tmp_path / "i.onnx",
                      settings=cal.CalibrationSettings(count=8, holdout=0), progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_ensure_int8_model_builds_once(tmp_path: Path, fp32_onnx: Path, demo_video: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cal.calibrate

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(cal, "calibrate", counting)

    class Cfg:  # the shape of the config's model.calibration (+ optional settings)
        source = str(demo_video)
        count = 8
        holdout = 4
        every = 20

    first = cal.ensure_int8_model(fp32_onnx, Cfg(), "cpu", tmp_path)
    assert first.is_file() and first.parent == tmp_path and len(calls) == 1
    again = cal.ensure_int8_model(fp32_onnx, Cfg(), "cpu", tmp_path)
    assert again == first and len(calls) == 1
    trt = cal.ensure_int8_model(fp32_onnx, Cfg(), "tensorrt", tmp_path)
    assert trt.is_file() and len(calls) == 1  # both variants came from the one calibration
    props = {p.key: p.value for p in onnx.load(str(trt)).metadata_props}
    assert props["detectd.quant_target"] == "tensorrt"
    Cfg.count = 9
    other = cal.ensure_int8_model(fp32_onnx, Cfg(), "cpu", tmp_path)
    assert other != first and len(calls) == 2
