"""sd_notify on real AF_UNIX datagram sockets: a path in a tmp dir and an abstract name."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.systemd import Notifier, watchdog_interval


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound SOCK_DGRAM socket, as systemd creates it, and its NOTIFY_SOCKET spelling."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(2.0)
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        s.bind(path)
        name = path
    else:
        abstract = f"detectd-test-{uuid.uuid4().hex}"
        s.bind(b"\0" + abstract.encode())
        name = "@" + abstract
    yield name, s
    s.close()


def recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_every_notification(notify_socket: tuple[str, socket.socket]) -> None:
    name, srv = notify_socket
    with Notifier(environ={"NOTIFY_SOCKET": name}) as n:
        assert n.enabled
        assert n.ready() is True
        assert recv(srv) == ["READY=1"]
        assert n.ready(status="serving 3 streams")
        assert recv(srv) == ["READY=1", "STATUS=serving 3 streams"]
        assert n.watchdog()
        assert recv(srv) == ["WATCHDOG=1"]
        assert n.status("2/3 streams up")
        assert recv(srv) == ["STATUS=2/3 streams up"]
        assert n.stopping()
        assert recv(srv) == ["STOPPING=1"]
        assert n.stopping() is False  # once: the drain and the shutdown both announce it
        assert n.status("bye")
        assert recv(srv) == ["STATUS=bye"]  # not a second STOPPING=1 before it

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert n.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = recv(srv)
        assert lines[0] == "RELOADING=1"
        key, _, value = lines[1].partition("=")
        assert key == "MONOTONIC_USEC"
        assert before <= int(value) <= after
        assert len(lines) == 2


def test_reuses_one_socket_and_reconnects_after_the_listener_returns(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    n = Notifier(environ={"NOTIFY_SOCKET": path})
    assert n.send("X=1") is False  # nobody listening yet: logged, no exception
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.settimeout(2.0)
    srv.bind(path)
    try:
        assert n.watchdog() and n.watchdog()
        assert recv(srv) == ["WATCHDOG=1"] and recv(srv) == ["WATCHDOG=1"]
    finally:
        srv.close()
        n.close()


def test_status_text_cannot_inject_assignments(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.settimeout(2.0)
    srv.bind(path)
    with Notifier(environ={"NOTIFY_SOCKET": path}) as n:
        n.status("cam1 down\nREADY=1")
        assert recv(srv) == ["STATUS=cam1 down READY=1"]
    srv.close()


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234"])
def test_noop_without_a_unix_notify_socket(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    n = Notifier(environ=env)
    assert not n.enabled
    for call in (n.ready, n.watchdog, n.stopping, n.reloading):
        assert call() is False
    assert n.status("x") is False
    assert n.watchdog_interval() is None


def test_reads_the_real_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = str(tmp_path / "env.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.settimeout(2.0)
    srv.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with Notifier() as n:
        assert n.ready()
        assert recv(srv) == ["READY=1"]
        assert n.watchdog_interval() == pytest.approx(10.0)
    srv.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    env = {k: (str(os.getpid()) if v == "self" else v) for k, v in env.items()}
    got = watchdog_interval(env)
    assert got == (pytest.approx(expected) if expected is not None else None)
