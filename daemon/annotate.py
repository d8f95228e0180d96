"""Annotate a video file: run the model over every frame and write a copy with the detections
drawn (``detectd annotate``, the quickest way to judge the model on your own footage).

Every decoded frame is detected (none skipped) with the daemon's own path --
:class:`daemon.detector.Detector`: letterbox, backend, YOLO decode + NMS -- and drawn with
:mod:`daemon.vision.draw`, the code the live preview page uses. The output has the input's size
and frame count; it is written under a temporary name and renamed when complete, so an
interrupted run never leaves a truncated file that looks finished. Audio and subtitles are not
copied. Library code: progress goes to a callback, nothing is printed
(``commands/annotate.py`` parses the arguments and prints).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, cast

import av
from av.video.stream import VideoStream

from daemon import atomic
from daemon.analytics.config import AnalyticsConfig, unknown_labels
from daemon.config import ModelConfig
from daemon.detector import Detector
from daemon.errors import DetectdError
from daemon.frames import Detections, Frame
from daemon.sources.open import no_video_reason, pick_video_stream
from daemon.sources.validate import check_frame
from daemon.vision.draw import draw, draw_geometry
from daemon.vision.orient import displayed_size, frame_orientation, oriented_rgb

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


ProgressFn = Callable[[int, int], None]  # (frames done, total or 0 when unknown)


def annotate(
    input_path: str,
    out: Path,
    *,
    model_cfg: ModelConfig,
    codec: str = "auto",
    crf: int = 20,
    json_out: IO[str] | None = None,
    on_progress: ProgressFn | None = None,
    max_frames: int | None = None,
    analytics: AnalyticsConfig | None = None,
    detector: Detector | None = None,
) -> dict[str, Any]:
    """Annotate the video ``input_path`` into ``out``; returns a summary: ``frames``, ``width``,
    ``height`` (as displayed), ``codec``, ``pix_fmt``, ``detections`` (count per label) and
    ``analytics`` (event counts). ``analytics`` (a stream's AnalyticsConfig) also draws its zones,
    lines and track ids and writes its events to the JSON lines. ``json_out``: one JSON line per
    frame. ``on_progress(done, total)`` after every frame. ``detector``: an open one to use (and
    leave open); default: ``model_cfg``'s, opened here and closed at the end.

    Raises ``ValueError`` (no video stream, no encoder), ``av.FFmpegError``/``OSError`` (input),
    :class:`OutputError` (writing the output), ``BackendError`` (the model).
    """
    det = detector if detector is not None else Detector.open(model_cfg)
    labels = det.labels
    counts: Counter[str] = Counter()
    event_counts: Counter[str] = Counter()
    tracking = None
    if analytics is not None and analytics.tracker is not None:
        from daemon.analytics.state import StreamAnalytics

        for problem in unknown_labels(analytics, labels):
            log.warning("%s", problem)
        tracking = StreamAnalytics("annotate", analytics, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    try:
        # The one atomic writer (daemon/atomic.py): a temporary file beside ``out`` keeping its
        # suffix, fsynced and renamed over ``out`` only when the whole video is written; removed
        # on any error (Ctrl-C included), so no partial file is ever left behind.
        with atomic.replacing(out, suffix=out.suffix) as tmp, av.open(input_path) as inp:
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
            container_opts = {"movflags": "+faststart"} if out.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
            with av.open(str(tmp), "w", format=_format_for(out), options=container_opts) as dst:
                ost = cast(VideoStream, dst.add_stream(chosen, rate=rate))
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
                    dets: Detections = det.detect([vf], orient=orient)[0]
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
                    if on_progress is not None:
                        on_progress(frames, total)
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
    finally:
        if detector is None:
            det.close()
    return {"frames": frames, "width": w, "height": h, "codec": chosen, "pix_fmt": pix_fmt,
            "detections": dict(counts), "analytics": dict(event_counts)}  # fmt: skip


def _format_for(out: Path) -> str | None:
    # The temporary name keeps the suffix, but say the format explicitly anyway: ".x.part.mp4"
    # must never be guessed as something else.
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
            ".avi": "avi", ".nut": "nut"}.get(out.suffix.lower())  # fmt: skip


