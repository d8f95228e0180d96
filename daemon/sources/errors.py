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

What the user reads is :func:`describe_error`: FFmpeg's words for the error code
(``av_strerror``: "Server returned 5XX Server Error reply", "Connection refused"), never the
``[Errno 1482175992]`` number nor the URL (which may carry credentials); "Input/output error"
for a host that does not resolve becomes "cannot resolve host NAME" (checked with the system
resolver, on the error path only); the bad input format gets a hint at ``streams[].format``.

Some failures are not exceptions of FFmpeg: a live source that offers no video track yet raises
:class:`SourceError` with its own kind (``network``: retried with backoff) and words ("no video
stream in the input (found: audio (pcm_alaw))"). An input format, protocol or option FFmpeg
does not know (``DemuxerNotFoundError``, ``ProtocolNotFoundError``, ``OptionNotFoundError``: what
``check-config`` could catch too) is certainly a configuration problem, :func:`is_config_error`:
retrying cannot fix it. ``EINVAL`` (``ArgumentError``, :func:`is_invalid_argument`) is not
certain: FFmpeg also returns it for what a server or the network sent (a camera's malformed
answer), so a live source is retried with backoff and the reason points at the config keys.

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

from daemon.errors import DetectdError
from daemon.vocab import ErrorKind

__all__ = ["ErrorKind", "classify_error", "describe_error", "is_config_error", "is_invalid_argument",
           "SourceError"]

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


class SourceError(DetectdError):
    """A source failure described by detectd itself: ``kind`` for the policy, words for people."""

    def __init__(self, kind: ErrorKind | str, message: str) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)


_CONFIG = _av("OptionNotFoundError") + _av("DemuxerNotFoundError") + _av("ProtocolNotFoundError")
_INVALID = _av("ArgumentError")


def is_config_error(exc: BaseException) -> bool:
    """FFmpeg does not know the input format, protocol or an option ("not found"): only the
    configuration can fix it, retrying cannot help."""
    return bool(_CONFIG) and isinstance(exc, _CONFIG)


def is_invalid_argument(exc: BaseException) -> bool:
    """FFmpeg's ``EINVAL``: often the URL or an option's value, but also a server's malformed
    answer, so not proof of a config problem (a live source is retried)."""
    return bool(_INVALID) and isinstance(exc, _INVALID)


def _resolve_problem(host: str) -> str | None:
    """``"cannot resolve host NAME (...)"`` when the system resolver fails on ``host``."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"cannot resolve host {host} ({exc.strerror or exc})"
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve host {host} ({exc})"
    return None


def describe_error(exc: BaseException, url: str | None = None, *, format_forced: bool = True) -> str:
    """The error in words, without error numbers or the URL (see the module doc).

    ``url``: the source's URL, to name an unresolvable host; ``format_forced``: False adds the
    ``streams[].format`` hint to "Invalid data found when processing input".
    """
    if isinstance(exc, SourceError):
        return str(exc)
    if _averr is not None and isinstance(exc, getattr(_averr, "FFmpegError", ())) or isinstance(exc, OSError):
        words = getattr(exc, "strerror", None) or (exc.args[1] if len(exc.args) > 1 else None)
        if not isinstance(words, str) or not words:
            words = str(exc.args[0]) if exc.args else type(exc).__name__
    else:
        text = str(exc)
        words = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    code = getattr(exc, "errno", None)
    if url and code == errno.EIO and "://" in url:
        from daemon.sources.urls import host_of

        host = host_of(url)
        unresolved = _resolve_problem(host) if host else None
        if unresolved:
            return unresolved
    if is_config_error(exc) or is_invalid_argument(exc):
        return f"FFmpeg rejected the URL or an option: {words}"
    if _av("ExitError") and isinstance(exc, _av("ExitError")):
        # PyAV's interrupt callback ("Immediate exit requested"): its timeout=(open, read) hit.
        return "no answer within open_timeout (or stall_timeout + 1 s while reading)"
    if not format_forced and _DECODE and isinstance(exc, _DECODE):
        return (f"{words}: FFmpeg did not recognise the input format; if you know it, set it with "
                "`format:` (e.g. `format: mjpeg` for an MJPEG-over-HTTP camera)")
    return words


def classify_error(exc: BaseException) -> ErrorKind:
    """The :class:`~daemon.vocab.ErrorKind` of an exception from a source: ``network``,
    ``auth``, ``eof``, ``decode`` or ``timeout`` (or a :class:`SourceError`'s own kind)."""
    if isinstance(exc, SourceError):
        return exc.kind
    if _AUTH and isinstance(exc, _AUTH):
        return ErrorKind.AUTH
    if isinstance(exc, _TIMEOUT) or getattr(exc, "errno", None) == errno.ETIMEDOUT:
        return ErrorKind.TIMEOUT
    if isinstance(exc, _EOF):
        return ErrorKind.EOF
    if _DECODE and isinstance(exc, _DECODE):
        return ErrorKind.DECODE
    if isinstance(exc, OSError):  # refused, reset, unreachable, not found...
        return ErrorKind.NETWORK
    msg = str(exc)
    if _AUTH_MSG.search(msg):
        return ErrorKind.AUTH
    if _TIMEOUT_MSG.search(msg):
        return ErrorKind.TIMEOUT
    if _EOF_MSG.search(msg):
        return ErrorKind.EOF
    if _DECODE_MSG.search(msg):
        return ErrorKind.DECODE
    return ErrorKind.NETWORK
