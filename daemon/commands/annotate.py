"""``detectd annotate INPUT --out OUTPUT.mp4``: run the model over a video file and write an
annotated copy, the quickest way to judge the model on your own footage.

Every decoded frame is detected (none skipped) with the daemon's own path -- letterbox, backend,
YOLO decode + NMS -- and drawn with :mod:`daemon.vision.draw`, the code the live preview page
uses. The output has the input's size and frame count; it is written under a temporary name and
renamed when complete, so an interrupted run never leaves a truncated file that looks finished.
Audio and subtitles are not copied.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from daemon import errors
from daemon.errors import DetectdError

log = logging.getLogger("detectd.annotate")

# First available wins for "auto": H.264 plays everywhere (browsers included); mpeg4 is the
# fallback for FFmpeg builds without libx264.
_AUTO_CODECS = ("libx264", "h264", "mpeg4")


def choose_codec(requested: str) -> str:
    available = av.codecs_available
    if requested != "auto":
        if requested not in available:
            raise ValueError(f"codec {requested!r} is not in this FFmpeg build")
        return requested
    for c in _AUTO_CODECS:
        if c in available:
            try:
                av.codec.Codec(c, "w")
                return c
            except Exception:  # a decoder-only name
                continue
    raise ValueError("no H.264 or MPEG-4 encoder in this FFmpeg build")


def choose_pix_fmt(codec: str, width: int, height: int) -> str:
    if codec == "ffv1":
        return "bgr0"  # lossless RGB: the output decodes to exactly the drawn pixels
    if codec in ("libx264", "h264") and (width % 2 or height % 2):
        # 4:2:0 needs even sizes; keep the input's size rather than crop or pad it.
        return "yuv444p"
    return "yuv420p"


class OutputError(DetectdError):
    """The output could not be written (encoder, container, disk): the message names it."""


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, a line every few seconds
    otherwise (logs, CI)."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr, enabled: bool = True) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        el = now - self.t0
        fps = done / el if el > 0 else 0.0
        if self.total > 0:
            pct = min(100.0, 100.0 * done / self.total)
            eta = (self.total - done) / fps if fps > 0 and not final else 0.0
            msg = f"annotate: {done}/{self.total} frames ({pct:.0f}%), {fps:.1f} frames/s, ETA {eta:.0f}s"
        else:
            msg = f"annotate: {done} frames, {fps:.1f} frames/s"
        if self.tty:
            self.stream.write("\r\x1b[K" + msg + ("\n" if final else ""))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()


def _model_config(config: str | None) -> Any:
    from daemon.config import ModelConfig, load_config

    return load_config(config).model if config else ModelConfig()


def _analytics_config(config: str | None, stream: str | None) -> Any:
    """``--stream ID``: that stream's ``analytics`` section of ``--config`` (None without)."""
    from daemon.config import ConfigError, load_config

    if stream is None:
        return None
    if config is None:
        raise ConfigError(["--stream: needs --config (the file whose streams[].analytics to draw)"])
    cfg = load_config(config)
    for i, s in enumerate(cfg.streams):
        if s.id == stream:
            if s.analytics is None:
                raise ConfigError([f"streams[{i}].analytics: stream {stream!r} has no analytics section"])
            return s.analytics
    raise ConfigError([f"--stream: no stream {stream!r} in {config} (streams: {', '.join(s.id for s in cfg.streams)})"])


def _input_path(s: str) -> str:
    if s.startswith("demo://"):
        from daemon.models import assets

        return str(assets.fetch_demo_video())
    return s


