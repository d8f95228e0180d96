"""pytest plugin: a real RTSP server (``tests/rtsp_server.py``) on a free loopback port.

``tests/conftest.py`` star-imports it (only the names in ``__all__``), which registers the
fixture for every test. In a test::

    def test_x(rtsp_server):
        srv = rtsp_server()                                   # live H.264 test pattern
        srv = rtsp_server(user="cam", password="s3cret")      # Basic auth
        srv = rtsp_server(mode="silent")                      # answers RTSP, never sends media
        srv = rtsp_server(freeze_after=2.0)                   # media for 2 s, then silence
        srv = rtsp_server(audio_only_for=3.0)                 # audio-only sessions for 3 s, then video
        srv = rtsp_server(frame_interval=11.0)                # one frame every 11 s
        srv = rtsp_server(source="/path/video.mp4")           # an H.264 MP4, played once
        srv.url                      # rtsp://127.0.0.1:<port>/stream (credentials included
                                     # when user/password were given)
        srv.url_with(password="wrong"), srv.url_with(user=None)   # variants for auth tests
        srv.kill()                   # SIGKILL: the camera loses power
        srv.stop()                   # SIGTERM: orderly shutdown
        srv.restart()                # back on the same port (waits until it accepts)

Every server is stopped when the test ends. The server runs under Debian's ``/usr/bin/python3``
(python3-gi + GStreamer RTSP server, see ``.ci/apt-packages.txt``); when those are missing the
tests that use it are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = ["RtspServer", "rtsp_server", "rtsp_server_available"]

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = os.environ.get("DETECTD_RTSP_PYTHON", "/usr/bin/python3")
APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad"
)

_available: tuple[bool, str] | None = None


def rtsp_server_available() -> tuple[bool, str]:
    """(True, "") when the system Python can run the GStreamer RTSP server."""
    global _available
    if _available is None:
        probe = (
            "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
            "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
            "missing=[e for e in ('videotestsrc','x264enc','rtph264pay','qtdemux','h264parse','valve')"
            " if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
        )
        try:
            r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
            ok = r.returncode == 0 and not r.stdout.strip()
            if r.returncode != 0:
                why = (r.stderr.strip().splitlines() or ["probe failed"])[-1]
            else:
                why = f"missing GStreamer elements: {r.stdout.strip()}"
        except (OSError, subprocess.SubprocessError) as e:
            ok, why = False, str(e)
        _available = (ok, "" if ok else f"RTSP test server unavailable ({why}); apt-get install {APT_PACKAGES}")
    return _available


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class RtspServer:
    """One server subprocess; keeps its port across :meth:`restart`."""

    def __init__(
        self,
        *,
        log_dir: Path,
        port: int | None = None,
        mount: str = "/stream",
        mode: str = "media",
        source: str | os.PathLike[str] = "testsrc",
        user: str | None = None,
        password: str | None = None,
        width: int = 320,
        height: int = 240,
        fps: int = 25,
        freeze_after: float | None = None,
        audio_only_for: float | None = None,
        frame_interval: float | None = None,
        extra_mounts: tuple[str, ...] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.mount = mount
        self.mounts = (mount, *extra_mounts)
        self.mode = mode
        self.user = user
        self.password = password
        self.log_path = log_dir / f"rtsp-server-{self.port}.log"
        self._args = [
            "--host", host, "--port", str(self.port), "--mode", mode, "--source", str(source),
            "--width", str(width), "--height", str(height), "--fps", str(fps),
        ]
        for m in self.mounts:
            self._args += ["--mount", m]
        if user is not None:
            self._args += ["--user", user, "--password", password or ""]
        if freeze_after is not None:
            self._args += ["--freeze-after", str(freeze_after)]
        if audio_only_for is not None:
            self._args += ["--audio-only-for", str(audio_only_for)]
        if frame_interval is not None:
            self._args += ["--frame-interval", str(frame_interval)]
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []  # the server's stdout ("LISTENING", "FROZEN")

    # --------------------------------------------------------------- URLs
    @property
    def url(self) -> str:
        return self.url_with()

    _KEEP: Any = object()

    def url_with(self, *, user: Any = _KEEP, password: Any = _KEEP, mount: str | None = None) -> str:
        """The URL, with other credentials (None leaves them out) or another mount."""
        u = self.user if user is self._KEEP else user
        p = self.password if password is self._KEEP else password
        cred = ""
        if u is not None:
            cred = quote(u, safe="") + (f":{quote(p, safe='')}" if p is not None else "") + "@"
        return f"rtsp://{cred}{self.host}:{self.port}{mount or self.mount}"

    # --------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> RtspServer:
        if self.alive:
            raise RuntimeError("already running")
        deadline = time.monotonic() + timeout
        while True:
            if self._spawn_and_wait(deadline):
                return self
            # The port may still be held for a moment after a kill: try again until the deadline.
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"RTSP server did not start on port {self.port}; log:\n{self.log_path.read_text()[-3000:]}"
                )
            time.sleep(0.2)

    def _spawn_and_wait(self, deadline: float) -> bool:
        log = open(self.log_path, "a")  # noqa: SIM115 - closed by the reader thread
        listening = threading.Event()
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), *self._args],
            stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            with log:
                for line in proc.stdout:
                    self.lines.append(line.rstrip())
                    log.write(f"[stdout] {line}")
                    log.flush()
                    if line.startswith("LISTENING"):
                        listening.set()

        threading.Thread(target=read, daemon=True).start()
        while time.monotonic() < deadline:
            if listening.wait(0.05) and port_accepts(self.host, self.port):
                return True
            if proc.poll() is not None:
                return False
        self._terminate(signal.SIGKILL)
        return False

    def kill(self) -> None:
        """SIGKILL, as when a camera loses power: no RTSP TEARDOWN, connections just close."""
        self._terminate(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: an orderly shutdown."""
        self._terminate(signal.SIGTERM)

    def restart(self, timeout: float = 15.0) -> RtspServer:
        """Stop if running, then start again on the same port and mount."""
        if self.alive:
            self.stop()
        return self.start(timeout)

    def _terminate(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def wait_for_line(self, prefix: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"RtspServer({self.url_with(password='***' if self.password else None)}, mode={self.mode}, alive={self.alive})"


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[Callable[..., RtspServer]]:
    """Factory: ``rtsp_server(**options) -> RtspServer`` (started, accepting). See module doc."""
    ok, why = rtsp_server_available()
    if not ok:
        pytest.skip(why)
    servers: list[RtspServer] = []

    def make(**kwargs: Any) -> RtspServer:
        srv = RtspServer(log_dir=tmp_path, **kwargs)
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.kill()
