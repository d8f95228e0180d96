"""The reconnect state machine, driven with plain numbers for `now` (no sleeps, no media)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from daemon.sources.policy import (
    Action,
    Decision,
    PolicyConfig,
    ReconnectPolicy,
    State,
    Transition,
)


class FixedRng:
    """uniform(a, b) -> a + frac * (b - a); records every window asked for."""

    def __init__(self, frac: float) -> None:
        self.frac = frac
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + self.frac * (b - a)


CFG = PolicyConfig(
    base=1.0, cap=8.0, min_delay=0.1, stable_after=10.0, auth_backoff=60.0, auth_jitter=0.1,
    stall_timeout=5.0, connect_timeout=20.0,
)


def make(frac: float = 1.0, **over: Any) -> tuple[ReconnectPolicy, FixedRng]:
    rng = FixedRng(frac)
    return ReconnectPolicy(replace(CFG, **over), rng=rng), rng


def fail(p: ReconnectPolicy, now: float, kind: str = "network", msg: str | None = None) -> float:
    """One failed attempt at `now`; returns the scheduled delay."""
    p.on_connect_attempt(now)
    p.on_error(now, kind, msg)
    assert p.next_attempt_at is not None
    return p.next_attempt_at - now


# --------------------------------------------------------------------------- initial state

def test_initial_state_connects_at_once() -> None:
    p, _ = make()
    assert p.state is State.CONNECTING
    assert p.attempts == 0
    assert p.last_error is None
    assert p.seconds_since_frame(100.0) is None
    assert p.poll(0.0) == Decision(Action.CONNECT)
    # An attempt in flight: wait for it, never a second CONNECT.
    p.on_connect_attempt(0.0)
    d = p.poll(1.0)
    assert d.action is Action.WAIT and d.delay == pytest.approx(CFG.connect_timeout - 1.0)


def test_str_of_enums_is_the_wire_value() -> None:
    assert str(State.AUTH_FAILED) == "auth_failed" and f"{State.UP}" == "up"
    assert str(Action.STALL) == "stall"
    assert [s.value for s in State] == [  # "error": the source's verdict, never the policy's
        "connecting", "up", "stalled", "backoff", "auth_failed", "ended", "stopped", "error"]


# --------------------------------------------------------------------------- backoff

@pytest.mark.parametrize(
    ("base", "cap", "expected"),
    [
        (1.0, 8.0, [1, 2, 4, 8, 8, 8, 8]),
        (0.5, 30.0, [0.5, 1, 2, 4, 8, 16, 30, 30]),
        (0.25, 0.25, [0.25, 0.25, 0.25]),
        (2.0, 5.0, [2, 4, 5, 5]),
    ],
)
def test_backoff_windows_grow_exponentially_up_to_the_cap(
    base: float, cap: float, expected: list[float]
) -> None:
    p, rng = make(frac=1.0, base=base, cap=cap)
    now = 0.0
    delays = []
    for n, want in enumerate(expected):
        assert p.attempts == n
        delays.append(fail(p, now))
        assert rng.calls[-1] == (0.0, pytest.approx(want))  # full jitter: uniform(0, window)
        now += delays[-1]
    assert delays == pytest.approx(expected)
    assert p.state is State.BACKOFF


@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 1.0])
def test_full_jitter_draws_from_zero_to_window(frac: float) -> None:
    p, _ = make(frac=frac)
    for _ in range(3):
        fail(p, 0.0 if p.next_attempt_at is None else p.next_attempt_at)
    # 4th failure: window base * 2**3 = 8
    now = p.next_attempt_at or 0.0
    d = fail(p, now)
    assert d == pytest.approx(max(CFG.min_delay, frac * 8.0))


def test_jitter_zero_is_floored_at_min_delay_and_never_spins() -> None:
    p, _ = make(frac=0.0)
    d = fail(p, 10.0)
    assert d == pytest.approx(0.1)
    assert p.poll(10.05) == Decision(Action.WAIT, pytest.approx(0.05))
    assert p.poll(10.1).action is Action.CONNECT


def test_a_caller_that_loops_on_poll_cannot_hammer_a_dead_server() -> None:
    """Every connect fails at once, rng draws 0: at most one attempt per min_delay."""
    p, _ = make(frac=0.0)
    now, attempts, polls = 0.0, 0, 0
    while now < 10.0:
        d = p.poll(now)
        polls += 1
        if d.action is Action.CONNECT:
            attempts += 1
            p.on_connect_attempt(now)
            p.on_error(now, "network", "Connection refused")
        else:
            assert d.action is Action.WAIT and d.delay > 0
            now += d.delay
    assert attempts <= 10.0 / CFG.min_delay + 1
    assert polls <= 2 * attempts + 2  # every WAIT is a real wait, not a spin


def test_real_random_stays_within_floor_and_window() -> None:
    p = ReconnectPolicy(CFG, rng=random.Random(1234))
    now = 0.0
    draws = []
    for n in range(200):
        d = fail(p, now)
        window = min(CFG.cap, CFG.base * 2 ** n)
        assert CFG.min_delay - 1e-9 <= d <= max(window, CFG.min_delay) + 1e-9
        draws.append(d)
        now += d
    capped = draws[10:]
    assert min(capped) < 2.0 and max(capped) > 6.0  # spread over the window, not clustered
    assert 3.0 < sum(capped) / len(capped) < 5.0  # mean of uniform(0, 8) is 4


def test_huge_attempt_counts_do_not_overflow() -> None:
    p, _ = make(frac=1.0)
    p._attempts = 5000  # as after weeks of a dead camera
    assert fail(p, 0.0) == pytest.approx(CFG.cap)


def test_default_rng_is_used_when_none_given() -> None:
    p = ReconnectPolicy(CFG)
    d = fail(p, 0.0)
    assert CFG.min_delay <= d <= CFG.base


# --------------------------------------------------------------------------- stable period

def test_attempts_reset_only_after_stable_period_with_frames() -> None:
    p, _ = make(frac=1.0)
    now = 0.0
    for _ in range(3):
        now += fail(p, now)
    assert p.attempts == 3
    p.on_connect_attempt(now)
    p.on_connected(now)
    assert p.state is State.UP and p.attempts == 3
    for k in range(1, 10):  # frames for just under stable_after
        p.on_frame(now + k * 0.99)
        assert p.poll(now + k * 0.99).action is Action.WAIT
    assert p.attempts == 3
    p.on_frame(now + 10.0)
    assert p.attempts == 0


def test_connection_open_without_frames_is_not_stable() -> None:
    """Up for longer than stable_after but the last frame came early: no reset."""
    p, _ = make(frac=1.0, stall_timeout=100.0)
    fail(p, 0.0)
    fail(p, 1.0)
    p.on_connect_attempt(5.0)
    p.on_connected(5.0)
    p.on_frame(6.0)
    p.poll(50.0)
    assert p.attempts == 2
    # ... the next failure keeps growing the window instead of starting small again.
    p.on_error(50.0, "network")
    assert p.attempts == 3
    assert p.next_attempt_at == pytest.approx(50.0 + 4.0)


def test_flapping_server_backs_off_instead_of_being_hammered() -> None:
    """Accepts, sends a frame, drops: each cycle waits longer, up to the cap."""
    p, _ = make(frac=1.0)
    now = 0.0
    delays = []
    for _ in range(6):
        p.on_connect_attempt(now)
        p.on_connected(now + 0.1)
        p.on_frame(now + 0.2)
        p.on_error(now + 0.3, "eof", "server closed the connection")
        delays.append(p.next_attempt_at - (now + 0.3))  # type: ignore[operator]
        now = p.next_attempt_at  # type: ignore[assignment]
    assert delays == pytest.approx([1, 2, 4, 8, 8, 8])


def test_outage_after_long_stable_run_starts_with_a_small_window() -> None:
    p, _ = make(frac=1.0)
    now = 0.0
    for _ in range(4):
        now += fail(p, now)
    p.on_connect_attempt(now)
    p.on_connected(now)
    p.on_frame(now + 30.0)  # streaming happily for 30 s (the reset happens on this frame)
    p.on_error(now + 30.5, "network")
    assert p.attempts == 1
    assert p.next_attempt_at == pytest.approx(now + 30.5 + CFG.base)


# --------------------------------------------------------------------------- authentication

def test_auth_failure_waits_much_longer_and_never_gives_up() -> None:
    p, rng = make(frac=1.0, cap=2.0)
    now = 0.0
    for i in range(100):
        d = fail(p, now, "auth", "Server returned 401 Unauthorized (authorization failed)")
        assert p.state is State.AUTH_FAILED
        assert rng.calls[-1] == (60.0, pytest.approx(66.0))
        assert 60.0 <= d <= 66.0  # not exponential, not capped by `cap`, never infinite
        assert p.poll(now + d - 1).action is Action.WAIT
        now += d
        assert p.poll(now).action is Action.CONNECT
    assert p.attempts == 100
    assert p.last_error is not None and p.last_error.startswith("auth: ")


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_auth_wait_bounds(frac: float) -> None:
    p, _ = make(frac=frac, auth_backoff=30.0, auth_jitter=0.5)
    assert fail(p, 0.0, "auth") == pytest.approx(30.0 + frac * 15.0)


def test_fixed_password_recovers_from_auth_failed() -> None:
    p, _ = make()
    d = fail(p, 0.0, "auth")
    assert p.poll(d).action is Action.CONNECT
    p.on_connect_attempt(d)
    assert p.on_connected(d) == Transition(State.CONNECTING, State.UP, d, None)
    p.on_frame(d + 0.04)
    assert p.state is State.UP


# --------------------------------------------------------------------------- stall

def test_stall_connected_but_no_frames_since() -> None:
    p, _ = make(frac=1.0)
    p.on_connect_attempt(0.0)
    p.on_connected(0.5)
    for t in (1.0, 2.0, 3.0):
        p.on_frame(t)
    d = p.poll(7.9)
    assert d.action is Action.WAIT and d.delay == pytest.approx(0.1)
    assert p.seconds_since_frame(7.9) == pytest.approx(4.9)
    d = p.poll(8.0)
    assert d.action is Action.STALL
    assert d.transition is not None and (d.transition.old, d.transition.new) == (State.UP, State.STALLED)
    assert p.state is State.STALLED
    assert p.last_error == "stall: no frame for 5.0 s" == d.transition.reason
    assert p.stalls_total == 1 and p.attempts == 1
    # A reconnect is scheduled with the normal backoff...
    assert p.poll(8.5) == Decision(Action.WAIT, pytest.approx(0.5))
    assert p.poll(9.0).action is Action.CONNECT
    # ... and the error of the aborted connection does not count twice.
    assert p.on_error(8.01, "network", "Immediate exit requested") is None
    assert p.attempts == 1 and p.state is State.STALLED


def test_stall_when_connected_and_no_frame_ever() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(1.0)
    assert p.poll(5.99).action is Action.WAIT
    assert p.poll(6.0).action is Action.STALL
    assert p.seconds_since_frame(6.0) is None


def test_frames_of_a_previous_connection_do_not_hide_a_stall_nor_cause_one() -> None:
    p, _ = make(frac=0.0)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(1.0)
    p.on_error(2.0, "network")
    p.on_connect_attempt(20.0)
    p.on_connected(20.0)
    # last frame is 19 s old, but this connection is only 1 s old: no stall yet.
    assert p.poll(21.0) == Decision(Action.WAIT, pytest.approx(4.0))
    assert p.seconds_since_frame(21.0) == pytest.approx(20.0)
    assert p.poll(25.0).action is Action.STALL


def test_backpressure_is_not_a_stall() -> None:
    """Frames keep arriving but the output queue is full: backpressure flag, no stall."""
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    t = 0.0
    while t < 60.0:
        t += 0.04
        p.on_frame(t, queue_full=True)
        assert p.poll(t).action is Action.WAIT
    assert p.state is State.UP
    assert p.backpressure is True
    assert p.stalls_total == 0
    assert p.frames_backpressured_total == p.frames_total > 1000
    p.on_frame(t + 0.04, queue_full=False)
    assert p.backpressure is False


def test_backpressure_flag_clears_when_the_stream_goes_down() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(0.1, queue_full=True)
    p.on_error(0.2, "network")
    assert p.backpressure is False


def test_source_reported_stall_and_timeout_kinds() -> None:
    p, _ = make(frac=1.0)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_error(3.0, "timeout", "Connection timed out")  # read timeout while up -> stall
    assert p.state is State.STALLED and p.stalls_total == 1
    now = p.next_attempt_at
    assert now is not None
    p.on_connect_attempt(now)
    p.on_error(now + 2.0, "timeout", "Connection timed out")  # open timeout -> network failure
    assert p.state is State.BACKOFF and p.stalls_total == 1
    now = p.next_attempt_at
    assert now is not None
    p.on_connect_attempt(now)
    p.on_connected(now)
    p.on_error(now + 1, "stall", "no packet for 5 s")
    assert p.state is State.STALLED and p.stalls_total == 2


def test_hung_connect_attempt_is_a_stall_and_its_late_error_is_ignored() -> None:
    p, _ = make(frac=1.0)
    p.on_connect_attempt(0.0)
    assert p.poll(19.0) == Decision(Action.WAIT, pytest.approx(1.0))
    d = p.poll(20.0)
    assert d.action is Action.STALL and p.state is State.STALLED
    assert p.last_error == "stall: connect attempt hung for 20.0 s"
    assert p.attempts == 1
    assert p.on_error(20.2, "timeout", "timed out") is None
    assert p.attempts == 1


def test_late_frame_after_stall_verdict_brings_stream_back_up() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    assert p.poll(5.0).action is Action.STALL
    tr = p.on_frame(5.01)
    assert tr is not None and (tr.old, tr.new) == (State.STALLED, State.UP)
    assert p.poll(6.0).action is Action.WAIT


# --------------------------------------------------------------------------- decode / eof / stop

def test_decode_errors_are_recorded_but_change_nothing() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(0.1)
    for i in range(5):
        assert p.on_error(0.2 + i * 0.1, "decode", "Invalid data found when processing input") is None
    assert p.state is State.UP and p.attempts == 0
    assert p.decode_errors_total == 5
    assert p.last_error == "decode: Invalid data found when processing input"
    # Only damaged packets and no frame for stall_timeout: that is a stall.
    assert p.poll(5.1).action is Action.STALL


def test_decode_error_while_opening_is_a_failed_attempt() -> None:
    p, _ = make(frac=1.0)
    p.on_connect_attempt(0.0)
    tr = p.on_error(0.0, "decode", "Invalid data found when processing input")
    assert tr is not None and tr.new is State.BACKOFF
    assert p.attempts == 1 and p.decode_errors_total == 0
    assert p.poll(0.5).action is Action.WAIT


@pytest.mark.parametrize(
    ("restart", "state", "action"),
    [(True, State.BACKOFF, Action.WAIT), (False, State.ENDED, Action.END)],
)
def test_eof(restart: bool, state: State, action: Action) -> None:
    p, _ = make(restart_on_eof=restart)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(0.5)
    tr = p.on_error(1.0, "eof", "End of file")
    assert tr is not None and tr.new is state and tr.reason == "eof: End of file"
    assert p.state is state
    assert p.poll(1.01).action is action


def test_ended_and_stopped_are_terminal() -> None:
    p, _ = make(restart_on_eof=False)
    p.on_connect_attempt(0.0)
    p.on_error(0.0, "eof")
    assert p.state is State.ENDED and p.next_attempt_at is None
    for call in (lambda: p.on_connect_attempt(1), lambda: p.on_connected(1),
                 lambda: p.on_frame(1), lambda: p.on_error(1, "network")):
        assert call() is None
    assert p.state is State.ENDED and p.poll(100).action is Action.END
    assert p.stop(2.0) == Transition(State.ENDED, State.STOPPED, 2.0, None)
    assert p.stop(3.0) is None
    assert p.poll(100).action is Action.STOP


@pytest.mark.parametrize("setup", ["connecting", "up", "backoff", "auth_failed", "stalled"])
def test_stop_from_any_state(setup: str) -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    if setup in ("up", "stalled"):
        p.on_connected(0.0)
    if setup == "backoff":
        p.on_error(0.0, "network")
    if setup == "auth_failed":
        p.on_error(0.0, "auth")
    if setup == "stalled":
        p.poll(100.0)
    assert p.state.value == setup
    tr = p.stop(1.0)
    assert tr is not None and tr.new is State.STOPPED
    assert p.poll(1000.0) == Decision(Action.STOP)
    assert p.on_connected(2.0) is None and p.state is State.STOPPED


# --------------------------------------------------------------------------- errors, redaction

def test_last_error_is_redacted() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_error(0.0, "network",
               "rtsp://admin:hunter2@10.0.0.7:554/stream?token=abc: Connection refused")
    assert p.last_error == "network: rtsp://***@10.0.0.7:554/stream?token=***: Connection refused"
    assert "hunter2" not in repr(p) and "abc" not in (p.last_error or "")
    assert p.last_error_kind == "network"


def test_unknown_error_kind_is_a_programming_error() -> None:
    p, _ = make()
    with pytest.raises(ValueError, match="unknown error kind"):
        p.on_error(0.0, "oops")


def test_duplicate_report_of_one_failure_counts_once() -> None:
    p, _ = make(frac=1.0)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_error(1.0, "network", "read failed")
    assert p.on_error(1.01, "network", "close failed") is None
    assert p.attempts == 1 and p.last_error == "network: read failed"


def test_error_of_an_unannounced_attempt_still_counts() -> None:
    """A caller that forgot on_connect_attempt: the error arrives when an attempt was due."""
    p, _ = make(frac=1.0)
    fail(p, 0.0)  # next at 1.0
    p.on_error(1.0, "network")
    assert p.attempts == 2 and p.next_attempt_at == pytest.approx(3.0)


# --------------------------------------------------------------------------- table of scenarios

SCENARIOS: list[tuple[str, list[tuple[float, str, tuple[Any, ...]]], list[tuple[str, str]], str, int]] = [
    ("happy path",
     [(0, "on_connect_attempt", ()), (0.2, "on_connected", ()), (0.3, "on_frame", ())],
     [("connecting", "up")], "up", 0),
    ("refused then up",
     [(0, "on_connect_attempt", ()), (0, "on_error", ("network",)),
      (1, "on_connect_attempt", ()), (1.1, "on_connected", ()), (1.2, "on_frame", ())],
     [("connecting", "backoff"), ("backoff", "connecting"), ("connecting", "up")], "up", 1),
    ("server killed mid-stream",
     [(0, "on_connect_attempt", ()), (0, "on_connected", ()), (20, "on_frame", ()),
      (20.5, "on_error", ("eof",))],
     [("connecting", "up"), ("up", "backoff")], "backoff", 1),
    ("wrong password",
     [(0, "on_connect_attempt", ()), (0.1, "on_error", ("auth",))],
     [("connecting", "auth_failed")], "auth_failed", 1),
    ("silent server",
     [(0, "on_connect_attempt", ()), (0.1, "on_connected", ()), (5.1, "poll", ())],
     [("connecting", "up"), ("up", "stalled")], "stalled", 1),
    ("file ends",
     [(0, "on_connect_attempt", ()), (0, "on_connected", ()), (1, "on_frame", ()),
      (2, "on_error", ("eof",))],
     [("connecting", "up"), ("up", "ended")], "ended", 0),
]


@pytest.mark.parametrize(("name", "steps", "transitions", "final", "attempts"), SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_scenarios(name: str, steps: list[tuple[float, str, tuple[Any, ...]]],
                   transitions: list[tuple[str, str]], final: str, attempts: int) -> None:
    p, _ = make(frac=1.0, restart_on_eof=(name != "file ends"))
    seen = []
    for now, method, args in steps:
        out = getattr(p, method)(now, *args)
        tr = out.transition if isinstance(out, Decision) else out
        if tr is not None:
            assert tr.at == now
            seen.append((tr.old.value, tr.new.value))
    # The first on_connect_attempt from the initial CONNECTING state is no transition.
    assert seen == transitions
    assert p.state.value == final
    assert p.attempts == attempts


def test_counters() -> None:
    p, _ = make(frac=0.0)
    fail(p, 0.0)
    fail(p, 1.0)
    p.on_connect_attempt(2.0)
    p.on_connected(2.0)
    p.on_error(3.0, "network")
    p.on_connect_attempt(4.0)
    assert p.connect_attempts_total == 4
    assert p.reconnects_total == 1  # attempts after the stream had been up once
    assert p.waiting_to_reconnect and not p.is_up


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("min_delay", 0.0, "min_delay must be > 0"),
        ("base", -1.0, "base must be"),
        ("cap", float("inf"), "cap must be"),
        ("cap", 0.1, r"cap \(0.1\) must be >= base"),
        ("stall_timeout", 0.0, "stall_timeout and connect_timeout must be > 0"),
        ("auth_backoff", float("nan"), "auth_backoff must be"),
        ("auth_jitter", -0.1, "auth_jitter"),
        ("probe_interval", -1.0, "probe_interval must be"),
        ("probe_interval", 0.01, r"probe_interval must be 0 \(off\) or >= min_delay"),
    ],
)
def test_config_validation(field: str, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        replace(CFG, **{field: value})


def test_concurrent_poll_and_events_keep_state_consistent() -> None:
    """A supervisor thread polls while the source thread reports frames: no exception, no
    corrupted counters (the lock is what makes the supervisor pattern safe)."""
    import threading

    p, _ = make(stall_timeout=1e9)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    n = 20000

    def frames() -> None:
        for i in range(n):
            p.on_frame(i * 0.001)

    def polls() -> None:
        for i in range(n):
            p.poll(i * 0.001)

    ts = [threading.Thread(target=frames), threading.Thread(target=polls)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.frames_total == n and p.state is State.UP


def test_next_delay_and_aliases() -> None:
    p, _ = make(frac=1.0)
    assert p.next_delay(0.0) == 0.0
    fail(p, 10.0)
    assert p.next_delay(10.25) == pytest.approx(0.75)
    assert p.next_delay(99.0) == 0.0
    assert p.last_kind == p.last_error_kind == "network"
    assert p.state == "backoff"  # State is a str enum: compares with plain strings


# --------------------------------------------------------------------------- reachability probes

def down_with_probes(interval: float = 1.0, frac: float = 1.0) -> tuple[ReconnectPolicy, float]:
    """Up at 0, frames until 1, then the server dies at 1 (eof): returns (policy, first due)."""
    p, _ = make(frac=frac, probe_interval=interval, cap=30.0)
    p._attempts = 4  # an outage after flapping: the backoff window is already large (16 s)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(0.5)
    p.on_error(1.0, "eof", "the stream ended")
    assert p.state is State.BACKOFF
    due = p.next_attempt_at
    assert due is not None
    return p, due


def test_probe_at_once_then_at_a_steady_pace_while_waiting() -> None:
    p, due = down_with_probes(interval=1.5)
    assert due == pytest.approx(1.0 + 16.0)
    assert p.poll(1.0) == Decision(Action.PROBE)
    p.on_probe(1.01, False)
    assert p.poll(1.5) == Decision(Action.WAIT, pytest.approx(1.01))  # next probe, not the open
    assert p.poll(2.51) == Decision(Action.PROBE)
    assert p.on_probe(2.6, False) is False
    assert (p.probes_total, p.probes_failed_total) == (2, 2)


def test_probe_that_sees_the_server_return_moves_the_open_forward_once() -> None:
    p, due = down_with_probes()
    assert p.on_probe(1.0, False) is False
    assert p.on_probe(2.0, False) is False
    assert p.on_probe(3.0, True) is True  # back after being seen down
    assert p.poll(3.0) == Decision(Action.CONNECT)
    assert p.early_opens_total == 1
    # The open fails: the backoff goes on, and reachable probes alone do not open again.
    p.on_connect_attempt(3.1)
    p.on_error(3.2, "network", "404 Not Found")
    assert p.state is State.BACKOFF and p.attempts == 6
    later = p.next_attempt_at
    assert later is not None and later > 20.0
    for t in (3.2, 4.2, 5.2, 6.2):
        assert p.poll(t).action is Action.PROBE
        assert p.on_probe(t, True) is False
    assert p.poll(6.3).action is Action.WAIT
    assert p.next_attempt_at == later
    # A new down -> up edge earns one more early open.
    p.on_probe(7.2, False)
    assert p.on_probe(8.2, True) is True
    assert p.poll(8.2).action is Action.CONNECT


def test_probe_reachable_from_the_start_does_not_shorten_the_backoff() -> None:
    """An endpoint that accepts TCP while the open fails (a server error, a wrong path) is
    retried on the backoff alone: probes must not turn into an open per probe."""
    p, due = down_with_probes()
    for k in range(10):
        assert p.on_probe(1.0 + k, True) is False
    assert p.next_attempt_at == due
    assert p.early_opens_total == 0


def test_no_probes_after_an_auth_failure() -> None:
    p, _ = make(probe_interval=1.0)
    p.on_connect_attempt(0.0)
    p.on_error(0.1, "auth", "401 Unauthorized")
    assert p.state is State.AUTH_FAILED
    for t in (0.1, 1.0, 30.0, 59.0):
        assert p.poll(t).action is Action.WAIT
    assert p.on_probe(2.0, True) is False  # a stray report changes nothing
    assert p.poll(59.0).action is Action.WAIT
    assert p.poll(66.1).action is Action.CONNECT
    assert p.probes_total == 0


def test_probes_after_a_stall_verdict_too() -> None:
    p, _ = make(probe_interval=1.0)
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(1.0)
    assert p.poll(6.0).action is Action.STALL
    assert p.state is State.STALLED
    assert p.poll(6.0).action is Action.PROBE


def test_no_probes_while_up_connecting_or_when_off() -> None:
    p, _ = make(probe_interval=1.0)
    assert p.poll(0.0).action is Action.CONNECT  # initial: connect, not probe
    p.on_connect_attempt(0.0)
    assert p.poll(1.0).action is Action.WAIT  # attempt in flight
    p.on_connected(1.0)
    assert p.poll(2.0).action is Action.WAIT
    q, _ = make()  # probe_interval = 0: off
    q.on_connect_attempt(0.0)
    q.on_error(0.0, "network")
    assert all(q.poll(t).action is not Action.PROBE for t in (0.0, 0.05, 0.5))


def test_probe_report_after_the_state_moved_on_is_ignored() -> None:
    p, _ = down_with_probes()
    p.on_probe(1.0, False)
    p.on_connect_attempt(2.0)  # the backoff ran out while a probe was in flight
    assert p.on_probe(2.1, True) is False
    assert p.probes_total == 1


def test_flapping_endpoint_gets_at_most_one_early_open_per_two_probes() -> None:
    """Probes alternate down/up, every open fails at once: opens stay bounded."""
    p, _ = make(frac=1.0, probe_interval=1.0, cap=30.0)
    now, opens, reachable = 0.0, 0, False
    while now < 100.0:
        d = p.poll(now)
        if d.action is Action.CONNECT:
            opens += 1
            p.on_connect_attempt(now)
            p.on_error(now, "network", "refused")
        elif d.action is Action.PROBE:
            p.on_probe(now, reachable)
            reachable = not reachable
        else:
            assert d.delay > 0
            now += d.delay
    assert opens <= 100.0 / 2.0 + 1


# --------------------------------------------------------------------------- holds

def test_hold_pauses_the_stall_clock_until_it_ends() -> None:
    p, _ = make()  # stall_timeout 5
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(1.0)
    p.hold(1.0, 9.0)  # the pacer waits for a frame due at 9
    assert p.poll(8.0).action is Action.WAIT  # 7 s without a frame, but held
    assert p.poll(13.9).action is Action.WAIT
    assert p.poll(14.1).action is Action.STALL  # 5 s after the hold ended


def test_open_ended_hold_and_release() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.on_frame(1.0)
    p.hold(1.0, float("inf"))  # blocked on a full queue
    assert p.poll(1000.0) == Decision(Action.WAIT, 5.0)
    p.release(1000.0)
    assert p.poll(1004.9).action is Action.WAIT
    assert p.poll(1005.1).action is Action.STALL


def test_hold_of_a_previous_connection_does_not_hide_a_stall() -> None:
    p, _ = make()
    p.on_connect_attempt(0.0)
    p.on_connected(0.0)
    p.hold(0.0, float("inf"))
    p.on_error(1.0, "eof")
    p.on_connect_attempt(2.0)
    p.on_connected(2.0)
    assert p.poll(7.1).action is Action.STALL


def test_early_open_comes_no_sooner_than_two_probe_intervals_after_the_last_attempt() -> None:
    p, _ = make(frac=1.0, probe_interval=1.0, cap=30.0)
    p._attempts = 4
    p.on_connect_attempt(10.0)
    p.on_error(10.0, "network", "Connection refused")
    assert p.poll(10.0).action is Action.PROBE
    p.on_probe(10.0, False)
    assert p.on_probe(11.0, True) is True
    assert p.next_attempt_at == pytest.approx(12.0)
    assert p.poll(11.5).action is Action.WAIT
    assert p.poll(12.0).action is Action.CONNECT
