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

import hashlib
import json
import logging
import math
import os
import resource
import sys
import threading
import time
import warnings
from collections import Counter
from contextlib import closing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx
import onnxruntime as ort

from daemon.digest import sha256_file
from daemon.errors import Cancelled, DetectdError
from daemon.quant import cache as cache_mod
from daemon.quant import qdq
from daemon.quant.agreement import SqnrAccumulator, fake_quantize, map_at_50
from daemon.quant.entropy import entropy_threshold
from daemon.quant.footage import Footage
from daemon.quant.histogram import (ActivationCollector, Rect, TensorHistogram, TensorStats,
                                    picture_rect)
from daemon.vision.letterbox import LetterboxInfo, letterbox_av
from daemon.redact import redact_text, redact_url
from daemon.sources.errors import describe_error
from daemon.sources.open import no_video_reason, pick_video_stream
from daemon.sources.urls import register_url
from daemon.sources.validate import UnsupportedFrame, check_frame
from daemon.vision.orient import frame_orientation, oriented_rgb

log = logging.getLogger("detectd.calibrate")

METHODS = ("entropy", "percentile", "mse", "max")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".list", ".lst"}
DEFAULT_MIN_AGREEMENT = 0.90  # the daemon's quality gate (config model.calibration.min_agreement)


