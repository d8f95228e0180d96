"""One judge of "no frames for too long", and quick recovery (issue 10, kind D), end to end:
a real daemon against a real RTSP server (GStreamer's) sending one frame every 11 s, frozen,
killed and restarted, password-protected; a real HTTP server that stops sending a file half
way; a real file whose timestamps jump by hours. Timings are scaled down with the per-stream
config keys where the behaviour allows it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.support.messages import detections_of, events_of, kinds, sample


def frames_decoded(d: Any, sid: str) -> float:
    return sample(d.scrape(), "detectd_frames_decoded_total", stream=sid) or 0.0


# --------------------------------------------------------------------------- item 1: slow camera

def test_camera_with_one_frame_every_11s_is_not_stalled_before_stall_timeout(
        run_daemon: Any, rtsp_server: Any) -> None:
    """Case 8 at real scale: frames further apart than the old 10 s read timeout, below
    stall_timeout. Before issue 10 the stream was reopened 10 s after every frame. Two gaps of
    11 s in a row on one connection prove it; the test ends with the second frame after the
    first instead of watching a fixed 36 s."""
    srv = rtsp_server(frame_interval=11.0)
    d = run_daemon([{"id": "slow", "url": srv.url, "stall_timeout": 15}])
    d.wait_until(lambda: len(detections_of(d.messages, "slow")) >= 1, 40, "the first frame")
    n0 = len(detections_of(d.messages, "slow"))
    # Frames at +11 and +22 s; 30 s leaves room on a loaded machine.
    d.wait_until(lambda: len(detections_of(d.messages, "slow")) - n0 >= 2, 30, "two more frames, 11 s apart")
    assert kinds(d, "slow") == ["up"], d.log()[-3000:]
    text = d.scrape()
    assert sample(text, "detectd_stream_reconnects_total", stream="slow") == 0
    assert sample(text, "detectd_stream_errors_total", stream="slow", kind="stall") == 0
    assert sample(text, "detectd_stream_errors_total", stream="slow", kind="timeout") == 0


def test_frozen_camera_is_declared_stalled_at_stall_timeout_not_before(
        run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(freeze_after=2.0)
    d = run_daemon([{"id": "cam", "url": srv.url, "stall_timeout": 3, "backoff_base": 0.2,
                     "backoff_cap": 1}])
    d.wait_until(lambda: "stalled" in kinds(d, "cam"), 40, "the stall")
    ev = next(e for e in events_of(d.messages, "cam") if e["event"] == "stalled")
    # Judged by the supervisor from stall_timeout alone: not sooner, and not much later.
    assert 3.0 <= ev["seconds_since_frame"] <= 4.5, ev
    assert "no frame for" in ev["reason"]


# --------------------------------------------------------------------------- item 3: recovery

def test_camera_that_comes_back_does_not_wait_out_a_long_backoff(
        run_daemon: Any, rtsp_server: Any) -> None:
    """Backoff windows of 60 s: without probes the return would usually wait tens of seconds.
    The URL carries credentials: probes and their log lines must not show them."""
    password = "pr0be-S3cret"
    srv = rtsp_server(user="cam", password=password)
    d = run_daemon([{"id": "cam", "url": srv.url, "backoff_base": 60, "backoff_cap": 60,
                     "probe_interval": 0.5, "stall_timeout": 5}])
    d.wait_until(lambda: len(detections_of(d.messages, "cam")) >= 3, 60, "first frames")
    srv.kill()
    d.wait_until(lambda: "reconnecting" in kinds(d, "cam"), 20, "the outage")
    d.collect(3.0)
    # No spinning while it is down: every open waits out the delay that the log line of the
    # previous failure announced (full jitter may draw a short one; the log line is written by
    # the source thread right after the delay is drawn, unlike the event's "at", which is set
    # when the publisher thread sends it), and no probe moves an open forward.
    retries = [(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp(), float(m[2]))
               for m in re.finditer(r"^(\S+ \S+) WARNING +daemon\.sources\.pyav: stream cam: .*"
                                    r"reconnecting in ([0-9.]+)s", d.log(), re.M)]
    assert retries, d.log()[-3000:]
    for (t1, delay), (t2, _) in zip(retries, retries[1:]):
        assert t2 - t1 >= delay - 0.02, (retries, d.log()[-3000:])
    assert "answers again" not in d.log()
    srv.start()
    t_back = time.time()
    d.wait_until(lambda: any(m["captured_at"] > t_back for m in detections_of(d.messages, "cam")),
             20, "frames after the server's return")
    first = min(m["captured_at"] for m in detections_of(d.messages, "cam") if m["captured_at"] > t_back)
    assert first - t_back < 6.0
    text = d.scrape()
    assert (sample(text, "detectd_stream_probes_total", stream="cam", result="unreachable") or 0) >= 2
    log = d.log()
    # Full jitter may draw a short wait (about 1 time in 15 with a 60 s window): then the
    # scheduled attempt itself brought the stream back. Otherwise it was the probe.
    last = [e for e in events_of(d.messages, "cam") if e["event"] == "reconnecting"][-1]
    if last["at"] + last["delay"] > first:
        assert "port answers again; reconnecting now" in log
        assert (sample(text, "detectd_stream_probes_total", stream="cam", result="reachable") or 0) >= 1
    assert password not in log
    assert all(password not in str(m) for _, m in d.messages)


def test_wrong_password_still_waits_auth_backoff_despite_reachable_probes(
        run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(user="cam", password="right")
    d = run_daemon([{"id": "cam", "url": srv.url_with(password="wrong"), "auth_backoff": 6,
                     "probe_interval": 0.5}])
    d.wait_until(lambda: "auth_failed" in kinds(d, "cam"), 30, "auth_failed")
    d.collect(5.0)
    text = d.scrape()
    assert sample(text, "detectd_stream_reconnects_total", stream="cam") == 0  # still waiting
    assert (sample(text, "detectd_stream_probes_total", stream="cam", result="reachable") or 0) == 0
    assert sample(text, "detectd_stream_state", stream="cam", state="auth_failed") == 1


# --------------------------------------------------------------------------- item 2: files

def write_jumpy(path: Path, fps: int = 25) -> int:
    """A small video whose timestamps run at ``fps`` for 20 frames, pause 1.5 s (a legitimate
    slow stretch), run 20 frames, then jump forward 3 hours for 20 more. Returns frame count."""
    tb = Fraction(1, 1000)
    pts, t = [], 0
    for i in range(60):
        if i == 20:
            t += 1500
        elif i == 40:
            t += 3 * 3600 * 1000
        pts.append(t)
        t += 1000 // fps
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.codec_context.time_base = tb
        for i, p in enumerate(pts):
            img = np.full((120, 160, 3), (i * 4) % 255, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = p, tb
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return len(pts)


def test_realtime_file_timestamp_jump_of_hours_does_not_freeze_the_stream(
        run_daemon: Any, tmp_path: Path) -> None:
    clip = tmp_path / "jumpy.mkv"
    n = write_jumpy(clip)
    with av.open(str(clip)) as c:  # the jump is really in the file
        times = [f.time for f in c.decode(video=0)]
    assert len(times) == n and times[-1] - times[0] > 3 * 3600
    d = run_daemon([{"id": "jumpy", "url": str(clip), "realtime": True, "loop": True,
                     "stall_timeout": 2, "max_age_ms": 5000}])
    t0 = time.monotonic()
    # One pass is ~1.2 + 1.5 + 0.8 s of pacing (the jump released after one frame period).
    d.wait_until(lambda: frames_decoded(d, "jumpy") >= 2 * n, 15, "two passes through the file")
    assert time.monotonic() - t0 < 12
    text = d.scrape()
    assert (sample(text, "detectd_stream_pts_discontinuities_total", stream="jumpy") or 0) >= 2
    # The 1.5 s pause is honoured pacing (below stall_timeout), not a stall nor a discontinuity.
    assert sample(text, "detectd_stream_errors_total", stream="jumpy", kind="stall") == 0
    assert "stalled" not in kinds(d, "jumpy")
    assert "timestamps jump by +10800" in d.log()


class _HangingFile:
    """An HTTP server that sends the first half of a file, then nothing, connection open
    (an NFS server or a web server that stopped mid-file)."""

    def __init__(self, data: bytes) -> None:
        self.release = threading.Event()
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                except OSError:
                    return
                outer.release.wait(60)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/clip.ts"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hanging_file(tmp_path: Path) -> Iterator[_HangingFile]:
    clip = tmp_path / "clip.ts"
    with av.open(str(clip), "w", format="mpegts") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(60):  # half of it: 1.2 s of frames at 25 frames/s
            f = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i % 255, np.uint8), format="rgb24")
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    srv = _HangingFile(clip.read_bytes())
    yield srv
    srv.close()


@pytest.mark.parametrize("realtime", [True, False])
def test_file_that_stops_delivering_is_reported_like_a_stalled_camera(
        run_daemon: Any, hanging_file: _HangingFile, realtime: bool) -> None:
    d = run_daemon([{"id": "web", "url": hanging_file.url, "realtime": realtime,
                     "stall_timeout": 2, "open_timeout": 3, "backoff_base": 0.2, "backoff_cap": 1,
                     "max_age_ms": 5000}])
    d.wait_until(lambda: "stalled" in kinds(d, "web"), 40, "the stall")
    ev = next(e for e in events_of(d.messages, "web") if e["event"] == "stalled")
    assert ev["state"] == "stalled" and "no frame for" in ev["reason"]
    assert 2.0 <= ev["seconds_since_frame"] <= 3.5, ev
    assert kinds(d, "web")[:3] == ["up", "down", "stalled"]
    text = d.scrape()
    assert (sample(text, "detectd_stream_errors_total", stream="web", kind="stall") or 0) >= 1
    assert sample(text, "detectd_stream_up", stream="web") == 0
    # Retried like a camera (not a permanent error): the server sees a second request.
    d.wait_until(lambda: hanging_file.requests >= 2, 20, "a reconnect")
    assert "error" not in kinds(d, "web")
    assert d.proc.poll() is None


def test_probe_of_a_closed_port_is_quick_and_false() -> None:
    from daemon.sources.probe import tcp_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        t = time.monotonic()
        assert tcp_reachable("127.0.0.1", port, 1.0) is False  # bound, not listening: refused
        assert time.monotonic() - t < 0.5
        s.listen(1)
        assert tcp_reachable("127.0.0.1", port, 1.0) is True
