"""Darknet ``.cfg`` and ``.weights`` parser, for the layers YOLOv3-Tiny uses.

Supported: ``[net]`` (width, height, channels), ``[convolutional]`` (batch_normalize, filters,
size, stride, pad/padding, activation ``leaky`` or ``linear``), ``[maxpool]`` (size, stride,
padding), ``[route]`` (one or several layers, absolute or negative relative indices),
``[upsample]`` (stride, scale) and ``[yolo]`` (mask, anchors, classes, num). Anything else --
an unknown section, or an option that would change what the network computes and that this
parser does not implement -- is an error naming the file and line, never silently ignored.
Training-only options (learning rate, jitter, ...) are ignored, as Darknet itself ignores them
at inference time.

The semantics follow the original Darknet (pjreddie/darknet, ``src/parser.c``):

- ``pad=1`` on a convolution means ``padding = size // 2``; otherwise ``padding`` (default 0).
- A maxpool's ``padding`` defaults to ``size - 1``, split ``padding // 2`` before and the rest
  after, output ``(w + padding - size) // stride + 1``. So the stride-1, size-2 maxpool of
  YOLOv3-Tiny pads one column right and one row bottom and keeps the size; padded cells never
  win the max (Darknet skips them).
- The weights file starts with int32 ``major, minor, revision`` and then ``seen``, an int64
  when ``major*10 + minor >= 2`` and ``major < 1000 and minor < 1000``, else an int32. Then, per
  convolutional layer in order: biases, and if batch-normalized scales, rolling mean, rolling
  variance; then the kernel ``(filters, in_channels, size, size)``. All float32 little-endian.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.errors import DetectdError

__all__ = [
    "DarknetError",
    "CfgSection",
    "NetSpec",
    "ConvLayer",
    "MaxPoolLayer",
    "RouteLayer",
    "UpsampleLayer",
    "YoloLayer",
    "Layer",
    "Network",
    "ConvWeights",
    "DarknetWeights",
    "parse_cfg",
    "load_cfg",
    "load_weights",
]


class DarknetError(DetectdError, ValueError):
    """A cfg or weights file this parser cannot use; the message names the file and place."""


@dataclass
class CfgSection:
    """One ``[section]`` of a cfg file, with the line of its header and of each option."""

    kind: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


def parse_cfg(path: str | os.PathLike[str]) -> list[CfgSection]:
    """Parse a Darknet cfg into its sections. Comments start with ``#`` or ``;``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DarknetError(f"{path}: not a text cfg file ({e})") from None
    sections: list[CfgSection] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise DarknetError(f"{path}:{lineno}: malformed section header {line!r}")
            sections.append(CfgSection(kind=line[1:-1].strip().lower(), line=lineno))
            continue
        if "=" not in line:
            raise DarknetError(f"{path}:{lineno}: expected 'key=value', got {line!r}")
        if not sections:
            raise DarknetError(f"{path}:{lineno}: option {line!r} before any [section]")
        key, value = (part.strip() for part in line.split("=", 1))
        section = sections[-1]
        if key in section.options:
            raise DarknetError(
                f"{path}:{lineno}: [{section.kind}] at line {section.line} sets {key!r} twice"
            )
        section.options[key] = value
        section.option_lines[key] = lineno
    if not sections:
        raise DarknetError(f"{path}: no sections found")
    return sections


@dataclass(frozen=True)
class NetSpec:
    width: int
    height: int
    channels: int


@dataclass(frozen=True)
class ConvLayer:
    index: int
    in_channels: int
    filters: int
    size: int
    stride: int
    padding: int
    batch_normalize: bool
    activation: str  # "leaky" | "linear"


@dataclass(frozen=True)
class MaxPoolLayer:
    index: int
    size: int
    stride: int
    padding: int  # total; padding // 2 before, the rest after


@dataclass(frozen=True)
class RouteLayer:
    index: int
    layers: tuple[int, ...]  # absolute indices


@dataclass(frozen=True)
class UpsampleLayer:
    index: int
    stride: int
    scale: float


