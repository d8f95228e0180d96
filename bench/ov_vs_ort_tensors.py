"""OpenVINO vs ONNX Runtime on the same INT8 Q/DQ model, tensor by tensor and box by box (issue 13).

Both engines run the same model on the same inputs (every ``--every``-th demo frame + the two
photos); every activation QuantizeLinear output (8-bit) is compared in units of that tensor's own
quantization step:

- ``global``: both engines from the image (every quantized tensor added as a graph output; the
  heads are checked to be unchanged by the extra outputs, so this is what each engine computes
  anyway). Differences here include everything propagated from earlier layers.
- ``local``: each layer alone (``ov_graph.layer``: the subgraph from the nearest quantized tensors
  upstream to this tensor's QuantizeLinear), both engines fed ONNX Runtime's own upstream 8-bit
  values: what each layer adds by itself. For every value that differs, how far ONNX Runtime's
  float value before the rounding lies from the rounding boundary (steps): a near-tie that
  float32 arithmetic decides either way, or a real difference.
- ``vs_fp32``: each engine's dequantized tensor against the FP32 model's (clipped to the
  tensor's range, so clipping, which both engines share, is not counted), mean |error| in steps;
  and the heads' mean |error| against FP32 (which engine is closer).

ONNX Runtime runs with its default graph optimizations (QLinearConv etc., as the daemon and the
tests run it); its unoptimized execution (every Q/DQ executed as written) is compared with it too.

Forms: ``cpu`` (the ``cpu`` Q/DQ model as written, float input with Darknet's 0.5 pad),
``cpu_on_grid`` (the same, the float input moved onto the input's 1/255 grid, the pad 127/255:
ONNX Runtime's outputs are bit-identical to ``cpu``'s), ``derived`` (the form the daemon hands
OpenVINO, ``daemon/backends/ov_graph.py``, uint8 input).

``pad``: the input QuantizeLinear (scale float32(1/255), zero point 0) of 0.5, the letterbox pad,
in each engine; and how each rounds exact ties (0.5, 1.5, 2.5 steps). ``boxes`` (``--boxes``): tests/test_openvino.py's box comparison on the derived
form over all demo frames and per every-5th subset (frame index mod 5), OpenVINO against ONNX
Runtime, and ONNX Runtime against itself with every Conv split in two over its input channels
and summed (the same real arithmetic, another float32 summation order): what two exact
evaluations of the same graph differ by. ``exact`` (``--exact``): four layers of the derived form
evaluated in float64 with numpy, and how many values each engine rounds otherwise.

    .venv/bin/python bench/ov_vs_ort_tensors.py [--every 25] [--forms cpu,cpu_on_grid,derived]
        [--boxes] [--exact] [--model M.onnx] [--json bench/results/ov_vs_ort_tensors.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.backends.ov_graph import (PIXEL_SCALE, QTensor, derive, layer,  # noqa: E402
                                      quantize_pixels, quantized_tensors)
from daemon.config import CalibrationConfig, ModelConfig  # noqa: E402
from daemon.models import assets  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.vision.letterbox import PAD_VALUE, letterbox_av, letterbox_rgb  # noqa: E402


def inputs(every: int) -> list[np.ndarray]:
    """(1, 3, 416, 416) float32 0..1: every `every`-th demo frame and both photos."""
    out = []
    with av.open(str(assets.fetch_demo_video(progress=False))) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i % every == 0:
                out.append(letterbox_av(vf, 416, 416)[0][None].copy())
    for photo in assets.fetch_photos(progress=False).values():
        with av.open(str(photo)) as c:
            rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
        out.append(letterbox_rgb(rgb, 416, 416)[0][None].copy())
    return out


def on_grid(x: np.ndarray) -> np.ndarray:
    """float pixels moved onto the input quantization's grid (k/255): the pad 0.5 -> 127/255."""
    return quantize_pixels(x).astype(np.float32) * PIXEL_SCALE