def annotate(
    input_path: str,
    out: Path,
    *,
    model_cfg: Any,
    codec: str = "auto",
    crf: int = 20,
    json_out: IO[str] | None = None,
    progress: bool = True,
    max_frames: int | None = None,
    analytics: Any = None,
) -> dict[str, Any]:
    """Annotate ``input_path`` into ``out``; returns a summary (frames, size, detections, and
    with ``analytics`` (a stream's AnalyticsConfig) its zones, lines and track ids drawn, the
    events in the JSON lines and their counts in the summary)."""
    from daemon.backends import choose_backend, create_backend, int8_variant
    from daemon.frames import Detections
    from daemon.models.info import ModelInfo
    from daemon.models.resolve import resolve_model
    from daemon.frames import Frame
    from daemon.sources.open import no_video_reason, pick_video_stream
    from daemon.sources.validate import check_frame
    from daemon.vision.draw import draw, draw_geometry
    from daemon.vision.letterbox import letterbox_av
    from daemon.vision.orient import displayed_size, frame_orientation, letterbox_oriented, oriented_rgb
    from daemon.vision.yolo import postprocess

    name, why = choose_backend(model_cfg.backend)
    path = resolve_model(model_cfg, target=int8_variant(name))
    info = ModelInfo.from_onnx(path)
    backend = create_backend(name, path, info, model_cfg)
    log.info("model %s on %s (%s, %s)", path.name, backend.name, backend.precision, why)
    labels = info.labels
    batch = np.empty((1, 3, info.height, info.width), np.float32)
    counts: Counter[str] = Counter()
    event_counts: Counter[str] = Counter()
    tracking = None
    if analytics is not None and analytics.tracker is not None:
        from daemon.analytics.state import StreamAnalytics

        tracking = StreamAnalytics("annotate", analytics, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    frames = 0
    try:
        with av.open(input_path) as inp:
            ist = pick_video_stream(inp)  # as ffmpeg: not cover art, the largest decodable one
            if ist is None:
                raise ValueError(f"{input_path}: {no_video_reason(inp)}")
            ist.thread_type = "AUTO"  # a file, not a live stream: throughput over latency
            decoded = inp.decode(ist)
            first = next(decoded, None)
            # Shown as a player shows it: the display matrix of the first frame turns them all.
            orient = frame_orientation(first) if first is not None else ""
            sw, sh = (first.width, first.height) if first is not None else \
                (ist.codec_context.width, ist.codec_context.height)
            w, h = displayed_size(sw, sh, orient)
            rate = ist.average_rate or ist.guessed_rate or Fraction(25)
            total = ist.frames or (
                int(float(ist.duration * ist.time_base) * float(rate)) if ist.duration else 0
            )
            chosen = choose_codec(codec)
            pix_fmt = choose_pix_fmt(chosen, w, h)
            bar = Progress(total, enabled=progress)
            container_opts = {"movflags": "+faststart"} if out.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
            with av.open(str(tmp), "w", format=_format_for(out), options=container_opts) as dst:
                ost = dst.add_stream(chosen, rate=rate)
                assert isinstance(ost, av.VideoStream)  # a video codec's name: for the type checker
                ost.width, ost.height, ost.pix_fmt = w, h, pix_fmt
                if chosen == "libx264":
                    ost.options = {"crf": str(crf), "preset": "veryfast"}
                elif chosen == "mpeg4":
                    ost.options = {"qscale": "3"}
                    ost.codec_context.qmin = ost.codec_context.qmax = 3
                for vf in itertools.chain([first] if first is not None else [], decoded):
                    # Before any native call: a frame libswscale would abort on is an error
                    # naming its pixel format and size (daemon/sources/validate.py).
                    check_frame(vf)
                    if vf.width != sw or vf.height != sh:
                        # A mid-stream size change: keep the output's size, scale this frame.
                        vf = vf.reformat(width=sw, height=sh)
                    if orient:
                        _, lb = letterbox_oriented(vf, orient, info.width, info.height, out=batch[0])
                    else:
                        _, lb = letterbox_av(vf, info.width, info.height, out=batch[0])
                    dets: Detections = postprocess(
                        backend.infer(batch), [lb], info.heads,
                        model_cfg.conf_threshold, model_cfg.nms_threshold,
                    )[0]  # fmt: skip
                    events: list[dict[str, Any]] = []
                    if tracking is not None:  # the frame's own timestamp drives the tracker
                        t = vf.time if vf.time is not None else frames / float(rate)
                        events = tracking.update(Frame("annotate", frames, w, h, t, 0.0, t), dets)
                        for ev in events:
                            event_counts[ev["event"] + ("/" + ev["line"] + "/" + ev["direction"] if "line" in ev else "")] += 1
                    rgb = oriented_rgb(vf, orient) if orient else vf.to_ndarray(format="rgb24")
                    if analytics is not None:
                        draw_geometry(rgb, analytics.zones, analytics.lines)
                    draw(rgb, dets, labels)
                    of = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                    of.pts = frames
                    of.time_base = Fraction(1) / rate
                    try:
                        for pkt in ost.encode(of):
                            dst.mux(pkt)
                    except (av.FFmpegError, OSError) as exc:
                        raise OutputError(f"{out}: writing with {chosen} ({pix_fmt}) failed: {exc}") from exc
                    for cid in dets.class_ids.tolist():
                        counts[labels[cid] if 0 <= cid < len(labels) else str(cid)] += 1
                    if json_out is not None:
                        json_out.write(json.dumps({
                            "frame": frames, "pts": vf.time, "width": w, "height": h,
                            "detections": dets.to_list(labels),
                            **({"analytics": [{k: v for k, v in e.items() if k != "captured_at"} for e in events]}
                               if tracking is not None else {}),
                        }) + "\n")  # fmt: skip
                    frames += 1
                    bar.update(frames)
                    if max_frames is not None and frames >= max_frames:
                        break
                for pkt in ost.encode(None):
                    dst.mux(pkt)
                if tracking is not None:  # the video ended: whoever is still inside a zone leaves
                    for ev in tracking.end_tracks():
                        event_counts[ev["event"]] += 1
                        if json_out is not None:
                            json_out.write(json.dumps({"frame": frames, "analytics": [
                                {k: v for k, v in ev.items() if k != "captured_at"}]}) + "\n")
            bar.update(frames, final=True)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        backend.close()
    return {"frames": frames, "width": w, "height": h, "codec": chosen, "pix_fmt": pix_fmt,
            "detections": dict(counts), "analytics": dict(event_counts)}  # fmt: skip


def _format_for(out: Path) -> str | None:
    # The temporary name keeps the suffix, but say the format explicitly anyway: ".partial.mp4"
    # must never be guessed as something else.
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
            ".avi": "avi", ".nut": "nut"}.get(out.suffix.lower())  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        model_cfg = _model_config(args.config)
        analytics = _analytics_config(args.config, args.stream)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return errors.exit_code(exc)
    updates = {}
    if args.conf is not None:
        updates["conf_threshold"] = args.conf
    if args.nms is not None:
        updates["nms_threshold"] = args.nms
    if updates:
        model_cfg = model_cfg.model_copy(update=updates)
    src = _input_path(args.input)
    if not src.startswith(("rtsp://", "http://", "https://")) and not Path(src).is_file():
        print(f"{args.input}: no such file", file=sys.stderr)
        return errors.ExitCode.USAGE
    out = Path(args.out)
    try:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        json_out = open(args.json, "w", encoding="utf-8") if args.json else None
    except OSError as exc:
        print(f"--json: {exc}", file=sys.stderr)
        return errors.ExitCode.USAGE  # an option's file
    try:
        summary = annotate(
            src, out, model_cfg=model_cfg, codec=args.codec, crf=args.crf, json_out=json_out,
            progress=not args.quiet, max_frames=args.max_frames, analytics=analytics,
        )  # fmt: skip
    except OutputError as exc:
        print(f"annotate: {exc}", file=sys.stderr)
        return errors.exit_code(exc)
    except (av.FFmpegError, ValueError, OSError) as exc:
        print(f"annotate: {args.input}: {exc}", file=sys.stderr)
        return errors.exit_code(exc)
    finally:
        if json_out is not None:
            json_out.close()
    top = ", ".join(f"{k} {v}" for k, v in Counter(summary["detections"]).most_common(8)) or "none"
    events = ", ".join(f"{k} {v}" for k, v in sorted(summary["analytics"].items()))
    print(
        f"wrote {out}: {summary['frames']} frames {summary['width']}x{summary['height']} "
        f"({summary['codec']}, {summary['pix_fmt']}); detections: {top}"
        + (f"; analytics: {events or 'no events'}" if analytics is not None else ""),
        file=sys.stderr,
    )
    return 0