@dataclass(frozen=True)
class YoloLayer:
    index: int
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]  # all anchors of the cfg, input pixels
    classes: int

    @property
    def masked_anchors(self) -> list[tuple[float, float]]:
        """The anchors this head predicts with, in input pixels, in output order."""
        return [self.anchors[m] for m in self.mask]


Layer = ConvLayer | MaxPoolLayer | RouteLayer | UpsampleLayer | YoloLayer


@dataclass(frozen=True)
class Network:
    """A parsed cfg: the input, the layers in order, and each layer's output shape (C, H, W)."""

    path: Path
    net: NetSpec
    layers: tuple[Layer, ...]
    shapes: tuple[tuple[int, int, int], ...]

    @property
    def convs(self) -> list[ConvLayer]:
        return [layer for layer in self.layers if isinstance(layer, ConvLayer)]

    @property
    def yolos(self) -> list[YoloLayer]:
        return [layer for layer in self.layers if isinstance(layer, YoloLayer)]

    def weight_count(self) -> int:
        """How many float32 values the weights file holds after its header."""
        n = 0
        for c in self.convs:
            n += c.filters * (4 if c.batch_normalize else 1)
            n += c.filters * c.in_channels * c.size * c.size
        return n


# Options each section may carry. ``used`` change the computation and are read; ``ignored`` are
# training-only (Darknet ignores them at inference too). Anything else is an error, so that a
# cfg using a feature this parser lacks fails loudly instead of exporting a different network.
_USED = {
    "convolutional": {
        "batch_normalize", "filters", "size", "stride", "pad", "padding", "activation",
        "groups", "dilation",
    },
    "maxpool": {"size", "stride", "padding"},
    "route": {"layers"},
    "upsample": {"stride", "scale"},
    "yolo": {"mask", "anchors", "classes", "num", "scale_x_y", "new_coords"},
}
_IGNORED = {
    "convolutional": {"flipped"},
    "maxpool": set(),
    "route": set(),
    "upsample": set(),
    "yolo": {
        "jitter", "ignore_thresh", "truth_thresh", "random", "iou_thresh", "iou_normalizer",
        "cls_normalizer", "obj_normalizer", "iou_loss", "max_delta", "counters_per_class",
        "label_smooth_eps", "focal_loss", "resize", "nms_kind", "beta_nms", "max",
    },
}


