"""Entropy (KL-divergence) clipping thresholds, the method of TensorRT's EntropyCalibrator2.

Given a histogram of |x| over [0, max|x|] (2048 bins), every candidate clipping point i in
128..2048 bins is scored by how much information an 8-bit quantization of the clipped
distribution loses: P is the histogram cut at i with everything beyond folded into its last bin,
Q is the same i bins merged into 128 levels and spread back uniformly over the bins that were
nonzero in P. The candidate with the smallest KL(P || Q) wins (Migacz, "8-bit Inference with
TensorRT", GTC 2017).

The details follow NVIDIA's own reference implementation of that calibrator
(pytorch-quantization's ``HistogramCalibrator``, method "entropy", which its authors wrote to
reproduce TensorRT's) and NVIDIA's description of its MLPerf calibration, not the MXNet / ONNX
Runtime variant this module first followed:

- **the first bin is discarded** (its count replaced by the second's): it holds the mass of
  (near-)zero activations, after a (leaky) ReLU a spike of a third or more of all values, and
  KL would otherwise spend its whole budget reproducing that spike. On YOLOv3-Tiny's first
  activation this moves the threshold from 11.2 to 22.5 (TensorRT's own table: 23.4);
- the i bins are merged into 128 groups at the boundaries ``linspace(0, i, 129)`` (groups of
  i/128 bins, rounded down at each boundary), not 127 groups of ``i // 128`` and a remainder;
- no smoothing: a candidate where Q is zero where P is not scores infinity;
- among equal divergences the largest candidate wins, and the threshold is the candidate's
  bin edge ``i * bin_width``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 2048
QUANTIZED_LEVELS = 128  # int8 symmetric: 0..127 on each side


@dataclass(frozen=True)
class EntropyResult:
    threshold: float
    bin_index: int  # the chosen i: the first bin beyond the clipped range
    divergence: float
    bin_width: float


def kl_divergences(hist: np.ndarray, levels: int = QUANTIZED_LEVELS) -> np.ndarray:
    """KL(P||Q) for every candidate i in levels..len(hist); index k holds candidate levels+k.

    The first bin is replaced by the second before anything else (module docstring). Infinite
    where the candidate is degenerate (nothing in range, or Q zero where P is not)."""
    bins = np.asarray(hist, dtype=np.float64).copy()
    n = bins.size
    if n < levels:
        raise ValueError(f"histogram has {n} bins, fewer than {levels} quantized levels")
    if n > 1:
        bins[0] = bins[1]
    suffix = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # suffix[i] = sum(bins[i:])
    out = np.full(n - levels + 1, np.inf)
    for i in range(levels, n + 1):
        p = bins[:i].copy()
        p[i - 1] += suffix[i]  # outliers folded into the last kept bin
        total_p = p.sum()
        if total_p <= 0:
            continue
        # Q: bin j of the i unclipped bins belongs to group g with edge g <= j < edge g+1 of
        # linspace(0, i, levels + 1); each group's mass is spread over its nonzero bins.
        group = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nonzero = bins[:i] != 0
        g = group[nonzero]
        mass = np.bincount(g, weights=bins[:i][nonzero], minlength=levels)
        count = np.bincount(g, minlength=levels)
        q = np.zeros(i)
        q[nonzero] = mass[g] / count[g]
        total_q = q.sum()
        if total_q <= 0:
            continue
        mask = p > 0
        if np.any(q[mask] == 0):
            continue  # P has mass where Q has none: infinite divergence
        ps, qs = p[mask] / total_p, q[mask] / total_q
        out[i - levels] = float(np.sum(ps * np.log(ps / qs)))
    return out


def entropy_threshold(
    hist: np.ndarray, max_abs: float, levels: int = QUANTIZED_LEVELS
) -> EntropyResult:
    """The clipping threshold for a histogram of |x| whose bins span [0, max_abs] evenly."""
    hist = np.asarray(hist, dtype=np.float64)
    width = float(max_abs) / hist.size if hist.size else 0.0
    if max_abs <= 0 or not np.isfinite(max_abs) or hist.sum() <= 0:
        # an all-zero tensor: any positive scale represents it exactly
        return EntropyResult(threshold=0.0, bin_index=hist.size, divergence=0.0, bin_width=width)
    div = kl_divergences(hist, levels)
    best = div.size - 1 - int(np.argmin(div[::-1]))  # the last minimum: the largest of equals
    i = best + levels
    return EntropyResult(threshold=i * width, bin_index=i, divergence=float(div[best]),
                         bin_width=width)
