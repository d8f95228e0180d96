"""Cheap reachability probes for live sources: does the camera's host:port accept TCP?

While a stream waits to reconnect, :class:`daemon.sources.policy.ReconnectPolicy` asks for a
probe every ``probe_interval`` s; a probe that finds the endpoint back after it was seen down
moves the next (expensive) open forward. A probe is one TCP handshake, closed at once: no
RTSP or HTTP request is sent, so no credentials are involved (and the caller's log lines name
only the stream: a URL with raw special characters in its password can be split in the wrong
place, which ``check-config`` rejects, but a probe must not echo it).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "probe_target", "tcp_reachable"]

# The IANA default ports of the schemes detectd reads over TCP (``tcp://`` has none: its URL
# must name the port). UDP-based schemes (udp, srt) have nothing to probe.
DEFAULT_PORTS: dict[str, int | None] = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443,
                                        "rtmp": 1935, "tcp": None}


def probe_target(url: str) -> tuple[str, int] | None:
    """``(host, port)`` to probe for a network URL, or None (a file, or a URL whose host part
    cannot be read: then the stream is retried on the backoff alone). Never raises."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        port = parts.port or DEFAULT_PORTS[scheme]
        return (parts.hostname, port) if port else None
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return None


def tcp_reachable(host: str, port: int, timeout: float, stop: threading.Event | None = None) -> bool:
    """True when a TCP connection to ``host:port`` is accepted within ``timeout`` seconds.

    Non-blocking connect, waited on in slices of at most 0.1 s so that ``stop`` is seen at once.
    Name resolution (``getaddrinfo``) is the one blocking step; a host given as an IP address
    needs none. Any error (refused, unreachable, unresolvable) is False.
    """
    deadline = time.monotonic() + timeout
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for family, kind, proto, _name, addr in infos:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return False
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue
        with sock, selectors.DefaultSelector() as sel:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err == 0:
                return True
            if err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # failed at once (refused on loopback): try the next address
            sel.register(sock, selectors.EVENT_WRITE)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                if sel.select(min(left, 0.1)):
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        return True
                    break  # refused or unreachable: try the next address
    return False
