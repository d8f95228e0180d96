"""The demo's INT8 footage: calibration frames and held-out agreement frames, from pinned assets.

Everything comes from the packages of ``daemon.models.assets`` (fetched with pip, SHA-256
checked). Two disjoint sets, no source picture in both:

- **calibration** (300 frames): the demo video's first 150 frames (640x272 H.264), the first 60
  frames of another video (bigbuckbunny, 1280x720, every 2nd) and pans and zooms over four natural
  colour photos (astronaut, cat, a temple in China, Grace Hopper).
- **held out** (310 frames, 500+ FP32 boxes of 10+ classes): the demo video's last 75 frames (25
  frames after the calibration stretch, so no held-out frame neighbours a calibrated one), the
  last 60 frames of bigbuckbunny (every 4th), a third video (carphone, 176x144), and clips panned
  and zoomed over eight other photos (bus, zidane, motorcycle, coffee, coins, and three flat or
  grey ones: camera man, rocket, horse), encoded with five codecs (H.264, HEVC, MPEG-4 part 2,
  MJPEG, VP9) in seven aspect ratios.

A photo clip is rendered once into ``<cache>/footage/`` under a name that carries a hash of its
source picture, its spec and ``RENDER_VERSION``, so a changed spec never reuses an old file. The
calibration key hashes the rendered files themselves (``FrameSource.set_hash``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from daemon.atomic import replacing

log = logging.getLogger(__name__)

RENDER_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """Frames ``start, start+step, ...`` below ``stop`` of one video file; ``source`` names the
    picture they show (the unit of the bootstrap over source pictures)."""

    path: str
    source: str
    start: int
    stop: int
    step: int = 1

    @property
    def frames(self) -> int:
        return len(range(self.start, self.stop, self.step))


@dataclass(frozen=True)
class Pan:
    """A clip over one photo: the crop of the clip's aspect ratio moves linearly from
    ``begin`` to ``end``, each (centre x, centre y as fractions of the photo, zoom: 1 = the
    largest such crop, 0.5 = half its width)."""

    asset: str
    frames: int
    width: int
    height: int
    codec: str
    begin: tuple[float, float, float]
    end: tuple[float, float, float]


# codec -> (container suffix, pixel format, encoder options)
_CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "libx264": (".mp4", "yuv420p", {"crf": "23", "preset": "veryfast", "threads": "1"}),
    "libx265": (".mp4", "yuv420p", {"crf": "28", "preset": "ultrafast",
                                    "x265-params": "log-level=error:pools=1"}),
    "mpeg4": (".avi", "yuv420p", {"qscale": "4"}),
    "mjpeg": (".avi", "yuvj420p", {"qscale": "5"}),
    "libvpx-vp9": (".webm", "yuv420p", {"crf": "36", "b": "0", "deadline": "realtime",
                                        "cpu-used": "8", "threads": "1"}),
}

CALIBRATION_PANS = (
    Pan("astronaut.png", 30, 512, 384, "libx264", (0.5, 0.5, 1.0), (0.35, 0.4, 0.6)),
    Pan("chelsea.png", 30, 448, 336, "mjpeg", (0.3, 0.5, 0.9), (0.6, 0.5, 0.6)),
    Pan("china.jpg", 30, 640, 428, "libx265", (0.5, 0.5, 1.0), (0.4, 0.5, 0.6)),
    Pan("grace_hopper.jpg", 30, 480, 560, "mpeg4", (0.5, 0.5, 1.0), (0.5, 0.4, 0.6)),
)
HOLDOUT_PANS = (
    Pan("bus.jpg", 60, 480, 640, "mpeg4", (0.5, 0.5, 1.0), (0.4, 0.55, 0.6)),
    Pan("zidane.jpg", 60, 640, 360, "libvpx-vp9", (0.5, 0.5, 1.0), (0.55, 0.45, 0.65)),
    Pan("motorcycle_left.png", 20, 600, 400, "mjpeg", (0.5, 0.5, 1.0), (0.5, 0.5, 0.8)),
    Pan("coffee.png", 15, 640, 480, "libx264", (0.5, 0.5, 1.0), (0.5, 0.5, 0.7)),
    Pan("coins.png", 15, 512, 384, "libx265", (0.4, 0.5, 0.9), (0.6, 0.5, 0.9)),
    # flat, grey or synthetic pictures: few boxes, but a model must not invent any there
    Pan("camera.png", 10, 480, 480, "mpeg4", (0.5, 0.5, 1.0), (0.45, 0.35, 0.55)),
    Pan("rocket.jpg", 10, 384, 512, "libvpx-vp9", (0.5, 0.5, 1.0), (0.5, 0.3, 0.5)),
    Pan("horse.png", 10, 400, 320, "libx265", (0.5, 0.5, 1.0), (0.55, 0.5, 0.7)),
)
DEMO_VIDEO_CALIBRATION = (0, 150)  # bikes.mp4 frames [0, 150)
DEMO_VIDEO_HOLDOUT = (175, 250)  # its last 75 frames; 150..174 unused (a one-second gap)


def _pan_path(folder: Path, pan: Pan, source_sha: str) -> Path:
    spec = json.dumps({**asdict(pan), "source": source_sha, "v": RENDER_VERSION},
                      sort_keys=True)
    tag = hashlib.sha256(spec.encode()).hexdigest()[:12]
    stem = Path(pan.asset).stem
    return folder / f"{stem}-{pan.codec}-{pan.width}x{pan.height}-{tag}{_CODECS[pan.codec][0]}"


def _crops(image: np.ndarray, pan: Pan) -> Iterator[np.ndarray]:
    h, w = image.shape[:2]
    aspect = pan.width / pan.height
    cw0, ch0 = (w, w / aspect) if w / aspect <= h else (h * aspect, h)
    for k in range(pan.frames):
        t = k / max(1, pan.frames - 1)
        cx, cy, z = (a + (b - a) * t for a, b in zip(pan.begin, pan.end))
        cw, ch = max(2.0, cw0 * z), max(2.0, ch0 * z)
        x0 = min(max(cx * w - cw / 2, 0.0), w - cw)
        y0 = min(max(cy * h - ch / 2, 0.0), h - ch)
        yield image[int(round(y0)):int(round(y0 + ch)), int(round(x0)):int(round(x0 + cw))]


def render_pan(photo: Path, pan: Pan, out: Path) -> Path:
    """Encode the clip of `pan` over `photo` to `out` (written beside it, then renamed)."""
    suffix, pix_fmt, options = _CODECS[pan.codec]
    with av.open(str(photo)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with replacing(out, suffix) as tmp:  # the muxer picks the format from the suffix
        with av.open(str(tmp), "w") as o:
            s = o.add_stream(pan.codec, rate=25)
            assert isinstance(s, av.VideoStream)  # a video codec's name: for the type checker
            s.width, s.height, s.pix_fmt = pan.width, pan.height, pix_fmt
            s.options = dict(options)
            if pan.codec == "mpeg4":
                s.codec_context.qscale = 4  # type: ignore[assignment]
            for crop in _crops(image, pan):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="rgb24")
                frame = frame.reformat(width=pan.width, height=pan.height, format=pix_fmt)
                for pkt in s.encode(frame):
                    o.mux(pkt)
            for pkt in s.encode():
                o.mux(pkt)
    return out


@dataclass(frozen=True)
class Footage:
    calibration: tuple[Segment, ...]
    holdout: tuple[Segment, ...]


def demo_footage(cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
                 ) -> Footage:
    """The demo's calibration and held-out segments (module docstring), fetching the assets
    and rendering the photo clips on first use. Raises AssetError when an asset cannot be had."""
    from daemon.models import assets

    packages = (assets.VIDEO_PACKAGE, assets.PHOTOS_PACKAGE, assets.SKIMAGE_PACKAGE,
                assets.SKLEARN_PACKAGE, assets.MATPLOTLIB_PACKAGE)
    media: dict[str, Path] = {}
    for package in packages:
        media.update(assets.fetch_package(package, cache_dir, progress))
    videos = media
    shas = {a.filename: a.sha256 for p in packages for a in p.assets}
    folder = assets.cache_dir(cache_dir) / "footage"

    def clips(pans: Sequence[Pan]) -> list[Segment]:
        out = []
        for pan in pans:
            path = _pan_path(folder, pan, shas[pan.asset])
            if not path.is_file():
                if progress:  # through logging, like every other line of the daemon
                    log.info("rendering %s (INT8 footage)", path.name)
                render_pan(media[pan.asset], pan, path)
            out.append(Segment(str(path), pan.asset, 0, pan.frames))
        return out

    bikes = str(videos["bikes.mp4"])
    bunny = str(videos["bigbuckbunny.mp4"])
    calibration = [Segment(bikes, "bikes.mp4", *DEMO_VIDEO_CALIBRATION),
                   Segment(bunny, "bigbuckbunny.mp4", 0, 60, 2), *clips(CALIBRATION_PANS)]
    holdout = [Segment(bikes, "bikes.mp4", *DEMO_VIDEO_HOLDOUT),
               Segment(bunny, "bigbuckbunny.mp4", 72, 132, 4),
               Segment(str(videos["carphone_pristine.mp4"]), "carphone_pristine.mp4", 0, 120, 6),
               *clips(HOLDOUT_PANS)]
    return Footage(tuple(calibration), tuple(holdout))


def spread(total: int, wanted: int) -> set[int]:
    """`wanted` indices spread evenly over range(total) (all of them when wanted >= total)."""
    if wanted >= total:
        return set(range(total))
    return {int(k * total / wanted) for k in range(wanted)}


def segment_frames(segments: Sequence[Segment], wanted: int | None = None
                   ) -> Iterator[tuple[av.VideoFrame, str]]:
    """(frame, source) for the frames of `segments` in order, `wanted` of them spread evenly
    over all (None: all). Decoding errors end a segment early (its frames so far are kept)."""
    total = sum(s.frames for s in segments)
    keep = spread(total, total if wanted is None else wanted)
    g = 0
    for seg in segments:
        want = range(seg.start, seg.stop, seg.step)
        with av.open(seg.path) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                for i, frame in enumerate(c.decode(stream)):
                    if i >= seg.stop:
                        break
                    if i in want:
                        if g in keep:
                            yield frame, seg.source
                        g += 1
            except (av.FFmpegError, EOFError):
                pass