def _displayed(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as a player shows it (display matrix applied; see daemon.vision.orient), so
    that calibration sees what the daemon analyses."""
    orient = frame_orientation(frame)
    if not orient:
        return frame
    return av.VideoFrame.from_ndarray(oriented_rgb(frame, orient), format="rgb24")


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


class CalibrationError(DetectdError, RuntimeError):
    """Calibration cannot proceed; the message says why and names the input."""


class CalibrationCancelled(CalibrationError, Cancelled):
    """The caller's cancel event was set (daemon shutdown): nothing was written."""


class AgreementTooLow(CalibrationError):
    """The INT8 model's agreement with FP32 on held-out frames is below the configured gate."""


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


# ----------------------------------------------------------------------------- sources


@dataclass
class SourceReport:
    description: str
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


class FrameSource:
    """Where calibration frames come from: yields PyAV VideoFrames, counts what it skips."""

    def __init__(self, source: str | None, every: int = 0, wanted: int = 550) -> None:
        self.every = every
        self.wanted = wanted
        self.items: list[tuple[str, str]] = []  # (kind: image|video, path or url)
        spec = (source or "demo").strip()
        # A stream URL may carry a password: register it with the redactor before anything can
        # echo it, and keep only the redacted form for the report (printed, written as JSON).
        register_url(spec)
        self.report = SourceReport(description=redact_url(spec))
        self.split: Footage | None = None  # a source with its own held-out part
        self.current = ""  # the item being read (the source of each held-out frame)
        self.held_sources: list[str] = []  # filled by calibration: the source of each
        if spec == "demo":
            from daemon.quant.footage import demo_footage

            # calibration on one part of the footage, agreement on another (footage.py)
            self.split = demo_footage(progress=True)
            self.items = [("video", seg.path) for seg in self.split.calibration
                          + self.split.holdout]
            n_cal = sum(s.frames for s in self.split.calibration)
            n_hold = sum(s.frames for s in self.split.holdout)
            self.report.description = (f"demo footage ({n_cal} calibration frames, "
                                       f"{n_hold} held-out frames of other pictures)")
        elif _is_url(spec):
            self.items = [("video", spec)]
        else:
            path = Path(spec.removeprefix("file://")).expanduser()
            if not path.exists():
                raise CalibrationError(f"calibration source {spec}: no such file or directory")
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file())
                if not files:
                    raise CalibrationError(f"calibration source {path}: directory is empty")
                self.items = [("image", str(p)) for p in files]
            elif path.suffix.lower() in LIST_SUFFIXES:
                self.items = self._read_list(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                self.items = [("image", str(path))]
            else:
                self.items = [("video", str(path))]

    @staticmethod
    def _read_list(path: Path) -> list[tuple[str, str]]:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CalibrationError(f"calibration list {path}: cannot read: {e}") from None
        lines = [ln.strip() for ln in text.splitlines()]
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if not entries:
            raise CalibrationError(f"calibration list {path} is empty: give one image path a line")
        # relative paths are relative to the list file, as in Darknet/TensorRT sample lists
        return [("image", str((path.parent / e) if not os.path.isabs(e) else Path(e)))
                for e in entries]

    def split_frames(self, count: int, holdout: int
                     ) -> Iterator[tuple[av.VideoFrame, str, bool | None]]:
        """(frame, source picture, for calibration?) of a split source: `count` frames spread
        over its calibration part, then `holdout` spread over its held-out part."""
        from daemon.quant.footage import segment_frames

        assert self.split is not None
        for frame, source in segment_frames(self.split.calibration, count):
            yield frame, source, True
        if holdout:
            for frame, source in segment_frames(self.split.holdout, holdout):
                yield frame, source, False

    def set_hash(self) -> str:
        """Identity of the calibration set: file contents (so a renamed copy still matches,
        and an edited file does not); a live stream can only be named by its URL."""
        h = hashlib.sha256()
        h.update(f"every={self.every};wanted={self.wanted}\n".encode())
        if self.split is not None:
            for part in (self.split.calibration, self.split.holdout):
                h.update(json.dumps([[s.source, s.start, s.stop, s.step] for s in part]).encode())
        for kind, item in self.items:
            h.update(f"{kind}\n".encode())
            p = Path(item)
            if kind == "video" and _is_url(item):
                h.update(item.encode())
            elif p.is_file():
                try:
                    h.update(sha256_file(p).encode())
                except OSError:
                    h.update(b"unreadable:" + item.encode())
            else:
                h.update(b"missing:" + item.encode())
        return h.hexdigest()

    def _skip(self, item: str, reason: str) -> None:
        # Both end up in the printed and JSON reports: never a URL's credentials.
        item, reason = redact_url(item), redact_text(reason)
        self.report.skipped[reason] += 1
        if len(self.report.skipped_examples) < 5:
            self.report.skipped_examples.append(f"{item}: {reason}")
        log.debug("skipped %s: %s", item, reason)

    def frames(self) -> Iterator[av.VideoFrame]:
        for kind, item in self.items:
            # a URL may carry credentials: never a label
            self.current = Path(item).name if not _is_url(item) else "stream"
            if kind == "image":
                frame = self._image(item)
                if frame is not None:
                    yield frame
            else:
                yield from self._video(item)

    def _image(self, path: str) -> av.VideoFrame | None:
        if not os.path.isfile(path):
            self._skip(path, "not a readable file")
            return None
        try:
            with av.open(path) as c:
                stream = pick_video_stream(c)  # as ffmpeg picks it, like _video
                if stream is None:
                    self._skip(path, "not an image")
                    return None
                for frame in c.decode(stream):
                    # Before any conversion: some pixel formats/sizes abort libswscale.
                    check_frame(frame)
                    return _displayed(frame)
            self._skip(path, "no picture decoded")
        except UnsupportedFrame as e:
            self._skip(path, str(e))
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            self._skip(path, f"not an image ({describe_error(e)})")
        return None

    def _video(self, url: str) -> Iterator[av.VideoFrame]:
        options = {"rtsp_transport": "tcp", "timeout": "10000000"} if url.startswith(
            "rtsp") else {}
        try:
            container = av.open(url, options=options, timeout=(15.0, 15.0))
        except (av.FFmpegError, OSError, ValueError) as e:
            self._skip(url, f"cannot open video ({describe_error(e, url)})")
            return
        with container:
            stream = pick_video_stream(container)  # as ffmpeg picks it: never cover art
            if stream is None:
                self._skip(url, no_video_reason(container))
                return
            stream.thread_type = "AUTO"
            every = self.every
            if every <= 0:  # spread the wanted frames over a file of known length
                total = stream.frames or 0
                every = max(1, total // self.wanted) if total else (1 if not _is_url(url) else 10)
            index = 0
            try:
                for frame in container.decode(stream):
                    if index % every == 0:
                        try:
                            # Before any conversion: some pixel formats/sizes abort libswscale.
                            check_frame(frame)
                        except UnsupportedFrame as e:
                            self._skip(url, str(e))  # this frame only: a stream may change size
                        else:
                            yield _displayed(frame)
                    index += 1
            except (av.FFmpegError, OSError, EOFError) as e:
                # keep what decoded: a damaged tail should not throw the good frames away
                self._skip(url, f"decoding stopped early ({describe_error(e, url)})")


# ----------------------------------------------------------------------------- statistics


def _threshold(hist: TensorHistogram, settings: CalibrationSettings) -> float:
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
                          float(_threshold(h, settings)))
        for name, h in histograms.items()
    }


