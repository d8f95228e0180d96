"""The pipeline's side of the live preview: per-stream latest-frame slots, filled for free.

The publisher thread calls :meth:`PreviewHub.offer` once per published frame; it stores a
*reference* to the frame and its detections in the stream's latest-frame slot (one tuple
assignment, two deque appends) and returns. No copy, no colour conversion, no JPEG: nothing is
encoded unless someone watches. The viewers' threads (:mod:`daemon.preview.web`) take whatever a
slot holds *now*, draw it (:mod:`daemon.vision.draw`, the same code as ``detectd annotate``) and
encode it; the JPEG is cached per frame, so ten viewers of a stream cost one encode per frame.

A stream's state, reconnects and drops come from ``status_source``: a callable the daemon passes
in, answering a :class:`~daemon.sources.status.StreamStatus` snapshot that the stream's source
gives of itself (read on the viewer's thread; the pipeline pays nothing for it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np

from daemon.frames import Detections, FrameResult
from daemon.sources.status import StreamStatus
from daemon.vision.draw import draw_detections, draw_geometry

__all__ = ["JpegEncoder", "PreviewHub", "StatusSource", "STALE_S"]

log = logging.getLogger(__name__)

# A stream whose last frame is older than this is shown as stalled when the app gives no state;
# a viewer that looked at a picture this recently still counts as watching.
STALE_S = 5.0

# The daemon's view of one stream by id (None: it has no such stream).
StatusSource = Callable[[str], StreamStatus | None]


class JpegEncoder:
    """RGB uint8 -> JPEG bytes with PyAV's MJPEG encoder (libavcodec, already a dependency).

    One encoder per output size; not thread-safe (the hub serializes calls per stream).
    """

    def __init__(self, quality: int = 4) -> None:
        # quality is MJPEG's qscale: 2 (best, big) .. 31 (worst); 4 looks clean at a small
        # fraction of the raw frame. Full-resolution chroma (4:4:4): with 4:2:0 a 2 px coloured
        # outline smears into the grey around it and the class colours wash out.
        self.quality = quality
        self._ctx: Any = None
        self._size: tuple[int, int] = (0, 0)

    def encode(self, rgb: np.ndarray) -> bytes:
        h, w = rgb.shape[:2]
        if self._ctx is None or self._size != (w, h):
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height = w, h
            ctx.pix_fmt = "yuvj444p"
            ctx.time_base = Fraction(1, 1000)
            ctx.qmin = ctx.qmax = self.quality
            ctx.open()
            self._ctx, self._size = ctx, (w, h)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj444p")
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


# (frame, detections, labels, offer time (monotonic s), sequence number 1, 2, ... per stream)
Snapshot = tuple[Any, Detections, Sequence[str], float, int]


class _Slot:
    """One stream's latest frame and the cheap running figures the page shows.

    Written by the publisher thread only (``offer``), read by HTTP threads. ``latest`` is replaced
    by one assignment of a fresh :data:`Snapshot` (frame, detections, labels, offer time, sequence
    number), so a reader always sees a consistent frame + detections + number. ``shown`` is the
    snapshot of the last JPEG encoded: what the viewers' pictures show, and what the status
    describes while someone watches.
    """

    __slots__ = (
        "stream", "latest", "shown", "count", "times", "latencies", "status", "t_status",
        "enc_lock", "encoder", "jpeg",
    )  # fmt: skip

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.latest: Snapshot | None = None
        self.shown: Snapshot | None = None
        self.count = 0  # frames offered (the latest snapshot's sequence number)
        self.times: deque[float] = deque(maxlen=256)  # offer times, for frames/s
        self.latencies: deque[float] = deque(maxlen=512)  # decoded -> offered, seconds
        self.status: Mapping[str, Any] = {}
        self.t_status = 0.0
        self.enc_lock = threading.Lock()
        self.encoder: JpegEncoder | None = None
        self.jpeg: bytes | None = None


class PreviewHub:
    """The pipeline's side of the preview: per-stream latest-frame slots, filled for free.

    ``offer`` is called by the publisher thread for every frame; it never blocks on a viewer,
    never copies pixels and never encodes. At most ``max_streams`` streams get a slot; frames of
    further streams are counted in ``rejected`` and otherwise ignored.
    """

    def __init__(
        self,
        max_streams: int = 64,
        *,
        max_width: int = 1280,
        quality: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_streams = max_streams
        self.max_width = max_width
        self.quality = quality
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._create_lock = threading.Lock()
        # Streams removed by the daemon: a frame of theirs still in flight gets no new tile.
        self._removed: set[str] = set()
        self._viewers = 0
        self._last_view = -1e18
        self._viewers_lock = threading.Lock()
        self.rejected = 0
        self.encoded = 0  # JPEGs encoded so far (stays 0 while nobody watches)
        self.info: dict[str, Any] = {}  # shown in the page header: model, backend, version...
        # The streams' own snapshots (state, reconnects, drops), read by HTTP threads only: the
        # pipeline pays nothing for them. Set by the daemon; None in a bare hub.
        self.status_source: StatusSource | None = None
        # Zones and lines drawn under the boxes, per stream (streams[].analytics).
        self.geometry: dict[str, tuple[Sequence[Any], Sequence[Any]]] = {}

    # -- pipeline side -------------------------------------------------------------------------

    def offer(
        self,
        result: FrameResult,
        labels: Sequence[str],
        status: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep ``result`` as its stream's latest frame. O(1); never blocks, copies or encodes.

        ``status`` (optional, may be the same dict every call) is what the page shows beside the
        tile; recognised keys: ``state``, ``fps``, ``latency_p50_s``, ``latency_p99_s``,
        ``drops``, ``reconnects``; any other key is shown as ``key: value``. Figures the app
        does not give (frames/s, latency percentiles, state) are measured here from the offers.
        The hub only reads ``status`` from HTTP threads, and never mutates it.
        """
        frame = result.frame
        slot = self._slots.get(frame.stream)
        if slot is None:
            slot = self._slot(frame.stream)
            if slot is None:
                return
        now = self._clock()
        seq = slot.count + 1
        slot.latest = (frame, result.detections, labels, now, seq)
        slot.count = seq
        slot.times.append(now)
        slot.latencies.append(now - frame.t_decoded)
        if status is not None:
            slot.status = status
            slot.t_status = now

    def set_status(self, stream: str, status: Mapping[str, Any]) -> None:
        """Update a stream's status while no frames flow (down, reconnecting, ended...)."""
        slot = self._slots.get(stream) or self._slot(stream)
        if slot is not None:
            slot.status = status
            slot.t_status = self._clock()

    def set_geometry(self, stream: str, zones: Sequence[Any], lines: Sequence[Any]) -> None:
        """Zones and lines (``name`` + normalized ``points``) to draw on ``stream``'s tiles."""
        self.geometry = {**self.geometry, stream: (list(zones), list(lines))}

    def add_stream(self, stream: str) -> None:
        """Give ``stream`` a tile before its first frame (the page then says 'waiting')."""
        with self._create_lock:
            self._removed.discard(stream)
        if stream not in self._slots:
            self._slot(stream)

    def remove_stream(self, stream: str) -> None:
        """Take ``stream``'s tile off the page for good (removed from the configuration, or
        moved to another shard): its slot, figures and geometry go, its place under
        ``max_streams`` is free again, and open MJPEG responses for it end. A frame of it still
        in flight that is offered afterwards is ignored; :meth:`add_stream` brings it back."""
        with self._create_lock:
            self._removed.add(stream)
            if stream in self._slots:
                # A new dict, as in _slot: readers iterating the old one never see it change.
                self._slots = {k: v for k, v in self._slots.items() if k != stream}
        self.geometry = {k: v for k, v in self.geometry.items() if k != stream}

    def has_stream(self, stream: str) -> bool:
        """``stream`` has a tile now."""
        return stream in self._slots

    def _slot(self, stream: str) -> _Slot | None:
        with self._create_lock:
            slot = self._slots.get(stream)
            if slot is None:
                if stream in self._removed:
                    return None
                if len(self._slots) >= self.max_streams:
                    self.rejected += 1
                    return None
                slot = _Slot(stream)
                # Publish a new dict so readers iterating the old one never see it change size.
                self._slots = {**self._slots, stream: slot}
            return slot

    # -- viewer side ---------------------------------------------------------------------------

    @property
    def viewers(self) -> int:
        """MJPEG connections open now."""
        return self._viewers

    @property
    def watching(self) -> bool:
        """Someone looked at a picture in the last few seconds (an open MJPEG stream or a
        snapshot poll). While this is false the pipeline may release each frame's pixels as
        early as it likes; while true it should leave ``frame.native`` (or ``frame.image``)
        set on the frames it offers, so there is a picture to draw on."""
        return self._viewers > 0 or self._clock() - self._last_view < STALE_S

    def _viewer(self, delta: int) -> None:
        with self._viewers_lock:
            self._viewers += delta

    def streams(self) -> list[str]:
        return list(self._slots)

    def frame_seq(self, stream: str) -> int:
        """How many frames ``stream`` has offered (changes when a new frame is there)."""
        slot = self._slots.get(stream)
        return slot.count if slot is not None else 0

    def annotated(self, stream: str) -> np.ndarray | None:
        """The latest frame of ``stream`` as a new RGB array, scaled to at most ``max_width``
        (even dimensions) and annotated. ``None`` before the first frame."""
        slot = self._slots.get(stream)
        latest = slot.latest if slot is not None else None
        if latest is None:
            return None
        frame, dets, labels, _, _ = latest
        return self._render(frame, dets, labels)

    def _render(self, frame: Any, dets: Detections, labels: Sequence[str]) -> np.ndarray:
        w, h = frame.width, frame.height
        scale = min(1.0, self.max_width / w)
        ow, oh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
        src, native = frame.image, frame.native
        if src is None and native is not None:
            # A decoder's native frame: scale + colour conversion in one swscale pass.
            if getattr(frame, "orient", ""):  # scaled as stored, then turned as displayed
                from daemon.vision.orient import oriented_rgb

                rgb = oriented_rgb(native, frame.orient, ow, oh)
            else:
                rgb = native.reformat(width=ow, height=oh, format="rgb24").to_ndarray()
        elif src is None:
            # The pipeline released the pixels (nobody was watching when it handled this frame):
            # show the boxes on black rather than nothing; the next frame will have its picture.
            rgb = np.zeros((oh, ow, 3), np.uint8)
        elif (ow, oh) == (w, h):
            rgb = src.copy()  # the pipeline's array is never drawn on
        else:
            vf = av.VideoFrame.from_ndarray(src, format="rgb24")
            rgb = vf.reformat(width=ow, height=oh, format="rgb24").to_ndarray()
        boxes = dets.boxes
        if (ow, oh) != (w, h):
            boxes = boxes * np.array([ow / w, oh / h, ow / w, oh / h], dtype=np.float32)
        zones, lines = self.geometry.get(frame.stream, ((), ()))
        if zones or lines:
            draw_geometry(rgb, zones, lines)
        draw_detections(rgb, boxes, dets.scores, dets.class_ids, labels, track_ids=dets.track_ids)
        return rgb

    def jpeg(self, stream: str, require_picture: bool = False) -> tuple[int, bytes] | None:
        """(frame sequence number, JPEG of the latest annotated frame), encoded at most once per
        frame however many viewers ask. ``None`` before the first frame or for unknown streams,
        and with ``require_picture`` while the latest frame's pixels were released (it was
        handled before anyone watched): asking marks the stream as watched, so the frames that
        follow keep their pixels and a new viewer gets its first picture a few frames later,
        instead of boxes on black."""
        slot = self._slots.get(stream)
        if slot is None or slot.latest is None:
            return None
        self._last_view = self._clock()
        with slot.enc_lock:
            latest = slot.latest  # one read: frame, detections and number belong together
            seq = latest[4]
            if require_picture and latest[0].image is None and latest[0].native is None:
                return None
            if slot.jpeg is not None and slot.shown is not None and slot.shown[4] == seq:
                return seq, slot.jpeg
            frame, dets, labels, _, _ = latest
            rgb = self._render(frame, dets, labels)
            if slot.encoder is None:
                slot.encoder = JpegEncoder(self.quality)
            slot.jpeg = slot.encoder.encode(rgb)
            slot.shown = latest
            self.encoded += 1
            return seq, slot.jpeg

    def stream_status(self, stream: str) -> dict[str, Any]:
        """What the page shows for ``stream``: the app's status, completed by the hub's own
        measurements. Keys: id, state, fps, latency_p50_s, latency_p99_s, drops, reconnects,
        frames, detections, age_s, width, height, seq, frame_index, extra (app keys the page has
        no place for).

        ``detections``, ``width``, ``height``, ``seq`` (the hub's number of the frame, as in the
        MJPEG part's ``X-Frame-Seq`` header) and ``frame_index`` (the source's frame index, as
        ``frame`` in published messages) describe one frame: the one whose picture was served
        last while someone watches, else the latest offered. They come from one snapshot, so the
        status line never describes a different frame than the picture beside it. ``frames``,
        ``fps``, the latencies and ``age_s`` (seconds since the latest offer) describe the stream.
        """
        slot = self._slots.get(stream)
        if slot is None:
            return {"id": stream, "state": "unknown"}
        now = self._clock()
        status = _copy(slot.status)
        if self.status_source is not None:
            try:
                snapshot = self.status_source(stream)
            except Exception:  # a status lookup must never break the page
                log.debug("preview status source failed for %s", stream, exc_info=True)
            else:
                if snapshot is not None:
                    status.update(snapshot.shown())
        latest = slot.latest
        shown = slot.shown if self.watching else None
        snap = shown if shown is not None else latest  # the frame the status line describes
        age = now - latest[3] if latest is not None else None
        times = list(slot.times)
        lat = np.array(slot.latencies, dtype=np.float64)
        fps = None
        recent = [t for t in times if now - t <= STALE_S]
        if len(recent) >= 2 and recent[-1] > recent[0]:
            fps = (len(recent) - 1) / (recent[-1] - recent[0])
        elif latest is not None:
            fps = 0.0
        out: dict[str, Any] = {
            "id": stream,
            "state": None,
            "fps": fps,
            "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p99_s": float(np.percentile(lat, 99)) if len(lat) else None,
            "drops": None,
            "reconnects": None,
            "frames": slot.count,
            "detections": len(snap[1]) if snap is not None else 0,
            "age_s": age,
            "width": snap[0].width if snap is not None else None,
            "height": snap[0].height if snap is not None else None,
            "seq": snap[4] if snap is not None else None,
            "frame_index": getattr(snap[0], "index", None) if snap is not None else None,
        }
        extra = {}
        own = ("id", "frames", "detections", "age_s", "width", "height", "seq", "frame_index")
        for k, v in status.items():
            if k in out and k not in own:
                if v is not None:
                    out[k] = v
            elif k != "id":
                extra[k] = v
        if out["state"] is None:
            if latest is None:
                out["state"] = "waiting"
            else:
                out["state"] = "up" if age is not None and age <= STALE_S else "stalled"
        out["extra"] = extra
        return out

    def status(self) -> dict[str, Any]:
        return {
            "info": dict(self.info),
            "viewers": self._viewers,
            "streams": [self.stream_status(s) for s in self._slots],
        }


def _copy(m: Mapping[str, Any]) -> dict[str, Any]:
    # The app may update its status dict while we read it; retry instead of locking its path.
    for _ in range(5):
        try:
            return dict(m)
        except RuntimeError:
            continue
    return {}
