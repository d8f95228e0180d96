"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` per notification.

The protocol is small and stable (see sd_notify(3) and systemd's "Notification socket"
documentation): newline-separated ``KEY=VALUE`` assignments in one datagram to the AF_UNIX
socket named by ``NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract namespace.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon calls these
unconditionally and runs the same way on a laptop.

Sending never raises: a lost notification must not take the daemon down. A failure is logged
once and :meth:`Notifier.send` returns False.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)


def _monotonic_usec() -> int:
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC reading: same clock, in µs.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
    recommends. None when the watchdog is off, or when ``WATCHDOG_PID`` names another process
    (the variables were inherited by a child that is not the supervised service)."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class Notifier:
    """Talks to the service manager over ``NOTIFY_SOCKET``. Thread-safe; no-op when unset."""

    def __init__(self, socket_path: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._environ = env
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET")
        self._address: str | bytes | None = None
        if path:
            if path.startswith("@"):
                # Abstract namespace: the name starts with a NUL byte instead of "@".
                self._address = b"\0" + path[1:].encode()
            elif path.startswith("/"):
                self._address = path
            else:
                # systemd also allows vsock:CID:PORT; detectd never runs in a VM guest that way.
                log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX path; sd_notify disabled", path)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._stopping_sent = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram. True when delivered (False if disabled)."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock = s
                self._sock.sendto(payload, self._address)
                return True
            except OSError as e:
                if not self._warned:
                    log.warning("sd_notify to %r failed: %s", self._address, e)
                    self._warned = True
                self._close_locked()
                return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: only after the model is warm and the sockets are bound."""
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: only while frames actually move (or every stream is waiting to
        reconnect), so systemd restarts a daemon that is alive but stuck."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``, once: a stop is final, and both the drain and the shutdown that
        follows it announce it (later calls send nothing and return False)."""
        with self._lock:
            if self._stopping_sent:
                return False
            self._stopping_sent = True
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``, systemd
        253+; harmless before). Send :meth:`ready` when the reload is done."""
        lines = ["RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one line ``systemctl status`` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog_interval(self) -> float | None:
        """Half of ``WATCHDOG_USEC`` in seconds, None when the watchdog is off (see module fn)."""
        return watchdog_interval(self._environ)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    # A newline would start a new assignment: a status text could otherwise inject "READY=1".
    return " ".join(str(text).split())