def with_outputs(m: onnx.ModelProto, names: dict[str, int]) -> onnx.ModelProto:
    """`m` with the tensors `names` (name -> element type) added as graph outputs."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    have = {o.name for o in m2.graph.output}
    for n, elem in names.items():
        if n not in have:
            m2.graph.output.append(helper.make_tensor_value_info(n, elem, None))
    return m2


def ort_session(m: onnx.ModelProto, optimized: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ov_compiled(m: onnx.ModelProto) -> Any:
    """Compiled as the daemon's backend compiles (f32 inference precision)."""
    core = ov.Core()
    return core.compile_model(core.read_model(m.SerializeToString(), b""), "CPU",
                              {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})


def ov_run(cm: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    r = cm(feed)
    return {name: r[port] for port in cm.outputs for name in port.get_names()}


def diff_stats(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = got.astype(np.int32) - ref.astype(np.int32)
    return {"differ": float(np.mean(d != 0)), "over_1_step": float(np.mean(np.abs(d) > 1)),
            "mean_signed": float(d.mean()), "max_abs": int(np.abs(d).max(initial=0))}


def quantize_probe(scale: float, values: list[float]) -> dict[str, list[int]]:
    """What each engine's QuantizeLinear(scale, zero point 0, uint8) makes of `values`."""
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [len(values)])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [len(values)])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.uint8), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    x = {"x": np.array(values, np.float32)}
    level = {"onnxruntime": ort_session(m).run(["y"], x)[0], "openvino": ov_run(ov_compiled(m), x)["y"]}
    return {k: np.rint(v / np.float32(scale)).astype(int).tolist() for k, v in level.items()}


def compare_form(name: str, m: onnx.ModelProto, fp32: onnx.ModelProto, xs: list[np.ndarray]
                 ) -> dict[str, Any]:
    qs = quantized_tensors(m)
    in_name = m.graph.input[0].name
    uint8_input = m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    heads = [o.name for o in m.graph.output]
    qnames = [q.name for q in qs]
    full = with_outputs(m, {q.name: q.dtype for q in qs})
    names = heads + qnames
    s_opt, s_raw = ort_session(full), ort_session(full, optimized=False)
    cm, cm_plain = ov_compiled(full), ov_compiled(m)
    float_names = sorted({q.source for q in qs if q.source != in_name})
    f_sess = ort_session(with_outputs(fp32, dict.fromkeys(float_names, onnx.TensorProto.FLOAT)))
    f_names = heads + float_names
    glob: dict[str, list[dict[str, float]]] = {}
    raw: dict[str, list[dict[str, float]]] = {}
    vs_fp32: dict[str, dict[str, list[float]]] = {}
    heads_fp32: dict[str, list[float]] = {"onnxruntime": [], "openvino": []}
    heads_ov_ort: list[float] = []
    extra_outputs_change_heads = 0.0
    refs: list[dict[str, np.ndarray]] = []
    for x in xs:
        if uint8_input:
            feed = {in_name: quantize_pixels(x)}
        else:
            feed = {in_name: on_grid(x) if name == "cpu_on_grid" else x}
        a = dict(zip(names, s_opt.run(names, feed)))
        b = dict(zip(names, s_raw.run(names, feed)))
        o = ov_run(cm, feed)
        plain = ov_run(cm_plain, feed)
        f = dict(zip(f_names, f_sess.run(f_names, {"images": x})))
        refs.append({**feed, **a})
        for h in heads:
            extra_outputs_change_heads = max(extra_outputs_change_heads,
                                             float(np.abs(plain[h] - o[h]).max()))
            heads_fp32["onnxruntime"].append(float(np.abs(a[h] - f[h]).mean()))
            heads_fp32["openvino"].append(float(np.abs(o[h] - f[h]).mean()))
            heads_ov_ort.append(float(np.abs(o[h] - a[h]).mean()))
        for q in qs:
            glob.setdefault(q.name, []).append(diff_stats(o[q.name], a[q.name]))
            raw.setdefault(q.name, []).append(diff_stats(b[q.name], a[q.name]))
            if q.source in f:
                s, z = q.scale, q.zero_point
                lo, hi = (0, 255) if q.dtype == onnx.TensorProto.UINT8 else (-128, 127)
                ref = np.clip(f[q.source], (lo - z) * s, (hi - z) * s)
                e = vs_fp32.setdefault(q.name, {"onnxruntime": [], "openvino": []})
                e["onnxruntime"].append(float(np.abs((a[q.name].astype(np.float32) - z) * s - ref).mean() / s))
                e["openvino"].append(float(np.abs((o[q.name].astype(np.float32) - z) * s - ref).mean() / s))
    local: dict[str, list[dict[str, float]]] = {}
    tie: dict[str, float] = {}
    for q in qs:
        if q.source == in_name:
            continue
        sub, ins = layer(m, q.name)
        ls = ort_session(with_outputs(sub, {q.source: onnx.TensorProto.FLOAT}))
        lo = ov_compiled(sub)
        for a in refs:
            feed = {i: a[i] for i in ins}
            want, pre = ls.run([q.name, q.source], feed)
            got = ov_run(lo, feed)[q.name]
            local.setdefault(q.name, []).append(diff_stats(got, want))
            steps = pre.astype(np.float64) / q.scale
            far = np.abs(steps - np.floor(steps) - 0.5)[got != want]
            if far.size:
                tie[q.name] = max(tie.get(q.name, 0.0), float(far.max()))

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    def entry(q: QTensor) -> dict[str, Any]:
        return {"scale": q.scale, "zero_point": q.zero_point, "global": mean(glob[q.name]),
                "ort_unoptimized_vs_optimized": mean(raw[q.name]),
                "local": mean(local[q.name]) if q.name in local else None,
                "local_differences_farthest_from_a_tie_steps": tie.get(q.name),
                "vs_fp32_mean_abs_steps": ({k: float(np.mean(v)) for k, v in vs_fp32[q.name].items()}
                                           if q.name in vs_fp32 else None)}

    return {"form": name, "inputs": len(xs),
            "openvino_heads_changed_by_extra_outputs": extra_outputs_change_heads,
            "heads_mean_abs_error_vs_fp32": {k: float(np.mean(v)) for k, v in heads_fp32.items()},
            "heads_mean_abs_openvino_vs_onnxruntime": float(np.mean(heads_ov_ort)),
            "tensors": {q.name: entry(q) for q in qs}}


