"""Why OpenVINO computes the symmetric (``tensorrt``) Q/DQ model differently: a minimal graph.

    Concat(a, b) -> QuantizeLinear/DequantizeLinear (int8, zero point 0) -> Conv (int8 weights)

ONNX Runtime (graph optimizations off: every Q/DQ as written) is the reference. OpenVINO maps
the signed int8 interval to u8 on each Concat input and runs the Concat and the Conv in u8; the
result is as if the quantization step were 1 instead of the scale (with identity weights it
returns round(x)): every output is wrong, not only negative or saturated values. The same graph
with uint8 asymmetric Q/DQ (the ``cpu`` layout) is exact, and so is the symmetric one when the
Concat is taken out of the quantized path: the Conv split over the Concat's inputs and summed
(conv(concat(a, b), W) = conv(a, W_a) + conv(b, W_b), the same Q/DQ scale on both inputs),
which is the same arithmetic in ONNX Runtime to the last bit.

    .venv/bin/python bench/ov_concat_qdq.py   # prints the max error of each form
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

C = 48
SCALE = 4.0 / 127


def model(form: str, zero_point: int = 0, dtype: type = np.int8) -> onnx.ModelProto:
    """`form`: "after" (Q/DQ on the Concat output: the symmetric layout), "before" (on each
    input), "split" (Q/DQ on each input, the Conv split per input and summed, no Concat)."""
    ins = [h.make_tensor_value_info("a", T.FLOAT, [1, 16, 8, 8]),
           h.make_tensor_value_info("b", T.FLOAT, [1, 32, 8, 8])]
    wq = np.eye(C, dtype=np.int8)[:, :, None, None] * 127  # identity: the Conv shows its input
    inits = [nh.from_array(np.array(SCALE, np.float32), "s"), nh.from_array(np.array(zero_point, dtype), "zp"),
             nh.from_array(np.full(C, 1 / 127, np.float32), "ws"), nh.from_array(np.zeros(C, np.int8), "wz"),
             nh.from_array(wq, "wq"), nh.from_array(wq[:, :16], "wqa"), nh.from_array(wq[:, 16:], "wqb")]
    nodes: list[onnx.NodeProto] = []

    def qdq(x: str) -> str:
        nodes.extend([h.make_node("QuantizeLinear", [x, "s", "zp"], [x + "q"]),
                      h.make_node("DequantizeLinear", [x + "q", "s", "zp"], [x + "d"])])
        return x + "d"

    def weight(name: str) -> str:
        nodes.append(h.make_node("DequantizeLinear", [name, "ws", "wz"], [name + "d"], axis=0))
        return name + "d"

    if form == "split":
        a, b = qdq("a"), qdq("b")
        nodes += [h.make_node("Conv", [a, weight("wqa")], ["ya"]), h.make_node("Conv", [b, weight("wqb")], ["yb"]),
                  h.make_node("Add", ["ya", "yb"], ["y"])]
    else:
        a, b = (qdq("a"), qdq("b")) if form == "before" else ("a", "b")
        nodes.append(h.make_node("Concat", [a, b], ["c"], axis=1))
        c = qdq("c") if form == "after" else "c"
        nodes.append(h.make_node("Conv", [c, weight("wq")], ["y"]))
    g = h.make_graph(nodes, "g", ins, [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def errors() -> dict[str, float]:
    """Max |OpenVINO - ONNX Runtime| of each form, in quantization steps."""
    rng = np.random.default_rng(0)
    feed = {"a": (rng.normal(size=(1, 16, 8, 8)) * 0.5).astype(np.float32),
            "b": (rng.normal(size=(1, 32, 8, 8)) * 0.5).astype(np.float32)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3  # unused initializers of the other forms
    core = ov.Core()
    out = {}
    for name, m in (("int8 symmetric, Q/DQ after Concat", model("after")),
                    ("int8 symmetric, Q/DQ on each Concat input", model("before")),
                    ("int8 symmetric, Conv split per input (no Concat)", model("split")),
                    ("uint8 asymmetric, Q/DQ after Concat", model("after", 128, np.uint8))):
        ref = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]
        got = core.compile_model(core.read_model(m.SerializeToString(), b""), "CPU",
                                 {"INFERENCE_PRECISION_HINT": "f32"})(feed)[0]
        out[name] = float(np.abs(got - ref).max() / SCALE)
    return out


if __name__ == "__main__":
    print(f"OpenVINO {ov.get_version()}, ONNX Runtime {ort.__version__}")
    for k, v in errors().items():
        print(f"{k:50s} max error {v:8.2f} steps")


def split_concat_convs(m: onnx.ModelProto) -> onnx.ModelProto:
    """The symmetric model with every Concat -> Q/DQ -> Conv replaced by per-input Q/DQ (the
    Concat's scale), per-input Convs on the matching weight slices, and an Add: the same
    arithmetic, no Concat in OpenVINO's quantized path. TensorRT fuses the Add into the second
    convolution as a residual; whether it keeps both in int8 was not measured here (no GPU)."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    g = m2.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
    new_nodes: list[onnx.NodeProto] = []
    for n in g.node:
        dq = prod.get(n.input[0]) if n.op_type == "Conv" else None
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        cat = prod.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if cat is None or cat.op_type != "Concat":
            new_nodes.append(n)
            continue
        wdq = prod[n.input[1]]
        w = nh.to_array(inits[wdq.input[0]])
        parts, start = [], 0
        for k, x in enumerate(cat.input):
            c = shapes[x][1]
            wn = f"{wdq.input[0]}_part{k}"
            g.initializer.append(nh.from_array(w[:, start:start + c], wn))
            start += c
            xq, xd, wd, y = f"{x}_q{k}", f"{x}_dq{k}", f"{wn}_dq", f"{n.output[0]}_part{k}"
            new_nodes += [h.make_node("QuantizeLinear", [x, q.input[1], q.input[2]], [xq]),
                          h.make_node("DequantizeLinear", [xq, q.input[1], q.input[2]], [xd]),
                          h.make_node("DequantizeLinear", [wn, wdq.input[1], wdq.input[2]], [wd], axis=0)]
            conv = h.make_node("Conv", [xd, wd] + (list(n.input[2:]) if k == 0 else []), [y])
            conv.attribute.extend(n.attribute)
            new_nodes.append(conv)
            parts.append(y)
        acc = parts[0]
        for k, p in enumerate(parts[1:]):
            out = n.output[0] if k == len(parts) - 2 else f"{n.output[0]}_sum{k}"
            new_nodes.append(h.make_node("Add", [acc, p], [out]))
            acc = out
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for nd in g.node for i in nd.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m2