class _Reader:
    """Typed option access that names file, line and section in every error."""

    def __init__(self, path: Path, section: CfgSection, index: int) -> None:
        self.path = path
        self.s = section
        self.index = index

    def where(self, key: str | None = None) -> str:
        line = self.s.option_lines.get(key, self.s.line) if key else self.s.line
        layer = f"layer {self.index} " if self.index >= 0 else ""
        return f"{self.path}:{line}: {layer}[{self.s.kind}]"

    def fail(self, message: str, key: str | None = None) -> DarknetError:
        return DarknetError(f"{self.where(key)}: {message}")

    def int(self, key: str, default: int | None = None) -> int:
        raw = self.s.options.get(key)
        if raw is None:
            if default is None:
                raise self.fail(f"missing required option {key!r}")
            return default
        try:
            return int(raw)
        except ValueError:
            raise self.fail(f"{key}={raw!r} is not an integer", key) from None

    def float(self, key: str, default: float) -> float:
        raw = self.s.options.get(key)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError:
            raise self.fail(f"{key}={raw!r} is not a number", key) from None

    def ints(self, key: str) -> list[builtins.int]:  # builtins: int is a method here
        return [int(v) for v in self._list(key, int, "integers")]

    def floats(self, key: str) -> list[builtins.float]:
        return self._list(key, float, "numbers")

    def _list(self, key: str, kind: type, what: str) -> list[builtins.float]:
        raw = self.s.options.get(key)
        if raw is None or not raw.strip():
            raise self.fail(f"missing required option {key!r}")
        try:
            return [kind(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            raise self.fail(f"{key}={raw!r} is not a list of {what}", key) from None

    def check_options(self) -> None:
        allowed = _USED[self.s.kind] | _IGNORED[self.s.kind]
        for key in self.s.options:
            if key not in allowed:
                raise self.fail(f"option {key!r} is not supported by detectd's exporter", key)


def load_cfg(path: str | os.PathLike[str]) -> Network:
    """Parse and validate a cfg: resolve routes, compute every layer's output shape."""
    path = Path(path)
    sections = parse_cfg(path)
    head = sections[0]
    if head.kind not in ("net", "network"):
        raise DarknetError(f"{path}:{head.line}: the first section must be [net], got [{head.kind}]")
    r = _Reader(path, head, -1)
    net = NetSpec(width=r.int("width"), height=r.int("height"), channels=r.int("channels", 3))
    if net.width <= 0 or net.height <= 0 or net.channels <= 0:
        raise r.fail(f"bad input size {net.width}x{net.height}x{net.channels}")

    layers: list[Layer] = []
    shapes: list[tuple[int, int, int]] = []
    c, h, w = net.channels, net.height, net.width
    for index, section in enumerate(sections[1:]):
        r = _Reader(path, section, index)
        if section.kind not in _USED:
            raise r.fail(
                "section type not supported by detectd's exporter "
                f"(supported: {', '.join(sorted(_USED))})"
            )
        r.check_options()
        layer: Layer
        if section.kind == "convolutional":
            if r.int("groups", 1) != 1:
                raise r.fail("grouped convolution is not supported", "groups")
            if r.int("dilation", 1) != 1:
                raise r.fail("dilated convolution is not supported", "dilation")
            size = r.int("size", 1)
            stride = r.int("stride", 1)
            filters = r.int("filters", 1)
            padding = size // 2 if r.int("pad", 0) else r.int("padding", 0)
            activation = section.options.get("activation", "logistic")
            if activation not in ("leaky", "linear"):
                raise r.fail(
                    f"activation {activation!r} is not supported (leaky, linear)", "activation"
                )
            if size <= 0 or stride <= 0 or filters <= 0 or padding < 0:
                raise r.fail(f"bad geometry: size={size} stride={stride} filters={filters}")
            layer = ConvLayer(
                index, c, filters, size, stride, padding, bool(r.int("batch_normalize", 0)),
                activation,
            )
            c = filters
            h = (h + 2 * padding - size) // stride + 1
            w = (w + 2 * padding - size) // stride + 1
        elif section.kind == "maxpool":
            size = r.int("size", 2)
            stride = r.int("stride", size)
            padding = r.int("padding", size - 1)
            if size <= 0 or stride <= 0 or padding < 0:
                raise r.fail(f"bad geometry: size={size} stride={stride} padding={padding}")
            layer = MaxPoolLayer(index, size, stride, padding)
            h = (h + padding - size) // stride + 1
            w = (w + padding - size) // stride + 1
        elif section.kind == "route":
            refs = []
            for ref in r.ints("layers"):
                absolute = index + ref if ref < 0 else ref
                if not 0 <= absolute < index:
                    raise r.fail(f"layers={ref} does not name an earlier layer", "layers")
                refs.append(absolute)
            ref_shapes = [shapes[i] for i in refs]
            if len({s[1:] for s in ref_shapes}) != 1:
                raise r.fail(f"routed layers have different sizes: {ref_shapes}", "layers")
            layer = RouteLayer(index, tuple(refs))
            c = sum(s[0] for s in ref_shapes)
            h, w = ref_shapes[0][1:]
        elif section.kind == "upsample":
            stride = r.int("stride", 2)
            if stride <= 0:
                raise r.fail("negative (downsampling) stride is not supported", "stride")
            layer = UpsampleLayer(index, stride, r.float("scale", 1.0))
            h, w = h * stride, w * stride
        else:  # yolo
            classes = r.int("classes", 20)
            num = r.int("num", 1)
            values = r.floats("anchors")
            if len(values) != 2 * num:
                raise r.fail(f"{len(values)} anchor values for num={num}", "anchors")
            anchors = tuple((values[2 * i], values[2 * i + 1]) for i in range(num))
            mask = tuple(r.ints("mask")) if "mask" in section.options else tuple(range(num))
            if any(not 0 <= m < num for m in mask):
                raise r.fail(f"mask {mask} indexes past num={num}", "mask")
            if r.float("scale_x_y", 1.0) != 1.0:
                raise r.fail("scale_x_y != 1 is not supported", "scale_x_y")
            if r.int("new_coords", 0) != 0:
                raise r.fail("new_coords is not supported", "new_coords")
            if c != len(mask) * (5 + classes):
                raise r.fail(
                    f"input has {c} channels, expected {len(mask)}*(5+{classes})="
                    f"{len(mask) * (5 + classes)}"
                )
            layer = YoloLayer(index, mask, anchors, classes)
        if h <= 0 or w <= 0:
            raise r.fail(f"output would be empty ({h}x{w})")
        layers.append(layer)
        shapes.append((c, h, w))
    if not any(isinstance(layer, YoloLayer) for layer in layers):
        raise DarknetError(f"{path}: no [yolo] layer: not a YOLO detector cfg")
    return Network(path, net, tuple(layers), tuple(shapes))


@dataclass(frozen=True)
class ConvWeights:
    biases: np.ndarray  # (filters,)
    weights: np.ndarray  # (filters, in_channels, size, size)
    scales: np.ndarray | None = None  # batch norm gamma
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None

    def folded(self, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) with batch norm folded in: ``y = scales * (x - mean) /
        sqrt(variance + eps) + biases`` becomes one convolution. Computed in float64."""
        w = self.weights.astype(np.float64)
        b = self.biases.astype(np.float64)
        if self.scales is None or self.mean is None or self.variance is None:
            return w.astype(np.float32), b.astype(np.float32)
        k = self.scales.astype(np.float64) / np.sqrt(self.variance.astype(np.float64) + eps)
        return (
            (w * k[:, None, None, None]).astype(np.float32),
            (b - self.mean.astype(np.float64) * k).astype(np.float32),
        )


@dataclass(frozen=True)
class DarknetWeights:
    major: int
    minor: int
    revision: int
    seen: int
    header_bytes: int
    convs: dict[int, ConvWeights]  # by layer index


def load_weights(path: str | os.PathLike[str], network: Network) -> DarknetWeights:
    """Read a ``.weights`` file for ``network``; the file must hold exactly what the cfg needs."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 16:
        raise DarknetError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        seen = int(np.frombuffer(data, "<i8", 1, 12)[0])
        offset = 20
    else:
        seen = int(np.frombuffer(data, "<i4", 1, 12)[0])
        offset = 16
    body = len(data) - offset
    need = network.weight_count()
    if body % 4:
        raise DarknetError(
            f"{path}: {body} bytes after the {offset}-byte header is not a whole number of float32"
        )
    if body // 4 != need:
        what = "too short" if body // 4 < need else "too long"
        raise DarknetError(
            f"{path}: weights file is {what} for {network.path.name}: it holds {body // 4} "
            f"values after the header (version {major}.{minor}.{revision}), the cfg needs {need}"
        )
    values = np.frombuffer(data, "<f4", offset=offset)
    pos = 0

    def take(n: int) -> np.ndarray:
        nonlocal pos
        out = values[pos : pos + n].astype(np.float32)  # a copy, so `data` can be freed
        pos += n
        return out

    convs: dict[int, ConvWeights] = {}
    for conv in network.convs:
        f = conv.filters
        biases = take(f)
        scales = mean = variance = None
        if conv.batch_normalize:
            scales, mean, variance = take(f), take(f), take(f)
        kernel = take(f * conv.in_channels * conv.size * conv.size).reshape(
            f, conv.in_channels, conv.size, conv.size
        )
        convs[conv.index] = ConvWeights(biases, kernel, scales, mean, variance)
    assert pos == need
    return DarknetWeights(major, minor, revision, seen, offset, convs)
