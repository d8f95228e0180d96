"""Per-tensor activation statistics, accumulated one batch at a time.

The model is run by ONNX Runtime on a copy whose graph lists every tensor we calibrate as an
extra output; each batch's activations update a histogram of |x| and are dropped at once, so
memory does not grow with the number of frames.

TensorRT's calibrator makes two passes (one for max |x|, one for the histograms). We make one:
each histogram keeps `oversample` times more bins than the final 2048 and its range grows by
powers of two when a batch exceeds it; growing merges 2^k adjacent bins, which is exact. At the
end the fine histogram is resampled onto 2048 bins over exactly [0, max |x|], the range TensorRT
uses, with an error of at most 1/oversample of a final bin.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from daemon.quant.entropy import DEFAULT_BINS

if TYPE_CHECKING:
    from daemon.vision.letterbox import LetterboxInfo

# (y0, y1, x0, x1) of the picture in input pixels, end exclusive
Rect = tuple[int, int, int, int]


def picture_rect(info: "LetterboxInfo") -> Rect:
    """The picture rectangle (y0, y1, x0, x1) of a letterboxed frame, in input pixels."""
    return (info.pad_y, info.pad_y + info.new_h, info.pad_x, info.pad_x + info.new_w)


def picture_cells(rect: Rect, in_h: int, in_w: int, h: int, w: int) -> tuple[slice, slice]:
    """Rows and columns of a tensor of spatial size (h, w), computed from an input of size
    (in_h, in_w), whose cells lie wholly inside the picture `rect` (input pixels); the
    overlapping cells when none does. Integer arithmetic, so strides of 1, 2, ..., 32 and
    non-integer ones are all exact."""

    def span(a: int, b: int, size: int, n: int) -> slice:
        lo = -(-a * n // size)  # ceil(a / stride): first cell starting at or after a
        hi = b * n // size  # floor(b / stride): cells ending at or before b
        if hi <= lo:  # thinner than a cell: the cells it touches
            lo, hi = a * n // size, -(-b * n // size)
        return slice(max(0, lo), min(n, max(hi, lo + 1)))

    y0, y1, x0, x1 = rect
    return span(y0, y1, in_h, h), span(x0, x1, in_w, w)


def picture_parts(x: np.ndarray, rects: Sequence[Rect] | None, in_hw: tuple[int, int]
                  ) -> list[np.ndarray]:
    """The picture part of each frame of a batch tensor `x` (N, C, h, w): views, not copies.
    The whole tensor when `rects` is None, `x` is not 4-D or a rectangle covers everything."""
    if rects is None or x.ndim != 4 or len(rects) != x.shape[0]:
        return [x]
    in_h, in_w = in_hw
    h, w = x.shape[2], x.shape[3]
    parts = []
    whole = True
    for b, rect in enumerate(rects):
        rows, cols = picture_cells(rect, in_h, in_w, h, w)
        whole = whole and rows == slice(0, h) and cols == slice(0, w)
        parts.append(x[b, :, rows, cols])
    return [x] if whole else parts


class TensorHistogram:
    """Histogram of |x| with a range that grows by powers of two, plus min and max of x."""

    def __init__(self, bins: int = DEFAULT_BINS, oversample: int = 8,
                 max_samples: int = 1 << 21) -> None:
        self.bins = bins
        # A batch's histogram is taken on at most about this many evenly strided elements
        # (min and max always on all): a 4-frame batch of YOLOv3-Tiny's first layer has 11M,
        # and 1000 frames x 2M samples describe a distribution as well as 1000 x 11M do.
        self.max_samples = max_samples
        self.fine_bins = bins * oversample
        self.counts = np.zeros(self.fine_bins, dtype=np.int64)
        self.range = 0.0  # upper edge of the fine histogram; 0 until a nonzero value is seen
        self.min = math.inf
        self.max = -math.inf
        self.count = 0  # elements seen (min / max)
        self.sampled = 0  # elements histogrammed

    @property
    def absmax(self) -> float:
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def add(self, x: np.ndarray | Sequence[np.ndarray]) -> None:
        """Count the values of `x`: one array, or several (the picture parts of a batch's
        frames) counted as one sample."""
        parts = [np.asarray(x)] if isinstance(x, np.ndarray) else [np.asarray(p) for p in x]
        parts = [p for p in parts if p.size]
        if not parts:
            return
        lo = min(float(p.min()) for p in parts)
        hi = max(float(p.max()) for p in parts)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("activation contains inf or NaN")
        size = sum(p.size for p in parts)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += size
        amax = max(abs(lo), abs(hi))
        if amax == 0.0:
            self.counts[0] += size
            self.sampled += size
            return
        if self.range == 0.0:
            self.range = amax
        elif amax > self.range:
            factor = 2 ** math.ceil(math.log2(amax / self.range))
            merged = self.counts.reshape(-1, factor).sum(axis=1)
            self.counts = np.zeros(self.fine_bins, dtype=np.int64)
            self.counts[: merged.size] = merged
            self.range *= factor
        stride = -(-size // self.max_samples) if size > self.max_samples else 1
        if len(parts) == 1:
            flat = parts[0].reshape(-1)[::stride]
        else:  # one strided sample over the concatenated parts
            flat = np.concatenate([p.reshape(-1) for p in parts])[::stride]
        self.sampled += flat.size
        # float32 arithmetic in one scratch buffer: |x| * bins / range, clipped, truncated
        scaled = np.abs(flat, dtype=np.float32)
        scaled *= np.float32(self.fine_bins / self.range)
        np.minimum(scaled, np.float32(self.fine_bins - 1), out=scaled)
        self.counts += np.bincount(scaled.astype(np.intp), minlength=self.fine_bins)

    def histogram(self) -> tuple[np.ndarray, float]:
        """(`bins` counts over [0, max |x|], max |x|)."""
        amax = self.absmax
        if amax == 0.0 or self.range == 0.0:
            out = np.zeros(self.bins, dtype=np.float64)
            out[0] = self.sampled
            return out, 0.0
        fine_edges = np.linspace(0.0, self.range, self.fine_bins + 1)
        cdf = np.concatenate([[0.0], np.cumsum(self.counts, dtype=np.float64)])
        edges = np.linspace(0.0, amax, self.bins + 1)
        new_cdf = np.interp(edges, fine_edges, cdf)
        new_cdf[-1] = cdf[-1]  # the max itself lies in the last bin
        return np.diff(new_cdf), amax

    # -- persistence (the calibration cache keeps histograms so settings can change cheaply) --
    def state(self) -> dict[str, object]:
        return {"bins": self.bins, "fine_bins": self.fine_bins, "range": self.range,
                "min": self.min, "max": self.max, "count": self.count}


@dataclass(frozen=True)
class TensorStats:
    """What the Q/DQ writer needs of one tensor."""

    name: str
    min: float
    max: float
    threshold: float  # symmetric clipping point of |x|, chosen by the calibration method

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float tensor that flows between nodes (graph inputs, node outputs), in graph order;
    initializers and constants excluded. These are the tensors TensorRT's calibration cache
    lists."""
    init = {i.name for i in model.graph.initializer}
    const_outputs = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names: list[str] = []
    seen: set[str] = set()
    for inp in model.graph.input:
        if inp.name not in init and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            names.append(inp.name)
            seen.add(inp.name)
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape"):
            continue
        for out in node.output:
            if out and out not in seen and out not in const_outputs:
                names.append(out)
                seen.add(out)
    return names