def exact_layers(m: onnx.ModelProto, xs: list[np.ndarray],
                 names: tuple[str, ...] = ("leaky_2", "leaky_4", "leaky_6", "leaky_8")) -> dict[str, Any]:
    """For layers of the derived form of shape DQ(uint8) -> MaxPool 2x2/2 -> Conv -> LeakyRelu ->
    Q (all four fed ONNX Runtime's own upstream values), how many values each engine rounds
    differently from a float64 evaluation of the layer (numpy, the exact real arithmetic up to
    1e-16): which engine misses near-ties more often."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    prod = {o: n for n in m.graph.node for o in n.output}
    qs = {q.name: q for q in quantized_tensors(m)}
    s_full = ort_session(with_outputs(m, {q: qs[q].dtype for q in qs}))
    refs = [dict(zip(qs, s_full.run(list(qs), {m.graph.input[0].name: quantize_pixels(x)}))) for x in xs]
    out: dict[str, Any] = {}
    for name in names:
        q = qs[f"{name}_quantized"]
        sub, (src,) = layer(m, q.name)
        qin = qs[src]
        conv = prod[prod[q.source].input[0]]
        wdq, bdq = prod[conv.input[1]], prod[conv.input[2]]
        w = inits[wdq.input[0]].astype(np.float64) * inits[wdq.input[1]].astype(np.float64)[:, None, None, None]
        b = inits[bdq.input[0]].astype(np.float64) * inits[bdq.input[1]].astype(np.float64)
        alpha = np.float64(np.float32(next(a.f for a in prod[q.source].attribute if a.name == "alpha")))
        ls, lo = ort_session(sub), ov_compiled(sub)
        wrong = {"onnxruntime": 0, "openvino": 0, "values": 0}
        for r in refs:
            u = r[src]
            n, c, hh, ww = u.shape
            x = (u.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5)).astype(np.float64)
                 - qin.zero_point) * qin.scale
            k = w.shape[2]
            xp = np.pad(x[0], ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
            h2, w2 = x.shape[2], x.shape[3]
            cols = np.stack([xp[:, i:i + h2, j:j + w2] for i in range(k) for j in range(k)], 1)
            y = (w.reshape(w.shape[0], -1) @ cols.reshape(-1, h2 * w2) + b[:, None]).reshape(1, -1, h2, w2)
            y = np.where(y > 0, y, alpha * y)
            exact = np.clip(np.rint(y / np.float64(np.float32(q.scale)) + q.zero_point), 0, 255)
            feed = {src: u}
            wrong["onnxruntime"] += int(np.count_nonzero(ls.run([q.name], feed)[0] != exact))
            wrong["openvino"] += int(np.count_nonzero(ov_run(lo, feed)[q.name] != exact))
            wrong["values"] += exact.size
        out[q.name] = wrong
    return out


def split_convs(m: onnx.ModelProto) -> onnx.ModelProto:
    """Every Conv with a DequantizeLinear weight split in two over its input channels and
    summed: the same real arithmetic, another float32 summation order in ONNX Runtime."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    g = m2.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        wdq = prod.get(n.input[1]) if n.op_type == "Conv" else None
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[wdq.input[0]])
        c, parts = w.shape[1] // 2, []
        for k, (lo, hi) in enumerate([(0, c), (c, w.shape[1])]):
            wn, xn, y = f"{wdq.input[0]}_half{k}", f"{n.output[0]}_in{k}", f"{n.output[0]}_half{k}"
            g.initializer.extend([numpy_helper.from_array(w[:, lo:hi].copy(), wn),
                                  numpy_helper.from_array(np.array([lo]), xn + "_s"),
                                  numpy_helper.from_array(np.array([hi]), xn + "_e"),
                                  numpy_helper.from_array(np.array([1]), xn + "_a")])
            nodes += [helper.make_node("Slice", [n.input[0], xn + "_s", xn + "_e", xn + "_a"], [xn]),
                      helper.make_node("DequantizeLinear", [wn, wdq.input[1], wdq.input[2]],
                                       [wn + "_dq"], axis=0)]
            conv = helper.make_node("Conv", [xn, wn + "_dq", *(n.input[2:] if k == 0 else [])], [y])
            conv.attribute.extend(n.attribute)
            nodes.append(conv)
            parts.append(y)
        nodes.append(helper.make_node("Add", parts, [n.output[0]]))
    del g.node[:]
    g.node.extend(nodes)
    return m2


