"""The viewer's side of the live preview: a WSGI application and its page.

:class:`PreviewApp` is mountable on any WSGI server (:mod:`daemon.preview.server` has two).
Each HTTP request runs in its own thread; an MJPEG viewer's thread wakes a few times a second,
takes whatever the hub's slot holds now, and sends it. A slow or stalled browser only blocks its
own handler thread, which simply skips the frames it missed.

Routes (relative, so the app can be mounted under a prefix on another server):

* ``/``: plain HTML, no external assets, one tile per stream with its status line (the page is
  ``page.html`` beside this module, package data, filled in with :class:`string.Template`).
* ``/stream/<id>.mjpg``: ``multipart/x-mixed-replace`` MJPEG at ``fps`` frames/s at most.
* ``/stream/<id>.jpg``: the latest annotated frame, once (the page polls this instead of MJPEG
  when it shows many streams: browsers allow only ~6 open connections per host).
* ``/status.json``: every stream's status, as the page shows it.

The page shows video, so it is meant for loopback (the config default); expose it through an
authenticating reverse proxy, never directly.
"""

from __future__ import annotations

import html
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from string import Template
from typing import Any

import numpy as np

from daemon.preview.hub import PreviewHub

__all__ = ["PreviewApp", "StartResponse", "WSGIApp", "plain", "render_page"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STREAM_PATH = re.compile(r"^/stream/([A-Za-z0-9_-]+)\.(mjpg|jpg)$")
_BOUNDARY = "detectdframe"
# How long a new viewer waits for a frame that still has its pixels (see PreviewHub.jpeg).
_PICTURE_WAIT_S = 1.0


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
            return plain(start_response, "405 Method Not Allowed", "GET only\n")
        if path in ("/", "/index.html"):
            body = render_page(self.hub, self.fps, self.title).encode()
            return _send(start_response, "200 OK", "text/html; charset=utf-8", body)
        if path == "/status.json":
            body = json.dumps(_jsonable(self.hub.status())).encode()
            return _send(start_response, "200 OK", "application/json", body)
        m = _STREAM_PATH.match(path)
        if m is None:
            return plain(start_response, "404 Not Found", "not found\n")
        stream, kind = m.group(1), m.group(2)
        if stream not in self.hub.streams():
            return plain(start_response, "404 Not Found", f"no stream {stream}\n")
        if kind == "jpg":
            got = self.hub.jpeg(stream, require_picture=True)
            deadline = time.monotonic() + _PICTURE_WAIT_S
            while got is None and time.monotonic() < deadline and not self.stop.is_set():
                self.stop.wait(0.02)  # the frames after this request keep their pixels
                got = self.hub.jpeg(stream, require_picture=True)
            if got is None:  # a stream that stopped delivering: its last frame, boxes on black
                got = self.hub.jpeg(stream)
            if got is None:
                return plain(start_response, "503 Service Unavailable", "no frame yet\n")
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
            while not self.stop.is_set() and self.hub.has_stream(stream):  # removed: the response ends
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


def plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    """A ``text/plain`` response (errors: 404, 405, 503)."""
    return _send(start_response, status, "text/plain; charset=utf-8", text.encode())


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


# -- the page ------------------------------------------------------------------------------------

# At most this many tiles use MJPEG; beyond it the page polls JPEG snapshots, because a browser
# keeps only ~6 connections per host open and each MJPEG tile holds one for good.
_MAX_MJPEG_TILES = 4



@cache
def _page() -> Template:
    return Template(resources.files("daemon.preview").joinpath("page.html").read_text(encoding="utf-8"))


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
    return _page().substitute(
        title=html.escape(title), info=html.escape(info), tiles=tiles,
        fps=json.dumps(float(fps)), max_mjpeg=_MAX_MJPEG_TILES,
    )  # fmt: skip
