"""Reliability end to end: a real daemon process against a real RTSP server (GStreamer's, see
tests/rtsp_server.py) killed, restarted, silent, frozen and password-protected; real signals;
sd_notify read from a real AF_UNIX datagram socket. Backoff and stall timings are shortened
with the per-stream config keys so the scenarios take seconds, not minutes.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import free_port
from tests.support.messages import detections_of, events_of, kinds, sample
from tests.support.sources import FAST

def test_server_killed_then_back_stream_recovers_daemon_never_restarted(
        run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server()
    d = run_daemon([{"id": "cam", "url": srv.url, **FAST}])
    pid = d.proc.pid
    d.wait_until(lambda: len(detections_of(d.messages, "cam")) >= 5, 60, "first frames")
    assert kinds(d, "cam")[0] == "up"

    srv.kill()
    n_before = len(d.messages)
    d.wait_until(lambda: kinds(d, "cam").count("reconnecting") >= 5, 40, "5 reconnect attempts")
    text = d.scrape()
    assert sample(text, "detectd_stream_up", stream="cam") == 0
    assert sample(text, "detectd_stream_state", stream="cam", state="backoff") == 1
    assert sample(text, "detectd_stream_reconnect_attempts", stream="cam") >= 4
    assert sample(text, "detectd_stream_errors_total", stream="cam", kind="network") >= 3
    assert sample(text, "detectd_stream_last_error_info", stream="cam", kind="network") == 1
    since = sample(text, "detectd_stream_seconds_since_frame", stream="cam")
    time.sleep(1.0)  # no frame: the gauge keeps growing (the supervisor updates it)
    assert sample(d.scrape(), "detectd_stream_seconds_since_frame", stream="cam") >= since + 0.5

    ev = [e for e in events_of(d.messages[n_before - 50:], "cam")]
    assert "down" in [e["event"] for e in ev]
    rec = [e for e in events_of(d.messages, "cam") if e["event"] == "reconnecting"]
    attempts = [e["attempt"] for e in rec]
    assert attempts == list(range(1, len(attempts) + 1)), attempts
    for e in rec:  # full jitter inside a window that doubles up to the cap, never below 0.1 s
        window = min(FAST["backoff_cap"], FAST["backoff_base"] * 2 ** (e["attempt"] - 1))
        assert 0.1 - 1e-6 <= e["delay"] <= max(window, 0.1) + 1e-3, e
    assert max(e["delay"] for e in rec[2:]) > FAST["backoff_base"], rec  # the windows grew
    assert all(e["state"] == "backoff" and e["reason"] for e in rec)

    srv.restart()
    ups_before = kinds(d, "cam").count("up")
    dets_before = len(detections_of(d.messages, "cam"))
    d.wait_until(lambda: kinds(d, "cam").count("up") > ups_before
             and len(detections_of(d.messages, "cam")) >= dets_before + 5, 40, "up again with frames")
    assert d.proc.poll() is None and d.proc.pid == pid
    text = d.scrape()
    assert sample(text, "detectd_stream_up", stream="cam") == 1
    assert sample(text, "detectd_stream_reconnects_total", stream="cam") >= 5
    seqs = [m["seq"] for m in detections_of(d.messages, "cam")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no message lost on the way


def test_silent_server_is_a_stall_then_retried(run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(mode="silent")
    d = run_daemon([{"id": "cam", "url": srv.url, **FAST}])
    d.wait_until(lambda: "stalled" in kinds(d, "cam"), 30, "a stall")
    st = [e for e in events_of(d.messages, "cam") if e["event"] == "stalled"][0]
    assert st["reason"].startswith(("stall", "timeout")), st
    d.wait_until(lambda: kinds(d, "cam").count("stalled") >= 2, 30, "a second stall after a retry")
    text = d.scrape()
    assert sample(text, "detectd_stream_errors_total", stream="cam", kind="stall") >= 2
    assert not detections_of(d.messages, "cam")
    assert "up" not in kinds(d, "cam")  # connected, but frames never flowed


def test_frozen_stream_after_frames_is_down_stalled_and_comes_back(run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(freeze_after=3.0)  # media for 3 s per connection, then silence
    d = run_daemon([{"id": "cam", "url": srv.url, **FAST}])
    d.wait_until(lambda: kinds(d, "cam").count("up") >= 2, 60, "up, stall, up again")
    k = kinds(d, "cam")
    i = k.index("stalled")
    assert k[:i + 1][-2:] == ["down", "stalled"] and k[i + 1] == "reconnecting", k
    assert detections_of(d.messages, "cam")


def test_wrong_credentials_auth_failed_slow_retries_nothing_leaks(run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(user="cam", password="Corr3ct-Horse")
    bad = srv.url_with(password="Wr0ng-Battery")
    streams = [{"id": "bad", "url": bad, **FAST}, {"id": "good", "url": srv.url, **FAST}]
    d = run_daemon(streams)
    t0 = time.monotonic()
    d.wait_until(lambda: "auth_failed" in kinds(d, "bad"), 30, "auth_failed")
    d.wait_until(lambda: len(detections_of(d.messages, "good")) >= 5, 60, "the good stream's frames")
    d.collect(max(0.0, 9 - (time.monotonic() - t0)))
    text = d.scrape()
    assert sample(text, "detectd_stream_state", stream="bad", state="auth_failed") == 1
    assert sample(text, "detectd_stream_last_error_info", stream="bad", kind="auth") == 1
    rec = [e for e in events_of(d.messages, "bad") if e["event"] == "reconnecting"]
    assert rec and all(e["delay"] >= FAST["auth_backoff"] for e in rec), rec
    # ~9 s with a 4-4.4 s wait after each refusal: at most 3 attempts, not dozens.
    assert 1 <= sample(text, "detectd_stream_errors_total", stream="bad", kind="auth") <= 3
    assert sample(text, "detectd_stream_up", stream="good") == 1
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    everything = d.log() + repr(d.messages) + text
    for secret in ("Corr3ct-Horse", "Wr0ng-Battery"):
        assert secret not in everything


# --------------------------------------------------------------------------- sd_notify

class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: a real AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []

    def drain(self, seconds: float = 0.0) -> list[tuple[float, str]]:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (socket.timeout, BlockingIOError):
                if time.monotonic() >= deadline:
                    return self.got

    def since(self, t: float) -> list[str]:
        return [m for at, m in self.got if at >= t]


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    n = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(n.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # ping every 0.3 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield n
    n.sock.close()


def test_sd_notify_ready_watchdog_reload_stopping(run_daemon: Any, demo_video: Path, notify: Any) -> None:
    d = run_daemon([{"id": "cam", "url": str(demo_video), "loop": True, "realtime": True}])
    notify.drain(3)
    msgs = [m for _, m in notify.got]
    assert msgs[0].startswith("READY=1"), msgs[:3]
    assert msgs.count("WATCHDOG=1") >= 4, msgs
    t = time.monotonic()
    d.signal(signal.SIGHUP)
    notify.drain(3)
    after = notify.since(t)
    rel = [m for m in after if m.startswith("RELOADING=1")]
    assert rel and "MONOTONIC_USEC=" in rel[0], after
    assert any(m.startswith("READY=1") for m in after[after.index(rel[0]):]), after
    t = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    notify.drain(0.5)
    assert [m for m in notify.since(t) if m.startswith("STOPPING=1")] == ["STOPPING=1"]  # once


def test_watchdog_fed_while_waiting_to_reconnect_not_while_up_and_silent(
        run_daemon: Any, rtsp_server: Any, notify: Any) -> None:
    srv = rtsp_server(mode="silent")
    # FFmpeg's probing waits for media until open_timeout before av.open returns; then up,
    # silent, for stall_timeout.
    silent = {**FAST, "stall_timeout": 8, "read_timeout": 8, "open_timeout": 6}
    d = run_daemon([{"id": "cam", "url": srv.url, **silent}])
    deadline = time.monotonic() + 30
    while sample(d.scrape(), "detectd_stream_state", stream="cam", state="up") != 1:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    # Connected, no frame yet: neither flowing nor legitimately waiting -> no watchdog.
    t = time.monotonic()
    notify.drain(3)
    assert sample(d.scrape(), "detectd_stream_state", stream="cam", state="up") == 1
    assert "WATCHDOG=1" not in notify.since(t + 0.4), notify.since(t)
    # After the stall it waits to reconnect: legitimately idle, the watchdog is fed again.
    d.wait_until(lambda: "stalled" in kinds(d, "cam"), 20, "the stall")
    t = time.monotonic()
    notify.drain(1.5)
    assert "WATCHDOG=1" in notify.since(t)


def test_watchdog_fed_while_every_stream_waits_to_reconnect(run_daemon: Any, notify: Any) -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/nobody"
    d = run_daemon([{"id": "cam", "url": url, **FAST}])
    notify.drain(2.5)
    assert [m for _, m in notify.got].count("WATCHDOG=1") >= 3
    d.collect(1)
    assert "reconnecting" in kinds(d, "cam")


# --------------------------------------------------------------------------- SIGHUP

def rewrite(d: Any, cfg: dict[str, Any]) -> None:
    d.config_path.write_text(yaml.safe_dump(cfg))


def test_sighup_adds_removes_and_changes_streams_without_touching_others(
        run_daemon: Any, demo_video: Path) -> None:
    live = {"url": str(demo_video), "loop": True, "realtime": True}
    d = run_daemon([{"id": "keep", **live}, {"id": "gone", **live}, {"id": "edit", **live}])
    d.wait_until(lambda: all(len(detections_of(d.messages, s)) >= 3 for s in ("keep", "gone", "edit")),
             60, "frames from the three streams")
    # The removed stream must have had series of every shape: detections by label (field case 12).
    d.wait_until(lambda: re.search(r'detectd_detections_total\{[^}]*stream="gone"', d.scrape()) is not None,
             60, "a detection on the stream to be removed")
    cfg = dict(d.cfg)
    cfg["streams"] = [{"id": "keep", **live}, {"id": "edit", **live, "max_age_ms": 900},
                      {"id": "new", **live}]
    rewrite(d, cfg)
    t = time.time()  # events are stamped when published; keep's "up" went out with its frames
    d.signal(signal.SIGHUP)
    d.wait_until(lambda: len([m for m in detections_of(d.messages, "new")]) >= 3, 60, "the new stream")
    d.collect(2)
    assert "reload: streams added ['new'], removed ['gone'], restarted ['edit'], 1 unchanged" in d.log()
    assert not [m for m in detections_of(d.messages, "gone") if m["captured_at"] > t + 1]
    # (the very first events may precede the subscriber's connection: ZeroMQ's slow joiner)
    after = [(s, e["event"], e["at"] - t) for s in ("keep", "edit") for e in events_of(d.messages, s)]
    assert [e["event"] for e in events_of(d.messages, "keep") if e["at"] > t] == [], after  # untouched
    assert [e["event"] for e in events_of(d.messages, "edit") if e["at"] > t] == ["up"], after
    keep = [m["seq"] for m in detections_of(d.messages, "keep")]
    assert keep == list(range(keep[0], keep[0] + len(keep)))  # its messages never stopped
    text = d.scrape()
    assert sample(text, "detectd_frames_decoded_total", stream="gone") is None  # series removed
    assert sample(text, "detectd_config_reloads_total", result="ok") == 1
    # Nothing of the removed stream is left, whatever the metric and its other labels
    # (detections by label and their _created samples included), now and once its thread ended.
    assert [ln for ln in text.splitlines() if 'stream="gone"' in ln] == []
    d.collect(1.5)
    assert [ln for ln in d.scrape().splitlines() if 'stream="gone"' in ln] == []

    # An invalid file is rejected with a clear line; the running streams go on.
    rewrite(d, {**cfg, "streams": [{"id": "keep", **live, "colour": "red"}]})
    d.signal(signal.SIGHUP)
    n = len(detections_of(d.messages, "new"))
    d.collect(3)
    assert "reload:" in d.log() and "rejected, the running config is kept: streams[0].colour: unknown key" in d.log()
    assert len(detections_of(d.messages, "new")) > n
    # A duplicate key (here a second top-level "logging:") is rejected the same way, by line.
    text = yaml.safe_dump(cfg)
    d.config_path.write_text(text + "logging: {level: debug}\n")
    d.signal(signal.SIGHUP)
    d.collect(2)
    assert (f"line {text.count(chr(10)) + 1}, column 1: duplicate key 'logging' (already set at line "
            in d.log()), d.log()[-2000:]
    assert sample(d.scrape(), "detectd_config_reloads_total", result="error") == 2
    # Model changes need a restart: said plainly, not applied.
    rewrite(d, {**cfg, "model": {**cfg["model"], "conf_threshold": 0.5}})
    d.signal(signal.SIGHUP)
    d.collect(2)
    assert "reload: model changed: that needs a restart" in d.log()
    assert d.proc.poll() is None


# --------------------------------------------------------------------------- SIGTERM, SIGINT

def test_sigterm_drains_frames_in_flight_and_exits_0(run_daemon: Any, demo_video: Path) -> None:
    d = run_daemon([{"id": "cam", "url": str(demo_video), "queue_size": 8}],
                   shutdown={"drain_timeout": 20})
    d.wait_until(lambda: len(detections_of(d.messages, "cam")) >= 5, 60, "frames")
    d.signal(signal.SIGTERM)
    rc = d.collect_until_exit(40)
    assert rc == 0, d.log()
    log = d.log()
    assert "stopping: draining" in log and "drained:" in log and "not published" not in log, log[-2000:]
    drained = int(log.split("drained: ")[1].split()[0])
    assert drained >= 1  # the queue held frames when the signal came, and they were published
    dets = detections_of(d.messages, "cam")
    assert [m["frame"] for m in dets] == list(range(len(dets)))  # nothing skipped in between
    assert len(dets) < 250


def test_second_sigint_forces_exit(run_daemon: Any, rtsp_server: Any) -> None:
    srv = rtsp_server(mode="silent")  # the source blocks in open: a graceful stop has to wait
    d = run_daemon([{"id": "cam", "url": srv.url, "open_timeout": 30, "read_timeout": 30}],
                   shutdown={"drain_timeout": 30})
    time.sleep(1)
    d.signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while "stopping: draining" not in d.log():
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
        time.sleep(0.1)
    t = time.monotonic()
    d.signal(signal.SIGINT)
    assert d.proc.wait(5) == 130
    assert time.monotonic() - t < 3
    assert "forced exit" in d.log()
