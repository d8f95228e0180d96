"""Every timeout of a source, derived from ``stall_timeout``: the one judge of "no frames for
too long" (issue: a camera sending one frame every 15 s with ``stall_timeout: 40`` was cut off
after 10 s by a separate read timeout).

- PyAV's read timeout (``av.open(..., timeout=(open, read))``) and FFmpeg's socket I/O timeout
  (the ``timeout`` option of the RTSP and HTTP protocols, in microseconds) are
  :func:`read_bound` = ``stall_timeout + 1`` s: longer than the stall verdict, so the
  supervisor declares the stall first, with a clear reason, and a blocked read ends soon after.
- The policy's ``connect_timeout`` (an attempt in flight this long is hung) is
  ``2 * open_timeout + 2`` s: PyAV bounds ``avformat_open_input`` and then
  ``avformat_find_stream_info`` by ``open_timeout`` each.
- A configured ``read_timeout`` (kept for old configs) or an FFmpeg ``timeout``/``rw_timeout``
  option below ``stall_timeout`` would end reads before the stall judge does: a config error
  (:func:`timeout_problems`, used by the config model, so ``check-config`` reports it).
  Which option bounds a read, and in which unit, comes from FFmpeg's protocol option tables
  (libavformat ``avio.c``, ``tcp.c``, ``udp.c``, ``http.c``, ``rtsp.c``,
  ``libsrt.c``): ``rw_timeout`` is a generic I/O option of every protocol, in microseconds;
  ``timeout`` is the socket I/O timeout in microseconds for rtsp, http(s), tcp, udp and srt
  (older FFmpeg's name for srt's ``rw_timeout``). rtmp's ``timeout`` is something else: a
  *listen* timeout in seconds that also turns the client into a server, so it does not bound a
  read and is not checked here.

Pure functions; no imports from the media stack.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["READ_MARGIN", "connect_timeout", "read_bound", "socket_timeout_us", "timeout_problems"]

READ_MARGIN = 1.0  # seconds a blocked read may outlive the stall verdict
# FFmpeg options that bound socket reads, in microseconds, for the protocols detectd sets them on.
SOCKET_TIMEOUT_OPTIONS = ("timeout", "rw_timeout")
# Protocols whose ``timeout`` option is a socket read timeout in microseconds (see the module doc).
_TIMEOUT_US_SCHEMES = ("rtsp", "rtsps", "http", "https", "tcp", "udp", "srt")


def read_bound(stall_timeout: float, read_timeout: float | None = None) -> float:
    """Seconds one blocking read may take: ``stall_timeout + 1``, or a configured
    ``read_timeout`` when it is smaller (it is >= ``stall_timeout``, checked by the config)."""
    bound = stall_timeout + READ_MARGIN
    return min(bound, read_timeout) if read_timeout is not None else bound


def socket_timeout_us(stall_timeout: float, read_timeout: float | None = None) -> str:
    """FFmpeg's ``timeout`` option value (integer microseconds, as a string)."""
    return str(int(read_bound(stall_timeout, read_timeout) * 1e6))


def connect_timeout(open_timeout: float) -> float:
    """Seconds after which an open attempt still in flight is declared hung."""
    return 2.0 * open_timeout + 2.0


def timeout_problems(stall_timeout: float, read_timeout: float | None, options: Mapping[str, str],
                     url: str = "") -> list[str]:
    """Config problems: a timeout that could end a read before ``stall_timeout`` has passed.
    Each message names both keys and the fix. Empty list when consistent."""
    problems = []
    if read_timeout is not None and read_timeout < stall_timeout:
        problems.append(
            f"read_timeout ({read_timeout:g} s) is less than stall_timeout ({stall_timeout:g} s): "
            f"a slow source would be cut off before stall_timeout; remove read_timeout (reads "
            f"are bounded by stall_timeout + {READ_MARGIN:g} s) or raise it to >= stall_timeout")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not scheme or scheme == "file":
        return problems  # a local file: no socket to time out
    # rw_timeout bounds every protocol's reads; timeout only where it is a read bound in µs.
    keys = SOCKET_TIMEOUT_OPTIONS if scheme in _TIMEOUT_US_SCHEMES else ("rw_timeout",)
    for key in keys:
        raw = options.get(key)
        if raw is None:
            continue
        try:
            us = float(raw)
        except ValueError:
            problems.append(f"options.{key} ({raw!r}) must be a number of microseconds")
            continue
        if 0 < us < stall_timeout * 1e6:
            problems.append(
                f"options.{key} ({raw} microseconds = {us / 1e6:g} s) is less than "
                f"stall_timeout ({stall_timeout:g} s): FFmpeg's {scheme} protocol would end a "
                f"read before stall_timeout; remove options.{key} (reads are already bounded "
                f"by stall_timeout + {READ_MARGIN:g} s) or raise it to >= {int(stall_timeout * 1e6)}")
    return problems
