"""The preview page's life in the daemon: bound before the model loads, served after, closed at
shutdown. :class:`daemon.app.Daemon` holds one :class:`PreviewService` when ``preview.enabled``.

Two ways to serve (``preview.listen``): on its own port (:class:`PreviewServer`, bound at once so
a busy port fails the start before a minute of calibration), or under ``/preview/`` of the
metrics listener (:func:`request_handler` mounted on it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon import __version__
from daemon.preview.hub import PreviewHub, StatusSource
from daemon.preview.server import PreviewServer, request_handler
from daemon.preview.web import PreviewApp

if TYPE_CHECKING:  # the daemon's loop; the preview package never imports it at run time
    from daemon.pipeline import Pipeline

log = logging.getLogger("detectd")


class PreviewService:
    """``cfg``: the ``preview`` config section (enabled, listen, fps); ``status``: the streams'
    snapshot source (``Streams.status``).

    Raises ``OSError`` naming ``preview.listen`` when its own port cannot be bound."""

    def __init__(self, cfg: Any, status: StatusSource) -> None:
        self.cfg = cfg
        self.hub = PreviewHub(max_streams=64)
        self.hub.status_source = status
        self.server: PreviewServer | None = None
        self.app: PreviewApp | None = None
        if cfg.listen is not None:
            host, _, port = cfg.listen.rpartition(":")
            try:
                self.server = PreviewServer(self.hub, host, int(port), fps=cfg.fps)
            except OSError as exc:
                raise OSError(f"preview.listen: cannot listen on {cfg.listen}: {exc}") from exc

    def attach(self, pipeline: Pipeline, http: Any, metrics_listen: str) -> PreviewHub:
        """Serve the page and feed it the ``pipeline``'s every result (its model shown in the page
        header); the hub. ``http``: the metrics server to mount on when there is no own port.
        ``offer`` is O(1) and never encodes (JPEGs are made on the viewer's thread only while
        someone watches); decoded pixels are kept only while a viewer watches."""
        hub, b = self.hub, pipeline.detector.backend
        hub.info = {"model": pipeline.model_desc["name"], "backend": b.name, "precision": b.precision,
                    "version": __version__}
        if self.server is None:
            self.app = PreviewApp(hub, fps=self.cfg.fps)
            http.mount("/preview", request_handler(self.app, "/preview"))
            log.info("preview page on http://%s/preview/", metrics_listen)
        else:
            self.server.start()  # bound in __init__
        pipeline.hooks.append(hub.offer)
        pipeline.keep_native = lambda: bool(hub.watching)  # the page draws on the pixels
        return hub

    def close(self) -> None:
        """Stop serving: the own port closes, open MJPEG responses on the metrics listener end."""
        if self.server is not None:
            self.server.close()
        if self.app is not None:
            self.app.stop.set()
