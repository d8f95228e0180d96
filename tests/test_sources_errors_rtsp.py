"""What PyAV raises against a real RTSP server, and how classify_error() sorts it.

The server is GStreamer's RTSP server (tests/rtsp_server.py) started by the rtsp_server fixture.
The last test runs the reconnect policy against it end to end: kill, backoff, restart, up.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import av
import av.error
import pytest

from daemon.redact import redact_text
from daemon.sources.errors import classify_error
from daemon.sources.policy import Action, PolicyConfig, ReconnectPolicy, State
if TYPE_CHECKING:
    from tests.rtsp_fixtures import RtspServer

# The rtsp_server fixture comes from tests/rtsp_fixtures.py through conftest.py.
Factory = Callable[..., "RtspServer"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

OPTS = {"rtsp_transport": "tcp", "timeout": "2000000"}  # FFmpeg's socket timeout, µs


def read_frames(url: str, n: int, timeout: tuple[float, float] = (5, 5)) -> list[av.VideoFrame]:
    out: list[av.VideoFrame] = []
    with av.open(url, options=OPTS, timeout=timeout) as c:
        for frame in c.decode(video=0):
            out.append(frame)
            if len(out) >= n:
                break
    return out


def live_frames(container: av.container.InputContainer, rejected: list[int]) -> Iterator[av.VideoFrame]:
    """Frames of the first video stream, demuxed and decoded packet by packet the way
    daemon/sources/pyav.py does: a packet the decoder rejects is skipped (its size appended to
    ``rejected``), while an error of the demuxer (the connection) propagates.

    ``container.decode()`` would raise on the rejected packet instead. That matters when a
    server is killed: the RTP depacketizer hands over whatever part of the current frame had
    arrived (measured: a 6-byte packet in 3 of 10 kills, then the end of the stream), the decoder
    says ``InvalidDataError``, and only the *next* read tells what really failed: the connection.
    """
    vstream = container.streams.video[0]
    for packet in container.demux(vstream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            rejected.append(packet.size)
            continue
        yield from frames


def open_error(url: str, **kw: object) -> BaseException:
    with pytest.raises(Exception) as ei:
        read_frames(url, 1000, **kw)  # type: ignore[arg-type]
    return ei.value


# --------------------------------------------------------------------------- the server works

def test_decodes_frames_from_the_live_test_pattern(rtsp_server: Factory) -> None:
    srv = rtsp_server()
    frames = read_frames(srv.url, 30)
    assert len(frames) == 30
    assert (frames[0].width, frames[0].height) == (320, 240)
    # FFmpeg's RTSP demuxer gives the very first frame(s) no pts (before the first RTCP sender
    # report): the daemon must cope with pts=None. Later frames have increasing pts.
    pts = [f.pts for f in frames if f.pts is not None]
    assert len(pts) >= 20 and pts == sorted(pts) and pts[-1] > pts[0]


def test_right_credentials_decode(rtsp_server: Factory) -> None:
    srv = rtsp_server(user="cam", password="s3cr:t@x")  # characters that need URL-encoding
    assert len(read_frames(srv.url, 5)) == 5


def test_several_mounts_on_one_server(rtsp_server: Factory) -> None:
    srv = rtsp_server(extra_mounts=("/cam2",))
    assert len(read_frames(srv.url_with(mount="/cam2"), 3)) == 3


# --------------------------------------------------------------------------- failures

@pytest.mark.parametrize("creds", [{"password": "wrong"}, {"user": None}, {"user": "intruder"}])
def test_wrong_or_missing_credentials_are_auth(rtsp_server: Factory, creds: dict) -> None:
    srv = rtsp_server(user="cam", password="s3cret")
    url = srv.url_with(**creds)
    exc = open_error(url)
    assert isinstance(exc, av.error.HTTPUnauthorizedError)
    assert "401" in str(exc)
    assert classify_error(exc) == "auth"
    # FFmpeg echoes the URL, password included: redaction removes it.
    assert "s3cret" not in redact_text(f"{exc}: {url}") and "wrong" not in redact_text(str(exc))


def test_nothing_listening_is_network() -> None:
    exc = open_error(f"rtsp://127.0.0.1:{free_port()}/stream")
    assert isinstance(exc, av.error.ConnectionRefusedError) and isinstance(exc, ConnectionRefusedError)
    assert classify_error(exc) == "network"


def test_wrong_mount_is_network(rtsp_server: Factory) -> None:
    srv = rtsp_server()
    exc = open_error(srv.url_with(mount="/nope"))
    assert isinstance(exc, av.error.HTTPNotFoundError)
    assert classify_error(exc) == "network"


def test_silent_server_times_out(rtsp_server: Factory) -> None:
    """Answers OPTIONS/DESCRIBE/SETUP/PLAY, never sends media: FFmpeg's socket timeout fires."""
    srv = rtsp_server(mode="silent")
    t0 = time.monotonic()
    exc = open_error(srv.url, timeout=(10, 10))
    elapsed = time.monotonic() - t0
    assert isinstance(exc, av.error.TimeoutError) and isinstance(exc, TimeoutError)
    assert exc.errno == errno.ETIMEDOUT
    assert classify_error(exc) == "timeout"
    assert 1.5 < elapsed < 9.0


