"""Write explicitly quantized (QuantizeLinear / DequantizeLinear) ONNX models.

Two layouts come from the same activation statistics:

``tensorrt``
    What TensorRT's explicit-quantization builder fuses (its "Q/DQ placement" recommendations):
    a Q/DQ pair on the activation input of every convolution and a DequantizeLinear on every
    convolution weight (int8 initializer, per output channel, axis 0). Everything int8 and
    symmetric, zero points 0; activation scale = clipping threshold / 127 (the threshold the
    calibration method chose: percentile, entropy, mse or max), weight scale =
    max |w_c| / 127. Biases stay float: TensorRT folds them, and its Q/DQ types are
    int8/fp8/int4/fp4, not int32. TensorRT propagates these scales through MaxPool, Resize and
    Concat itself.

``cpu``
    What ONNX Runtime's CPU kernels run fastest (measured in bench/bench_int8.py): every
    activation between graph input and the head convolutions quantized to uint8 *asymmetric*
    (u8 x s8 is the fast VNNI / AVX2 path of its GEMM), weights int8 per channel symmetric,
    biases int32 with scale s_x * s_w. With Q/DQ around every node, ORT's QDQ transformer turns
    Conv into QLinearConv, LeakyRelu into a QLinearLeakyRelu lookup table, Concat into
    QLinearConcat, and runs MaxPool and Resize directly on uint8 (their input and output share
    one scale, so it drops their Q/DQ); the whole trunk stays in 8 bits with no float round
    trips. The two yolo head convolutions keep a float output (their raw logits and box
    offsets mix very different ranges in one tensor and feed exp()); they are ~2% of the
    multiply-adds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.quant.histogram import TensorStats

TARGETS = ("tensorrt", "cpu")

# Ops whose output values are a subset of their input's values: the output shares the input's
# quantization parameters, which lets ORT run them on 8-bit data and lets TensorRT propagate.
VALUE_PRESERVING = frozenset(
    {"MaxPool", "Pad", "Resize", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze",
     "Unsqueeze", "Upsample"}
)
MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: int  # TensorProto.INT8 or TensorProto.UINT8


def share_ranges(model: onnx.ModelProto, stats: Mapping[str, TensorStats]
                 ) -> dict[str, TensorStats]:
    """Statistics with every tensor that must share quantization parameters given one range
    that covers all of them.

    - A value-preserving op (MaxPool, nearest Resize/Upsample, Identity, reshapes) runs on 8-bit
      data only when its input and output share one scale (ONNX Runtime's uint8 MaxPool and
      Resize; TensorRT propagates a Q/DQ scale through them the same way). Input and output get
      one range: min of the minima, max of the maxima, the larger threshold. Taking the input's
      own range for the output (the first `cpu` layout did) clips the next convolution's input
      at the preceding LeakyRelu's threshold whenever the pool's own is larger. TensorRT's
      tables show the same convention (its `002_maxpool` scale equals `001_..._lrelu`).
    - A Concat (Darknet's route) writes each input into one output tensor: in TensorRT as a
      no-op only with one scale, in ONNX Runtime's QLinearConcat by requantizing every input to
      the output's scale. So the output's range covers each input's range; the inputs keep
      their own (they have other consumers).

    Idempotent; tensors without statistics are left out of every group."""
    out = dict(stats)
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for node in model.graph.node:
        if node.op_type in VALUE_PRESERVING and node.input and node.output:
            a, b = node.input[0], node.output[0]
            if a in out and b in out:
                parent[find(b)] = find(a)
    concats = [(n.output[0], [i for i in n.input if i in out]) for n in model.graph.node
               if n.op_type == "Concat" and n.output and n.output[0] in out]

    def merge(names: Iterable[str]) -> TensorStats | None:
        group = [out[n] for n in names]
        if not group:
            return None
        return TensorStats("", min(g.min for g in group), max(g.max for g in group),
                           max(g.threshold for g in group))

    for _ in range(4):  # a concat feeding a pool feeding a concat: settle in a few rounds
        groups: dict[str, list[str]] = {}
        for name in out:
            groups.setdefault(find(name), []).append(name)
        for members in groups.values():
            m = merge(members)
            if m is not None and len(members) > 1:
                for n in members:
                    out[n] = TensorStats(n, m.min, m.max, m.threshold)
        changed = False
        for c, inputs in concats:
            m = merge([c, *inputs])
            if m is not None and (m.min, m.max, m.threshold) != (out[c].min, out[c].max,
                                                                   out[c].threshold):
                out[c] = TensorStats(c, m.min, m.max, m.threshold)
                changed = True
        if not changed:
            break
    return out


def symmetric_int8(threshold: float) -> QParams:
    scale = float(threshold) / 127.0
    if not np.isfinite(scale) or scale <= 0.0:
        scale = 1.0  # an all-zero tensor: any positive scale is exact
    return QParams(float(np.float32(scale)), 0, TensorProto.INT8)


def asymmetric_uint8(lo: float, hi: float) -> QParams:
    lo = min(float(lo), 0.0)  # zero must be exactly representable (padding, LeakyRelu's knee)
    hi = max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return QParams(1.0, 0, TensorProto.UINT8)
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return QParams(scale, zp, TensorProto.UINT8)


def uint8_params(stats: TensorStats, clip: bool = True) -> QParams:
    """The range is the observed [min, max], clipped on both sides at the calibration
    method's threshold of |x| (the same outlier rejection TensorRT applies, kept asymmetric)."""
    lo, hi = stats.min, stats.max
    if clip and stats.threshold > 0.0:
        lo, hi = max(lo, -stats.threshold), min(hi, stats.threshold)
    return asymmetric_uint8(lo, hi)


def quantize_weight_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (axis 0), scale = max |w_c| / 127."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = np.where(flat > 0, flat / 127.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


class _Builder:
    """Accumulates the new node list and initializers of a quantized copy of a graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_inits: list[TensorProto] = []
        self.dropped_inits: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(array, name))
        return name

    def qdq(self, tensor: str, p: QParams) -> str:
        """Q then DQ of `tensor`; returns the dequantized name."""
        np_dtype = np.int8 if p.dtype == TensorProto.INT8 else np.uint8
        scale = self.const(f"{tensor}_scale", np.array(p.scale, np.float32))
        zp = self.const(f"{tensor}_zero_point", np.array(p.zero_point, np_dtype))
        q, dq = f"{tensor}_quantized", f"{tensor}_dequantized"
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [q],
                                           name=f"{tensor}_QuantizeLinear"))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq],
                                           name=f"{tensor}_DequantizeLinear"))
        return dq

    def weight(self, name: str) -> tuple[str, np.ndarray]:
        """int8 per-channel weight + DequantizeLinear; returns (dequantized name, scales)."""
        w = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        q, scale = quantize_weight_per_channel(w)
        return self.per_channel_dq(name, q, scale), scale

    def per_channel_dq(self, name: str, q: np.ndarray, scale: np.ndarray) -> str:
        """Replace initializer `name` by its quantized form `q` (per axis-0 `scale`, zero
        points 0 of q's type) and a DequantizeLinear; returns the dequantized name."""
        qn = self.const(f"{name}_quantized", q)
        sn = self.const(f"{name}_scale", scale)
        zn = self.const(f"{name}_zero_point", np.zeros(scale.shape, q.dtype))
        dq = f"{name}_dequantized"
        self.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [dq], axis=0,
                                           name=f"{name}_DequantizeLinear"))
        self.dropped_inits.add(name)
        return dq

    def bias_int32(self, name: str, act_scale: float, w_scale: np.ndarray) -> str:
        b = numpy_helper.to_array(self.inits[name]).astype(np.float64)
        scale = (np.float64(act_scale) * w_scale.astype(np.float64)).astype(np.float32)
        q = np.clip(np.rint(b / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        return self.per_channel_dq(name, q, scale)

    def finish(self) -> onnx.ModelProto:
        used = {i for n in self.nodes for i in n.input}
        keep = [i for i in self.graph.initializer
                if not (i.name in self.dropped_inits and i.name not in used)]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep + self.new_inits)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        for op in self.model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < MIN_OPSET:
                op.version = MIN_OPSET
        # Shapes recorded for the float graph stay valid; drop stale value_info anyway.
        del self.graph.value_info[:]
        return self.model


def _is_weight_conv(node: onnx.NodeProto, inits: Mapping[str, TensorProto]) -> bool:
    return node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in inits


def conv_inputs(model: onnx.ModelProto) -> list[str]:
    """The activation inputs of the weight convolutions, in graph order, each once: the tensors
    the ``tensorrt`` layout quantizes and mixed precision may keep in float."""
    inits = {i.name: i for i in model.graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if _is_weight_conv(n, inits)))


