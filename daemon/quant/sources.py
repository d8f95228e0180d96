"""Where calibration frames come from: the demo footage, an image list, a directory, a video
file or a stream URL. Yields PyAV frames as a player shows them and counts what it skips
(never echoing a URL's credentials)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av

from daemon.digest import sha256_file
from daemon.quant.errors import CalibrationError
from daemon.quant.footage import Footage
from daemon.redact import redact_text, redact_url
from daemon.sources.errors import describe_error
from daemon.sources.open import no_video_reason, pick_video_stream
from daemon.sources.urls import register_url
from daemon.sources.validate import UnsupportedFrame, check_frame
from daemon.vision.orient import frame_orientation, oriented_rgb

log = logging.getLogger("detectd.calibrate")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LIST_SUFFIXES = {".txt", ".list", ".lst"}


def _displayed(frame: av.VideoFrame) -> av.VideoFrame:
    """The frame as a player shows it (display matrix applied; see daemon.vision.orient), so
    that calibration sees what the daemon analyses."""
    orient = frame_orientation(frame)
    if not orient:
        return frame
    return av.VideoFrame.from_ndarray(oriented_rgb(frame, orient), format="rgb24")



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
        # frames a split source has in each part (model.calibration.count/.holdout pick from them)
        self.split_frames_available: tuple[int, int] | None = None
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
            self.split_frames_available = (n_cal, n_hold)
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
                     ) -> Generator[tuple[av.VideoFrame, str, bool | None], None, None]:
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



def no_frames_message(src: FrameSource) -> str:
    msg = f"calibration source {src.report.description}: no usable frame"
    if src.report.skipped:
        parts = ", ".join(f"{n} {r}" for r, n in src.report.skipped.items())
        msg += f" ({parts}"
        if src.report.skipped_examples:
            msg += "; e.g. " + src.report.skipped_examples[0]
        msg += ")"
    return msg

