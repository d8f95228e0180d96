"""Errors classified by what failed, in words; live sources always retried; ``format``.

Real parts only: the GStreamer RTSP server of tests/rtsp_server.py (audio-only sessions, then
video), an HTTP camera on loopback serving multipart MJPEG the ESP32 way (tests/mjpeg_server.py),
a real HTTP server answering 503, the system resolver, and ``detectd check-config``.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.config import parse_config
from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.sources.pyav import StreamSource
from tests.mjpeg_server import MjpegServer
from tests.support.sources import Error503, write_streams


class ListSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        frame.native = None  # keep no decoder buffers
        self.frames.append(frame)
        return True

    def is_full(self, stream: str) -> bool:
        return False


class Run:
    """One real StreamSource (decoding thread + reconnect policy) with its events."""

    def __init__(self, stream: dict[str, Any]) -> None:
        self.cfg = parse_config({"streams": [{"id": "s", **stream}]}).streams[0]
        self.sink = ListSink()
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.src = StreamSource(self.cfg, self.sink, Metrics(CollectorRegistry()), self._on_event)

    def _on_event(self, sid: str, event: str, reason: str | None = None, **extra: Any) -> None:
        self.events.append((event, reason, extra))

    def until(self, pred: Callable[["Run"], bool], timeout: float) -> bool:
        if not self.src.thread.is_alive() and not self.src.finished.is_set():
            self.src.start()  # the first call starts the source
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)

    def stop(self) -> None:
        self.src.stop()
        self.src.join(10)

    def reasons(self, event: str = "reconnecting") -> list[str]:
        return [r or "" for e, r, _ in self.events if e == event]

    def named(self, event: str) -> bool:
        return any(e == event for e, _, _ in self.events)


FAST = {"backoff_base": 0.2, "backoff_cap": 1.0, "open_timeout": 5}


# --------------------------------------------------------------------------- case 5

def test_rtsp_camera_with_only_audio_is_retried_until_video_appears(rtsp_server: Any) -> None:
    srv = rtsp_server(audio_only_for=3.0)
    run = Run({"url": srv.url, **FAST})
    try:
        assert run.until(lambda r: len(r.sink.frames) >= 5, 40), run.events
    finally:
        run.stop()
    reasons = run.reasons()
    assert reasons and all("no video stream in the input (found: audio (pcm_alaw))" in r for r in reasons), reasons
    assert not run.named("error") and not run.src.failed
    ups = [x for e, _, x in run.events if e == "up"]
    assert ups and (ups[0]["width"], ups[0]["height"]) == (320, 240)


def test_rtsp_camera_audio_only_for_ever_is_never_given_up(rtsp_server: Any) -> None:
    srv = rtsp_server(audio_only_for=-1)
    run = Run({"url": srv.url, **FAST})
    try:
        assert run.until(lambda r: len(r.reasons()) >= 4, 30), run.events
    finally:
        run.stop()
    assert not run.named("error") and not run.src.failed


def test_file_with_no_video_is_a_permanent_error_naming_what_it_has(tmp_path: Path) -> None:
    path = tmp_path / "song.mp4"
    write_streams(path, [], cover=True, audio=True)
    run = Run({"url": str(path)})
    try:
        assert run.until(lambda r: r.src.finished.is_set(), 20)
    finally:
        run.stop()
    errors = run.reasons("error")
    assert errors == [f"{path}: no video stream in the input (found: audio (aac), attached picture (mjpeg))"]


# --------------------------------------------------------------------------- case 6

@pytest.fixture
def esp32_camera() -> Any:
    cam = MjpegServer("esp32").start()
    yield cam
    cam.stop()


def test_esp32_mjpeg_camera_reads_with_format_mjpeg(esp32_camera: MjpegServer) -> None:
    run = Run({"url": esp32_camera.url, "format": "mjpeg", **FAST})
    try:
        assert run.until(lambda r: len(r.sink.frames) >= 5, 20), run.events
    finally:
        run.stop()
    assert (run.sink.frames[0].width, run.sink.frames[0].height) == (320, 240)
    assert not run.reasons()


def test_esp32_mjpeg_camera_without_format_is_retried_with_a_hint(esp32_camera: MjpegServer) -> None:
    run = Run({"url": esp32_camera.url, **FAST})
    try:
        assert run.until(lambda r: len(r.reasons()) >= 2, 20), run.events
    finally:
        run.stop()
    for reason in run.reasons():
        assert reason.startswith("decode: Invalid data found when processing input"), reason
        assert "format: mjpeg" in reason and "Errno" not in reason and "127.0.0.1" not in reason
    assert not run.sink.frames and not run.src.failed


def test_standard_multipart_mjpeg_reads_without_format() -> None:
    cam = MjpegServer("standard").start()
    run = Run({"url": cam.url, **FAST})
    try:
        assert run.until(lambda r: len(r.sink.frames) >= 3, 20), run.events
    finally:
        run.stop()
        cam.stop()


# --------------------------------------------------------------------------- messages in words

def test_server_error_is_retried_and_said_in_words() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Error503)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://cam:S3cr3tPass@127.0.0.1:{httpd.server_address[1]}/video?token=T0kenValue"
    run = Run({"url": url, **FAST})
    try:
        assert run.until(lambda r: len(r.reasons()) >= 3, 20), run.events
    finally:
        run.stop()
        httpd.shutdown()
        httpd.server_close()
    for reason in run.reasons():
        assert reason == "network: Server returned 5XX Server Error reply", reason
    assert not run.src.failed


def test_unresolvable_host_is_named() -> None:
    run = Run({"url": "rtsp://admin:S3cr3tPass@no-such-camera.invalid/stream", **FAST})
    try:
        assert run.until(lambda r: len(r.reasons()) >= 1, 30), run.events
    finally:
        run.stop()
    reason = run.reasons()[0]
    assert reason.startswith("network: cannot resolve host no-such-camera.invalid"), reason
    assert "Input/output error" not in reason and "S3cr3tPass" not in reason


def test_refused_credentials_are_said_in_words(rtsp_server: Any) -> None:
    srv = rtsp_server(user="cam", password="Right#Pass1")
    run = Run({"url": srv.url_with(password="Wrong#Pass2"), **FAST, "auth_backoff": 0.5})
    try:
        assert run.until(lambda r: r.named("auth_failed"), 20), run.events
    finally:
        run.stop()
    reason = run.reasons("auth_failed")[0]
    assert reason == "auth: Server returned 401 Unauthorized (authorization failed)", reason


# --------------------------------------------------------------------------- EINVAL vs config

def _raised(url: str) -> BaseException:
    import av

    try:
        av.open(url, timeout=2).close()
    except Exception as exc:  # the real exception PyAV raises for this URL
        return exc
    raise AssertionError(f"{url} opened")


def test_einval_is_not_proof_of_a_config_error_but_an_unknown_protocol_is() -> None:
    from daemon.sources.errors import is_config_error, is_invalid_argument

    einval = _raised("tcp://127.0.0.1:0")  # FFmpeg: "Invalid argument" (EINVAL)
    assert is_invalid_argument(einval) and not is_config_error(einval)
    unknown = _raised("nosuch://camera")  # ProtocolNotFoundError: only the config can fix it
    assert is_config_error(unknown) and not is_invalid_argument(unknown)
    refused = _raised("tcp://127.0.0.1:9")
    assert not is_config_error(refused) and not is_invalid_argument(refused)


def test_live_source_with_einval_is_retried_with_backoff_and_a_hint() -> None:
    # A real EINVAL from FFmpeg before the first frame (here from an option's value; a camera's
    # odd answer can cause the same code): the stream is never dead for good, the reason names
    # the keys to check.
    run = Run({"url": "rtsp://127.0.0.1:9/cam", "options": {"rtsp_transport": "bogus"},
               "backoff_base": 0.2, "backoff_cap": 1.0, "open_timeout": 5})
    try:
        assert run.until(lambda r: len(r.reasons()) >= 3, 20), run.events
    finally:
        run.stop()
    assert not run.src.failed and not run.named("failed"), run.events
    for reason in run.reasons():
        assert "Invalid argument" in reason, reason
        assert "check streams[].url, .format and .options of 's'" in reason, reason
# --------------------------------------------------------------------------- host_of

@pytest.mark.parametrize("url, host", [
    ("rtsp://cam/live?token=ab#cd", "cam"),
    ("rtsp://admin:pa#ss@cam.example:554/live#frag", "cam.example"),
    ("rtsp://[::1]:8554/x#y", "::1"),
    ("http://10.0.0.7/mjpeg", "10.0.0.7"),
    ("/var/video.mp4", None),
])
def test_host_of_ignores_a_fragment(url: str, host: str | None) -> None:
    from daemon.sources.urls import host_of

    assert host_of(url) == host


def test_describe_error_on_eio_with_a_fragment_names_the_host() -> None:
    """EIO (what FFmpeg raises for an unresolvable host) with a '#' in the URL: the host is
    looked up and named, the token never shown."""
    import errno

    from daemon.sources.errors import describe_error

    exc = OSError(errno.EIO, "Input/output error")
    text = describe_error(exc, "rtsp://no-such-camera.invalid/live?token=Tok3nSecret#cd")
    assert text.startswith("cannot resolve host no-such-camera.invalid"), text
    assert "Tok3nSecret" not in text and "Errno" not in text
