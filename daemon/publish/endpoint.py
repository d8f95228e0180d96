"""Owning an ``ipc://`` endpoint the way the kernel owns a TCP port.

A TCP port has one listener: a second ``bind`` fails with ``EADDRINUSE``. An ``ipc://`` endpoint
is a socket *file*, and ZeroMQ's ``bind`` unlinks whatever file is at the path before binding
(it cannot tell a crashed daemon's leftover from a live one). Left alone, a second daemon takes
the endpoint over silently and the first one publishes to nobody. :class:`IpcClaim` restores the
TCP behaviour:

- an exclusive ``flock`` on ``<path>.lock`` (kept open for the daemon's life; the kernel releases
  it when the process dies, however it dies) makes two detectd processes exclude each other
  without a race;
- a connect probe on the socket file catches a live listener that holds no lock (another program,
  an older detectd): it answers, so the path is taken;
- a socket file that neither is locked nor answers is a crashed daemon's leftover: ZeroMQ's bind
  reclaims it.

After the bind, :meth:`IpcClaim.problem` says whether the path still is *our* socket (same device
and inode as right after the bind). Someone may unlink it (a ``/tmp`` cleaner) or bind a new
socket there (a process that ignores the lock): either way new subscribers can no longer reach
this daemon, and ``/readyz`` turns 503 with that reason.

Abstract-namespace endpoints (``ipc://@name``) are not files: the kernel refuses a second bind
there by itself, as for TCP, so they need no claim. ``ipc://*`` (a fresh temporary path) neither.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from daemon.errors import DetectdError

__all__ = ["EndpointInUse", "IpcClaim", "ipc_path"]


class EndpointInUse(DetectdError, OSError):
    """Another live process owns the endpoint; the message names it and the way out.
    ``errno`` is ``EADDRINUSE``, as for a TCP port in use (``str()`` is the message alone)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EADDRINUSE


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint, or None (tcp, inproc, abstract, wildcard)."""
    if not endpoint.startswith("ipc://"):
        return None
    rest = endpoint[len("ipc://"):]
    if not rest or rest.startswith("@") or rest == "*":
        return None
    return Path(rest)


def _listener_answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket file ``path``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        return False  # ZeroMQ's bind will report what this is
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError as exc:
        # ECONNREFUSED: a socket file nobody listens on (a crashed owner's leftover).
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


class IpcClaim:
    """Exclusive ownership of one ``ipc://`` socket path for this process.

    Use: ``claim = IpcClaim.acquire(endpoint, key)`` before ``bind`` (raises
    :class:`EndpointInUse` naming ``key``, the config key, when a live owner exists), then
    ``claim.bound()`` right after it, ``claim.problem()`` whenever the endpoint's health is
    asked, ``claim.release()`` after the socket is closed.
    """

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self.lock_path = Path(f"{path}.lock")
        self._fd = lock_fd
        self._identity: tuple[int, int] | None = None

    @classmethod
    def acquire(cls, endpoint: str, key: str = "publish.endpoint") -> "IpcClaim | None":
        """Claim the socket file of ``endpoint``; None for endpoints that need no claim.

        Raises :class:`EndpointInUse` when another process holds the lock or listens on the
        socket file, and ``OSError`` (naming ``key``) when the lock file cannot be created."""
        path = ipc_path(endpoint)
        if path is None:
            return None
        lock_path = Path(f"{path}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(f"{key}: cannot create the lock file {lock_path} next to the socket of "
                          f"{endpoint}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise EndpointInUse(f"{key}: {endpoint} is in use by another detectd (pid {owner}, "
                                f"lock {lock_path}); stop it or choose another endpoint") from None
        try:
            if _listener_answers(path):
                raise EndpointInUse(f"{key}: {endpoint} is in use: a process listens on {path} "
                                    "(not a detectd holding its lock); stop it or choose another "
                                    "endpoint")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def bound(self) -> None:
        """Remember the identity (device, inode) of the socket file the bind just created."""
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the path still is the socket this process bound; else what happened.

        A ``stat`` per call: cheap enough for every ``/readyz`` request and a once-a-second
        check. Thread-safe (touches no ZeroMQ socket)."""
        if self._identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the socket file {self.path} was removed: new subscribers cannot connect"
        except OSError as exc:
            return f"the socket file {self.path} cannot be checked: {exc.strerror or exc}"
        if (st.st_dev, st.st_ino) != self._identity:
            return (f"the socket file {self.path} was replaced (another process bound the path): "
                    "new subscribers reach that process, not this one")
        return None

    def release(self) -> None:
        """Drop the lock (the lock file stays: unlinking it would race with a new owner)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
