"""INT8 calibration: real frames -> activation statistics -> Q/DQ models + TensorRT cache.

One pass over the calibration frames (the daemon's own letterbox preprocessing) accumulates a
histogram per tensor; thresholds are chosen from the histograms; both the TensorRT and the CPU
model are written from the same statistics, then scored against the FP32 model on held-out
frames: the `holdout` frames that follow the `count` calibration frames in the source's order (the
last stretch of a video, the last files of a list), which calibration never sees.

The outputs (both models, the TensorRT table and its sidecar) are committed as one set: all are
staged to temporary files, then renamed; a failure or Ctrl-C rolls the renames back, so a reader
finds the whole previous set or the whole new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx

from daemon.quant import cache as cache_mod
from daemon.quant import qdq
from daemon.quant.errors import CalibrationError, check_cancel
from daemon.quant.fallback import FallbackReport, choose_float_inputs
from daemon.quant.histogram import ActivationCollector, Rect, TensorStats, picture_rect
from daemon.quant.report import (CalibrationReport, VariantReport, peak_rss_bytes,
                                 shortfall_warnings)
from daemon.quant.scoring import score_variants
from daemon.quant.settings import DEFAULT_BATCH, CalibrationSettings, calibration_key
from daemon.quant.sources import FrameSource, no_frames_message
from daemon.quant.thresholds import stats_from_histograms
from daemon.vision.letterbox import LetterboxInfo, letterbox_av

log = logging.getLogger("detectd.calibrate")


def other_target(target: str) -> str:
    return "cpu" if target == "tensorrt" else "tensorrt"


def sibling_path(out: Path, target: str) -> Path:
    """Where the variant not asked for goes: beside `out`, named after its target."""
    suffix = out.suffix or ".onnx"
    return out.with_name(f"{out.name[: -len(suffix)] if out.suffix else out.name}.{target}{suffix}")



def calibrate(
    model: str | os.PathLike[str],
    source: "str | FrameSource | None" = None,
    count: int = 300,
    target: str = "tensorrt",
    out: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    *,
    settings: CalibrationSettings | None = None,
    other_out: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    tensor_sqnr: bool = True,
    check_progress: Callable[[int, int], None] | None = None,
    batch: int = DEFAULT_BATCH,
    threads: int = 0,
) -> CalibrationReport:
    """Calibrate `model` (FP32 ONNX) on frames of `source` and write the INT8 model for
    `target` to `out`, the other target's model to `other_out` (default: beside `out`), and
    the TensorRT calibration cache to `cache` (default: `out` with .calib.table).

    `cancel` is checked between batches; once set, CalibrationCancelled is raised and nothing
    is written. `tensor_sqnr` False skips the per-tensor SQNR pass over the held-out frames
    (a diagnostic; the daemon's first start does without it). `batch` frames are run at a
    time by ONNX Runtime with `threads` intra-op threads (0 = one per core): how the work is
    run, not what it computes, so neither is part of the key. `progress(done, total)` reports
    calibration frames; `check_progress(done, total)` the held-out scoring after it (frame runs
    through FP32 and both INT8 variants, see scoring.score_variants). Every failure is a
    CalibrationError whose message names the input; a `batch` below 1 is a ValueError."""
    from daemon.models.info import ModelInfo, ModelInfoError

    t_start = time.perf_counter()
    if target not in qdq.TARGETS:
        raise CalibrationError(f"target {target!r}: expected one of {qdq.TARGETS}")
    settings = settings or CalibrationSettings(count=count)  # explicit settings win
    if batch < 1 or threads < 0:
        raise ValueError(f"calibration batch {batch} must be >= 1 and threads {threads} >= 0")
    model_path = Path(model)
    if not model_path.is_file():
        raise CalibrationError(f"model {model_path}: no such file")
    out_path = Path(out) if out else model_path.with_name(model_path.stem + ".int8.onnx")
    paths = {target: out_path,
             other_target(target): Path(other_out) if other_out else sibling_path(out_path,
                                                                                  other_target(target))}
    cache_path = Path(cache) if cache else out_path.with_suffix(".calib.table")
    outputs = [paths["tensorrt"], paths["cpu"], cache_path, cache_mod.meta_path(cache_path)]
    if len(set(outputs)) != len(outputs):
        raise CalibrationError("--out, the other target's model and --cache must be "
                               f"different files: {', '.join(map(str, outputs))}")
    cache_mod.clean_stale_parts(outputs)

    try:
        info = ModelInfo.from_onnx(model_path)
        proto = onnx.load(str(model_path))
    except ModelInfoError as e:
        raise CalibrationError(str(e)) from None
    except Exception as e:  # a file that is not ONNX at all
        raise CalibrationError(f"model {model_path}: cannot read ONNX model: {e}") from None
    _check_input(proto, info, model_path)
    _check_names(proto, model_path)
    model_sha = info.sha256

    frames_src = source if isinstance(source, FrameSource) else FrameSource(
        source, settings.every, settings.count + settings.holdout)
    key = calibration_key(model_sha, frames_src.set_hash(), settings)
    warn: list[str] = []
    cache_note = ""
    cached: cache_mod.CacheContents | None = None
    try:
        cached = cache_mod.read_cache(cache_path, key)
    except FileNotFoundError:
        pass
    except cache_mod.CacheMismatch as e:
        cache_note = f"existing cache {cache_path} not used: {e}; recalibrating"
        log.warning("%s", cache_note)

    t_cal = time.perf_counter()
    fallback_seconds = 0.0
    holdout_frames: np.ndarray | None = None
    holdout_infos: list[LetterboxInfo] = []
    if cached is not None:
        stats = cached.stats
        n_cal = _int(cached.info.get("frames"))
        log.info("calibration cache %s matches the model and calibration set: reused", cache_path)
        saved = cached.info.get("fallback")  # the mixed-precision decision made with it
        fallback = {t: FallbackReport.from_dict(saved[t]) if isinstance(saved, dict) and t in saved
                    else FallbackReport(t, settings.fallback_max_drop, 0) for t in qdq.TARGETS}
    else:
        stats, n_cal, holdout_frames, holdout_infos, (sample, sample_infos) = _collect(
            proto, info, frames_src, settings, progress, cancel, batch, threads)
        if n_cal == 0:
            raise CalibrationError(no_frames_message(frames_src))
        # tied tensors (pool in/out, concat) get one range, in the models and the table alike
        stats = qdq.share_ranges(proto, stats)
        warn.extend(shortfall_warnings(n_cal, len(holdout_infos), settings,
                                        frames_src.split is not None))
        t_fallback = time.perf_counter()
        fallback = {t: choose_float_inputs(
            proto, info, stats, sample, sample_infos, t, settings.fallback_max_drop,
            settings.fallback_max_layers if t in settings.fallback_targets else 0, batch,
            threads, cancel) for t in qdq.TARGETS}
        del sample
        fallback_seconds = time.perf_counter() - t_fallback
    cal_seconds = time.perf_counter() - t_cal

    meta = {"detectd.calibration_key": key, "detectd.calibration_method": settings.method,
            "detectd.calibration_frames": str(n_cal)}
    try:
        models = {t: qdq.quantize_model(proto, stats, t, meta, fallback[t].float_inputs)
                  for t in qdq.TARGETS}
    except (KeyError, ValueError) as e:
        raise CalibrationError(f"model {model_path}: cannot write the INT8 model: {e}") from None
    blobs = {t: m.SerializeToString() for t, m in models.items()}
    del models
    variants = {t: VariantReport(t, str(paths[t]), len(blobs[t]), fallback=fallback[t].to_dict())
                for t in qdq.TARGETS}

    scored = 0
    ref_count = 0
    ref_classes = 0
    if cached is None and holdout_frames is not None and len(holdout_frames):
        scored, ref_count, ref_classes = score_variants(proto, info, stats, blobs, holdout_frames,
                                                holdout_infos, variants, batch, threads, cancel,
                                                tensor_sqnr=tensor_sqnr,
                                                progress=check_progress)
    elif cached is not None:
        for t, v in variants.items():
            quality = cached.info.get("quality")
            prev = quality.get(t) if isinstance(quality, dict) else None
            if isinstance(prev, dict):
                v.map50 = prev.get("map50")
                v.map50_box_weighted = prev.get("map50_box_weighted")
                v.head_sqnr_db = prev.get("head_sqnr_db", {})
                v.worst_tensors_sqnr_db = [tuple(x) for x in prev.get("worst", [])]
        scored = _int(cached.info.get("frames_scored"))
        ref_count = _int(cached.info.get("reference_boxes"))
        ref_classes = _int(cached.info.get("reference_classes"))
    check_cancel(cancel)

    # Everything is built and checked in memory first; then the whole set is committed.
    files: dict[Path, bytes] = {paths[t]: blobs[t] for t in qdq.TARGETS}
    header = ""
    if cached is None:
        model_sha_, set_sha, settings_sha = key.split(":")
        try:
            cache_files = cache_mod.cache_files(cache_path, cache_mod.CacheContents(
                key=key,
                info={"model_sha256": model_sha_, "set_sha256": set_sha,
                      "settings_sha256": settings_sha, "settings": {**settings.keyed(), "batch": batch,
                                                     "threads": threads},
                      "source": frames_src.report.description, "frames": n_cal,
                      "frames_scored": scored, "reference_boxes": ref_count,
                      "reference_classes": ref_classes,
                      "fallback": {t: f.to_dict() for t, f in fallback.items()},
                      "quality": {t: {"map50": v.map50,
                                      "map50_box_weighted": v.map50_box_weighted,
                                      "head_sqnr_db": v.head_sqnr_db,
                                      "worst": v.worst_tensors_sqnr_db}
                                  for t, v in variants.items()}},
                stats=stats), method=settings.method)
        except cache_mod.CacheFormatError as e:
            raise CalibrationError(f"calibration cache {cache_path}: {e}") from None
        files.update(cache_files)  # the sidecar last
        header = cache_files[cache_path].split(b"\n", 1)[0].decode()
    else:
        header = str(cached.info.get("trt_header", ""))
    try:
        cache_mod.commit_set(files)
    except OSError as e:
        raise CalibrationError(f"cannot write the outputs ({e}); none was changed") from None

    report = CalibrationReport(
        model=str(model_path), source=frames_src.report.description, key=key,
        cache=str(cache_path), cache_reused=cached is not None, cache_note=cache_note,
        frames_calibrated=n_cal if cached is None else 0, frames_scored=scored,
        skipped=dict(frames_src.report.skipped),
        skipped_examples=frames_src.report.skipped_examples, warnings=warn,
        method=settings.method, fp32_size_bytes=model_path.stat().st_size, variants=variants,
        seconds=time.perf_counter() - t_start, calibration_seconds=cal_seconds,
        mixed_precision_seconds=fallback_seconds,
        peak_rss_bytes=peak_rss_bytes(), reference_detections=ref_count,
        reference_classes=ref_classes, cache_header=header)
    for w in warn:
        warnings.warn(w, stacklevel=2)
    return report


def _int(value: object) -> int:
    """A count read back from a cache sidecar (JSON): 0 when absent or not a number."""
    return int(value) if isinstance(value, (int, float)) else 0


def _check_names(proto: onnx.ModelProto, path: Path) -> None:
    """Every tensor that may go into the TensorRT table can be written there (before any
    frame is decoded, so a bad name costs no calibration time)."""
    from daemon.quant.histogram import activation_tensors

    for name in activation_tensors(proto):
        try:
            cache_mod.check_tensor_name(name)
        except cache_mod.CacheFormatError as e:
            raise CalibrationError(f"model {path}: {e}") from None


def _check_input(proto: onnx.ModelProto, info: Any, path: Path) -> None:
    inputs = {i.name: i for i in proto.graph.input}
    if info.input_name not in inputs:
        raise CalibrationError(f"model {path}: has no input named {info.input_name!r}")
    vi = inputs[info.input_name]
    if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise CalibrationError(f"model {path}: input {info.input_name!r} is not float32; "
                               "calibration needs the FP32 model")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in vi.type.tensor_type.shape.dim]
    want = [None, 3, info.height, info.width]
    if len(dims) != 4 or any(d is not None and w is not None and d != w
                             for d, w in zip(dims, want)):
        raise CalibrationError(
            f"model {path}: input {info.input_name!r} has shape {dims}; calibration feeds "
            f"letterboxed RGB frames of shape (N, 3, {info.height}, {info.width})")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        raise CalibrationError(f"model {path} is already quantized; give the FP32 model")


def _collect(
    proto: onnx.ModelProto, info: Any, src: FrameSource, settings: CalibrationSettings,
    progress: Callable[[int, int], None] | None, cancel: threading.Event | None = None,
    batch_size: int = DEFAULT_BATCH, threads: int = 0,
) -> tuple[dict[str, TensorStats], int, np.ndarray, list[LetterboxInfo],
           tuple[np.ndarray, list[LetterboxInfo]]]:
    """Decode, letterbox, run and histogram the first `count` frames of the source; the
    `holdout` frames that follow them (a contiguous stretch at the end of what is read: the
    end of a video, the last files of a list) are kept aside for scoring and never calibrated.
    A source that runs short gives calibration its `count` first; the holdout gets what is
    left. The last item: a sample of the calibration frames (fallback.Sampler) and their
    letterbox geometry, for the mixed-precision decision."""
    from daemon.quant.fallback import Sampler

    sampler = Sampler()
    collector = ActivationCollector(proto, threads=threads)
    w, h = info.width, info.height
    batch = np.empty((batch_size, 3, h, w), np.float32)
    rects: list[Rect] = []  # each batch frame's picture: only it is counted (histogram.py)
    filled = 0
    n_cal = 0
    held: list[np.ndarray] = []
    held_infos: list[LetterboxInfo] = []

    def flush(n: int) -> None:
        nonlocal n_cal
        check_cancel(cancel)
        collector.add_batch(batch if n == batch_size else batch[:n].copy(), rects[:n])
        rects.clear()
        n_cal += n
        if progress:
            progress(n_cal, settings.count)
        check_cancel(cancel)

    held_sources: list[str] = []
    check_cancel(cancel)
    if getattr(src, "split", None) is not None:
        # a source with its own disjoint calibration and held-out parts (the demo footage)
        stream: Generator[tuple[av.VideoFrame, str, bool | None], None, None] = (
            src.split_frames(settings.count, settings.holdout))
    else:
        stream = ((f, getattr(src, "current", ""), None) for f in src.frames())
    with closing(stream) as frames:
        for frame, source, for_calibration in frames:
            if for_calibration is None:
                for_calibration = n_cal + filled < settings.count
            if for_calibration:
                _, li = letterbox_av(frame, w, h, out=batch[filled])
                rects.append(picture_rect(li))
                sampler.offer(n_cal + filled, batch[filled], li)
                filled += 1
                if filled == batch_size:
                    flush(filled)
                    filled = 0
                continue
            if len(held) >= settings.holdout:
                break
            x, li = letterbox_av(frame, w, h)
            held.append(x)
            held_infos.append(li)
            held_sources.append(source)
    try:
        src.held_sources = held_sources  # type: ignore[union-attr]
    except AttributeError:
        pass
    if filled:
        flush(filled)
    empty = np.zeros((0, 3, h, w), np.float32)
    if n_cal == 0:
        return {}, 0, empty, [], (empty, [])
    stats = stats_from_histograms(collector.histograms, settings)
    frames_out = np.stack(held) if held else empty
    sample = sampler.stacked()
    return stats, n_cal, frames_out, held_infos, (empty if sample is None else sample,
                                                  sampler.infos)

