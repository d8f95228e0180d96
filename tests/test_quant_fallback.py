"""Mixed precision (daemon/quant/fallback.py): which convolution inputs stay float, and the Q/DQ
writer leaving exactly those unquantized. The writer is tested on a handmade detector, the
decision as a pure function and end to end on real frames of the demo video through the real
model (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from daemon.quant import calibrate as cal
from daemon.quant import qdq
from daemon.quant.fallback import FallbackReport, Sampler, greedy
from daemon.quant.settings import CalibrationSettings
from daemon.quant.histogram import TensorStats
from tests.test_quant import _producers, _run, _sqnr, tiny_calibrated


@pytest.fixture(scope="module")
def tiny() -> tuple[onnx.ModelProto, dict[str, TensorStats], np.ndarray]:
    # its own random generator: test_quant's draws stay the same whatever runs first
    return tiny_calibrated(np.random.default_rng(11))


def _quantized_tensors(m: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}


def _float_weight(m: onnx.ModelProto, conv: onnx.NodeProto) -> bool:
    inits = {i.name: i for i in m.graph.initializer}
    return conv.input[1] in inits and inits[conv.input[1]].data_type == onnx.TensorProto.FLOAT


def test_tensorrt_layout_keeps_the_named_conv_input_float(tiny) -> None:
    model, stats, x = tiny
    q = qdq.quantize_model(model, stats, "tensorrt", float_inputs=["p0"])
    onnx.checker.check_model(q, full_check=True)
    convs = {n.output[0]: n for n in q.graph.node if n.op_type == "Conv"}
    assert convs["c1"].input[0] == "p0" and _float_weight(q, convs["c1"])
    for name in ("c0", "c2", "head"):  # the others as before: Q/DQ input, int8 weights
        assert _producers(q)[convs[name].input[0]].op_type == "DequantizeLinear"
        assert not _float_weight(q, convs[name])
    assert "p0" not in _quantized_tensors(q) and "images" in _quantized_tensors(q)
    props = {p.key: p.value for p in q.metadata_props}
    assert props["detectd.float_tensors"] == "p0"
    all_int8 = qdq.quantize_model(model, stats, "tensorrt")
    assert {p.key: p.value for p in all_int8.metadata_props}["detectd.float_tensors"] == ""
    assert _sqnr(_run(model, x), _run(q, x)) > 20


def test_cpu_layout_leaves_the_whole_group_float(tiny) -> None:
    """p0 = MaxPool(LeakyRelu(c0)): clipping c0 or l0 would clip p0, so all three stay float;
    c0 still takes a quantized input with int8 weights, c1 runs float."""
    model, stats, x = tiny
    assert qdq.float_group(model, "p0") == {"p0", "l0", "c0"}
    # a Concat's inputs, clipped, would clip it: they and what feeds them come along
    assert qdq.float_group(model, "cat") == {"cat", "u2", "l2", "c2", "l1", "c1"}
    q = qdq.quantize_model(model, stats, "cpu", float_inputs=["p0"])
    onnx.checker.check_model(q, full_check=True)
    quantized = _quantized_tensors(q)
    assert not quantized & {"p0", "l0", "c0"}
    assert {"images", "c1", "l1", "cat"} <= quantized
    convs = {n.output[0]: n for n in q.graph.node if n.op_type == "Conv"}
    assert _float_weight(q, convs["c1"]) and not _float_weight(q, convs["c0"])
    assert _sqnr(_run(model, x), _run(q, x)) > 18


def test_only_convolution_inputs_can_be_kept_float(tiny) -> None:
    model, stats, _ = tiny
    assert qdq.conv_inputs(model) == ["images", "p0", "p1", "cat"]
    with pytest.raises(ValueError, match="l0"):
        qdq.quantize_model(model, stats, "tensorrt", float_inputs=["l0"])


def test_greedy_stops_once_within_the_drop() -> None:
    table = {("a",): 0.985, ("a", "b"): 0.995, ("a", "b", "c"): 0.999}
    calls: list[list[str]] = []

    def evaluate(chosen: list[str]) -> float:
        calls.append(chosen)
        return table[tuple(chosen)]

    steps, kept = greedy(["a", "b", "c"], 0.97, evaluate, max_drop=0.01, max_layers=3)
    assert kept == ["a", "b"] and steps == [("a", 0.985), ("b", 0.995)]
    assert calls == [["a"], ["a", "b"]]  # c was never tried


def test_greedy_does_nothing_when_the_model_is_already_good() -> None:
    steps, kept = greedy(["a"], 0.995, lambda c: pytest.fail("evaluated"), 0.01, 2)
    assert steps == [] and kept == []


def test_greedy_keeps_the_best_prefix_and_respects_the_cap() -> None:
    # b makes it worse: only a is kept; the cap stops before c
    scores = {("a",): 0.975, ("a", "b"): 0.972, ("a", "b", "c"): 1.0}
    steps, kept = greedy(["a", "b", "c"], 0.96, lambda c: scores[tuple(c)], 0.01, 2)
    assert kept == ["a"] and [s for s, _ in steps] == ["a", "b"]
    # nothing helps: nothing kept
    steps, kept = greedy(["a", "b"], 0.96, lambda c: 0.95, 0.01, 2)
    assert kept == [] and len(steps) == 2


@pytest.mark.parametrize("n", [10, 47, 48, 300, 1000, 5000])
def test_sample_is_spread_over_whatever_arrived(n: int) -> None:
    """Bounded (never more than 49 frames held, 48 after) and even over a stream of any
    length."""
    s = Sampler(48)
    held = 0
    for i in range(n):
        s.offer(i, np.full((1,), i, np.float32), None)  # type: ignore[arg-type]
        held = max(held, len(s.frames))
    assert held <= 49 and len(s.frames) <= 48
    idx = s.indices
    assert idx == sorted(idx) and idx[0] == 0
    assert [int(f[0]) for f in s.frames] == idx  # each kept frame is its own copy
    if n <= 48:
        assert idx == list(range(n))
    else:
        assert 25 <= len(idx) <= 48
        gaps = set(np.diff(idx).tolist())
        assert len(gaps) == 1  # evenly spaced
        assert n - 1 - idx[-1] < gaps.pop()  # reaches the end of the stream


def test_report_round_trips_and_says_what_it_kept() -> None:
    r = FallbackReport("tensorrt", 0.01, 2, frames=48, boxes=70, baseline=0.978,
                       fixed=["images"], sensitivity_db={"maxpool_1": 24.4, "maxpool_3": 33.9},
                       steps=[("maxpool_1", 0.985), ("maxpool_3", 0.986)],
                       float_inputs=["images", "maxpool_1", "maxpool_3"])
    assert FallbackReport.from_dict(r.to_dict()) == r
    line = r.line()
    assert "images (8-bit input, by rule), maxpool_1, maxpool_3" in line
    assert "0.978 -> 0.986; short of 0.99, stopped at fallback_max_layers 2" in line
    assert "off for this variant" in FallbackReport("cpu", 0.01, 0).line()
    few = FallbackReport("tensorrt", 0.01, 2, frames=4, boxes=3, fixed=["images"])
    assert "fewer than 30" in few.line() and "images" in few.line()
    good = FallbackReport("cpu", 0.01, 2, frames=48, boxes=70, baseline=0.995)
    assert "within 0.01 of 1" in good.line()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, fp32_onnx: Path, demo_video: Path):
    out = tmp_path_factory.mktemp("mixed") / "yolo.int8.onnx"
    # a strict drop, so that these 48 frames (0.990 with only the image input float) decide
    settings = CalibrationSettings(count=48, holdout=24, every=3, fallback_max_drop=0.002)
    calls: list[tuple[str, list[str]]] = []
    real = qdq.quantize_model

    def spy(model, stats, target, metadata=None, float_inputs=()):  # type: ignore[no-untyped-def]
        calls.append((target, list(float_inputs)))
        return real(model, stats, target, metadata, float_inputs)

    with pytest.MonkeyPatch.context() as mp:  # records the models the decision was made with
        mp.setattr(qdq, "quantize_model", spy)
        report = cal.calibrate(fp32_onnx, str(demo_video), target="tensorrt", out=out,
                               settings=settings)
    return out, settings, report, calls


@pytest.mark.slow
def test_real_model_keeps_its_first_pool_float_on_tensorrt_only(mixed, fp32_onnx: Path) -> None:
    """On the demo video the first pool is the tensor whose own quantization costs the most
    (the measured cause, docs/int8.md): the fallback finds it first, keeps it float in the
    tensorrt variant only, and the agreement on the calibration sample rises. The TensorRT
    table still holds every tensor's entropy threshold."""
    out, _, report, calls = mixed
    fb = FallbackReport.from_dict(report.variants["tensorrt"].fallback)
    assert fb.frames == 48 and fb.boxes >= 30 and fb.baseline is not None
    assert fb.baseline < 0.998  # otherwise nothing would be decided here
    assert fb.fixed == ["images"]  # the 8-bit input, by rule, not measured
    assert "images" not in fb.sensitivity_db
    assert min(fb.sensitivity_db, key=fb.sensitivity_db.__getitem__) == "maxpool_1"
    assert fb.float_inputs[:2] == ["images", "maxpool_1"]
    assert dict(fb.steps)[fb.float_inputs[-1]] > fb.baseline
    trt = onnx.load(str(out))
    assert not {"maxpool_1", "images"} & _quantized_tensors(trt)
    assert {p.key: p.value for p in trt.metadata_props}["detectd.float_tensors"] == \
        ",".join(fb.float_inputs)
    cpu = onnx.load(report.variants["cpu"].path)
    assert "maxpool_1" in _quantized_tensors(cpu)  # fallback_targets: tensorrt only
    assert FallbackReport.from_dict(report.variants["cpu"].fallback).float_inputs == []
    assert "maxpool_1:" in Path(report.cache).read_text()
    assert "kept in float images (8-bit input, by rule), maxpool_1" in report.summary()
    assert "s of it deciding mixed precision" in report.summary()
    # sensitivity = only that tensor quantized: every other convolution input float
    inputs = qdq.conv_inputs(onnx.load(str(fp32_onnx)))
    for t in fb.sensitivity_db:
        assert ("tensorrt", [c for c in inputs if c != t]) in calls
    assert ("tensorrt", ["images"]) in calls  # the baseline: only the rule's input float
    # per-tensor SQNR of the held-out pass leaves out what the variant keeps float
    worst = [n for n, _ in report.variants["tensorrt"].worst_tensors_sqnr_db]
    assert worst and not set(worst) & set(fb.float_inputs)


