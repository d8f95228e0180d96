"""Sort the exceptions PyAV/FFmpeg raise into the few kinds the reconnect policy acts on.

What PyAV 12+ raises, measured against the real RTSP server of ``tests/rtsp_server.py``
(FFmpeg 7/8 via PyAV's wheels):

=========================================  ==========================================  ========
situation                                  exception                                   kind
=========================================  ==========================================  ========
nothing listens on the port                ``av.error.ConnectionRefusedError`` (111)   network
wrong / missing credentials                ``av.error.HTTPUnauthorizedError`` (401)    auth
credentials refused by policy              ``av.error.HTTPForbiddenError`` (403)       auth
wrong mount path                           ``av.error.HTTPNotFoundError`` (404)        network
server error (pipeline failed)             ``av.error.HTTPServerError`` (5XX)          network
no media within the ``timeout`` option     ``av.error.TimeoutError`` (110)             timeout
PyAV's own ``timeout=(open, read)`` hit    ``av.error.ExitError`` ("Immediate exit     timeout
                                           requested": its interrupt callback)
host unreachable / not media / bad packet  ``av.error.InvalidDataError``               decode
server killed / stream ended               no exception: ``decode()`` just ends        eof
                                           (``EOFError`` where FFmpeg raises one)
=========================================  ==========================================  ========

The caller passes ``"eof"`` itself when the decode loop of a live stream ends without an
exception. ``decode`` is ambiguous on purpose: the policy treats it as a skipped packet while
the stream is up and as a failed attempt while it is opening.

Kinds are chosen by exception class first (PyAV's classes subclass the builtins: ``TimeoutError``,
``EOFError``, ``ValueError``...), then by the message for anything older or unexpected. Anything
unknown is ``network``: reconnect with backoff, the safe default for a live source.
"""

from __future__ import annotations

import errno
import re
import socket
from typing import Literal

__all__ = ["ErrorKind", "classify_error"]

ErrorKind = Literal["network", "auth", "eof", "decode", "timeout"]

try:  # PyAV is a runtime dependency, but classification must work on any exception.
    import av.error as _averr
except ImportError:  # pragma: no cover - PyAV is always installed with detectd
    _averr = None  # type: ignore[assignment]


def _av(name: str) -> tuple[type[BaseException], ...]:
    cls = getattr(_averr, name, None) if _averr is not None else None
    return (cls,) if isinstance(cls, type) else ()


_AUTH = _av("HTTPUnauthorizedError") + _av("HTTPForbiddenError")
_TIMEOUT = (TimeoutError, socket.timeout) + _av("ExitError")
_DECODE = _av("InvalidDataError")
_EOF = (EOFError,) + _av("EOFError")

_AUTH_MSG = re.compile(r"\b(401|403)\b|unauthori[sz]ed|forbidden|authori[sz]ation failed", re.I)
_TIMEOUT_MSG = re.compile(r"timed? ?out|immediate exit requested", re.I)
_EOF_MSG = re.compile(r"end of file", re.I)
_DECODE_MSG = re.compile(r"invalid data|corrupt|error while decoding|non-existing pps|no frame!", re.I)


def classify_error(exc: BaseException) -> ErrorKind:
    """``"network" | "auth" | "eof" | "decode" | "timeout"`` for an exception from a source."""
    if _AUTH and isinstance(exc, _AUTH):
        return "auth"
    if isinstance(exc, _TIMEOUT) or getattr(exc, "errno", None) == errno.ETIMEDOUT:
        return "timeout"
    if isinstance(exc, _EOF):
        return "eof"
    if _DECODE and isinstance(exc, _DECODE):
        return "decode"
    if isinstance(exc, OSError):  # refused, reset, unreachable, not found...
        return "network"
    msg = str(exc)
    if _AUTH_MSG.search(msg):
        return "auth"
    if _TIMEOUT_MSG.search(msg):
        return "timeout"
    if _EOF_MSG.search(msg):
        return "eof"
    if _DECODE_MSG.search(msg):
        return "decode"
    return "network"
