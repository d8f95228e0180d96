"""Per-stream reconnect / backoff / stall policy, as pure code driven by ``now``.

This module imports nothing from the media stack (PyAV, ZeroMQ) and never reads a clock: every
event and every :meth:`ReconnectPolicy.poll` takes ``now`` (monotonic seconds) from the caller,
in the style of Savant's ``stall_detector``. Tests drive it with plain numbers, no sleeps.

How a source uses it (one policy per stream)::

    policy = ReconnectPolicy(PolicyConfig(...))
    while True:
        d = policy.poll(time.monotonic())
        if d.action is Action.CONNECT:
            policy.on_connect_attempt(now)
            try:
                with av.open(url, ...) as c:
                    policy.on_connected(now)
                    for frame in c.decode(video=0):
                        policy.on_frame(now, queue_full=not queue_put_nowait(frame))
                        ... check stop / poll() ...
                policy.on_error(now, "eof")
            except Exception as e:
                policy.on_error(now, classify_error(e), str(e))
        elif d.action is Action.PROBE:        # only while waiting to reconnect
            policy.on_probe(now, tcp_connect(host, port, timeout=...))
        elif d.action is Action.WAIT:
            stop_event.wait(d.delay)          # returns early on stop
        elif d.action is Action.STALL:
            close the container (from the supervisor thread) -> the read raises -> loop
        else:  # END or STOP
            break

Call :meth:`on_connect_attempt` before each open: an error that arrives while a reconnect is
scheduled and none is in flight is taken for a late report of the previous failure (the error
of a connection aborted for a stall) and ignored.

A supervisor thread may call :meth:`poll` concurrently with the source thread's events (it is
how a stall is noticed while a read blocks: act on ``STALL`` by closing the container; leave
``CONNECT`` to the source thread), so every public method takes a lock.

States
------
``connecting``  an attempt is due or in progress (the initial state).
``up``          connected; frames are expected.
``stalled``     connected, but no frame for ``stall_timeout`` s (or an attempt hung for
                ``connect_timeout`` s); a reconnect is scheduled with backoff.
``backoff``     a network error or a live stream's end; a reconnect is scheduled with backoff.
``auth_failed`` the server refused the credentials; a reconnect is scheduled after
                ``auth_backoff`` s (much longer, never giving up: passwords get fixed).
``ended``       end of a finite source (a file with ``restart_on_eof=False``); terminal.
``stopped``     :meth:`stop` was called; terminal.

These are :class:`daemon.vocab.StreamState` (``State`` here); its eighth member, ``error`` (a
permanent failure), is decided by the source, never by this policy.

Backoff
-------
Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the n-th consecutive
failure (n = ``attempts`` before it, starting at 0) waits ``uniform(0, min(cap, base * 2**n))``.
Full jitter spreads many cameras behind one failed NVR evenly instead of in synchronized waves.
``attempts`` is reset to 0 only once frames are still arriving ``stable_after`` s after the
connection opened, so a server that accepts and drops at once (or after a few frames) still
backs off instead of being hammered. An authentication failure waits ``auth_backoff`` s (plus up
to ``auth_jitter`` of it), whatever ``attempts`` is, and never gives up.

Reachability probes (quick recovery)
------------------------------------
The backoff protects a server from being hammered by expensive opens (an RTSP handshake plus
stream probing), but it also makes a camera that comes back wait out a window of up to ``cap``
seconds. So while a reconnect is scheduled after a network failure or a stall (states
``backoff`` and ``stalled``, not ``auth_failed``), :meth:`poll` also answers ``PROBE`` every
``probe_interval`` s (the first one at once): the source checks a cheap signal, such as whether
a TCP connection to the camera's host and port is accepted, and reports it with
:meth:`on_probe`. When a probe succeeds after a probe failed (the endpoint was seen
unreachable since the last open attempt, and now answers), the next open is due at once,
once; if that open fails, the backoff goes on as scheduled. A probe that succeeds while the
open keeps failing (a wrong mount path, a server error) changes nothing, so such a server is
still retried on the backoff alone; after an authentication failure no probe is made at all
(the camera answers, the password is wrong: wait ``auth_backoff``). An early open needs a failed
probe since the last attempt, and is never sooner than two probe intervals after the last
attempt started, so even a flapping endpoint gets at most one extra open per two probe
intervals. ``probe_interval = 0`` turns probes off (files, or a source with no host).

Stall clock and holds
---------------------
The stall clock runs from the later of the connection's start and its last frame. A source that
is idle on purpose (a realtime file's pacer waiting for a frame's due time, or a file blocked
on a full queue) calls :meth:`hold` with the time it expects to go on (``math.inf`` for
"until further notice") and :meth:`release` when it does: the stall clock is then measured
from the end of the hold, so only time spent waiting for the *source* counts.

Never spins: every scheduled delay is at least ``min_delay`` (0.1 s by default), even when the
jitter draws 0, and :meth:`poll` answers ``CONNECT`` only while no attempt is in flight, so a
caller that loops on ``poll`` cannot hammer a server or burn a core.

Stall versus backpressure
-------------------------
A stall is "connected, no frame for ``stall_timeout`` s". A slow consumer does not cause one: the
source keeps decoding (every packet must be decoded) and calls :meth:`on_frame` for each decoded
frame whether or not its bounded output queue accepted it; it passes ``queue_full=True`` when the
frame had to be dropped. :attr:`backpressure` then reports "frames arrive, the pipeline is slow",
which is a different alarm from a stall and never triggers a reconnect.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from daemon.redact import redact_text
from daemon.vocab import ErrorKind, StreamState

__all__ = [
    "Action",
    "Decision",
    "ErrorKind",
    "ERROR_KINDS",
    "PolicyConfig",
    "ReconnectPolicy",
    "State",
    "Transition",
]


# The stream states, defined once for the whole daemon (daemon/vocab.py). The policy moves
# between the first seven; ``ERROR`` (a permanent failure) is the source's verdict, never the
# policy's.
State = StreamState


class Action(StrEnum):
    CONNECT = "connect"  # open the stream now, after calling on_connect_attempt(now)
    WAIT = "wait"  # nothing to do for Decision.delay seconds (or until an event)
    STALL = "stall"  # a stall was just detected: abort the current connection
    PROBE = "probe"  # check reachability now, then call on_probe(now, reachable)
    END = "end"  # the source is finished (end of a finite file)
    STOP = "stop"  # stop() was called


# "timeout" is what classify_error() returns for a read/open timeout: it counts as a stall when
# the stream was up, and as a network failure while connecting.
ERROR_KINDS = frozenset(ErrorKind)

TERMINAL = frozenset({State.ENDED, State.STOPPED})


@dataclass(frozen=True)
class Transition:
    """One state change, for events (``events/<id>/``) and logs. ``reason`` is redacted."""

    old: State
    new: State
    at: float
    reason: str | None = None


@dataclass(frozen=True)
class Decision:
    """What :meth:`ReconnectPolicy.poll` tells the source to do.

    ``delay`` is always finite and >= 0: for WAIT it is how long nothing will change unless an
    event arrives (time to the next attempt, or to the stall deadline); 0 otherwise.
    ``transition`` is set when this poll changed the state (a stall was detected).
    """

    action: Action
    delay: float = 0.0
    transition: Transition | None = None


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True)
class PolicyConfig:
    """Timings in seconds. Defaults suit cameras on a LAN."""

    base: float = 0.5  # first backoff window: uniform(0, base)
    cap: float = 30.0  # largest backoff window
    min_delay: float = 0.1  # floor under every scheduled delay: the policy never spins
    stable_after: float = 10.0  # up this long (with frames) -> attempts reset to 0
    auth_backoff: float = 60.0  # wait after an authentication failure (then retry, forever)
    auth_jitter: float = 0.1  # auth wait is uniform(auth_backoff, auth_backoff*(1+auth_jitter))
    stall_timeout: float = 10.0  # connected, no frame this long -> stalled
    connect_timeout: float = 20.0  # one attempt in flight this long -> treated as a stall
    restart_on_eof: bool = True  # live streams: end of stream -> reconnect; files: False -> ended
    probe_interval: float = 0.0  # reachability probe pace while waiting to reconnect; 0 = off

    def __post_init__(self) -> None:
        for name in ("base", "cap", "min_delay", "stable_after", "auth_backoff", "stall_timeout",
                     "connect_timeout", "probe_interval"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.min_delay <= 0:
            raise ValueError("min_delay must be > 0 (it is what keeps the policy from spinning)")
        if self.stall_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("stall_timeout and connect_timeout must be > 0")
        if 0 < self.probe_interval < self.min_delay:
            raise ValueError(f"probe_interval must be 0 (off) or >= min_delay ({self.min_delay})")
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must be >= base ({self.base})")
        if not (math.isfinite(self.auth_jitter) and self.auth_jitter >= 0):
            raise ValueError("auth_jitter must be a finite number >= 0")


class ReconnectPolicy:
    """The reconnect state machine of one stream. See the module docstring."""

    def __init__(self, config: PolicyConfig | None = None, rng: Rng | None = None) -> None:
        self.config = config or PolicyConfig()
        self._rng: Rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._state = State.CONNECTING
        self._attempts = 0  # consecutive failures since the last stable period
        self._last_error: str | None = None
        self._last_error_kind: ErrorKind | None = None
        self._in_flight_since: float | None = None  # an attempt is in progress since
        self._attempt_started_at: float | None = None  # the last attempt started at
        self._next_attempt_at: float | None = None  # None = immediately (state CONNECTING)
        self._connected_at: float | None = None
        self._last_frame_at: float | None = None  # last frame of the current or a past connection
        self._queue_full = False
        self._changed_at: float | None = None
        self._held_until: float | None = None  # the stall clock restarts at this time
        self._next_probe_at: float | None = None  # None: no probe scheduled
        self._probe_saw_down = False  # a probe failed since the last open attempt
        # Counters for metrics (monotonic, never reset).
        self.connect_attempts_total = 0
        self.reconnects_total = 0  # connect attempts after the first successful connection
        self.stalls_total = 0
        self.decode_errors_total = 0
        self.frames_total = 0
        self.frames_backpressured_total = 0
        self.probes_total = 0
        self.probes_failed_total = 0
        self.early_opens_total = 0  # opens moved forward by a probe that saw the endpoint return
        self._ever_connected = False

    # ----------------------------------------------------------------- read-only view
    @property
    def state(self) -> State:
        return self._state

    @property
    def attempts(self) -> int:
        """Consecutive failed attempts since the stream was last stable (drives the backoff)."""
        return self._attempts

    @property
    def last_error(self) -> str | None:
        """``"<kind>: <message>"`` of the last error, credentials already redacted."""
        return self._last_error

    @property
    def last_error_kind(self) -> ErrorKind | None:
        return self._last_error_kind

    @property
    def next_attempt_at(self) -> float | None:
        """When the next connect attempt is due (None: now, or no attempt scheduled)."""
        return self._next_attempt_at if self._state not in TERMINAL else None

    def next_delay(self, now: float) -> float:
        """Seconds from ``now`` until the next attempt is due (0 when due or none scheduled).
        For a blocking loop: ``stop_event.wait(policy.next_delay(now))``."""
        due = self.next_attempt_at
        return 0.0 if due is None else max(0.0, due - now)

    @property
    def last_kind(self) -> ErrorKind | None:
        """Alias of :attr:`last_error_kind` (the name daemon/sources/pyav.py uses)."""
        return self._last_error_kind

    @property
    def changed_at(self) -> float | None:
        return self._changed_at

    @property
    def backpressure(self) -> bool:
        """Frames arrive but the consumer cannot keep up (the last frame found the queue full)."""
        return self._state is State.UP and self._queue_full

    @property
    def is_up(self) -> bool:
        return self._state is State.UP

    @property
    def waiting_to_reconnect(self) -> bool:
        """Legitimately idle: a reconnect is scheduled (for the systemd watchdog's judgement)."""
        return self._state in (State.BACKOFF, State.AUTH_FAILED, State.STALLED, State.CONNECTING)

    def seconds_since_frame(self, now: float) -> float | None:
        """Seconds since the last decoded frame (across reconnects); None if there was none."""
        if self._last_frame_at is None:
            return None
        return max(0.0, now - self._last_frame_at)

    # ----------------------------------------------------------------- events
    def on_connect_attempt(self, now: float) -> Transition | None:
        """The source starts opening the stream."""
        with self._lock:
            if self._state in TERMINAL:
                return None
            self.connect_attempts_total += 1
            if self._ever_connected:
                self.reconnects_total += 1
            self._in_flight_since = now
            self._attempt_started_at = now
            self._next_attempt_at = None
            self._next_probe_at = None
            self._probe_saw_down = False
            return self._set(State.CONNECTING, now, None)

    def on_connected(self, now: float) -> Transition | None:
        """The stream is open (PyAV's ``av.open`` returned). Frames are expected from now on."""
        with self._lock:
            if self._state in TERMINAL:
                return None
            self._in_flight_since = None
            self._next_attempt_at = None
            self._connected_at = now
            self._queue_full = False
            self._held_until = None
            self._next_probe_at = None
            self._ever_connected = True
            return self._set(State.UP, now, None)

    def on_frame(self, now: float, *, queue_full: bool = False) -> Transition | None:
        """A frame was decoded. ``queue_full``: the source's bounded output queue refused it."""
        with self._lock:
            if self._state in TERMINAL:
                return None
            self.frames_total += 1
            self._last_frame_at = now
            self._queue_full = queue_full
            if queue_full:
                self.frames_backpressured_total += 1
            tr = None
            if self._state is not State.UP:
                # A frame proves the connection works, whatever we believed (e.g. a late frame
                # racing a stall verdict from the supervisor): trust the evidence.
                self._in_flight_since = None
                self._next_attempt_at = None
                self._next_probe_at = None
                self._connected_at = now
                self._ever_connected = True
                tr = self._set(State.UP, now, None)
            self._maybe_reset_attempts(now)
            return tr

    def on_error(self, now: float, kind: ErrorKind | str, message: str | None = None) -> Transition | None:
        """An error from the source. ``kind`` is an :class:`~daemon.vocab.ErrorKind` (or its
        string); anything else raises ``ValueError``.

        ``decode`` errors while ``up`` (a damaged packet) are recorded but change nothing: the
        packet is skipped and the stream goes on; if only bad packets arrive, the stall timer
        fires. Before the stream is up, ``decode`` means the open failed (FFmpeg says "Invalid
        data found when processing input" for a host it cannot reach, or a file that is not
        video): a failed attempt, with backoff.
        """
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; expected one of {sorted(ERROR_KINDS)}")
        kind = ErrorKind(kind)
        with self._lock:
            if self._state in TERMINAL:
                return None
            text = f"{kind}: {redact_text(message)}" if message else kind.value
            if kind is ErrorKind.DECODE and self._state is State.UP:
                self.decode_errors_total += 1
                self._last_error, self._last_error_kind = text, kind
                return None
            if (
                self._state in (State.STALLED, State.BACKOFF, State.AUTH_FAILED)
                and self._in_flight_since is None
                and self._next_attempt_at is not None
                and now < self._next_attempt_at
            ):
                # Not a new attempt's failure: the error of the connection we aborted for a
                # stall, or a second report of one failure (the read raised, then close did).
                return None
            was_up = self._state is State.UP
            self._last_error, self._last_error_kind = text, kind
            self._in_flight_since = None
            self._maybe_reset_attempts(now)  # an outage after a long stable run starts small
            if kind is ErrorKind.TIMEOUT:
                kind = ErrorKind.STALL if was_up else ErrorKind.NETWORK
            if kind is ErrorKind.AUTH:
                delay = self._auth_delay()
                new = State.AUTH_FAILED
            elif kind is ErrorKind.EOF and not self.config.restart_on_eof:
                self._next_attempt_at = None
                return self._set(State.ENDED, now, text)
            else:
                delay = self._backoff_delay()
                new = State.STALLED if kind is ErrorKind.STALL else State.BACKOFF
                if new is State.STALLED:
                    self.stalls_total += 1
            self._attempts += 1
            self._next_attempt_at = now + delay
            self._schedule_probes(now, new)
            return self._set(new, now, text)

    def stop(self, now: float) -> Transition | None:
        """Stop for good (shutdown, or the stream was removed from the config)."""
        with self._lock:
            if self._state is State.STOPPED:
                return None
            self._in_flight_since = None
            self._next_attempt_at = None
            self._next_probe_at = None
            return self._set(State.STOPPED, now, None)

    def on_probe(self, now: float, reachable: bool) -> bool:
        """The result of the probe that :meth:`poll` asked for (``Action.PROBE``).

        Returns True when it moved the next open forward: the endpoint was seen unreachable by
        an earlier probe since the last open attempt and answers again. The open is then due
        now, or two probe intervals after the last attempt started if that is later (the bound
        on opens for an endpoint that flaps). The next probe is due ``probe_interval`` s after
        ``now``.
        """
        with self._lock:
            if self._next_probe_at is None or self._state not in (State.BACKOFF, State.STALLED):
                return False  # a stale report: the state moved on while the probe ran
            self.probes_total += 1
            self._next_probe_at = now + self.config.probe_interval
            if not reachable:
                self.probes_failed_total += 1
                self._probe_saw_down = True
                return False
            if not self._probe_saw_down or self._in_flight_since is not None:
                return False
            self._probe_saw_down = False
            early = now
            if self._attempt_started_at is not None:
                early = max(now, self._attempt_started_at + 2.0 * self.config.probe_interval)
            if self._next_attempt_at is not None and self._next_attempt_at > early:
                self._next_attempt_at = early
                self.early_opens_total += 1
                return True
            return False

    def hold(self, now: float, until: float) -> None:
        """The source is idle on purpose until ``until`` (monotonic s; ``math.inf``: until
        :meth:`release`): no stall is declared before ``until + stall_timeout``."""
        with self._lock:
            self._held_until = until

    def release(self, now: float) -> None:
        """The hold is over at ``now``: the stall clock starts again from ``now``."""
        with self._lock:
            if self._held_until is not None:
                self._held_until = now

    # ----------------------------------------------------------------- the clock
    def poll(self, now: float) -> Decision:
        """What to do at ``now``. Cheap; call it whenever convenient (it never schedules spins)."""
        with self._lock:
            cfg = self.config
            st = self._state
            if st is State.STOPPED:
                return Decision(Action.STOP)
            if st is State.ENDED:
                return Decision(Action.END)
            if st is State.UP:
                self._maybe_reset_attempts(now)
                # Frames of a previous connection don't count: the clock starts at connect.
                ref = self._connected_at if self._connected_at is not None else now
                if self._last_frame_at is not None and self._last_frame_at > ref:
                    ref = self._last_frame_at
                if self._held_until is not None and self._held_until > ref:
                    if math.isinf(self._held_until):
                        return Decision(Action.WAIT, cfg.stall_timeout)
                    ref = self._held_until
                left = ref + cfg.stall_timeout - now
                if left <= 0:
                    return self._stall(now, f"stall: no frame for {now - ref:.1f} s")
                return Decision(Action.WAIT, max(left, 0.0))
            if self._in_flight_since is not None:  # CONNECTING with an attempt in progress
                left = self._in_flight_since + cfg.connect_timeout - now
                if left <= 0:
                    return self._stall(
                        now, f"stall: connect attempt hung for {now - self._in_flight_since:.1f} s"
                    )
                return Decision(Action.WAIT, left)
            due = self._next_attempt_at
            if due is None or now >= due:
                return Decision(Action.CONNECT)
            probe = self._next_probe_at
            if probe is not None:
                if now >= probe:
                    return Decision(Action.PROBE)
                return Decision(Action.WAIT, min(due, probe) - now)
            return Decision(Action.WAIT, due - now)

    # ----------------------------------------------------------------- internals
    def _stall(self, now: float, reason: str) -> Decision:
        self.stalls_total += 1
        self._last_error, self._last_error_kind = reason, ErrorKind.STALL
        self._in_flight_since = None
        delay = self._backoff_delay()
        self._attempts += 1
        self._next_attempt_at = now + delay
        self._schedule_probes(now, State.STALLED)
        tr = self._set(State.STALLED, now, reason)
        return Decision(Action.STALL, 0.0, tr)

    def _schedule_probes(self, now: float, new: State) -> None:
        """Probe at once (to see the endpoint down) and then every ``probe_interval`` s while a
        reconnect is scheduled after a network failure or a stall; never after an
        authentication failure."""
        if self.config.probe_interval > 0 and new in (State.BACKOFF, State.STALLED):
            self._next_probe_at = now
        else:
            self._next_probe_at = None

    def _backoff_delay(self) -> float:
        cfg = self.config
        # 2.0 ** n overflows past ~1023; the cap is reached long before n = 64 anyway.
        window = min(cfg.cap, cfg.base * 2.0 ** min(self._attempts, 64))
        return max(cfg.min_delay, self._rng.uniform(0.0, window))

    def _auth_delay(self) -> float:
        cfg = self.config
        d = self._rng.uniform(cfg.auth_backoff, cfg.auth_backoff * (1.0 + cfg.auth_jitter))
        return max(cfg.min_delay, d)

    def _maybe_reset_attempts(self, now: float) -> None:
        if (
            self._state is State.UP
            and self._attempts
            and self._connected_at is not None
            and self._last_frame_at is not None
            and self._last_frame_at - self._connected_at >= self.config.stable_after
        ):
            self._attempts = 0

    def _set(self, new: State, now: float, reason: str | None) -> Transition | None:
        old = self._state
        if old is new:
            return None
        self._state = new
        self._changed_at = now
        return Transition(old, new, now, reason)

    def __repr__(self) -> str:
        return (
            f"ReconnectPolicy(state={self._state.value}, attempts={self._attempts}, "
            f"last_error={self._last_error!r})"
        )