@pytest.mark.slow
def test_the_table_does_not_depend_on_mixed_precision(mixed, fp32_onnx: Path, demo_video: Path,
                                                      tmp_path: Path) -> None:
    """The TensorRT table is entropy's, tensor by tensor, with or without the fallback."""
    _, settings, report, _ = mixed
    off = cal.calibrate(fp32_onnx, str(demo_video), target="tensorrt",
                        out=tmp_path / "off.onnx", tensor_sqnr=False,
                        settings=settings.model_copy(update={"fallback_max_layers": 0}))
    assert FallbackReport.from_dict(off.variants["tensorrt"].fallback).float_inputs == []
    lines = [Path(r.cache).read_text().splitlines() for r in (report, off)]
    assert lines[0] == lines[1] and lines[0][0].endswith("-EntropyCalibration2")


@pytest.mark.slow
def test_reused_cache_keeps_the_decision(mixed, fp32_onnx: Path, demo_video: Path) -> None:
    out, settings, first, _ = mixed
    again = cal.calibrate(fp32_onnx, str(demo_video), target="tensorrt", out=out,
                          settings=settings, tensor_sqnr=False)
    assert again.cache_reused
    assert again.variants["tensorrt"].fallback == first.variants["tensorrt"].fallback
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}[
        "detectd.float_tensors"] == ",".join(first.variants["tensorrt"].fallback["float_inputs"])


