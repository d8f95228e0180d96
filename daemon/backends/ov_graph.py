"""The form of detectd's INT8 ``cpu`` Q/DQ model that OpenVINO runs fastest, derived in memory.

The ``cpu`` layout (``daemon/quant/qdq.py``) puts a QuantizeLinear/DequantizeLinear pair around
every node because that is what ONNX Runtime's CPU kernels need (QLinearConv, a QLinearLeakyRelu
lookup table, uint8 MaxPool). OpenVINO fuses differently: a convolution, its activation and the
next quantization run as one int8 kernel with post-ops, and a pool propagates the dequantization
of its input by itself. Two kinds of pair only cost it separate passes over memory:

- the pair between a Conv and its only consumer, an activation (LeakyRelu, Relu): with it,
  OpenVINO quantizes the convolution's output to 8 bits, then runs the activation as its own
  kernel and quantizes again; without it, convolution + activation + the activation's own
  quantization are one kernel. Numerically this removes one rounding (the activation now sees
  the exact int32 accumulation times the scales, as in FP32), so the derived model is at least
  as close to FP32 as the ``cpu`` model;
- the pair after a value-preserving op (MaxPool, nearest Resize) whose input is already
  dequantized with the same parameters (``qdq.share_ranges`` makes them equal): the max of
  values on the grid is on the grid, so the pair changes no value at all.

Measured with one inference thread (CPU seconds per inference, interleaved rounds, so shared-
machine noise mostly cancels): 9-11% less than the ``cpu`` model as written
(``bench/bench_openvino.py --sections bare``, ``ov_int8_cpu`` vs ``ov_int8``).

``uint8_input`` goes one step further: when the image's own pair is uint8 with zero point 0 and
scale 1/255 (the ``cpu`` layout's, for 0..1 pixels), the QuantizeLinear is dropped and the graph
input becomes the uint8 pixels themselves, so the letterbox writes 8-bit RGB (a quarter of the
bytes, no float conversion) and OpenVINO skips one pass. For every pixel value p,
QuantizeLinear(p/255) == p exactly (checked in tests/test_openvino.py), and the letterbox pad
0.5 quantizes to 127 in ONNX Runtime (0.5 * 255 = 127.49998 in float32, rounded down), so the
uint8 letterbox pads with 127: what ONNX Runtime computes on the float input, bit for bit.
This also keeps OpenVINO on the model's definition: its own FakeQuantize form of that
QuantizeLinear makes 128 of 0.5 (docs/openvino.md, "How close OpenVINO and ONNX Runtime are").

The derivation is a pure function of the ONNX graph; ONNX Runtime runs the derived model as well
(slowly), which is how the tests check that OpenVINO computes what the graph says: end to end
(boxes) and layer by layer (``quantized_tensors`` and ``layer`` cut a Q/DQ model into the
subgraphs between consecutive quantized tensors, so both engines can be fed the same 8-bit
inputs and compared step for step; ``bench/ov_vs_ort_tensors.py``, docs/openvino.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.utils
from onnx import TensorProto, numpy_helper

ACTIVATIONS = frozenset({"LeakyRelu", "Relu"})
PRESERVING = frozenset({"MaxPool", "Resize", "Upsample"})
PIXEL_SCALE = np.float32(1 / 255)


@dataclass(frozen=True)
class Derived:
    """The derived model and what was changed: pairs dropped by kind, and whether its input
    is now uint8 (N, 3, H, W) pixels 0..255."""

    model: onnx.ModelProto
    conv_act_pairs: int
    preserving_pairs: int
    uint8_input: bool


def _drop_pairs(graph: onnx.GraphProto, pick: set[str]) -> int:
    """Remove the Q/DQ pairs whose QuantizeLinear is named in `pick` (consumers of the DQ read
    the Q's input instead). Returns how many."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or n.name not in pick:
            continue
        (dq,) = consumers[n.output[0]]
        drop |= {id(n), id(dq)}
        rename[dq.output[0]] = n.input[0]
    keep = [n for n in graph.node if id(n) not in drop]
    for n in keep:
        for k, x in enumerate(n.input):
            if x in rename:
                n.input[k] = rename[x]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def _pairs(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Every (QuantizeLinear, DequantizeLinear) pair where the DQ is the Q's only consumer."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            c = consumers.get(n.output[0], [])
            if len(c) == 1 and c[0].op_type == "DequantizeLinear":
                out.append((n, c[0]))
    return out


def _qparams(graph: onnx.GraphProto, node: onnx.NodeProto) -> tuple[float, int, int] | None:
    """(scale, zero point, element type) of a per-tensor Q or DQ node, None if per-channel."""
    inits = {i.name: i for i in graph.initializer}
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    s, z = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    if s.size != 1 or z.size != 1:
        return None
    return float(s), int(z), inits[node.input[2]].data_type


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def quantize_pixels(x: np.ndarray) -> np.ndarray:
    """float32 0..1 (any shape) -> uint8, exactly as the dropped QuantizeLinear (scale 1/255,
    zero point 0) computes it: x / scale rounded half to even, saturated; so k/255 -> k and the
    letterbox pad 0.5 -> 127 (0.5 / float32(1/255) = 127.49999)."""
    q = np.rint(np.asarray(x, np.float32) / PIXEL_SCALE)
    return np.clip(q, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class QTensor:
    """One activation QuantizeLinear of a Q/DQ model: its 8-bit output `name` (element type
    `dtype`, TensorProto.UINT8 or INT8), the float tensor it quantizes (`source`), and its
    per-tensor `scale` and `zero_point`."""

    name: str
    source: str
    scale: float
    zero_point: int
    dtype: int


def quantized_tensors(model: onnx.ModelProto) -> list[QTensor]:
    """Every per-tensor activation QuantizeLinear of `model`, in graph order."""
    out = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            q = _qparams(model.graph, n)
            if q is not None:
                out.append(QTensor(n.output[0], n.input[0], *q))
    return out


def layer(model: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, list[str]]:
    """The subgraph that computes quantized tensor `name` from the nearest quantized tensors
    (or graph inputs) upstream of it, and those tensors' names, which are its inputs: e.g. for
    ``leaky_4_quantized`` of the derived form, DequantizeLinear(leaky_2_quantized) -> MaxPool ->
    Conv -> LeakyRelu -> QuantizeLinear. Raises KeyError when `name` is not a tensor of `model`."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    ins: list[str] = []
    stack = [producer[name].input[0]]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t in inits or not t:
            continue
        seen.add(t)
        p = producer.get(t)
        if t in graph_inputs or p is None or p.op_type == "QuantizeLinear":
            ins.append(t)
            continue
        stack.extend(p.input)
    sub = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(ins, [name])
    return sub, ins


def derive(model: onnx.ModelProto, uint8_input: bool = False) -> Derived:
    """The OpenVINO form of a ``cpu``-layout Q/DQ model (see the module docstring); a copy,
    `model` is not changed. A model without such pairs (FP32, the symmetric layout) comes back
    unchanged in content."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    conv_act: set[str] = set()
    preserving: set[str] = set()
    for q, dq in _pairs(g):
        src = producer.get(q.input[0])
        if src is None:
            continue
        users = consumers.get(dq.output[0], [])
        if (src.op_type == "Conv" and users and all(u.op_type in ACTIVATIONS for u in users)
                and len(consumers.get(q.input[0], [])) == 1):
            conv_act.add(q.name)
        elif src.op_type in PRESERVING and src.input and src.input[0] in producer:
            before = producer[src.input[0]]
            if before.op_type == "DequantizeLinear" and _qparams(g, before) == _qparams(g, q) \
                    and _qparams(g, q) is not None:
                preserving.add(q.name)
    n_conv = _drop_pairs(g, conv_act)
    n_pres = _drop_pairs(g, preserving)
    as_uint8 = False
    if uint8_input and len(g.input) == 1:
        name = g.input[0].name
        first = [n for n in g.node if name in n.input]
        if len(first) == 1 and first[0].op_type == "QuantizeLinear" \
                and _qparams(g, first[0]) is not None:
            scale, zp, dtype = _qparams(g, first[0])  # type: ignore[misc]
            if dtype == TensorProto.UINT8 and zp == 0 and np.float32(scale) == PIXEL_SCALE:
                q = first[0]
                for n in g.node:
                    for k, x in enumerate(n.input):
                        if x == q.output[0]:
                            n.input[k] = name
                g.node.remove(q)
                g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
                as_uint8 = True
    _drop_unused_initializers(g)
    return Derived(m, n_conv, n_pres, as_uint8)