def test_silent_server_with_pyav_read_timeout_first(rtsp_server: Factory) -> None:
    """PyAV's own timeout=(open, read) interrupts FFmpeg: ExitError, still a timeout."""
    srv = rtsp_server(mode="silent")
    with pytest.raises(av.error.ExitError) as ei:
        with av.open(srv.url, options={"rtsp_transport": "tcp", "timeout": "30000000"},
                     timeout=(1, 1)) as c:
            for _ in c.decode(video=0):
                pass
    assert classify_error(ei.value) == "timeout"


def test_stream_that_freezes_after_frames_times_out(rtsp_server: Factory) -> None:
    srv = rtsp_server(freeze_after=2.0)
    frames = 0
    with pytest.raises(av.error.TimeoutError) as ei:
        with av.open(srv.url, options=OPTS, timeout=(5, 5)) as c:
            for _ in c.decode(video=0):
                frames += 1
    assert frames > 5  # frames flowed, then the stall
    assert classify_error(ei.value) == "timeout"
    assert srv.wait_for_line("FROZEN", 0)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_killed_server_ends_the_stream_and_restart_serves_again(rtsp_server: Factory, how: str) -> None:
    srv = rtsp_server()
    frames = 0
    t_end = None
    exc: BaseException | None = None
    rejected: list[int] = []
    rejected_before_kill = -1
    try:
        with av.open(srv.url, options=OPTS, timeout=(5, 5)) as c:
            for _ in live_frames(c, rejected):
                frames += 1
                if frames == 10:
                    rejected_before_kill = len(rejected)
                    getattr(srv, how)()
                    t_kill = time.monotonic()
        t_end = time.monotonic()
    except Exception as e:  # FFmpeg may also report the lost connection as an error
        exc = e
        t_end = time.monotonic()
    # On loopback the closed TCP connection is seen at once: the demuxer just ends (FFmpeg's
    # AVERROR_EOF), the source reports "eof". Some builds raise instead. What the *connection*
    # did decides the kind: a frame cut off by the kill may be rejected by the decoder first
    # (skipped, like any damaged packet while the stream is up), but the kind is not "decode".
    kind = "eof" if exc is None else classify_error(exc)
    assert kind in ("eof", "network"), repr(exc)
    assert rejected_before_kill == 0, rejected  # the live stream itself decodes cleanly
    assert len(rejected) <= 1, rejected  # at most the one frame the kill cut off
    assert t_end - t_kill < 4.0
    srv.restart()
    assert len(read_frames(srv.url, 5)) == 5


