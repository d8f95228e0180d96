"""The live preview page: the latest annotated frame of every stream, and its health, in a browser.

Three parts, split so the pipeline never waits for a browser:

* :mod:`daemon.preview.hub`: :class:`PreviewHub`, what the pipeline feeds (``offer``: O(1), no
  copy, no encode) and what the viewers read; stream status from the daemon's
  :class:`~daemon.sources.status.StreamStatus` snapshots.
* :mod:`daemon.preview.web`: :class:`PreviewApp`, the WSGI application, and the page
  (``page.html``, package data).
* :mod:`daemon.preview.server`: the HTTP glue: :class:`PreviewServer` (its own port),
  :func:`request_handler` (under a prefix of the metrics listener), :func:`mount` (WSGI).
"""

from daemon.preview.hub import JpegEncoder, PreviewHub, StatusSource
from daemon.preview.server import PreviewServer, mount, request_handler
from daemon.preview.web import PreviewApp, render_page
from daemon.sources.status import StreamStatus

__all__ = [
    "JpegEncoder", "PreviewApp", "PreviewHub", "PreviewServer", "StatusSource", "StreamStatus",
    "mount", "render_page", "request_handler",
]
