"""Entropy (KL-divergence) clipping thresholds, the method of TensorRT's EntropyCalibrator2.

Given a histogram of |x| over [0, max|x|] (2048 bins), every candidate clipping point i in
128..2048 bins is scored by how much information an 8-bit quantization of the clipped
distribution loses: P is the histogram cut at i with everything beyond folded into its last bin,
Q is the same i bins merged into 128 levels and spread back uniformly over the bins that were
nonzero in P. The candidate with the smallest KL(P || Q) wins and its threshold is
(i + 0.5) * bin_width. This is the algorithm of NVIDIA's "8-bit Inference with TensorRT" talk
(Migacz, GTC 2017), as also implemented by MXNet and ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 2048
QUANTIZED_LEVELS = 128  # int8 symmetric: 0..127 on each side

# Q must be nonzero wherever P is, or KL is infinite; MXNet / ONNX Runtime move this much mass.
_SMOOTH_EPS = 1e-4


@dataclass(frozen=True)
class EntropyResult:
    threshold: float
    bin_index: int  # the chosen i: the first bin beyond the clipped range
    divergence: float
    bin_width: float


def _smooth(q: np.ndarray, eps: float = _SMOOTH_EPS) -> np.ndarray | None:
    """Move `eps` mass onto the zero bins of a (unnormalised) distribution, taken evenly from
    the nonzero ones; None when it is all zero."""
    zero = q == 0
    n_zero = int(zero.sum())
    n_nonzero = q.size - n_zero
    if n_nonzero == 0:
        return None
    out = q.astype(np.float64)
    if n_zero:
        eps1 = eps * n_zero / n_nonzero
        out = out + np.where(zero, eps, -eps1)
    return out


def kl_divergences(hist: np.ndarray, levels: int = QUANTIZED_LEVELS) -> np.ndarray:
    """KL(P||Q) for every candidate i in levels..len(hist); index k holds candidate levels+k.

    Infinite where the candidate is degenerate (nothing in range)."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    if n < levels:
        raise ValueError(f"histogram has {n} bins, fewer than {levels} quantized levels")
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # suffix[i] = sum(hist[i:])
    out = np.full(n - levels + 1, np.inf)
    for i in range(levels, n + 1):
        p = hist[:i].copy()
        p[i - 1] += suffix[i]  # outliers folded into the last kept bin
        total_p = p.sum()
        if total_p <= 0:
            continue
        # Q: the i unclipped bins merged into `levels` groups (the last group takes the rest),
        # each group's mass spread evenly over its bins that are nonzero in P.
        sliced = hist[:i]
        merged = i // levels
        starts = np.arange(levels) * merged
        nonzero = (p != 0).astype(np.float64)
        group_sum = np.add.reduceat(sliced, starts)
        group_nz = np.add.reduceat(nonzero, starts)
        sizes = np.full(levels, merged)
        sizes[-1] = i - merged * (levels - 1)
        per_bin = np.divide(group_sum, group_nz, out=np.zeros(levels), where=group_nz > 0)
        q = np.repeat(per_bin, sizes) * nonzero
        ps = _smooth(p)
        qs = _smooth(q)
        if ps is None or qs is None:
            continue
        ps /= ps.sum()
        qs /= qs.sum()
        mask = ps > 0
        out[i - levels] = float(np.sum(ps[mask] * np.log(ps[mask] / qs[mask])))
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
    best = int(np.argmin(div))  # first minimum: the smallest threshold among equals
    i = best + levels
    threshold = (i + 0.5) * width
    return EntropyResult(threshold=threshold, bin_index=i, divergence=float(div[best]),
                         bin_width=width)