def test_file_source_plays_once_then_ends(rtsp_server: Factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=25)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        for i in range(25):
            import numpy as np

            img = np.full((120, 160, 3), i * 10, dtype=np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    srv = rtsp_server(source=str(path))
    frames = read_frames(srv.url, 1000, timeout=(5, 5))
    assert 15 <= len(frames) <= 25  # the whole file (the first frames before a key frame may go)
    assert (frames[0].width, frames[0].height) == (160, 120)


# --------------------------------------------------------------------------- classification table

@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TimeoutError("timed out"), "timeout"),
        (socket.timeout(), "timeout"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "timeout"),
        (EOFError(), "eof"),
        (ConnectionResetError(104, "Connection reset by peer"), "network"),
        (ConnectionRefusedError(111, "Connection refused"), "network"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "network"),
        (FileNotFoundError(2, "No such file or directory"), "network"),
        (RuntimeError("Server returned 401 Unauthorized (authorization failed)"), "auth"),
        (RuntimeError("Server returned 403 Forbidden (access denied)"), "auth"),
        (RuntimeError("method DESCRIBE failed: 404 Not Found"), "network"),
        (RuntimeError("Invalid data found when processing input"), "decode"),
        (RuntimeError("End of file"), "eof"),
        (RuntimeError("Immediate exit requested"), "timeout"),
        (RuntimeError("something nobody expected"), "network"),
    ],
)
def test_classify_builtin_exceptions(exc: BaseException, kind: str) -> None:
    assert classify_error(exc) == kind


@pytest.mark.parametrize(
    ("name", "code", "kind"),
    [
        ("HTTPUnauthorizedError", None, "auth"),
        ("HTTPForbiddenError", None, "auth"),
        ("HTTPNotFoundError", None, "network"),
        ("HTTPServerError", None, "network"),
        ("TimeoutError", errno.ETIMEDOUT, "timeout"),
        ("ExitError", None, "timeout"),
        ("EOFError", None, "eof"),
        ("InvalidDataError", None, "decode"),
        ("ConnectionRefusedError", errno.ECONNREFUSED, "network"),
        ("ConnectionResetError", errno.ECONNRESET, "network"),
    ],
)
def test_classify_pyav_exception_classes(name: str, code: int | None, kind: str) -> None:
    cls = getattr(av.error, name)
    # PyAV's constructor: (errno, message, filename); the errno of its own codes is irrelevant here.
    exc = cls(code or 1, f"{name} message", "rtsp://u:p@h/s")
    assert classify_error(exc) == kind


# --------------------------------------------------------------------------- policy end to end

def test_policy_drives_reconnect_through_a_real_outage(rtsp_server: Factory) -> None:
    """A minimal source loop (the lead's real one lives in daemon/sources/pyav.py): the server is
    killed, attempts are refused with growing windows, the server returns, frames flow again."""
    srv = rtsp_server()
    policy = ReconnectPolicy(PolicyConfig(base=0.2, cap=1.0, min_delay=0.05, stall_timeout=3.0,
                                          stable_after=1.0, restart_on_eof=True))
    states: list[str] = []
    frames_by_connection: list[int] = []
    killed_at = restarted = None
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(frames_by_connection) < 2:
        now = time.monotonic()
        d = policy.poll(now)
        if d.action is Action.WAIT:
            time.sleep(min(d.delay, 0.5))
            if killed_at is not None and restarted is None and policy.attempts >= 3:
                srv.restart()
                restarted = time.monotonic()
            continue
        assert d.action is Action.CONNECT
        policy.on_connect_attempt(now)
        n = 0
        try:
            with av.open(srv.url, options=OPTS, timeout=(5, 5)) as c:
                policy.on_connected(time.monotonic())
                for _ in live_frames(c, []):
                    n += 1
                    policy.on_frame(time.monotonic())
                    if killed_at is None and n == 10:
                        srv.kill()
                        killed_at = time.monotonic()
                    if restarted is not None and n == 10:
                        break
            if restarted is not None and n:
                frames_by_connection.append(n)
                break
            policy.on_error(time.monotonic(), "eof", "stream ended")
        except Exception as e:  # noqa: BLE001 - this is what a source does
            policy.on_error(time.monotonic(), classify_error(e), str(e))
        if n:
            frames_by_connection.append(n)
        states.append(policy.state.value)
    assert killed_at is not None and restarted is not None
    assert frames_by_connection[0] >= 10 and frames_by_connection[-1] == 10
    assert states[0] == "backoff"  # the eof of the killed server
    assert policy.state is State.UP
    assert policy.reconnects_total >= 3
    assert policy.last_error is not None and policy.last_error.startswith("network: ")
