"""How closely an INT8 model reproduces its FP32 model: detection agreement and tensor SQNR.

Agreement is mAP@0.5 with the FP32 model's detections (at the daemon's operating threshold) as
ground truth and the INT8 model's detections (at a low threshold, so each class has a full
precision/recall curve) as predictions: all-point interpolated AP per class (VOC 2010+ / COCO
style at one IoU), averaged over the classes that have reference detections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from daemon.frames import Detections


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4) with every box in b (M,4), x1y1x2y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


@dataclass(frozen=True)
class Agreement:
    map50: float  # class-averaged: the mean AP over the classes with reference boxes
    per_class: dict[int, float]  # AP per class id that has reference detections
    reference_count: int  # FP32 detections scored against
    frames: int
    boxes_per_class: dict[int, int] = field(default_factory=dict)

    @property
    def box_weighted(self) -> float:
        """AP averaged over reference boxes instead of classes (each class weighted by its
        number of FP32 boxes): the agreement a box picked at random sees."""
        n = sum(self.boxes_per_class.values())
        if not n:
            return math.nan
        return sum(self.per_class[c] * k for c, k in self.boxes_per_class.items()) / n

    @property
    def classes(self) -> int:
        return len(self.per_class)


# per class: (scores of the predictions, whether each matched a reference box, reference count)
Matches = dict[int, tuple[np.ndarray, np.ndarray, int]]


def frame_matches(ref: Detections, pred: Detections, iou: float = 0.5) -> Matches:
    """Greedy matching of one frame, per class, by descending score (VOC / COCO rule): each
    prediction takes the unmatched reference box of its class with the highest IoU >= `iou`."""
    out: Matches = {}
    classes = {int(c) for c in ref.class_ids} | {int(c) for c in pred.class_ids}
    for cls in classes:
        rb = ref.boxes[ref.class_ids == cls]
        pm = pred.class_ids == cls
        pb, ps = pred.boxes[pm], pred.scores[pm]
        order = np.argsort(-ps, kind="stable")
        ious = iou_matrix(pb[order], rb)
        taken = np.zeros(len(rb), bool)
        hits = np.zeros(len(order), bool)
        for k in range(len(order)):
            if len(rb):
                cand = np.where(taken, -1.0, ious[k])
                best = int(np.argmax(cand))
                if cand[best] >= iou:
                    taken[best] = True
                    hits[k] = True
        out[cls] = (ps[order].astype(np.float64), hits, len(rb))
    return out


def ap_from_matches(matches: Sequence[Matches]) -> tuple[dict[int, float], dict[int, int]]:
    """(AP per class, reference boxes per class) over frames' matches; classes without
    reference boxes are left out."""
    per_class: dict[int, float] = {}
    counts: dict[int, int] = {}
    classes = sorted({c for m in matches for c in m})
    for cls in classes:
        parts = [m[cls] for m in matches if cls in m]
        n_ref = sum(p[2] for p in parts)
        if n_ref == 0:
            continue
        counts[cls] = n_ref
        scores = np.concatenate([p[0] for p in parts])
        if scores.size == 0:
            per_class[cls] = 0.0
            continue
        order = np.argsort(-scores, kind="stable")
        tp = np.concatenate([p[1] for p in parts]).astype(np.float64)[order]
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1.0 - tp)
        per_class[cls] = average_precision(ctp / n_ref, ctp / np.maximum(ctp + cfp, 1e-12))
    return per_class, counts


def map_at_50(
    reference: Sequence[Detections], predicted: Sequence[Detections], iou: float = 0.5
) -> Agreement:
    """mAP@`iou` of `predicted` against `reference` (one Detections per frame each)."""
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference frames but {len(predicted)} predicted")
    matches = [frame_matches(r, p, iou) for r, p in zip(reference, predicted)]
    per_class, counts = ap_from_matches(matches)
    n_ref_total = sum(len(d) for d in reference)
    value = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return Agreement(value, per_class, n_ref_total, len(reference), counts)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def bootstrap_over_sources(
    reference: Sequence[Detections], predictions: Mapping[str, Sequence[Detections]],
    sources: Sequence[str], rounds: int = 1000, seed: int = 0, level: float = 0.95,
    baseline: str | None = None,
) -> dict[str, dict[str, Interval]]:
    """Percentile bootstrap intervals of class-averaged (`map50`) and box-weighted
    (`box_weighted`) mAP@0.5, resampling whole source pictures with replacement (frames of
    one clip are not independent, so they are resampled together). With `baseline`, each
    other model also gets paired intervals of its difference to the baseline
    (`map50_minus_<baseline>`, ...), computed on the same resamples.

    The same seed and inputs give the same intervals."""
    if len(sources) != len(reference):
        raise ValueError(f"{len(sources)} sources for {len(reference)} frames")
    names = sorted(set(sources))
    by_source = {s: [i for i, x in enumerate(sources) if x == s] for s in names}
    matches = {m: {s: [frame_matches(reference[i], pred[i]) for i in idx]
                   for s, idx in by_source.items()} for m, pred in predictions.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, dict[str, list[float]]] = {m: {"map50": [], "box_weighted": []}
                                                  for m in predictions}
    for _ in range(rounds):
        pick = [names[k] for k in rng.integers(0, len(names), len(names))]
        for m in predictions:
            chosen = [x for s in pick for x in matches[m][s]]
            per_class, counts = ap_from_matches(chosen)
            if not per_class:
                continue
            n = sum(counts.values())
            samples[m]["map50"].append(float(np.mean(list(per_class.values()))))
            samples[m]["box_weighted"].append(sum(per_class[c] * k for c, k in counts.items())
                                              / n)
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
    out: dict[str, dict[str, Interval]] = {}
    for m, kinds in samples.items():
        out[m] = {}
        for kind, vals in kinds.items():
            lo, hi = np.percentile(vals, q) if vals else (math.nan, math.nan)
            out[m][kind] = Interval(float(lo), float(hi))
            if baseline is not None and m != baseline and baseline in samples:
                base = samples[baseline][kind]
                if len(base) == len(vals) and vals:
                    d = np.asarray(vals) - np.asarray(base)
                    lo, hi = np.percentile(d, q)
                    out[m][f"{kind}_minus_{baseline}"] = Interval(float(lo), float(hi))
    return out


class SqnrAccumulator:
    """Signal-to-quantization-noise ratio, 10*log10(sum x^2 / sum (x - x_q)^2), over batches."""

    def __init__(self) -> None:
        self.signal: dict[str, float] = {}
        self.noise: dict[str, float] = {}

    def add(self, name: str, reference: np.ndarray, approx: np.ndarray) -> None:
        ref = reference.astype(np.float64, copy=False)
        diff = ref - approx
        self.signal[name] = self.signal.get(name, 0.0) + float(np.vdot(ref, ref))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.vdot(diff, diff))

    def db(self) -> dict[str, float]:
        out = {}
        for name, s in self.signal.items():
            n = self.noise[name]
            out[name] = math.inf if n == 0 else 10.0 * math.log10(max(s, 1e-30) / n)
        return out

    def worst(self, k: int = 5) -> list[tuple[str, float]]:
        return sorted(self.db().items(), key=lambda kv: kv[1])[:k]


def head_sqnr_db(names: Sequence[str], reference: Sequence[np.ndarray],
                 approx: Sequence[np.ndarray]) -> dict[str, float]:
    """SQNR (dB, ``SqnrAccumulator``) of each output: ``names[i]`` -> reference[i] against
    approx[i] (e.g. a model's heads, FP32 against INT8, over the same frames)."""
    acc = SqnrAccumulator()
    for name, r, q in zip(names, reference, approx):
        acc.add(name, r, q)
    return acc.db()


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int
                  ) -> np.ndarray:
    """x quantized and dequantized as QuantizeLinear/DequantizeLinear do (round half to even,
    saturate)."""
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)
