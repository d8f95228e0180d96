"""HTTP glue of the live preview: serve :class:`~daemon.preview.web.PreviewApp` on its own
port (:class:`PreviewServer`, stdlib ``wsgiref`` with a thread per request) or under a path prefix
of another server (:func:`request_handler` for ``BaseHTTPRequestHandler`` routers such as the
daemon's metrics listener; :func:`mount` for WSGI ones).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from daemon.preview.hub import PreviewHub
from daemon.preview.web import PreviewApp, StartResponse, WSGIApp, plain

__all__ = ["PreviewServer", "mount", "request_handler"]

log = logging.getLogger(__name__)


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
    return plain(start_response, "404 Not Found", "not found\n")


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