# Element-wise and monotone non-decreasing: clipping the input clips the output alike.
_MONOTONE = frozenset({"LeakyRelu", "Relu"})


def float_group(model: onnx.ModelProto, tensor: str) -> set[str]:
    """`tensor` and every tensor whose clipping would clip it: walking back through
    value-preserving ops (MaxPool...), monotone activations (LeakyRelu, Relu) and every input
    of a Concat (route), to the ops that compute the values (``maxpool_1`` -> ``leaky_0`` ->
    ``conv_0``). Keeping a convolution's input in float in the ``cpu`` layout means leaving this
    whole group unquantized (the pre-activation ``conv_0`` clipped at its own threshold would
    clip ``maxpool_1`` just the same)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    group: set[str] = set()
    todo = [tensor]
    while todo:
        name = todo.pop()
        if name in group:
            continue
        group.add(name)
        node = producer.get(name)
        if node is None or not node.input:
            continue
        if node.op_type == "Concat":
            todo.extend(node.input)
        elif node.op_type in VALUE_PRESERVING | _MONOTONE:
            todo.append(node.input[0])
    return group


def float_tensors(model: onnx.ModelProto, target: str, float_inputs: Iterable[str]) -> set[str]:
    """The tensors `target`'s layout leaves unquantized when `float_inputs` (convolution
    inputs) are kept float: those inputs themselves (``tensorrt``, which quantizes only
    convolution inputs), or the ``float_group`` of each (``cpu``, which quantizes every tensor)."""
    if target == "cpu":
        return {g for t in float_inputs for g in float_group(model, t)}
    return set(float_inputs)


def quantize_tensorrt(model: onnx.ModelProto, stats: Mapping[str, TensorStats],
                      float_inputs: Iterable[str] = ()) -> onnx.ModelProto:
    """Q/DQ on every Conv's activation input and weight; int8 symmetric, zero points 0. A
    convolution whose input is in `float_inputs` keeps float input and weights (TensorRT runs
    it in higher precision: mixed precision, docs/int8.md)."""
    b = _Builder(model)
    keep = set(float_inputs)
    dq_of: dict[str, str] = {}
    for node in model.graph.node:
        if _is_weight_conv(node, b.inits) and node.input[0] not in keep:
            x = node.input[0]
            if x not in dq_of:
                if x not in stats:
                    raise KeyError(f"no calibration statistics for conv input {x!r}")
                dq_of[x] = b.qdq(x, symmetric_int8(stats[x].threshold))
            wdq, _ = b.weight(node.input[1])
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.input[0] = dq_of[x]
            new.input[1] = wdq
            b.nodes.append(new)
        else:
            b.nodes.append(node)
    return b.finish()


def cpu_params(model: onnx.ModelProto, stats: Mapping[str, TensorStats]) -> dict[str, QParams]:
    """uint8 parameters for every tensor the CPU layout quantizes, shared through
    value-preserving ops (their output takes their input's parameters)."""
    graph_inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    params: dict[str, QParams] = {}
    for name in graph_inputs:
        if name in stats:
            # the network input is 0..1 pixels: keep its full range, 1/255 steps
            params[name] = uint8_params(stats[name], clip=False)
    for node in model.graph.node:
        if not node.output or node.output[0] in outputs:
            continue
        out = node.output[0]
        if node.op_type in VALUE_PRESERVING and node.input and node.input[0] in params:
            params[out] = params[node.input[0]]
        elif out in stats:
            params[out] = uint8_params(stats[out])
    return params


def _head_producers(model: onnx.ModelProto) -> set[str]:
    """Tensors that reach a graph output only through value-preserving ops (the raw heads)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    heads: set[str] = set()
    for out in model.graph.output:
        name = out.name
        heads.add(name)
        while name in producer and producer[name].op_type in VALUE_PRESERVING:
            name = producer[name].input[0]
            heads.add(name)
    return heads


def quantize_cpu(model: onnx.ModelProto, stats: Mapping[str, TensorStats],
                 float_inputs: Iterable[str] = ()) -> onnx.ModelProto:
    """uint8 asymmetric activations everywhere in the trunk, int8 per-channel weights, int32
    biases; head convolutions dequantize to float. For each tensor of `float_inputs` its
    `float_group` stays float, and so do the weights of the convolutions it feeds."""
    b = _Builder(model)
    unquantized = _head_producers(model) | float_tensors(model, "cpu", float_inputs)
    params = {k: v for k, v in cpu_params(model, stats).items() if k not in unquantized}
    dq_of: dict[str, str] = {}

    def emit(tensor: str) -> None:
        if tensor in params and tensor not in dq_of:
            dq_of[tensor] = b.qdq(tensor, params[tensor])

    for inp in model.graph.input:
        emit(inp.name)
    for node in model.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, name in enumerate(node.input):
            # data inputs only: Concat takes all, the others their first input
            if name in dq_of and (k == 0 or node.op_type == "Concat"):
                new.input[k] = dq_of[name]
        if _is_weight_conv(node, b.inits) and node.input[0] in params:
            wdq, w_scale = b.weight(node.input[1])
            new.input[1] = wdq
            if len(node.input) > 2 and node.input[2] in b.inits:
                new.input[2] = b.bias_int32(node.input[2], params[node.input[0]].scale, w_scale)
        b.nodes.append(new)
        for out in node.output:
            emit(out)
    return b.finish()


def quantize_model(
    model: onnx.ModelProto,
    stats: Mapping[str, TensorStats],
    target: str,
    metadata: Mapping[str, str] | None = None,
    float_inputs: Iterable[str] = (),
) -> onnx.ModelProto:
    """The quantized copy for `target`, with the FP32 model's metadata_props kept and
    `detectd.precision`, `detectd.quant_target`, `detectd.float_tensors` (the convolution
    inputs kept in float, comma-separated, empty when none) and `metadata` added.
    `float_inputs`: convolution inputs (`conv_inputs`) left unquantized (mixed precision,
    daemon.quant.fallback); another name raises ValueError."""
    float_inputs = list(dict.fromkeys(float_inputs))
    unknown = set(float_inputs) - set(conv_inputs(model))
    if unknown:
        raise ValueError(f"not a convolution input, cannot be kept in float: {sorted(unknown)}")
    stats = share_ranges(model, stats)
    if target == "tensorrt":
        q = quantize_tensorrt(model, stats, float_inputs)
    elif target == "cpu":
        q = quantize_cpu(model, stats, float_inputs)
    else:
        raise ValueError(f"unknown quantization target {target!r} (expected one of {TARGETS})")
    extra = {"detectd.precision": "int8", "detectd.quant_target": target,
             "detectd.float_tensors": ",".join(float_inputs), **(metadata or {})}
    props = {p.key: p.value for p in q.metadata_props}
    props.update(extra)
    del q.metadata_props[:]
    for k, v in props.items():
        q.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    q.producer_name = "detectd.quant"
    onnx.checker.check_model(q)
    return q


def describe(model: onnx.ModelProto) -> str:
    """One line: op counts of a quantized model (for logs)."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return json.dumps(counts, sort_keys=True)