def _conf(v: str) -> float:
    x = float(v)
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError("must be in (0, 1]")
    return x


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="write an annotated copy of a video (boxes, labels, scores)",
        description=(
            "Run the model over every frame of INPUT (a video file, or demo://bikes.mp4) and write "
            "OUTPUT with the detections drawn on it, same size and frame count, as the preview "
            "page draws them. The model comes from --config's model section (default: the "
            "fetched YOLOv3-Tiny). Progress goes to stderr."
        ),
    )
    p.add_argument("input", metavar="INPUT", help="video file (or demo://bikes.mp4)")
    p.add_argument("--out", "-o", required=True, metavar="OUTPUT", help="output file, e.g. out.mp4")
    p.add_argument("--config", "-c", help="config whose model section to use")
    p.add_argument("--stream", metavar="ID",
                   help="also track and draw that stream's zones, lines and track ids (its "
                        "streams[].analytics in --config); events go to --json")
    p.add_argument("--conf", type=_conf, help="confidence threshold (default: model.conf_threshold)")
    p.add_argument("--nms", type=_conf, help="NMS IoU threshold (default: model.nms_threshold)")
    p.add_argument("--codec", default="auto",
                   help="encoder: auto (H.264, else MPEG-4), libx264, mpeg4, ffv1 (lossless, .mkv)")
    p.add_argument("--crf", type=int, default=20, help="H.264 quality, lower is better (default 20)")
    p.add_argument("--json", metavar="PATH", help="also write each frame's detections as JSON lines")
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=run)
