"""Thresholds from another tool's TensorRT calibration cache, mapped onto detectd's tensors.

The reference is the cache TensorRT 7.1.3's IInt8EntropyCalibrator2 wrote for the same COCO
YOLOv3-Tiny weights (jkjung-avt/tensorrt_demos, kept in ``bench/data/``). Its tensor names follow
that repository's ONNX export, ``NNN_<layer>`` with NNN the Darknet layer's position counted from 1
(``000_net`` is the input), and detectd's exporter names a tensor ``<kind>_<i>`` with ``i`` the
Darknet layer counted from 0. A layer's batch-normalized output (``001_convolutional_bn``) is
detectd's convolution output (the exporter folds batch norm into the convolution), its activation
(``001_convolutional_lrelu``) detectd's ``leaky_0``; a convolution without batch norm (the heads)
is ``016_convolutional``. Identity tensors (a one-input route, the yolo outputs) take the
threshold of the tensor they repeat.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import onnx

from daemon.quant.cache import parse_table
from daemon.quant.histogram import TensorStats

_KIND = {"maxpool": ("maxpool",), "upsample": ("upsample",), "route": ("route",),
         "leaky": ("convolutional_lrelu",), "conv": ("convolutional_bn", "convolutional")}


def trt_name_candidates(tensor: str, input_name: str) -> tuple[str, ...]:
    """The reference cache's names for one of detectd's tensors, most specific first."""
    if tensor == input_name:
        return ("000_net",)
    m = re.fullmatch(r"([a-z]+)_(\d+)", tensor)
    if not m or m.group(1) not in _KIND:
        return ()
    pos = int(m.group(2)) + 1
    return tuple(f"{pos:03d}_{suffix}" for suffix in _KIND[m.group(1)])


def map_reference_table(model: onnx.ModelProto, text: str,
                        own: Mapping[str, TensorStats]) -> tuple[dict[str, TensorStats],
                                                                 list[str]]:
    """(statistics with the reference table's thresholds (scale * 127), the tensors of `own`
    it has no entry for). Min and max come from `own` (detectd's calibration of the same
    model): a TensorRT table holds one symmetric scale per tensor, and the `cpu` layout's
    asymmetric uint8 range is that threshold applied to the observed range."""
    _, scales = parse_table(text)
    input_name = model.graph.input[0].name
    aliases = {n.output[0]: n.input[0] for n in model.graph.node
               if n.op_type == "Identity" and n.input and n.output}
    out: dict[str, TensorStats] = {}
    missing: list[str] = []
    for name, s in own.items():
        src = name
        for _ in range(4):
            if any(c in scales for c in trt_name_candidates(src, input_name)):
                break
            src = aliases.get(src, src)
        hit = next((c for c in trt_name_candidates(src, input_name) if c in scales), None)
        if hit is None:
            missing.append(name)
            out[name] = s
            continue
        out[name] = TensorStats(name, s.min, s.max, scales[hit] * 127.0)
    return out, missing