def test_fallback_settings_are_validated_and_keyed() -> None:
    base = CalibrationSettings()
    assert base.fallback_targets == ["tensorrt"] and base.fallback_max_layers == 2
    assert CalibrationSettings(fallback_max_layers=0).digest() != base.digest()
    assert CalibrationSettings(fallback_targets=["tensorrt", "cpu"]).digest() != base.digest()
    with pytest.raises(ValueError, match="fallback_targets"):
        CalibrationSettings(fallback_targets=["gpu"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="fallback_max_drop"):
        CalibrationSettings(fallback_max_drop=1.5)


def test_cli_names_the_fallback_options_as_spelled(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "daemon", "calibrate", "--model", "m.onnx",
                        "--out", str(tmp_path / "o.onnx"), "--fallback-targets", "gpu",
                        "--fallback-max-layers", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "--fallback-targets.0: Input should be 'tensorrt' or 'cpu'" in p.stderr
    assert "--fallback-max-layers: Input should be greater than or equal to 0" in p.stderr
    assert not list(tmp_path.iterdir())


def test_only_small_convolutions_are_candidates(fp32_onnx: Path) -> None:
    """The weight share that keeps an INT8 model ~4x smaller: measured on the real model."""
    from daemon.quant.fallback import MAX_WEIGHT_SHARE, weight_shares

    shares = weight_shares(onnx.load(str(fp32_onnx)))
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    small = {t for t, w in shares.items() if w <= MAX_WEIGHT_SHARE}
    assert {"images", "maxpool_1", "maxpool_3"} <= small
    assert "leaky_13" not in small and "maxpool_11" not in small
    # in the cpu layout route_17's group reaches leaky_13, so conv_14 (13%) would go float too
    cpu = weight_shares(onnx.load(str(fp32_onnx)), "cpu")
    assert shares["route_17"] <= MAX_WEIGHT_SHARE < cpu["route_17"]
    assert cpu["maxpool_1"] == shares["maxpool_1"]


def test_the_stop_rule_is_one_predicate() -> None:
    """0.99 is within 0.01 of 1 for the decision and for the summary alike."""
    from daemon.quant.fallback import within

    assert within(0.99, 0.01) and within(1.0, 0.0) and not within(0.9899, 0.01)
    steps, kept = greedy(["a"], 0.99, lambda c: pytest.fail("evaluated"), 0.01, 2)
    assert steps == [] and kept == []
    r = FallbackReport("cpu", 0.01, 2, frames=48, boxes=70, baseline=0.99)
    assert "within 0.01 of 1" in r.line()
