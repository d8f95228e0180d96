"""``detectd annotate INPUT --out OUTPUT.mp4``: the command around :mod:`daemon.annotate`
(arguments, config, the progress line, the summary printed at the end)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import av

from daemon import errors


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, a line every few seconds
    otherwise (logs, CI). The rate counts from the first frame (not the model's load)."""

    def __init__(self, stream: IO[str] = sys.stderr, enabled: bool = True) -> None:
        self.total, self.done, self.stream, self.enabled = 0, 0, stream, enabled
        self.tty = stream.isatty()
        self.t0: float | None = None  # when the first frame was done
        self.first = 0
        self.last = 0.0

    def update(self, done: int, total: int = 0, final: bool = False) -> None:
        """``daemon.annotate.annotate``'s ``on_progress``: ``done`` frames of ``total`` (0:
        unknown)."""
        self.done, self.total = done, total or self.total
        if not self.enabled:
            return
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.first = now, done
        if not final and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        el = now - self.t0
        fps = (done - self.first) / el if el > 0 else 0.0
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

    def finish(self) -> None:
        self.update(self.done, final=True)


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

        return str(assets.fetch_demo_video())  # the verified demo video, fetched on first use
    return s


def run(args: argparse.Namespace) -> int:
    from daemon.annotate import OutputError, annotate
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
        bar = Progress(enabled=not args.quiet)
        summary = annotate(
            src, out, model_cfg=model_cfg, codec=args.codec, crf=args.crf, json_out=json_out,
            on_progress=bar.update, max_frames=args.max_frames, analytics=analytics,
        )  # fmt: skip
        bar.finish()
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


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return n


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
    p.add_argument("--max-frames", type=_positive, default=None, metavar="N",
                   help="stop after the first N frames (default: the whole video)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=run)
