"""What a calibration reports: per variant agreement and SQNR, frames, time, memory, warnings."""

from __future__ import annotations

import json
import math
import resource
from dataclasses import asdict, dataclass, field
from typing import Any

from daemon.quant.settings import CalibrationSettings



@dataclass
class VariantReport:
    target: str
    path: str
    size_bytes: int
    map50: float | None = None  # class-averaged agreement (the gate uses box-weighted)
    map50_box_weighted: float | None = None
    head_sqnr_db: dict[str, float] = field(default_factory=dict)
    worst_tensors_sqnr_db: list[tuple[str, float]] = field(default_factory=list)
    # daemon.quant.fallback.FallbackReport.to_dict(): the mixed-precision decision
    fallback: dict[str, Any] = field(default_factory=dict)


@dataclass
class CalibrationReport:
    model: str
    source: str
    key: str
    cache: str
    cache_reused: bool
    cache_note: str
    frames_calibrated: int
    frames_scored: int
    skipped: dict[str, int]
    skipped_examples: list[str]
    warnings: list[str]
    method: str
    fp32_size_bytes: int
    variants: dict[str, VariantReport]
    seconds: float
    calibration_seconds: float
    peak_rss_bytes: int
    reference_detections: int = 0
    reference_classes: int = 0
    cache_header: str = ""  # first line of the TensorRT table: TRT-<version>-<calibrator>
    mixed_precision_seconds: float = 0.0  # of calibration_seconds: the fallback's decisions

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def summary(self, with_warnings: bool = True) -> str:
        """Human-readable lines; ``with_warnings=False`` leaves out the ``warning:`` lines (for
        a caller that logs them at WARNING itself)."""
        return "\n".join(line for _, line in self.summary_lines(with_warnings))

    def summary_lines(self, with_warnings: bool = True) -> list[tuple[str | None, str]]:
        """summary()'s lines, each with the target it is about ("cpu", "tensorrt") or None for
        both: the daemon logs the other target's lines at DEBUG (TensorRT on a CPU machine)."""
        lines: list[tuple[str | None, str]] = []
        add = lines.append
        add((None, f"model {self.model}  source {self.source}  method {self.method}"))
        if self.cache_reused:
            add((None, f"calibration cache reused: {self.cache}"))
        else:
            mixed = (f", {self.mixed_precision_seconds:.0f} s of it deciding mixed precision"
                     if self.mixed_precision_seconds >= 1 else "")
            add((None, f"calibrated on {self.frames_calibrated} frames in "
                       f"{self.calibration_seconds:.1f} s{mixed} (peak RSS "
                       f"{self.peak_rss_bytes / 2**20:.0f} MiB); cache {self.cache}"))
        if self.cache_header:
            add(("tensorrt", f"TensorRT cache header {self.cache_header} (thresholds by "
                             f"method {self.method}; only --method entropy writes "
                             "EntropyCalibration2)"))
            if self.cache_note:
                add((None, f"  ({self.cache_note})"))
        if self.skipped:
            parts = ", ".join(f"{n} {r}" for r, n in self.skipped.items())
            add((None, f"skipped inputs: {parts}"))
        for w in self.warnings if with_warnings else ():
            add((None, f"warning: {w}"))
        for v in self.variants.values():
            ratio = v.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else math.nan
            add((v.target, f"{v.target:9s} {v.path}  {v.size_bytes / 1e6:.1f} MB "
                           f"({ratio:.2f}x FP32)"))
            if v.fallback:
                from daemon.quant.fallback import FallbackReport

                add((v.target, f"          {FallbackReport.from_dict(v.fallback).line()}"))
            if v.map50 is not None:
                heads = ", ".join(f"{k} {db:.1f} dB" for k, db in v.head_sqnr_db.items())
                bw = "n/a" if v.map50_box_weighted is None else f"{v.map50_box_weighted:.3f}"
                add((v.target, f"          agreement with FP32 on {self.frames_scored} held-out "
                               f"frames ({self.reference_detections} FP32 boxes, "
                               f"{self.reference_classes} classes): mAP@0.5 {bw} box-weighted "
                               f"(the number model.calibration.min_agreement gates), "
                               f"{v.map50:.3f} class-averaged; head SQNR {heads}"))
            if v.worst_tensors_sqnr_db:
                worst = ", ".join(f"{n} {db:.1f} dB" for n, db in v.worst_tensors_sqnr_db)
                add((v.target, f"          lowest tensor SQNR: {worst}"))
        return lines


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def shortfall_warnings(n_cal: int, held: int, settings: CalibrationSettings,
                        split: bool = False) -> list[str]:
    """What happened when the source ran out before `count` + `holdout` frames."""
    if n_cal >= settings.count and (held >= settings.holdout or (split and held > 0)):
        return []  # a split source's held-out part is what it is: `holdout` only caps it
    read = n_cal + held
    if n_cal < settings.count:
        msg = (f"the source gave {read} frames, fewer than the {settings.count} calibration "
               f"frames asked for: all {n_cal} were used for calibration")
    else:
        msg = (f"the source gave {read} frames: the {settings.count} asked for were used for "
               "calibration")
    if settings.holdout == 0:
        return [msg]
    if held == 0:
        msg += (f", and none was left to hold out (--holdout {settings.holdout}): INT8-vs-FP32 "
                "agreement was NOT measured")
        if n_cal > settings.holdout:
            msg += (f"; ask for at most {n_cal - settings.holdout} calibration frames to "
                    f"score on the last {settings.holdout}")
    else:
        msg += (f", and only the {held} frames after them were left to score agreement "
                f"(of the {settings.holdout} held-out frames asked for)")
    return [msg]

