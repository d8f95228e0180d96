"""Glue between the PyAV source and the reconnect policy: a minimal policy (exponential backoff
with full jitter, cap, reset after a stable period, long waits after auth failures) and error
classification. The full state machine with stall detection lives in ``policy.py``."""

from __future__ import annotations

import random
import socket

import av

from daemon.redact import redact_text

redact = redact_text


def classify_error(exc: BaseException) -> str:
    """network | auth | eof | timeout | not_found | invalid | decode"""
    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return "auth"
    msg = str(exc).lower()
    if "401" in msg or "unauthorized" in msg or "403" in msg:
        return "auth"
    if isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in msg:
        return "timeout"
    if isinstance(exc, EOFError):
        return "eof"
    if isinstance(exc, FileNotFoundError) or isinstance(exc, av.error.HTTPNotFoundError):
        return "not_found"
    if isinstance(exc, av.error.InvalidDataError):
        return "invalid"
    return "network"


class ReconnectPolicy:
    def __init__(self, *, base: float = 0.5, cap: float = 30.0, stable_after: float = 30.0,
                 auth_backoff: float = 60.0, min_delay: float = 0.1, stall_timeout: float = 10.0,
                 rng: random.Random | None = None) -> None:
        self.base, self.cap, self.stable_after = base, cap, stable_after
        self.auth_backoff, self.min_delay, self.stall_timeout = auth_backoff, min_delay, stall_timeout
        self.rng = rng or random.Random()
        self.attempts = 0
        self.state = "connecting"
        self.last_error: str | None = None
        self.last_kind: str | None = None
        self.connected_at: float | None = None
        self.last_frame: float | None = None

    def on_connect_attempt(self, now: float) -> None:
        self.state = "connecting"

    def on_connected(self, now: float) -> None:
        self.state = "up"
        self.connected_at = now

    def on_frame(self, now: float) -> None:
        self.last_frame = now
        if self.connected_at is not None and now - self.connected_at >= self.stable_after:
            self.attempts = 0

    def on_error(self, now: float, kind: str, reason: str | None = None) -> None:
        self.state = "auth_failed" if kind == "auth" else "backoff"
        self.last_kind = kind
        self.last_error = reason or kind
        self.connected_at = None

    def next_delay(self, now: float) -> float:
        if self.last_kind == "auth":
            delay = self.auth_backoff * (1 + 0.1 * self.rng.random())
        else:
            delay = self.rng.uniform(0, min(self.cap, self.base * 2 ** min(self.attempts, 30)))
        self.attempts += 1
        return max(self.min_delay, delay)

    def seconds_since_frame(self, now: float) -> float | None:
        return None if self.last_frame is None else now - self.last_frame
