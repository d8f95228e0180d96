"""The live preview page: the latest annotated frame of every stream, and its health, in a browser.

Two halves, split so the pipeline never waits for a browser:

* :class:`PreviewHub` is what the pipeline sees. The publisher thread calls
  :meth:`PreviewHub.offer` once per published frame; it stores a *reference* to the frame and its
  detections in the stream's latest-frame slot (one tuple assignment, two deque appends) and
  returns. No copy, no colour conversion, no JPEG: nothing is encoded unless someone watches.
* :class:`PreviewApp` (a WSGI application) and :class:`PreviewServer` (a threading HTTP server
  around it) are what the browser sees. Each HTTP request runs in its own thread; an MJPEG
  viewer's thread wakes a few times a second, takes whatever the slot holds *now*, converts,
  draws (:mod:`daemon.vision.draw`, the same code as ``detectd annotate``) and encodes it. A slow
  or stalled browser only blocks its own handler thread, which simply skips the frames it missed;
  the encoded JPEG is cached per frame, so ten viewers of a stream cost one encode per frame.

Routes (relative, so the app can be mounted under a prefix on another server):

* ``/``: plain HTML, no external assets, one tile per stream with its status line.
* ``/stream/<id>.mjpg``: ``multipart/x-mixed-replace`` MJPEG at ``fps`` frames/s at most.
* ``/stream/<id>.jpg``: the latest annotated frame, once (the page polls this instead of MJPEG
  when it shows many streams: browsers allow only ~6 open connections per host).
* ``/status.json``: every stream's status, as the page shows it.

The page shows video, so :class:`PreviewServer` is meant for loopback (the config default);
expose it through an authenticating reverse proxy, never directly.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import av
import numpy as np

from daemon.frames import Detections, FrameResult
from daemon.vision.draw import draw_detections, draw_geometry

__all__ = [
    "PreviewHub", "PreviewApp", "PreviewServer", "JpegEncoder", "mount", "request_handler",
    "registry_status", "render_page",
]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STREAM_PATH = re.compile(r"^/stream/([A-Za-z0-9_-]+)\.(mjpg|jpg)$")
_BOUNDARY = "detectdframe"
# A stream whose last frame is older than this is shown as stalled when the app gives no state.
_STALE_S = 5.0
# How long a new viewer waits for a frame that still has its pixels (see PreviewHub.jpeg).
_PICTURE_WAIT_S = 1.0


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
        self._viewers = 0
        self._last_view = -1e18
        self._viewers_lock = threading.Lock()
        self.rejected = 0
        self.encoded = 0  # JPEGs encoded so far (stays 0 while nobody watches)
        self.info: dict[str, Any] = {}  # shown in the page header: model, backend, version...
        # Optional per-stream status read by HTTP threads only (e.g. from the metrics registry,
        # see registry_status): the pipeline pays nothing for it.
        self.status_source: Callable[[str], Mapping[str, Any]] | None = None
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
        if stream not in self._slots:
            self._slot(stream)

    def _slot(self, stream: str) -> _Slot | None:
        with self._create_lock:
            slot = self._slots.get(stream)
            if slot is None:
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
        return self._viewers > 0 or self._clock() - self._last_view < _STALE_S

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
                status.update(self.status_source(stream))
            except Exception:  # a status lookup must never break the page
                log.debug("preview status source failed for %s", stream, exc_info=True)
        latest = slot.latest
        shown = slot.shown if self.watching else None
        snap = shown if shown is not None else latest  # the frame the status line describes
        age = now - latest[3] if latest is not None else None
        times = list(slot.times)
        lat = np.array(slot.latencies, dtype=np.float64)
        fps = None
        recent = [t for t in times if now - t <= _STALE_S]
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
                out["state"] = "up" if age is not None and age <= _STALE_S else "stalled"
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


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


class PreviewApp:
    """The preview as a WSGI application (mountable on any WSGI server, the metrics one included).

    ``fps`` caps the MJPEG rate per viewer; ``stop`` (an event) ends open MJPEG responses when the
    daemon shuts down.
    """

    def __init__(
        self,
        hub: PreviewHub,
        *,
        fps: float = 5.0,
        title: str = "detectd preview",
        stop: threading.Event | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError("preview fps must be positive")
        self.hub = hub
        self.fps = fps
        self.title = title
        self.stop = stop or threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET only\n")
        if path in ("/", "/index.html"):
            body = render_page(self.hub, self.fps, self.title).encode()
            return _send(start_response, "200 OK", "text/html; charset=utf-8", body)
        if path == "/status.json":
            body = json.dumps(_jsonable(self.hub.status())).encode()
            return _send(start_response, "200 OK", "application/json", body)
        m = _STREAM_PATH.match(path)
        if m is None:
            return _plain(start_response, "404 Not Found", "not found\n")
        stream, kind = m.group(1), m.group(2)
        if stream not in self.hub.streams():
            return _plain(start_response, "404 Not Found", f"no stream {stream}\n")
        if kind == "jpg":
            got = self.hub.jpeg(stream, require_picture=True)
            deadline = time.monotonic() + _PICTURE_WAIT_S
            while got is None and time.monotonic() < deadline and not self.stop.is_set():
                self.stop.wait(0.02)  # the frames after this request keep their pixels
                got = self.hub.jpeg(stream, require_picture=True)
            if got is None:  # a stream that stopped delivering: its last frame, boxes on black
                got = self.hub.jpeg(stream)
            if got is None:
                return _plain(start_response, "503 Service Unavailable", "no frame yet\n")
            return _send(start_response, "200 OK", "image/jpeg", got[1])
        start_response(
            "200 OK",
            [
                ("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}"),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
            ],
        )
        if method == "HEAD":
            return []
        return self._mjpeg(stream)

    def _mjpeg(self, stream: str) -> Iterator[bytes]:
        # Each part ends with the next boundary line, so browsers show a frame as soon as it
        # arrives instead of when the following one starts.
        self.hub._viewer(+1)
        try:
            yield f"--{_BOUNDARY}\r\n".encode()
            period = 1.0 / self.fps
            sent = -1
            opened = time.monotonic()
            while not self.stop.is_set():
                t0 = time.monotonic()
                if self.hub.frame_seq(stream) != sent:
                    # Frames handled before this viewer came have no pixels: wait for one that
                    # has (a few frames); boxes on black only for a stream that stopped there.
                    got = self.hub.jpeg(stream, require_picture=t0 - opened < _PICTURE_WAIT_S)
                    if got is not None and got[0] != sent:
                        sent, data = got
                        head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n"
                                f"X-Frame-Seq: {sent}\r\n\r\n")
                        yield head.encode() + data + f"\r\n--{_BOUNDARY}\r\n".encode()
                self.stop.wait(max(0.0, period - (time.monotonic() - t0)))
        finally:
            self.hub._viewer(-1)


def _send(start_response: StartResponse, status: str, ctype: str, body: bytes) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body]


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    return _send(start_response, status, "text/plain; charset=utf-8", text.encode())


def mount(prefix: str, preview: WSGIApp, fallback: WSGIApp) -> WSGIApp:
    """A WSGI app serving ``preview`` under ``prefix`` (e.g. ``/preview``) and ``fallback``
    (e.g. ``prometheus_client.make_wsgi_app(registry)``) everywhere else."""
    prefix = "/" + prefix.strip("/")

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == prefix:
            start_response("301 Moved Permanently", [("Location", prefix + "/"), ("Content-Length", "0")])
            return []
        if path.startswith(prefix + "/"):
            env = dict(environ)
            env["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            env["PATH_INFO"] = path[len(prefix) :]
            return preview(env, start_response)
        return fallback(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    # A viewer that stops reading must not pin a thread forever: sends time out after this.
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("preview %s: " + format, self.address_string(), *args)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("preview request from %s failed", client_address, exc_info=True)


class PreviewServer:
    """A threading HTTP server (stdlib ``wsgiref`` + ``ThreadingMixIn``) serving the preview.

    ``PreviewServer(hub, "127.0.0.1", 8081, fps=5).start()``; ``close()`` ends open MJPEG
    responses and stops the server. ``port=0`` binds a free port (see ``port``). With
    ``prefix="/preview"`` and ``fallback=<wsgi app>`` the same listener serves both, e.g. the
    preview beside Prometheus' ``make_wsgi_app``.
    """

    def __init__(
        self,
        hub: PreviewHub,
        host: str = "127.0.0.1",
        port: int = 8081,
        *,
        fps: float = 5.0,
        prefix: str = "",
        fallback: WSGIApp | None = None,
        title: str = "detectd preview",
    ) -> None:
        self.stop = threading.Event()
        self.app = PreviewApp(hub, fps=fps, title=title, stop=self.stop)
        app: WSGIApp = self.app
        if prefix.strip("/"):
            app = mount(prefix, self.app, fallback or _not_found)
        self._httpd = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> "PreviewServer":
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
            name="preview-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("preview page on %s", self.url)
        return self

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> "PreviewServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_found(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    return _plain(start_response, "404 Not Found", "not found\n")


def registry_status(registry: Any) -> Callable[[str], dict[str, Any]]:
    """A ``PreviewHub.status_source`` reading a stream's state, drops and reconnects from the
    daemon's Prometheus registry (metric names of the contract), on the viewer's thread."""

    def status(stream: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        drops = 0.0
        for metric in registry.collect():
            for s in metric.samples:
                if s.labels.get("stream") != stream:
                    continue
                if s.name == "detectd_stream_state" and s.value >= 1:
                    out["state"] = s.labels.get("state")
                elif s.name == "detectd_stream_up":
                    out["up"] = s.value
                elif s.name == "detectd_stream_reconnects_total":
                    out["reconnects"] = int(s.value)
                elif s.name == "detectd_frames_dropped_total":
                    drops += s.value
        out["drops"] = int(drops)
        up = out.pop("up", None)
        if "state" not in out and up is not None and up < 1:
            out["state"] = "down"
        return out

    return status


def request_handler(app: WSGIApp, prefix: str = "") -> Callable[[Any], None]:
    """Adapt a WSGI app to a ``BaseHTTPRequestHandler`` callback, for servers that route by
    path prefix to ``handler(request)`` (the daemon's metrics listener: ``mount(prefix, ...)``).
    Responses without a length (MJPEG) close the connection when they end."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""

    def handle(req: Any) -> None:
        path, _, query = req.path.partition("?")
        if prefix and path == prefix:
            req.send_response(301)
            req.send_header("Location", prefix + "/")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        environ = {
            "REQUEST_METHOD": req.command, "SCRIPT_NAME": prefix, "QUERY_STRING": query,
            "PATH_INFO": path[len(prefix):] if prefix and path.startswith(prefix) else path,
            "SERVER_PROTOCOL": req.request_version, "wsgi.url_scheme": "http",
        }  # fmt: skip
        head: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            head["status"], head["headers"] = status, headers

        body = app(environ, start_response)
        try:
            code, _, reason = head["status"].partition(" ")
            req.send_response(int(code), reason)
            names = {k.lower() for k, _ in head["headers"]}
            for k, v in head["headers"]:
                req.send_header(k, v)
            if "content-length" not in names:
                req.send_header("Connection", "close")
                req.close_connection = True
            req.end_headers()
            req.connection.settimeout(_QuietHandler.timeout)  # a stalled viewer times out
            if req.command == "HEAD":
                return
            for chunk in body:
                req.wfile.write(chunk)
                req.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            req.close_connection = True  # the viewer went away; that is normal
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return handle


# -- the page ------------------------------------------------------------------------------------

# At most this many tiles use MJPEG; beyond it the page polls JPEG snapshots, because a browser
# keeps only ~6 connections per host open and each MJPEG tile holds one for good.
_MAX_MJPEG_TILES = 4

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #111; color: #ddd; }}
header {{ padding: 8px 14px; background: #1c1c1c; border-bottom: 1px solid #333; }}
header b {{ color: #fff; }} #info {{ color: #999; margin-left: 1em; }}
#tiles {{ display: grid; gap: 10px; padding: 10px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 480px), 1fr)); }}
.tile {{ background: #1c1c1c; border: 1px solid #333; border-radius: 4px; overflow: hidden; }}
.tile img {{ display: block; max-width: 100%; height: auto; margin: 0 auto; background: #000; min-height: 60px; }}
.status {{ padding: 6px 10px; font-variant-numeric: tabular-nums; }}
.status .id {{ font-weight: bold; color: #fff; margin-right: .6em; }}
.state {{ padding: 0 .4em; border-radius: 3px; background: #555; color: #fff; }}
.state-up {{ background: #1f7a1f; }}
.state-waiting, .state-connecting, .state-reconnecting, .state-backoff {{ background: #8a6d00; }}
.state-down, .state-error, .state-stalled, .state-auth_failed {{ background: #a12020; }}
.state-ended, .state-stopped {{ background: #444; }}
</style></head>
<body>
<header><b>{title}</b><span id="info">{info}</span></header>
<main id="tiles">{tiles}</main>
<script>
"use strict";
const FPS = {fps}, MAX_MJPEG = {max_mjpeg};
const tiles = document.getElementById("tiles");
function fmt(v, d, unit) {{ return (v === null || v === undefined) ? "-" : v.toFixed(d) + unit; }}
function line(s) {{
  const ms = v => (v === null || v === undefined) ? "-" : (v * 1000).toFixed(1);
  let t = fmt(s.fps, 1, " frames/s") + " \\u00b7 latency p50 " + ms(s.latency_p50_s) +
    " ms / p99 " + ms(s.latency_p99_s) + " ms \\u00b7 drops " + (s.drops ?? "-") +
    " \\u00b7 reconnects " + (s.reconnects ?? "-") + " \\u00b7 " + s.detections + " detections";
  for (const [k, v] of Object.entries(s.extra || {{}})) t += " \\u00b7 " + k + ": " + v;
  return t;
}}
function tile(s, mjpeg) {{
  let el = document.getElementById("tile-" + s.id);
  if (!el) {{
    el = document.createElement("section");
    el.className = "tile"; el.id = "tile-" + s.id; el.dataset.stream = s.id;
    el.innerHTML = '<img alt=""><div class="status"><span class="id"></span>' +
      '<span class="state"></span> <span class="figures"></span></div>';
    el.querySelector(".id").textContent = s.id;
    el.querySelector("img").alt = "stream " + s.id;
    tiles.appendChild(el);
  }}
  const img = el.querySelector("img");
  if (mjpeg && !img.src.endsWith(".mjpg")) img.src = "stream/" + s.id + ".mjpg";
  if (!mjpeg) {{ img.dataset.poll = "1"; }}
  const st = el.querySelector(".state");
  st.textContent = s.state; st.className = "state state-" + s.state;
  el.querySelector(".figures").textContent = line(s);
}}
async function refresh() {{
  try {{
    const r = await fetch("status.json", {{cache: "no-store"}});
    const j = await r.json();
    const mjpeg = j.streams.length <= MAX_MJPEG;
    for (const s of j.streams) tile(s, mjpeg);
    document.body.dataset.ready = "1";
  }} catch (e) {{ /* the daemon restarts: keep the last picture, try again */ }}
}}
function poll() {{
  for (const img of document.querySelectorAll("img[data-poll]"))
    img.src = "stream/" + img.closest(".tile").dataset.stream + ".jpg?t=" + Date.now();
}}
refresh(); setInterval(refresh, 1000); setInterval(poll, 1000 / FPS);
</script>
</body></html>
"""

_TILE = (
    '<section class="tile" id="tile-{id}" data-stream="{id}"><img alt="stream {id}"{src}>'
    '<div class="status"><span class="id">{id}</span><span class="state state-{state}">{state}'
    '</span> <span class="figures">{figures}</span></div></section>'
)


def _figures(s: Mapping[str, Any]) -> str:
    def ms(v: Any) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    fps = "-" if s.get("fps") is None else f"{s['fps']:.1f} frames/s"
    parts = [
        fps,
        f"latency p50 {ms(s.get('latency_p50_s'))} ms / p99 {ms(s.get('latency_p99_s'))} ms",
        f"drops {'-' if s.get('drops') is None else s['drops']}",
        f"reconnects {'-' if s.get('reconnects') is None else s['reconnects']}",
        f"{s.get('detections', 0)} detections",
    ]
    parts += [f"{k}: {v}" for k, v in (s.get("extra") or {}).items()]
    return " \u00b7 ".join(parts)


def render_page(hub: PreviewHub, fps: float, title: str = "detectd preview") -> str:
    """The HTML page, with tiles and status already filled in (the script then keeps them
    current; without JavaScript the MJPEG tiles still play)."""
    streams = [hub.stream_status(s) for s in hub.streams()]
    mjpeg = len(streams) <= _MAX_MJPEG_TILES
    tiles = "".join(
        _TILE.format(
            id=html.escape(s["id"]),
            state=html.escape(str(s["state"])),
            figures=html.escape(_figures(s)),
            src=f' src="stream/{html.escape(s["id"])}.mjpg"' if mjpeg else " data-poll=\"1\"",
        )
        for s in streams
    )
    info = " \u00b7 ".join(f"{k}: {v}" for k, v in hub.info.items())
    return _PAGE.format(
        title=html.escape(title), info=html.escape(info), tiles=tiles,
        fps=json.dumps(float(fps)), max_mjpeg=_MAX_MJPEG_TILES,
    )  # fmt: skip