# ----------------------------------------------------------------------------- report


@dataclass
class VariantReport:
    target: str
    path: str
    size_bytes: int
    map50: float | None = None  # class-averaged agreement (the gate)
    map50_box_weighted: float | None = None
    head_sqnr_db: dict[str, float] = field(default_factory=dict)
    worst_tensors_sqnr_db: list[tuple[str, float]] = field(default_factory=list)


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def summary(self, with_warnings: bool = True) -> str:
        """Human-readable lines; ``with_warnings=False`` leaves out the ``warning:`` lines (for
        a caller that logs them at WARNING itself)."""
        lines = [f"model {self.model}  source {self.source}  method {self.method}"]
        if self.cache_reused:
            lines.append(f"calibration cache reused: {self.cache}")
        else:
            lines.append(f"calibrated on {self.frames_calibrated} frames in "
                         f"{self.calibration_seconds:.1f} s (peak RSS "
                         f"{self.peak_rss_bytes / 2**20:.0f} MiB); cache {self.cache}")
        if self.cache_header:
            lines.append(f"TensorRT cache header {self.cache_header} (thresholds by method "
                         f"{self.method}; only --method entropy writes EntropyCalibration2)")
            if self.cache_note:
                lines.append(f"  ({self.cache_note})")
        if self.skipped:
            parts = ", ".join(f"{n} {r}" for r, n in self.skipped.items())
            lines.append(f"skipped inputs: {parts}")
        for w in self.warnings if with_warnings else ():
            lines.append(f"warning: {w}")
        for v in self.variants.values():
            ratio = v.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else math.nan
            lines.append(f"{v.target:9s} {v.path}  {v.size_bytes / 1e6:.1f} MB ({ratio:.2f}x FP32)")
            if v.map50 is not None:
                heads = ", ".join(f"{k} {db:.1f} dB" for k, db in v.head_sqnr_db.items())
                bw = "n/a" if v.map50_box_weighted is None else f"{v.map50_box_weighted:.3f}"
                lines.append(f"          agreement with FP32 on {self.frames_scored} held-out "
                             f"frames ({self.reference_detections} FP32 boxes, "
                             f"{self.reference_classes} classes): mAP@0.5 {v.map50:.3f} "
                             f"class-averaged, {bw} box-weighted; head SQNR {heads}")
            if v.worst_tensors_sqnr_db:
                worst = ", ".join(f"{n} {db:.1f} dB" for n, db in v.worst_tensors_sqnr_db)
                lines.append(f"          lowest tensor SQNR: {worst}")
        return "\n".join(lines)


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# ----------------------------------------------------------------------------- pipeline


