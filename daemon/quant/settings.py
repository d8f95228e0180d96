"""Calibration settings and the key that says when a calibration can be reused.

``CalibrationSettings`` is the one definition: the config's ``model.calibration`` is this model
(``daemon.config`` imports it), ``detectd calibrate`` builds it from its options, and the
calibration code reads it. How the work is run (batch size, threads) is not a setting: it does
not change the result, so it is an argument of ``calibrate`` and stays out of the key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

METHODS = ("entropy", "percentile", "mse", "max")
DEFAULT_BATCH = 4  # frames ONNX Runtime runs at once during calibration and scoring
DEFAULT_MIN_AGREEMENT = 0.90  # the daemon's quality gate (config model.calibration.min_agreement)
# The settings that decide the thresholds and the mixed-precision choice: they (and the
# quantizer's code) make the key, so changing a fallback_* setting recalibrates (the decision
# needs calibration frames, which are not kept).
_KEYED = ("count", "every", "holdout", "method", "percentile", "fallback_max_drop",
          "fallback_max_layers", "fallback_targets")


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


class CalibrationSettings(BaseModel):
    """``model.calibration`` (docs/int8-overview.md, docs/int8.md). Unknown keys are refused; a bad
    value raises pydantic's ValidationError (a ValueError) naming the field."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    # "demo" = the demo footage (its own calibration and held-out parts, docs/int8.md); else an
    # image list file, a directory, a video or URL.
    source: str = "demo"
    count: int = Field(default=300, ge=1, le=100000)  # calibration frames
    # Video sources: take every k-th decoded frame; 0 = spread `count` over the file.
    every: int = Field(default=0, ge=0)
    # Frames kept out of calibration to score INT8 against FP32 (mAP@0.5 agreement).
    holdout: int = Field(default=300, ge=0)
    # Clipping thresholds: entropy (default: TensorRT's EntropyCalibrator2, KL divergence, on
    # the picture only; docs/int8.md), percentile, mse, max. The first entropy version counted
    # the letterbox border too and collapsed (agreement 0.47).
    method: Literal["percentile", "entropy", "mse", "max"] = "entropy"
    percentile: float = Field(default=99.99, gt=50, le=100)
    # Mixed precision (daemon/quant/fallback.py, docs/int8.md): the convolution inputs whose own
    # quantization costs the most stay in float, one at a time, until the box-weighted agreement
    # with FP32 on a sample of the calibration frames is within fallback_max_drop of 1, at most
    # fallback_max_layers of them (0 = every convolution INT8), in the variants named in
    # fallback_targets (the cpu layout is left out by default: there its float first layers
    # add 35% to OpenVINO's time per frame, 12% to ONNX Runtime's: docs/int8.md). In the tensorrt
    # layout the 8-bit image input also stays float whenever mixed precision is on.
    fallback_max_drop: float = Field(default=0.01, ge=0, le=1)
    fallback_max_layers: int = Field(default=2, ge=0, le=64)
    fallback_targets: list[Literal["tensorrt", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt"])  # type: ignore[arg-type]
    # The daemon refuses an INT8 model whose mAP@0.5 agreement with the FP32 model on the
    # held-out frames is below this; 0 = no check (docs/int8-overview.md).
    min_agreement: float = Field(default=DEFAULT_MIN_AGREEMENT, ge=0, le=1)

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        from daemon.sources import urls

        urls.register_url(v)  # a stream URL's password, before any message can echo it
        return v

    def keyed(self) -> dict[str, object]:
        """The settings that decide the thresholds (not the source: the calibration set's own
        hash covers it; not min_agreement: lowering the gate must not recalibrate)."""
        return self.model_dump(include=set(_KEYED))

    def digest(self) -> str:
        d = self.keyed()
        d["code"] = code_digest()
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def describe_invalid(e: ValidationError, prefix: str = "") -> str:
    """One line per problem of a ValidationError: ``<prefix><field>: <message>``. With the
    prefix ``--`` the field is written as the command-line option (``--fallback-max-layers``
    for ``fallback_max_layers``)."""
    def name(loc: tuple[object, ...]) -> str:
        n = ".".join(str(p) for p in loc)
        return n.replace("_", "-") if prefix == "--" else n

    return "; ".join(f"{prefix}{name(err['loc'])}: {err['msg']}" for err in e.errors())


def calibration_key(model_sha: str, set_sha: str, settings: CalibrationSettings) -> str:
    return f"{model_sha}:{set_sha}:{settings.digest()}"