def boxes(path: Path) -> dict[str, Any]:
    """tests/test_openvino.py's comparison (its `match`, imported so it is the same metric) of
    the derived form on every demo frame + the photos."""
    from daemon.backends.openvino import OpenVinoBackend
    from daemon.models.info import ModelInfo
    from daemon.vision.yolo import postprocess
    from tests.test_openvino import inputs as test_inputs
    from tests.test_openvino import match

    info = ModelInfo.from_onnx(path)
    d = derive(onnx.load(str(path)), uint8_input=True).model
    xs = test_inputs(assets.fetch_demo_video(progress=False), every=1)
    ov_b = OpenVinoBackend(path, info.input_name, info.output_names, precision="int8", threads=2)
    runs = {"onnxruntime": ort_session(d), "onnxruntime_split": ort_session(split_convs(d))}

    def det(run: Any) -> list[Any]:
        return [postprocess(run(x), [li], info.heads, 0.25, 0.45)[0] for x, li in xs]

    ref = det(lambda x: runs["onnxruntime"].run(info.output_names, {info.input_name: quantize_pixels(x)}))
    got = {"openvino": det(ov_b.infer),
           "onnxruntime_split": det(lambda x: runs["onnxruntime_split"].run(
               info.output_names, {info.input_name: quantize_pixels(x)}))}
    frames = len(xs) - 2  # the two photos come last and are in every subset, as in the test

    def stats(idx: list[int], g: list[Any]) -> dict[str, Any]:
        r, p, dev, missed = match([ref[i] for i in idx], [g[i] for i in idx])
        dv = np.asarray(dev)
        return {"recall": r, "precision": p, "boxes": len(dev), "median_px": float(np.median(dv)),
                "within_1px": float(np.mean(dv <= 1.0)), "max_missed_score": max(missed, default=0.0)}

    out: dict[str, Any] = {"inputs": len(xs)}
    for k, g in got.items():
        out[k] = {"all": stats(list(range(len(xs))), g),
                  "every_5th_by_offset": [stats([i for i in range(frames) if i % 5 == off]
                                                + [frames, frames + 1], g) for off in range(5)]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--forms", default="cpu,cpu_on_grid,derived")
    ap.add_argument("--boxes", action="store_true", help="also the box comparison on all frames")
    ap.add_argument("--exact", action="store_true",
                    help="also count each engine's misrounded values against float64 (4 layers)")
    ap.add_argument("--model", default=None, help="an INT8 cpu Q/DQ model (default: the tests' one)")
    ap.add_argument("--json", default=str(ROOT / "bench/results/ov_vs_ort_tensors.json"))
    args = ap.parse_args()
    if args.model:
        path = Path(args.model)
    else:
        from daemon.prepare import prepare_model

        cal = CalibrationConfig(holdout=0, min_agreement=0)  # tests/test_openvino.py's model
        path = Path(prepare_model(ModelConfig(precision="int8", calibration=cal), target="cpu",
                                  progress=False))
    m = onnx.load(str(path))
    fp32 = onnx.load(str(fp32_model(ModelConfig(), progress=False)))
    xs = inputs(args.every)
    res: dict[str, Any] = {"model": path.name, "openvino": ov.get_version(),
                           "onnxruntime": ort.__version__,
                           "pad_0.5_quantized_to": quantize_probe(float(PIXEL_SCALE), [PAD_VALUE]),
                           # exact ties (0.5, 1.5, 2.5 steps): half to even gives 0, 2, 2
                           "ties_0.5_1.5_2.5_steps_quantized_to": quantize_probe(0.25, [0.125, 0.375, 0.625]),
                           "forms": {}}
    print(f"QuantizeLinear(0.5, 1/255): {res['pad_0.5_quantized_to']}; exact ties 0.5, 1.5, 2.5 "
          f"steps: {res['ties_0.5_1.5_2.5_steps_quantized_to']}")
    for form in args.forms.split(","):
        mm = m if form.startswith("cpu") else derive(m, uint8_input=True).model
        r = res["forms"][form] = compare_form(form, mm, fp32, xs)
        print(f"== {form}: {r['inputs']} inputs; heads' mean |error| vs FP32: "
              f"ONNX Runtime {r['heads_mean_abs_error_vs_fp32']['onnxruntime']:.4f}, "
              f"OpenVINO {r['heads_mean_abs_error_vs_fp32']['openvino']:.4f}; "
              f"OpenVINO vs ONNX Runtime {r['heads_mean_abs_openvino_vs_onnxruntime']:.4f}")
        print(f"{'tensor':22s} {'global: differ  >1 step  mean':>30s} {'local: differ  >1 step  tie':>30s} "
              f"{'ORT raw':>8s} {'vs FP32: ORT, OV':>17s}")
        for q, t in r["tensors"].items():
            g, lo, rw, vf = t["global"], t["local"], t["ort_unoptimized_vs_optimized"], t["vs_fp32_mean_abs_steps"]
            tie = t["local_differences_farthest_from_a_tie_steps"]
            ls = (f"{lo['differ']:10.1e} {lo['over_1_step']:8.1e} {tie if tie is not None else 0:8.1e}"
                  if lo else " " * 28)
            fs = f"{vf['onnxruntime']:8.3f} {vf['openvino']:8.3f}" if vf else ""
            print(f"{q:22s} {g['differ']:10.1e} {g['over_1_step']:8.1e} {g['mean_signed']:+8.4f}   {ls}  "
                  f"{rw['differ']:8.1e}  {fs}")
    if args.exact:
        e = res["derived_vs_float64"] = exact_layers(derive(m, uint8_input=True).model, xs)
        print(f"== derived form, values rounded differently from float64: {e}")
    if args.boxes:
        b = res["boxes_derived"] = boxes(path)
        for k in ("openvino", "onnxruntime_split"):
            print(f"== boxes, {k} vs ONNX Runtime (derived form), all {b['inputs']} inputs: {b[k]['all']}")
            for off, s in enumerate(b[k]["every_5th_by_offset"]):
                print(f"   every 5th, offset {off}: {s}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
