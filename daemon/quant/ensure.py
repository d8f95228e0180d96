"""The daemon's hook: the INT8 model for a config's ``model.calibration``, calibrated on first
use, cached under a key that says when it is stale, and refused below the agreement gate."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

from daemon.quant import cache as cache_mod
from daemon.quant import qdq
from daemon.quant.calibrate import calibrate, other_target
from daemon.quant.errors import AgreementTooLow
from daemon.quant.settings import (DEFAULT_BATCH, DEFAULT_MIN_AGREEMENT, CalibrationSettings,
                                   calibration_key)
from daemon.quant.sources import FrameSource

log = logging.getLogger("detectd.calibrate")



def ensure_int8_model(
    fp32_path: str | os.PathLike[str],
    calibration_settings: Any = None,
    target: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    cancel: threading.Event | None = None,
    min_agreement: float | None = None,
) -> Path:
    """The INT8 model for `target`, calibrated on first use and cached (default: beside the
    FP32 model) under a key of model hash + calibration set hash + settings + quantizer code.

    `calibration_settings` is the config's `model.calibration` (any object with `source`,
    `count` and optionally the other `CalibrationSettings` fields and `min_agreement`) or a
    CalibrationSettings.

    `cancel` (the daemon's stop event) is checked between batches: CalibrationCancelled, and
    nothing is left behind. `min_agreement` (default: the settings' `min_agreement`, else 0.90;
    0 turns the gate off) raises AgreementTooLow when the model's mAP@0.5 agreement with FP32
    on the held-out frames is below it; the models stay cached, so lowering the gate does not
    recalibrate. When no frame could be held out the agreement is unknown: logged, not fatal."""
    from daemon.digest import sha256_file

    fp32 = Path(fp32_path)
    cs = calibration_settings
    source = getattr(cs, "source", None) if cs is not None else None
    if isinstance(cs, CalibrationSettings):
        settings = cs
    else:  # any object with some of the fields (the rest take their defaults)
        settings = CalibrationSettings(**{k: getattr(cs, k) for k in CalibrationSettings.model_fields
                                          if cs is not None and hasattr(cs, k)})
    if min_agreement is None:
        min_agreement = getattr(cs, "min_agreement", None)
    gate = DEFAULT_MIN_AGREEMENT if min_agreement is None else float(min_agreement)
    directory = Path(cache_dir) if cache_dir else fp32.parent
    src = FrameSource(source, settings.every, settings.count + settings.holdout)
    key = calibration_key(sha256_file(fp32), src.set_hash(), settings)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = {t: directory / f"{fp32.stem}.int8-{t}.{tag}.onnx" for t in qdq.TARGETS}
    table = directory / f"{fp32.stem}.{tag}.calib.table"
    cache_mod.clean_stale_parts([*out.values(), table, cache_mod.meta_path(table)])
    sidecar = cache_mod.meta_path(table)
    quality: dict[str, Any] | None = None
    if out[target].is_file() and sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("key") == key:
                quality = meta
        except (OSError, ValueError):
            quality = None
    if quality is None:
        log.info("building the INT8 model for %s from %s once (1-3 min on 2 cores, "
                 "cached after): %s", target, fp32.name, _plan(src, settings))

        def say(done: int, total: int) -> None:
            if progress and (done % 50 < DEFAULT_BATCH or done >= total):
                log.info("calibration: %d/%d frames", min(done, total), total)

        quarters_logged = [0]

        def checking(done: int, total: int) -> None:
            # a line at each quarter: the check takes about as long as calibration itself
            quarter = 4 * done // total if total else 4
            if progress and quarter > quarters_logged[0]:
                quarters_logged[0] = quarter
                log.info("checking INT8 against FP32 on the held-out frames: %d%% (%d/%d "
                         "frame runs: FP32, INT8 cpu, INT8 tensorrt)", 100 * done // total,
                         done, total)

        # calibrate() also raises its report's warnings as Python warnings (for library users):
        # the daemon logs each once, below, and never as a raw py.warnings line.
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            report = calibrate(fp32, src, settings.count, target, out[target], table,
                               settings=settings, other_out=out[other_target(target)],
                               progress=say, cancel=cancel, tensor_sqnr=False,
                               check_progress=checking)
        # the other target's lines (TensorRT's table and model on a CPU machine) are for
        # --log-level debug: that model is built from the same statistics but not used here
        for about, line in report.summary_lines(with_warnings=False):
            log.log(logging.INFO if about in (None, target) else logging.DEBUG, "%s", line)
        for w in raised:
            if str(w.message) not in report.warnings:
                log.warning("INT8 calibration: %s: %s", w.category.__name__, w.message)
        map50 = gated_agreement(report.variants[target].map50_box_weighted,
                                report.variants[target].map50)
        scored = report.frames_scored
        notes = list(report.warnings)
    else:
        q = (quality.get("quality") or {}).get(target) or {}
        map50 = gated_agreement(q.get("map50_box_weighted"), q.get("map50"))
        scored = int(quality.get("frames_scored") or 0)
        notes = []
    _gate(map50, scored, gate, target, settings, notes)
    return out[target]


def _plan(src: FrameSource, settings: CalibrationSettings) -> str:
    """What the first start will read, in the start line's words: the demo footage has a
    calibration part and a held-out part of fixed sizes (quant/footage.py), of which
    model.calibration.count and .holdout frames are spread over each; any other source gives
    `count` frames to calibrate and the `holdout` that follow them."""
    if src.split_frames_available is not None:
        n_cal, n_hold = src.split_frames_available
        return (f"{min(settings.count, n_cal)} demo frames to calibrate, "
                f"{min(settings.holdout, n_hold)} of {n_hold} held-out frames (other pictures) "
                "to check it against FP32")
    return (f"{settings.count} frames of {src.report.description} to calibrate, then up to "
            f"{settings.holdout} held-out frames that follow to check it against FP32")


def gated_agreement(box_weighted: float | None, class_averaged: float | None) -> float | None:
    """The agreement the gate compares with min_agreement: box-weighted mAP@0.5 (each class's
    AP weighted by its FP32 boxes). Class-averaged mAP weighs a class with one box as much as
    one with 300: on the demo's 300 held-out frames, two classes with one box each and one
    with four moved it by 0.05 between models, TensorRT's own table included (docs/int8.md).
    Class-averaged only where nothing else was recorded."""
    return box_weighted if box_weighted is not None else class_averaged


def _gate(map50: float | None, scored: int, gate: float, target: str,
          settings: CalibrationSettings, notes: list[str] | None = None) -> None:
    """Refuse an INT8 model below the agreement gate. ``notes`` (the calibration report's
    warnings) are logged here, once each; the one about agreement not being measured is folded
    into the gate's own warning, so a start says it once, naming the config keys."""
    notes = notes or []
    if gate > 0.0 and (map50 is None or scored == 0):
        if settings.holdout == 0:
            fix = "set model.calibration.holdout above 0 (default 300)"
        else:
            fix = (f"the source ran out after the {settings.count} calibration frames: lower "
                   "model.calibration.count, or give a longer model.calibration.source, so "
                   f"that model.calibration.holdout ({settings.holdout}) frames remain")
        log.warning("INT8 (%s) agreement with FP32 NOT checked against "
                    "model.calibration.min_agreement %.2f: no frame was held out; %s%s",
                    target, gate, fix, f" ({'; '.join(notes)})" if notes else "")
        return
    for note in notes:
        log.warning("INT8 calibration: %s", note)
    if gate <= 0.0:
        return
    if map50 is not None and map50 >= gate:
        log.info("INT8 gate passed: box-weighted mAP@0.5 %.3f >= model.calibration."
                 "min_agreement %.2f (%s model vs FP32 on ONNX Runtime, %d held-out frames)", map50, gate,
                 target, scored)
    elif map50 is not None and map50 < gate:
        other = "percentile" if settings.method == "entropy" else "entropy"
        mixed = ("" if target in settings.fallback_targets and settings.fallback_max_layers
                 else f"mixed precision for this variant (model.calibration.fallback_targets "
                      f"including {target}), ")
        raise AgreementTooLow(
            f"INT8 model ({target}) agrees with FP32 at mAP@0.5 {map50:.3f} (box-weighted) on "
            f"{scored} "
            f"held-out frames, below model.calibration.min_agreement {gate:.2f} "
            f"(method {settings.method}); try model.calibration.method: {other}, {mixed}more or "
            "other calibration frames (model.calibration.source, .count), "
            "model.precision: fp32, or lower model.calibration.min_agreement (0 turns the "
            "check off)")

