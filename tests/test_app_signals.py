"""daemon/app.py in-process: signals go to the daemon only inside ``capture_signals`` and the
previous handlers come back afterwards (uvicorn's pattern). Real signals sent to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from daemon.app import HANDLED_SIGNALS, Daemon
from daemon.config import parse_config
from tests.harness import ROOT


def _daemon() -> Daemon:
    # Nothing is bound or loaded before start(): constructing a daemon is cheap.
    return Daemon(parse_config({"streams": [{"id": "a", "url": "rtsp://cam.example/a"}]}))


def _deliver(sig: int, flag: threading.Event | None = None) -> None:
    os.kill(os.getpid(), sig)
    # Python runs the handler on the main thread at the next bytecode boundary; wait for it.
    deadline = time.monotonic() + 5
    while flag is not None and not flag.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_signals_reach_the_daemon_inside_and_the_previous_handlers_after() -> None:
    got: list[int] = []

    def previous(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)

    saved = {sig: signal.signal(sig, previous) for sig in HANDLED_SIGNALS}
    try:
        d = _daemon()
        with d.capture_signals():
            assert all(signal.getsignal(sig) == d.handle_signal for sig in HANDLED_SIGNALS)
            _deliver(signal.SIGHUP, d.reload_requested)
            assert d.reload_requested.is_set() and not d.stop_requested.is_set()
            _deliver(signal.SIGTERM, d.stop_requested)
            assert d.stop_requested.is_set()
            assert got == []  # nothing reached the previous handlers meanwhile
        assert all(signal.getsignal(sig) is previous for sig in HANDLED_SIGNALS)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert got == [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_handlers_are_restored_when_the_block_raises() -> None:
    before = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    d = _daemon()
    try:
        with d.capture_signals():
            raise RuntimeError("start failed")
    except RuntimeError:
        pass
    assert {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS} == before


def test_first_sigint_stops_gracefully() -> None:
    d = _daemon()
    with d.capture_signals():
        _deliver(signal.SIGINT, d.stop_requested)
        assert d.stop_requested.is_set() and not d.reload_requested.is_set()


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    seen: list[dict[int, object]] = []

    def body() -> None:
        with _daemon().capture_signals():
            seen.append({sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS})

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert seen == [before]


def test_second_sigint_exits_at_once() -> None:
    # os._exit ends the process: run it in a child, with real signals to itself.
    code = (
        "import os, signal\n"
        "from tests.test_app_signals import _daemon\n"
        "d = _daemon()\n"
        "with d.capture_signals():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert d.stop_requested.is_set()\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    import time; time.sleep(5)\n"
        "print('not reached')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 130, p.stderr
    assert "detectd: forced exit" in p.stderr and "not reached" not in p.stdout
