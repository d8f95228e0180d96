"""Clipping thresholds from activation histograms: entropy (KL, TensorRT's EntropyCalibrator2),
percentile, mse or max."""

from __future__ import annotations

import math

import numpy as np

from daemon.quant.entropy import entropy_threshold
from daemon.quant.histogram import TensorHistogram, TensorStats
from daemon.quant.settings import CalibrationSettings



def threshold_for(hist: TensorHistogram, settings: CalibrationSettings) -> float:
    counts, amax = hist.histogram()
    if amax == 0.0:
        return 0.0
    if settings.method == "max":
        return amax
    if settings.method == "entropy":
        return entropy_threshold(counts, amax).threshold
    width = amax / counts.size
    if settings.method == "percentile":
        cdf = np.cumsum(counts) / counts.sum()
        i = int(np.searchsorted(cdf, settings.percentile / 100.0))
        return min((i + 1) * width, amax)
    # mse: the clipping point minimising the expected squared error of int8 quantization
    centers = (np.arange(counts.size) + 0.5) * width
    best_t, best_e = amax, math.inf
    for i in range(128, counts.size + 1, 4):
        t = i * width
        s = t / 127.0
        err = float(np.sum(counts * (centers - np.minimum(np.rint(centers / s) * s, t)) ** 2))
        if err < best_e:
            best_t, best_e = t, err
    return best_t


def stats_from_histograms(
    histograms: dict[str, TensorHistogram], settings: CalibrationSettings
) -> dict[str, TensorStats]:
    return {
        name: TensorStats(name, h.min if h.count else 0.0, h.max if h.count else 0.0,
                          float(threshold_for(h, settings)))
        for name, h in histograms.items()
    }

