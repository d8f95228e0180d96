"""Darknet cfg + weights -> ONNX, built node by node with ``onnx.helper``.

The graph computes exactly the Darknet network up to each ``[yolo]`` layer; the YOLO decode
(sigmoid, grid offsets, anchors) is left to ``daemon.vision.yolo`` so that every backend -- ONNX
Runtime, a TensorRT engine, an INT8 Q/DQ model -- shares one decoder and the heads stay plain
convolution outputs, which is what INT8 calibration wants to see.

- Input ``images``: float32 ``(batch, C, H, W)``, RGB 0..1 letterboxed; ``batch`` is dynamic.
- Outputs: one per ``[yolo]`` layer, named ``yolo_<layer index>``, the raw output of the layer
  feeding it, shape ``(batch, A*(5+C), h, w)``.
- Batch norm is folded into the convolution: ``scale * (x - mean) / sqrt(var + eps) + bias``
  with ``eps = 1e-6``, the constant of Darknet (``.000001f``, which pjreddie's Darknet adds to
  the square root rather than to the variance) and of OpenCV's Darknet importer. Measured
  against OpenCV on the real weights: eps 1e-6 agrees to ~7e-6 relative, eps 1e-5 (the usual
  framework default) only to ~4e-5.
- Leaky ReLU has slope 0.1 (Darknet's ``leaky``).
- Darknet's maxpool padding (``size - 1`` by default, split before/after) maps to ONNX MaxPool
  ``pads``; ONNX excludes padded cells from the max, as Darknet does.
- ``[route]`` is a Concat on channels (or an Identity for one layer), ``[upsample]`` a nearest
  Resize with integer scales (and a Mul when ``scale != 1``).

Metadata (``metadata_props``), read back by ``daemon.models.info.ModelInfo``:
``detectd.heads`` (JSON list of ``{"name", "anchors": [[w, h], ...] input pixels, "classes"}``
in output order), ``detectd.labels`` (JSON list of class names), ``detectd.input`` (JSON
``{"name", "width", "height"}``) and ``detectd.source_sha256`` (SHA-256 over the cfg bytes
followed by the weights bytes, so a cache can tell which Darknet files an ONNX file came from).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from daemon.atomic import write_bytes
from daemon.digest import sha256_file

from daemon.models.darknet import (
    ConvLayer,
    DarknetError,
    MaxPoolLayer,
    RouteLayer,
    UpsampleLayer,
    YoloLayer,
    load_cfg,
    load_weights,
)

__all__ = ["export_onnx", "build_model", "read_labels", "BN_EPS", "OPSET", "INPUT_NAME"]

BN_EPS = 1e-6
LEAKY_ALPHA = 0.1
OPSET = 17
INPUT_NAME = "images"


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (Darknet ``.names``); blank lines are skipped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def build_model(
    cfg_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    names_path: str | os.PathLike[str] | None = None,
) -> onnx.ModelProto:
    """The ONNX model for a Darknet cfg + weights (see the module docstring)."""
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    network = load_cfg(cfg_path)
    weights = load_weights(weights_path, network)

    yolos = network.yolos
    classes = {y.classes for y in yolos}
    if len(classes) != 1:
        raise DarknetError(f"{cfg_path}: [yolo] layers disagree on classes: {sorted(classes)}")
    num_classes = classes.pop()
    if names_path is not None:
        labels = read_labels(names_path)
        if len(labels) != num_classes:
            raise DarknetError(
                f"{names_path}: {len(labels)} class names, but {cfg_path.name} has "
                f"classes={num_classes}"
            )
    else:
        labels = [f"class_{i}" for i in range(num_classes)]

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs_of: list[str] = []  # ONNX tensor holding each Darknet layer's output
    current = INPUT_NAME

    for layer in network.layers:
        i = layer.index
        if isinstance(layer, ConvLayer):
            kernel, bias = weights.convs[i].folded(BN_EPS)
            inits.append(numpy_helper.from_array(kernel, f"conv_{i}.weight"))
            inits.append(numpy_helper.from_array(bias, f"conv_{i}.bias"))
            p = layer.padding
            out = f"conv_{i}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, f"conv_{i}.weight", f"conv_{i}.bias"],
                    [out],
                    name=f"conv_{i}",
                    kernel_shape=[layer.size, layer.size],
                    strides=[layer.stride, layer.stride],
                    pads=[p, p, p, p],
                )
            )
            if layer.activation == "leaky":
                nodes.append(
                    helper.make_node(
                        "LeakyRelu", [out], [f"leaky_{i}"], name=f"leaky_{i}", alpha=LEAKY_ALPHA
                    )
                )
                out = f"leaky_{i}"
            current = out
        elif isinstance(layer, MaxPoolLayer):
            before = layer.padding // 2
            after = layer.padding - before
            out = f"maxpool_{i}"
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [current],
                    [out],
                    name=out,
                    kernel_shape=[layer.size, layer.size],
                    strides=[layer.stride, layer.stride],
                    pads=[before, before, after, after],
                )
            )
            current = out
        elif isinstance(layer, RouteLayer):
            out = f"route_{i}"
            for j in layer.layers:
                # Darknet's [yolo] output is its activated input, which no supported cfg routes.
                if isinstance(network.layers[j], YoloLayer):
                    raise DarknetError(
                        f"{cfg_path}: route layer {i} reads [yolo] layer {j}: not supported"
                    )
            sources = [outputs_of[j] for j in layer.layers]
            if len(sources) == 1:
                nodes.append(helper.make_node("Identity", sources, [out], name=out))
            else:
                nodes.append(helper.make_node("Concat", sources, [out], name=out, axis=1))
            current = out
        elif isinstance(layer, UpsampleLayer):
            out = f"upsample_{i}"
            scales = np.array([1, 1, layer.stride, layer.stride], dtype=np.float32)
            inits.append(numpy_helper.from_array(scales, f"upsample_{i}.scales"))
            nodes.append(
                helper.make_node(
                    "Resize",
                    [current, "", f"upsample_{i}.scales"],
                    [out],
                    name=out,
                    mode="nearest",
                    coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor",
                )
            )
            if layer.scale != 1.0:
                inits.append(
                    numpy_helper.from_array(np.array(layer.scale, np.float32), f"upsample_{i}.mul")
                )
                nodes.append(
                    helper.make_node(
                        "Mul", [out, f"upsample_{i}.mul"], [f"{out}_scaled"], name=f"{out}_scaled"
                    )
                )
                out = f"{out}_scaled"
            current = out
        elif isinstance(layer, YoloLayer):
            # The head output is the yolo layer's input; a named Identity gives it a stable name.
            out = f"yolo_{i}"
            nodes.append(helper.make_node("Identity", [current], [out], name=out))
            current = out
        outputs_of.append(current)

    c, h, w = network.net.channels, network.net.height, network.net.width
    graph_inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])]
    graph_outputs = []
    heads = []
    for y in yolos:
        ch, hh, ww = network.shapes[y.index]
        graph_outputs.append(
            helper.make_tensor_value_info(f"yolo_{y.index}", TensorProto.FLOAT, ["batch", ch, hh, ww])
        )
        heads.append(
            {
                "name": f"yolo_{y.index}",
                "anchors": [[float(a), float(b)] for a, b in y.masked_anchors],
                "classes": y.classes,
            }
        )

    graph = helper.make_graph(
        nodes, network.path.stem.replace("-", "_") or "darknet", graph_inputs, graph_outputs, inits
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="detectd",
        doc_string=f"exported from {cfg_path.name} + {weights_path.name} "
        f"(darknet weights v{weights.major}.{weights.minor}.{weights.revision})",
    )
    # An IR version every ONNX Runtime >= 1.17 reads, whatever onnx wrote by default.
    model.ir_version = min(model.ir_version, 9)
    helper.set_model_props(
        model,
        {
            "detectd.heads": json.dumps(heads),
            "detectd.labels": json.dumps(labels),
            "detectd.input": json.dumps({"name": INPUT_NAME, "width": w, "height": h}),
            "detectd.source_sha256": sha256_file(cfg_path, weights_path),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(
    cfg_path: str | os.PathLike[str],
    weights_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    names_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Export a Darknet YOLO model to ONNX at ``out_path`` (written atomically); return the path."""
    model = build_model(cfg_path, weights_path, names_path)
    out_path = Path(out_path)
    write_bytes(out_path, model.SerializeToString())
    return out_path