def _session(model: bytes | str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _run_batches(sess: ort.InferenceSession, input_name: str, frames: np.ndarray,
                 batch: int, outputs: list[str] | None = None,
                 cancel: threading.Event | None = None) -> list[np.ndarray]:
    parts = []
    for i in range(0, len(frames), batch):
        _check_cancel(cancel)  # hundreds of held-out frames: a stop must not wait for all
        parts.append(sess.run(outputs, {input_name: frames[i:i + batch]}))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def other_target(target: str) -> str:
    return "cpu" if target == "tensorrt" else "tensorrt"


def sibling_path(out: Path, target: str) -> Path:
    """Where the variant not asked for goes: beside `out`, named after its target."""
    suffix = out.suffix or ".onnx"
    return out.with_name(f"{out.name[: -len(suffix)] if out.suffix else out.name}.{target}{suffix}")


def calibration_key(model_sha: str, set_sha: str, settings: CalibrationSettings) -> str:
    return f"{model_sha}:{set_sha}:{settings.digest()}"


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
) -> CalibrationReport:
    """Calibrate `model` (FP32 ONNX) on frames of `source` and write the INT8 model for
    `target` to `out`, the other target's model to `other_out` (default: beside `out`), and
    the TensorRT calibration cache to `cache` (default: `out` with .calib.table).

    `cancel` is checked between batches; once set, CalibrationCancelled is raised and nothing
    is written. `tensor_sqnr` False skips the per-tensor SQNR pass over the held-out frames
    (a diagnostic; the daemon's first start does without it). Every failure is a CalibrationError whose message names the input."""
    from daemon.models.info import ModelInfo, ModelInfoError

    t_start = time.perf_counter()
    if target not in qdq.TARGETS:
        raise CalibrationError(f"target {target!r}: expected one of {qdq.TARGETS}")
    settings = settings or CalibrationSettings(count=count)  # explicit settings win
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
    holdout_frames: np.ndarray | None = None
    holdout_infos: list[LetterboxInfo] = []
    if cached is not None:
        stats = cached.stats
        n_cal = int(cached.info.get("frames", 0))  # type: ignore[arg-type]
        log.info("calibration cache %s matches the model and calibration set: reused", cache_path)
    else:
        stats, n_cal, holdout_frames, holdout_infos = _collect(
            proto, info, frames_src, settings, progress, cancel)
        if n_cal == 0:
            raise CalibrationError(_no_frames_message(frames_src))
        # tied tensors (pool in/out, concat) get one range, in the models and the table alike
        stats = qdq.share_ranges(proto, stats)
        warn.extend(_shortfall_warnings(n_cal, len(holdout_infos), settings,
                                        frames_src.split is not None))
    cal_seconds = time.perf_counter() - t_cal

    meta = {"detectd.calibration_key": key, "detectd.calibration_method": settings.method,
            "detectd.calibration_frames": str(n_cal)}
    try:
        models = {t: qdq.quantize_model(proto, stats, t, meta) for t in qdq.TARGETS}
    except (KeyError, ValueError) as e:
        raise CalibrationError(f"model {model_path}: cannot write the INT8 model: {e}") from None
    blobs = {t: m.SerializeToString() for t, m in models.items()}
    del models
    variants = {t: VariantReport(t, str(paths[t]), len(blobs[t])) for t in qdq.TARGETS}

    scored = 0
    ref_count = 0
    ref_classes = 0
    if cached is None and holdout_frames is not None and len(holdout_frames):
        scored, ref_count, ref_classes = _score(proto, info, stats, blobs, holdout_frames,
                                                holdout_infos, variants, settings, cancel,
                                                tensor_sqnr=tensor_sqnr)
    elif cached is not None:
        for t, v in variants.items():
            prev = cached.info.get("quality", {}).get(t)  # type: ignore[union-attr]
            if isinstance(prev, dict):
                v.map50 = prev.get("map50")
                v.map50_box_weighted = prev.get("map50_box_weighted")
                v.head_sqnr_db = prev.get("head_sqnr_db", {})
                v.worst_tensors_sqnr_db = [tuple(x) for x in prev.get("worst", [])]
        scored = int(cached.info.get("frames_scored", 0))  # type: ignore[arg-type]
        ref_count = int(cached.info.get("reference_boxes", 0))  # type: ignore[arg-type]
        ref_classes = int(cached.info.get("reference_classes", 0))  # type: ignore[arg-type]
    _check_cancel(cancel)

    # Everything is built and checked in memory first; then the whole set is committed.
    files: dict[Path, bytes] = {paths[t]: blobs[t] for t in qdq.TARGETS}
    header = ""
    if cached is None:
        model_sha_, set_sha, settings_sha = key.split(":")
        try:
            cache_files = cache_mod.cache_files(cache_path, cache_mod.CacheContents(
                key=key,
                info={"model_sha256": model_sha_, "set_sha256": set_sha,
                      "settings_sha256": settings_sha, "settings": asdict(settings),
                      "source": frames_src.report.description, "frames": n_cal,
                      "frames_scored": scored, "reference_boxes": ref_count,
                      "reference_classes": ref_classes,
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
        peak_rss_bytes=peak_rss_bytes(), reference_detections=ref_count,
        reference_classes=ref_classes, cache_header=header)
    for w in warn:
        warnings.warn(w, stacklevel=2)
    return report


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CalibrationCancelled("INT8 calibration cancelled (stop requested); "
                                   "nothing was written")


def _shortfall_warnings(n_cal: int, held: int, settings: CalibrationSettings,
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


def _no_frames_message(src: FrameSource) -> str:
    msg = f"calibration source {src.report.description}: no usable frame"
    if src.report.skipped:
        parts = ", ".join(f"{n} {r}" for r, n in src.report.skipped.items())
        msg += f" ({parts}"
        if src.report.skipped_examples:
            msg += "; e.g. " + src.report.skipped_examples[0]
        msg += ")"
    return msg


def _collect(
    proto: onnx.ModelProto, info: Any, src: FrameSource, settings: CalibrationSettings,
    progress: Callable[[int, int], None] | None, cancel: threading.Event | None = None,
) -> tuple[dict[str, TensorStats], int, np.ndarray, list[LetterboxInfo]]:
    """Decode, letterbox, run and histogram the first `count` frames of the source; the
    `holdout` frames that follow them (a contiguous stretch at the end of what is read: the
    end of a video, the last files of a list) are kept aside for scoring and never calibrated.
    A source that runs short gives calibration its `count` first; the holdout gets what is
    left."""
    collector = ActivationCollector(proto, threads=settings.threads)
    w, h = info.width, info.height
    batch = np.empty((settings.batch, 3, h, w), np.float32)
    rects: list[Rect] = []  # each batch frame's picture: only it is counted (histogram.py)
    filled = 0
    n_cal = 0
    held: list[np.ndarray] = []
    held_infos: list[LetterboxInfo] = []

    def flush(n: int) -> None:
        nonlocal n_cal
        _check_cancel(cancel)
        collector.add_batch(batch if n == settings.batch else batch[:n].copy(), rects[:n])
        rects.clear()
        n_cal += n
        if progress:
            progress(n_cal, settings.count)
        _check_cancel(cancel)

    held_sources: list[str] = []
    _check_cancel(cancel)
    if getattr(src, "split", None) is not None:
        # a source with its own disjoint calibration and held-out parts (the demo footage)
        stream: Iterator[tuple[av.VideoFrame, str, bool | None]] = src.split_frames(
            settings.count, settings.holdout)
    else:
        stream = ((f, getattr(src, "current", ""), None) for f in src.frames())
    with closing(stream) as frames:
        for frame, source, for_calibration in frames:
            if for_calibration is None:
                for_calibration = n_cal + filled < settings.count
            if for_calibration:
                _, li = letterbox_av(frame, w, h, out=batch[filled])
                rects.append(picture_rect(li))
                filled += 1
                if filled == settings.batch:
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
    if n_cal == 0:
        return {}, 0, np.zeros((0, 3, h, w), np.float32), []
    stats = stats_from_histograms(collector.histograms, settings)
    frames_out = np.stack(held) if held else np.zeros((0, 3, h, w), np.float32)
    return stats, n_cal, frames_out, held_infos


def _score(
    proto: onnx.ModelProto, info: Any, stats: dict[str, TensorStats], blobs: dict[str, bytes],
    frames: np.ndarray, infos: list[LetterboxInfo], variants: dict[str, VariantReport],
    settings: CalibrationSettings, cancel: threading.Event | None = None, conf: float = 0.25,
    nms: float = 0.45, pred_conf: float = 0.05, tensor_sqnr: bool = True,
) -> tuple[int, int, int]:
    """mAP@0.5 of each INT8 variant against FP32 on held-out frames, SQNR of the heads, and
    the tensors whose own quantization (FP32 activations quantized with the chosen scales)
    loses the most."""
    from daemon.vision.yolo import postprocess

    heads = [h.name for h in info.heads]
    fp32 = _session(proto.SerializeToString(), settings.threads)
    ref_out = _run_batches(fp32, info.input_name, frames, settings.batch, heads, cancel)
    reference = postprocess(ref_out, infos, info.heads, conf, nms)
    del fp32
    classes = len({int(c) for d in reference for c in d.class_ids})
    for t, blob in blobs.items():
        _check_cancel(cancel)
        sess = _session(blob, settings.threads)
        out = _run_batches(sess, info.input_name, frames, settings.batch, heads, cancel)
        predicted = postprocess(out, infos, info.heads, pred_conf, nms)
        v = variants[t]
        agreement = map_at_50(reference, predicted)
        v.map50 = agreement.map50
        v.map50_box_weighted = round(agreement.box_weighted, 4)
        acc = SqnrAccumulator()
        for name, r, q in zip(heads, ref_out, out):
            acc.add(name, r, q)
        v.head_sqnr_db = {k: round(x, 2) for k, x in acc.db().items()}
    if not tensor_sqnr:
        return len(frames), sum(len(d) for d in reference), classes
    # per-tensor SQNR, one frame batch at a time (activations are not kept)
    trt_tensors = {n.input[0] for n in proto.graph.node if n.op_type == "Conv"}
    cpu_params = qdq.cpu_params(proto, stats)
    collector = ActivationCollector(proto, threads=settings.threads)
    acc_trt, acc_cpu = SqnrAccumulator(), SqnrAccumulator()
    names = collector.tensors
    for i in range(0, len(frames), settings.batch):
        _check_cancel(cancel)
        x = frames[i:i + settings.batch]
        outs = dict(zip(collector._run, collector.session.run(collector._run,
                                                               {collector.input_name: x})))
        outs[collector.input_name] = x
        for name in names:
            a = outs.get(name)
            if a is None:
                continue
            if name in trt_tensors:
                p = qdq.symmetric_int8(stats[name].threshold)
                acc_trt.add(name, a, fake_quantize(a, p.scale, 0, -128, 127))
            if name in cpu_params:
                p = cpu_params[name]
                acc_cpu.add(name, a, fake_quantize(a, p.scale, p.zero_point, 0, 255))
        del outs
    variants["tensorrt"].worst_tensors_sqnr_db = [(n, round(d, 2)) for n, d in acc_trt.worst(5)]
    variants["cpu"].worst_tensors_sqnr_db = [(n, round(d, 2)) for n, d in acc_cpu.worst(5)]
    return len(frames), sum(len(d) for d in reference), classes


# ----------------------------------------------------------------------------- daemon hook


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

    fp32 = Path(fp32_path)
    cs = calibration_settings
    source = getattr(cs, "source", None) if cs is not None else None
    fields = {k: getattr(cs, k) for k in CalibrationSettings.__dataclass_fields__
              if cs is not None and hasattr(cs, k)}
    settings = CalibrationSettings(**fields)
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
        log.info("building the INT8 model for %s from %s (calibrating on %s, %d frames; "
                 "this happens once)", target, fp32.name, src.report.description,
                 settings.count)

        def say(done: int, total: int) -> None:
            if progress and (done % 50 < settings.batch or done >= total):
                log.info("calibration: %d/%d frames", min(done, total), total)

        # calibrate() also raises its report's warnings as Python warnings (for library users):
        # the daemon logs each once, below, and never as a raw py.warnings line.
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            report = calibrate(fp32, src, settings.count, target, out[target], table,
                               settings=settings, other_out=out[other_target(target)],
                               progress=say, cancel=cancel, tensor_sqnr=False)
        for line in report.summary(with_warnings=False).splitlines():
            log.info("%s", line)
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
    if map50 < gate:
        other = "percentile" if settings.method == "entropy" else "entropy"
        raise AgreementTooLow(
            f"INT8 model ({target}) agrees with FP32 at mAP@0.5 {map50:.3f} (box-weighted) on "
            f"{scored} "
            f"held-out frames, below model.calibration.min_agreement {gate:.2f} "
            f"(method {settings.method}); try model.calibration.method: {other}, more or "
            "other calibration frames (model.calibration.source, .count), "
            "model.precision: fp32, or lower model.calibration.min_agreement (0 turns the "
            "check off)")


def print_progress(done: int, total: int) -> None:
    print(f"\rcalibrating: {min(done, total)}/{total} frames", end="", file=sys.stderr,
          flush=True)
