"""Calibration settings (one definition: the config's ``model.calibration`` is this model) and
the key that says when a calibration can be reused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

METHODS = ("entropy", "percentile", "mse", "max")
DEFAULT_MIN_AGREEMENT = 0.90  # the daemon's quality gate (config model.calibration.min_agreement)


def digest_files() -> list[Path]:
    """The files `code_digest` hashes: every module of daemon/quant (histograms, the picture
    rectangle rule, KL search, shared ranges, the Q/DQ writer, the demo footage), the
    letterbox preprocessing and the display orientation calibration frames are read with."""
    here = Path(__file__).resolve().parent
    return sorted(here.glob("*.py")) + [here.parent / "vision" / "letterbox.py",
                                        here.parent / "vision" / "orient.py"]


def code_digest() -> str:
    """SHA-256 of the code that turns frames into INT8 models (`digest_files`): a changed
    quantizer (the picture-only histograms, say) never reuses a model or cache made by the old
    one, with no version number to remember to bump."""
    h = hashlib.sha256()
    for p in digest_files():
        h.update(f"{p.parent.name}/{p.name}\n".encode())
        h.update(p.read_bytes())
    return h.hexdigest()



@dataclass(frozen=True)
class CalibrationSettings:
    count: int = 300  # calibration frames
    every: int = 0  # take every k-th decoded video frame; 0 = spread `count` over a file
    holdout: int = 300  # frames after the calibration frames, kept aside to score INT8 vs FP32
    # "entropy" is TensorRT's EntropyCalibrator2 (KL), the classic recipe's method, on
    # histograms of the picture only (histogram.py; docs/int8.md has the figures). The first
    # version counted the letterbox border too and collapsed (agreement 0.47).
    method: str = "entropy"
    percentile: float = 99.99
    batch: int = 4
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per core

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r}: expected one of {METHODS}")
        if self.count < 1 or self.holdout < 0 or self.batch < 1 or self.every < 0:
            raise ValueError("calibration count and batch must be >= 1, holdout and every >= 0")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError("calibration percentile must be in (50, 100]")

    def digest(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in ("batch", "threads")}
        d["code"] = code_digest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()



def calibration_key(model_sha: str, set_sha: str, settings: CalibrationSettings) -> str:
    return f"{model_sha}:{set_sha}:{settings.digest()}"

