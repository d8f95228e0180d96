"""What the rest of detectd needs to know about an ONNX model: input, YOLO heads, labels.

``ModelInfo.from_onnx`` reads the ``metadata_props`` that ``daemon.models.export`` writes
(``detectd.heads``, ``detectd.labels``, ``detectd.input``). Only the graph header is parsed
(``onnx.load(..., load_external_data=False)``); the weights are not decoded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from daemon.errors import DetectdError
from daemon.digest import sha256_file
from daemon.vision.yolo import HeadSpec

__all__ = ["ModelInfo", "ModelInfoError", "HeadSpec", "YOLOV3_TINY_ANCHORS"]

log = logging.getLogger(__name__)

# YOLOv3-Tiny's COCO anchors (input pixels at 416x416), per head in output order: the 13x13
# head (mask 3,4,5) first, then the 26x26 head (mask 0,1,2) -- the order of the [yolo] layers.
YOLOV3_TINY_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)),
    ((10.0, 14.0), (23.0, 27.0), (37.0, 58.0)),
)


class ModelInfoError(DetectdError, ValueError):
    """The ONNX file lacks what detectd needs, or has it in a form it cannot use."""


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    input_name: str
    width: int
    height: int
    heads: list[HeadSpec]
    labels: list[str]
    sha256: str  # of the ONNX file: keys engine and calibration caches

    @property
    def output_names(self) -> list[str]:
        return [h.name for h in self.heads]

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        *,
        heads: Sequence[HeadSpec] | None = None,
        labels: Sequence[str] | None = None,
    ) -> "ModelInfo":
        """Read a model's description from its ONNX file.

        A file written by ``detectd export-onnx`` carries everything in its metadata, and
        ``heads``/``labels`` given here then override it. For a user's own ONNX file without
        detectd metadata:

        - the input name and size come from the graph's single input (its H and W must be
          fixed numbers);
        - ``heads`` may be given explicitly; otherwise, if the graph has exactly two outputs
          shaped like YOLOv3-Tiny heads (``3*(5+C)`` channels), they are taken in output order
          with YOLOv3-Tiny's COCO anchors (in input pixels whatever the input size, as in
          Darknet, which divides them by the network size), and a warning is
          logged, because wrong anchors give plausible-looking but wrong boxes silently;
        - ``labels`` may be given; otherwise ``class_0``, ``class_1``, ... (with a warning).

        Anything else is a ``ModelInfoError`` naming the file and what is missing.
        """
        path = Path(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError, OSError, ...: one clear message
            raise ModelInfoError(f"{path}: cannot read ONNX model: {e}") from e
        meta = {p.key: p.value for p in model.metadata_props}

        def parse(key: str) -> Any:
            try:
                return json.loads(meta[key])
            except (json.JSONDecodeError, TypeError) as e:
                raise ModelInfoError(f"{path}: metadata {key} is not valid JSON: {e}") from None

        init_names = {i.name for i in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in init_names]
        outputs = {o.name: _dims(o) for o in model.graph.output}

        if "detectd.input" in meta:
            inp = parse("detectd.input")
            try:
                input_name, width, height = str(inp["name"]), int(inp["width"]), int(inp["height"])
            except (KeyError, TypeError, ValueError):
                raise ModelInfoError(
                    f"{path}: metadata detectd.input needs name, width, height: {inp!r}"
                ) from None
        else:
            if len(graph_inputs) != 1:
                raise ModelInfoError(
                    f"{path}: has {len(graph_inputs)} inputs and no detectd.input metadata; "
                    "detectd needs one image input (N, 3, H, W)"
                )
            dims = _dims(graph_inputs[0])
            if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
                raise ModelInfoError(
                    f"{path}: input {graph_inputs[0].name!r} has shape {dims}; detectd needs "
                    "(N, 3, H, W) with fixed H and W"
                )
            input_name, height, width = graph_inputs[0].name, int(dims[2]), int(dims[3])

        head_list: list[HeadSpec]
        if heads is not None:
            head_list = list(heads)
        elif "detectd.heads" in meta:
            try:
                head_list = [
                    HeadSpec(
                        name=str(h["name"]),
                        anchors=np.asarray(h["anchors"], dtype=np.float32).reshape(-1, 2),
                        classes=int(h["classes"]),
                    )
                    for h in parse("detectd.heads")
                ]
            except (KeyError, TypeError, ValueError) as e:
                raise ModelInfoError(
                    f"{path}: metadata detectd.heads is malformed ({e}); expected a list of "
                    '{"name", "anchors": [[w, h], ...], "classes"}'
                ) from None
        else:
            head_list = cls._guess_yolov3_tiny_heads(path, outputs)

        for h in head_list:
            if h.name not in outputs:
                raise ModelInfoError(
                    f"{path}: head {h.name!r} is not an output of the graph "
                    f"(outputs: {', '.join(outputs)})"
                )
            channels = outputs[h.name][1] if len(outputs[h.name]) == 4 else None
            expected = len(h.anchors) * (5 + h.classes)
            if isinstance(channels, int) and channels != expected:
                raise ModelInfoError(
                    f"{path}: output {h.name!r} has {channels} channels, but "
                    f"{len(h.anchors)} anchors and {h.classes} classes need {expected}"
                )
        if not head_list:
            raise ModelInfoError(f"{path}: no YOLO heads")

        num_classes = max(h.classes for h in head_list)
        if labels is not None:
            label_list = list(labels)
        elif "detectd.labels" in meta:
            label_list = [str(v) for v in parse("detectd.labels")]
        else:
            log.warning("%s: no class names in the model; using class_0..class_%d",
                        path, num_classes - 1)
            label_list = [f"class_{i}" for i in range(num_classes)]
        if len(label_list) != num_classes:
            raise ModelInfoError(
                f"{path}: {len(label_list)} labels for {num_classes} classes"
            )

        return cls(path, input_name, width, height, head_list, label_list, sha256_file(path))

    @staticmethod
    def _guess_yolov3_tiny_heads(path: Path, outputs: dict[str, list[int | str]]) -> list[HeadSpec]:
        shapes = list(outputs.items())
        ok = len(shapes) == len(YOLOV3_TINY_ANCHORS) and all(
            len(d) == 4 and isinstance(d[1], int) and d[1] % 3 == 0 and d[1] // 3 > 5
            for _, d in shapes
        )
        if not ok:
            raise ModelInfoError(
                f"{path}: no detectd metadata (detectd.heads) and the outputs "
                f"{ {k: v for k, v in shapes} } do not look like YOLOv3-Tiny's two heads; "
                "export with `detectd export-onnx` or pass the heads explicitly"
            )
        # The coarsest grid sees the largest objects: it gets the largest anchors, whatever
        # the output order (Darknet's own order is coarse first).
        def cells(dims: list[int | str]) -> int:
            h, w = dims[2], dims[3]
            return h * w if isinstance(h, int) and isinstance(w, int) else 0

        if all(cells(d) for _, d in shapes):
            shapes.sort(key=lambda item: cells(item[1]))
        log.warning(
            "%s: no detectd.heads metadata; assuming YOLOv3-Tiny COCO anchors for outputs %s",
            path, ", ".join(name for name, _ in shapes),
        )
        return [
            HeadSpec(
                name=name,
                anchors=np.asarray(anchors, dtype=np.float32),
                classes=int(dims[1]) // 3 - 5,  # type: ignore[operator]
            )
            for (name, dims), anchors in zip(shapes, YOLOV3_TINY_ANCHORS)
        ]
