"""How closely an INT8 model reproduces its FP32 model: detection agreement and tensor SQNR.

Agreement is mAP@0.5 with the FP32 model's detections (at the daemon's operating threshold) as
ground truth and the INT8 model's detections (at a low threshold, so each class has a full
precision/recall curve) as predictions: all-point interpolated AP per class (VOC 2010+ / COCO
style at one IoU), averaged over the classes that have reference detections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    map50: float
    per_class: dict[int, float]  # AP per class id that has reference detections
    reference_count: int  # FP32 detections scored against
    frames: int


def map_at_50(
    reference: Sequence[Detections], predicted: Sequence[Detections], iou: float = 0.5
) -> Agreement:
    """mAP@`iou` of `predicted` against `reference` (one Detections per frame each)."""
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference frames but {len(predicted)} predicted")
    classes = sorted({int(c) for d in reference for c in d.class_ids})
    per_class: dict[int, float] = {}
    for cls in classes:
        scores: list[float] = []
        hits: list[bool] = []
        n_ref = 0
        for ref, pred in zip(reference, predicted):
            rb = ref.boxes[ref.class_ids == cls]
            pm = pred.class_ids == cls
            pb, ps = pred.boxes[pm], pred.scores[pm]
            n_ref += len(rb)
            order = np.argsort(-ps, kind="stable")
            ious = iou_matrix(pb[order], rb)
            taken = np.zeros(len(rb), bool)
            for k, j in enumerate(order):
                scores.append(float(ps[j]))
                if len(rb):
                    cand = np.where(taken, -1.0, ious[k])
                    best = int(np.argmax(cand))
                    if cand[best] >= iou:
                        taken[best] = True
                        hits.append(True)
                        continue
                hits.append(False)
        if n_ref == 0:
            continue
        if not scores:
            per_class[cls] = 0.0
            continue
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.asarray(hits, np.float64)[order]
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1.0 - tp)
        per_class[cls] = average_precision(ctp / n_ref, ctp / np.maximum(ctp + cfp, 1e-12))
    n_ref_total = sum(len(d) for d in reference)
    value = float(np.mean(list(per_class.values()))) if per_class else math.nan
    return Agreement(value, per_class, n_ref_total, len(reference))


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


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int
                  ) -> np.ndarray:
    """x quantized and dequantized as QuantizeLinear/DequantizeLinear do (round half to even,
    saturate)."""
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)