def _aliases(model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the tensor whose values it merely repeats (Identity, nearest Resize)."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        if not node.input or not node.output:
            continue
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        if node.op_type == "Identity" or (node.op_type in ("Resize", "Upsample")
                                          and mode == b"nearest"):
            src = node.input[0]
            out[node.output[0]] = out.get(src, src)
    return out


def _float_outputs(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """Keep the names whose inferred type is float (shape subgraphs carry int64 tensors)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
        inferred.graph.output
    ):
        types[vi.name] = vi.type.tensor_type.elem_type
    return [n for n in names if types.get(n, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]


def with_extra_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return copy


class ActivationCollector:
    """Runs the FP32 model batch by batch and accumulates a `TensorHistogram` per tensor."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: Sequence[str] | None = None,
        threads: int = 0,
        bins: int = DEFAULT_BINS,
    ) -> None:
        names = list(tensors) if tensors is not None else activation_tensors(model)
        self.tensors = _float_outputs(model, names)
        # An Identity output or a nearest-neighbour upsample has exactly its input's
        # distribution: it shares the input's histogram instead of being counted again.
        self.aliases = {a: b for a, b in _aliases(model).items()
                        if a in self.tensors and b in self.tensors}
        self.input_name = model.graph.input[0].name
        # a graph input is not a node output: its statistics come from the feed itself
        self._fed = [n for n in self.tensors if n == self.input_name]
        self._run = [n for n in self.tensors if n != self.input_name and n not in self.aliases]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # Fusions would hide the tensors we ask for; basic folding only.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            with_extra_outputs(model, self._run).SerializeToString(),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        self.histograms = {name: TensorHistogram(bins) for name in self.tensors
                           if name not in self.aliases}
        for alias, src in self.aliases.items():
            self.histograms[alias] = self.histograms[src]
        self.frames = 0

    def add_batch(self, batch: np.ndarray, pictures: Sequence[Rect] | None = None) -> None:
        """Run one batch (N, 3, H, W) float32 and count its activations; `pictures` holds each
        frame's picture rectangle (y0, y1, x0, x1) in input pixels (see `picture_rect`), and
        only the positions it covers are counted (module docstring). None counts everything."""
        if pictures is not None and len(pictures) != batch.shape[0]:
            raise ValueError(f"{len(pictures)} picture rectangles for {batch.shape[0]} frames")
        in_hw = (int(batch.shape[2]), int(batch.shape[3]))
        for name in self._fed:
            self.histograms[name].add(picture_parts(batch, pictures, in_hw))
        outs = self.session.run(self._run, {self.input_name: batch})
        for i, name in enumerate(self._run):
            self.histograms[name].add(picture_parts(outs[i], pictures, in_hw))
            outs[i] = None  # let each activation go as soon as it is counted
        self.frames += int(batch.shape[0])
