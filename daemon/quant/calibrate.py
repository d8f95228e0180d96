"""INT8 calibration: real frames -> activation statistics -> Q/DQ models + TensorRT cache.

One pass over the calibration frames (the daemon's own letterbox preprocessing) accumulates a
histogram per tensor; thresholds are chosen from the histograms; both the TensorRT and the CPU
model are written from the same statistics, then scored against the FP32 model on held-out
frames (frames of the same source that calibration did not see).

Everything is written atomically (temporary file + rename), so Ctrl-C leaves either the old
outputs or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnx
import onnxruntime as ort

from daemon.quant import cache as cache_mod
from daemon.quant import qdq
from daemon.quant.agreement import SqnrAccumulator, fake_quantize, map_at_50
from daemon.quant.entropy import entropy_threshold
from daemon.quant.histogram import ActivationCollector, TensorHistogram, TensorStats
from daemon.vision.letterbox import LetterboxInfo, letterbox_av

log = logging.getLogger("detectd.calibrate")

METHODS = ("entropy", "percentile", "mse", "max")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".list", ".lst"}
ALGORITHM_VERSION = 1  # bump when statistics or thresholds are computed differently


class CalibrationError(RuntimeError):
    """Calibration cannot proceed; the message says why and names the input."""


@dataclass(frozen=True)
class CalibrationSettings:
    count: int = 500  # calibration frames
    every: int = 0  # take every k-th decoded video frame; 0 = spread `count` over a file
    holdout: int = 50  # frames kept aside to score INT8 against FP32
    # "entropy" is TensorRT's EntropyCalibrator2 (KL). The default, the 99.99th percentile of
    # |x| from the same histograms, keeps YOLO's rare strong early-layer activations that
    # KL clips (see README: agreement 0.70-0.85 with entropy vs >= 0.98 here).
    method: str = "percentile"
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
        d["algorithm"] = ALGORITHM_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- sources


@dataclass
class SourceReport:
    description: str
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)


def _sha256_file(path: Path, h: "hashlib._Hash | None" = None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


class FrameSource:
    """Where calibration frames come from: yields PyAV VideoFrames, counts what it skips."""

    def __init__(self, source: str | None, every: int = 0, wanted: int = 550) -> None:
        self.every = every
        self.wanted = wanted
        self.items: list[tuple[str, str]] = []  # (kind: image|video, path or url)
        spec = (source or "demo").strip()
        self.report = SourceReport(description=spec)
        if spec == "demo":
            from daemon.models import assets

            video = assets.fetch_demo_video(progress=True)
            photos = assets.fetch_photos(progress=True)
            self.items = [("video", str(video))] + [("image", str(p)) for p in photos.values()]
            self.report.description = "demo video + photos"
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

    def set_hash(self) -> str:
        """Identity of the calibration set: file contents (so a renamed copy still matches,
        and an edited file does not); a live stream can only be named by its URL."""
        h = hashlib.sha256()
        h.update(f"every={self.every};wanted={self.wanted}\n".encode())
        for kind, item in self.items:
            h.update(f"{kind}\n".encode())
            p = Path(item)
            if kind == "video" and _is_url(item):
                h.update(item.encode())
            elif p.is_file():
                try:
                    h.update(_sha256_file(p).encode())
                except OSError:
                    h.update(b"unreadable:" + item.encode())
            else:
                h.update(b"missing:" + item.encode())
        return h.hexdigest()

    def _skip(self, item: str, reason: str) -> None:
        self.report.skipped[reason] += 1
        if len(self.report.skipped_examples) < 5:
            self.report.skipped_examples.append(f"{item}: {reason}")
        log.debug("skipped %s: %s", item, reason)

    def frames(self) -> Iterator[av.VideoFrame]:
        for kind, item in self.items:
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
                if not c.streams.video:
                    self._skip(path, "not an image")
                    return None
                for frame in c.decode(video=0):
                    return frame
            self._skip(path, "no picture decoded")
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            self._skip(path, f"not an image ({type(e).__name__})")
        return None

    def _video(self, url: str) -> Iterator[av.VideoFrame]:
        options = {"rtsp_transport": "tcp", "timeout": "10000000"} if url.startswith(
            "rtsp") else {}
        try:
            container = av.open(url, options=options, timeout=(15.0, 15.0))
        except (av.FFmpegError, OSError, ValueError) as e:
            self._skip(url, f"cannot open video ({type(e).__name__}: {e})")
            return
        with container:
            if not container.streams.video:
                self._skip(url, "no video stream")
                return
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            every = self.every
            if every <= 0:  # spread the wanted frames over a file of known length
                total = stream.frames or 0
                every = max(1, total // self.wanted) if total else (1 if not _is_url(url) else 10)
            index = 0
            try:
                for frame in container.decode(stream):
                    if index % every == 0:
                        yield frame
                    index += 1
            except (av.FFmpegError, OSError, EOFError) as e:
                # keep what decoded: a damaged tail should not throw the good frames away
                self._skip(url, f"decoding stopped early ({type(e).__name__})")


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
    map50: float | None = None
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    def summary(self) -> str:
        lines = [f"model {self.model}  source {self.source}  method {self.method}"]
        if self.cache_reused:
            lines.append(f"calibration cache reused: {self.cache}")
        else:
            lines.append(f"calibrated on {self.frames_calibrated} frames in "
                         f"{self.calibration_seconds:.1f} s (peak RSS "
                         f"{self.peak_rss_bytes / 2**20:.0f} MiB); cache {self.cache}")
            if self.cache_note:
                lines.append(f"  ({self.cache_note})")
        if self.skipped:
            parts = ", ".join(f"{n} {r}" for r, n in self.skipped.items())
            lines.append(f"skipped inputs: {parts}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        for v in self.variants.values():
            ratio = v.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else math.nan
            lines.append(f"{v.target:9s} {v.path}  {v.size_bytes / 1e6:.1f} MB ({ratio:.2f}x FP32)")
            if v.map50 is not None:
                heads = ", ".join(f"{k} {db:.1f} dB" for k, db in v.head_sqnr_db.items())
                lines.append(f"          agreement with FP32 on {self.frames_scored} held-out "
                             f"frames: mAP@0.5 {v.map50:.3f}; head SQNR {heads}")
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
                 batch: int, outputs: list[str] | None = None) -> list[np.ndarray]:
    parts = [sess.run(outputs, {input_name: frames[i:i + batch]})
             for i in range(0, len(frames), batch)]
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
    source: str | None = None,
    count: int = 500,
    target: str = "tensorrt",
    out: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    *,
    settings: CalibrationSettings | None = None,
    other_out: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationReport:
    """Calibrate `model` (FP32 ONNX) on frames of `source` and write the INT8 model for
    `target` to `out`, the other target's model to `other_out` (default: beside `out`), and
    the TensorRT calibration cache to `cache` (default: `out` with .calib.table)."""
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

    try:
        info = ModelInfo.from_onnx(model_path)
        proto = onnx.load(str(model_path))
    except ModelInfoError as e:
        raise CalibrationError(str(e)) from None
    except Exception as e:  # a file that is not ONNX at all
        raise CalibrationError(f"model {model_path}: cannot read ONNX model: {e}") from None
    _check_input(proto, info, model_path)
    model_sha = info.sha256

    frames_src = FrameSource(source, settings.every, settings.count + settings.holdout)
    key = calibration_key(model_sha, frames_src.set_hash(), settings)
    warn: list[str] = []
    cache_note = ""
    cached: cache_mod.CacheContents | None = None
    try:
        cached = cache_mod.read_cache(cache_path, key)
    except FileNotFoundError:
        pass
    except (cache_mod.CacheMismatch, ValueError, KeyError, json.JSONDecodeError) as e:
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
            proto, info, frames_src, settings, progress)
        if n_cal == 0:
            raise CalibrationError(_no_frames_message(frames_src))
        if n_cal < settings.count:
            warn.append(f"the source gave {n_cal} calibration frames, fewer than the "
                        f"{settings.count} asked for")
    cal_seconds = time.perf_counter() - t_cal

    meta = {"detectd.calibration_key": key, "detectd.calibration_method": settings.method,
            "detectd.calibration_frames": str(n_cal)}
    models = {t: qdq.quantize_model(proto, stats, t, meta) for t in qdq.TARGETS}
    blobs = {t: m.SerializeToString() for t, m in models.items()}
    variants = {t: VariantReport(t, str(paths[t]), len(blobs[t])) for t in qdq.TARGETS}

    scored = 0
    ref_count = 0
    if cached is None and holdout_frames is not None and len(holdout_frames):
        scored, ref_count = _score(proto, info, stats, blobs, holdout_frames, holdout_infos,
                                   variants, settings)
    elif cached is not None:
        for t, v in variants.items():
            prev = cached.info.get("quality", {}).get(t)  # type: ignore[union-attr]
            if isinstance(prev, dict):
                v.map50 = prev.get("map50")
                v.head_sqnr_db = prev.get("head_sqnr_db", {})
                v.worst_tensors_sqnr_db = [tuple(x) for x in prev.get("worst", [])]
        scored = int(cached.info.get("frames_scored", 0))  # type: ignore[arg-type]
    if cached is None and scored == 0:
        warn.append("no held-out frames were left to score INT8 against FP32")

    # Ctrl-C anywhere above leaves nothing behind; each write below is atomic on its own.
    for t in qdq.TARGETS:
        cache_mod.write_atomic(paths[t], blobs[t])
    if cached is None:
        model_sha_, set_sha, settings_sha = key.split(":")
        cache_mod.write_cache(cache_path, cache_mod.CacheContents(
            key=key,
            info={"model_sha256": model_sha_, "set_sha256": set_sha,
                  "settings_sha256": settings_sha, "settings": asdict(settings),
                  "source": frames_src.report.description, "frames": n_cal,
                  "frames_scored": scored,
                  "quality": {t: {"map50": v.map50, "head_sqnr_db": v.head_sqnr_db,
                                  "worst": v.worst_tensors_sqnr_db}
                              for t, v in variants.items()}},
            stats=stats))

    report = CalibrationReport(
        model=str(model_path), source=frames_src.report.description, key=key,
        cache=str(cache_path), cache_reused=cached is not None, cache_note=cache_note,
        frames_calibrated=n_cal if cached is None else 0, frames_scored=scored,
        skipped=dict(frames_src.report.skipped),
        skipped_examples=frames_src.report.skipped_examples, warnings=warn,
        method=settings.method, fp32_size_bytes=model_path.stat().st_size, variants=variants,
        seconds=time.perf_counter() - t_start, calibration_seconds=cal_seconds,
        peak_rss_bytes=peak_rss_bytes(), reference_detections=ref_count)
    for w in warn:
        warnings.warn(w, stacklevel=2)
    return report


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
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, TensorStats], int, np.ndarray, list[LetterboxInfo]]:
    """Decode, letterbox, run and histogram. Every 5th frame is kept aside for scoring, and
    once `count` frames are calibrated, the following ones, until `holdout` are kept."""
    collector = ActivationCollector(proto, threads=settings.threads)
    w, h = info.width, info.height
    batch = np.empty((settings.batch, 3, h, w), np.float32)
    filled = 0
    n_cal = 0
    held: list[np.ndarray] = []
    held_infos: list[LetterboxInfo] = []
    seen = 0
    for frame in src.frames():
        cal_full = n_cal + filled >= settings.count
        to_holdout = len(held) < settings.holdout and (seen % 5 == 4 or cal_full)
        if cal_full and not to_holdout:
            break
        seen += 1
        if to_holdout:
            x, li = letterbox_av(frame, w, h)
            held.append(x)
            held_infos.append(li)
            continue
        letterbox_av(frame, w, h, out=batch[filled])
        filled += 1
        if filled == settings.batch:
            collector.add_batch(batch)
            n_cal += filled
            filled = 0
            if progress:
                progress(n_cal, settings.count)
    if filled:
        collector.add_batch(batch[:filled].copy())
        n_cal += filled
        if progress:
            progress(n_cal, settings.count)
    if n_cal == 0:
        return {}, 0, np.zeros((0, 3, h, w), np.float32), []
    stats = stats_from_histograms(collector.histograms, settings)
    frames = np.stack(held) if held else np.zeros((0, 3, h, w), np.float32)
    return stats, n_cal, frames, held_infos


def _score(
    proto: onnx.ModelProto, info: Any, stats: dict[str, TensorStats], blobs: dict[str, bytes],
    frames: np.ndarray, infos: list[LetterboxInfo], variants: dict[str, VariantReport],
    settings: CalibrationSettings, conf: float = 0.25, nms: float = 0.45,
    pred_conf: float = 0.05,
) -> tuple[int, int]:
    """mAP@0.5 of each INT8 variant against FP32 on held-out frames, SQNR of the heads, and
    the tensors whose own quantization (FP32 activations quantized with the chosen scales)
    loses the most."""
    from daemon.vision.yolo import postprocess

    heads = [h.name for h in info.heads]
    fp32 = _session(proto.SerializeToString(), settings.threads)
    ref_out = _run_batches(fp32, info.input_name, frames, settings.batch, heads)
    reference = postprocess(ref_out, infos, info.heads, conf, nms)
    del fp32
    for t, blob in blobs.items():
        sess = _session(blob, settings.threads)
        out = _run_batches(sess, info.input_name, frames, settings.batch, heads)
        predicted = postprocess(out, infos, info.heads, pred_conf, nms)
        v = variants[t]
        v.map50 = map_at_50(reference, predicted).map50
        acc = SqnrAccumulator()
        for name, r, q in zip(heads, ref_out, out):
            acc.add(name, r, q)
        v.head_sqnr_db = {k: round(x, 2) for k, x in acc.db().items()}
    # per-tensor SQNR, one frame batch at a time (activations are not kept)
    trt_tensors = {n.input[0] for n in proto.graph.node if n.op_type == "Conv"}
    cpu_params = qdq.cpu_params(proto, stats)
    collector = ActivationCollector(proto, threads=settings.threads)
    acc_trt, acc_cpu = SqnrAccumulator(), SqnrAccumulator()
    names = collector.tensors
    for i in range(0, len(frames), settings.batch):
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
    return len(frames), sum(len(d) for d in reference)


# ----------------------------------------------------------------------------- daemon hook


def ensure_int8_model(
    fp32_path: str | os.PathLike[str],
    calibration_settings: Any = None,
    target: str = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """The INT8 model for `target`, calibrated on first use and cached (default: beside the
    FP32 model) under a key of model hash + calibration set hash + settings.

    `calibration_settings` is the config's `model.calibration` (any object with `source`,
    `count` and optionally the other `CalibrationSettings` fields) or a CalibrationSettings."""
    from daemon.models.assets import sha256_file

    fp32 = Path(fp32_path)
    cs = calibration_settings
    source = getattr(cs, "source", None) if cs is not None else None
    fields = {k: getattr(cs, k) for k in CalibrationSettings.__dataclass_fields__
              if cs is not None and hasattr(cs, k)}
    settings = CalibrationSettings(**fields)
    directory = Path(cache_dir) if cache_dir else fp32.parent
    src = FrameSource(source, settings.every, settings.count + settings.holdout)
    key = calibration_key(sha256_file(fp32), src.set_hash(), settings)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = {t: directory / f"{fp32.stem}.int8-{t}.{tag}.onnx" for t in qdq.TARGETS}
    if out[target].is_file():
        return out[target]
    log.info("building the INT8 model for %s from %s (calibrating on %s, %d frames; "
             "this happens once)", target, fp32.name, src.report.description, settings.count)

    def say(done: int, total: int) -> None:
        if progress and (done % 50 < settings.batch or done >= total):
            log.info("calibration: %d/%d frames", min(done, total), total)

    report = calibrate(fp32, source, settings.count, target, out[target],
                       directory / f"{fp32.stem}.{tag}.calib.table", settings=settings,
                       other_out=out[other_target(target)], progress=say)
    for line in report.summary().splitlines():
        log.info("%s", line)
    return out[target]


def print_progress(done: int, total: int) -> None:
    print(f"\rcalibrating: {min(done, total)}/{total} frames", end="", file=sys.stderr,
          flush=True)
