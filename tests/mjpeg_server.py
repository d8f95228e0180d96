"""A real MJPEG-over-HTTP camera on loopback, for the tests (not imported by the daemon).

Serves ``multipart/x-mixed-replace`` with real JPEG images (encoded by PyAV's MJPEG encoder)
over HTTP/1.1 chunked transfer, the way small cameras' web servers do. Two framings:

``esp32`` (default)
    Old ESP32-CAM and Tasmota firmware: each part is its headers, the image, *then* the
    boundary line, so the first image has no boundary line before it. FFmpeg's ``mpjpeg``
    demuxer (chosen from the Content-Type) rejects this; the ``mjpeg`` demuxer reads it.
``standard``
    RFC 2046 framing: a boundary line before every part.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

BOUNDARY = "123456789000000000000987654321"  # the ESP32 CameraWebServer's own boundary


def jpeg_frames(n: int, width: int = 320, height: int = 240) -> list[bytes]:
    """``n`` distinct real JPEG images: a gradient with a moving bright square."""
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuvj420p"
    enc.time_base = Fraction(1, 25)
    out = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        img = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)], -1).astype(np.uint8)
        x = (i * 7) % (width - 40)
        img[40:80, x:x + 40] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj420p")
        frame.pts = i
        out.extend(bytes(p) for p in enc.encode(frame))
    return out


class MjpegServer:
    """``MjpegServer(framing="esp32").start()``; ``.url``; ``.stop()``. ``fps`` paces the parts."""

    def __init__(self, framing: str = "esp32", fps: float = 10.0, frames: int = 20) -> None:
        self.framing = framing
        self.fps = fps
        self.images = jpeg_frames(frames)
        self.clients = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                outer.clients += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                i = 0
                try:
                    while not outer._stop.is_set():
                        img = outer.images[i % len(outer.images)]
                        head = f"Content-Type: image/jpeg\r\nContent-Length: {len(img)}\r\n\r\n".encode()
                        line = f"\r\n--{BOUNDARY}\r\n".encode()
                        part = head + img + line if outer.framing == "esp32" else line + head + img
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                        i += 1
                        time.sleep(1.0 / outer.fps)
                except (BrokenPipeError, ConnectionResetError, socket.timeout):
                    pass

        self._stop = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/stream"

    def start(self) -> "MjpegServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
