"""When to release each frame of a ``realtime: true`` file: pure code driven by ``now``.

A realtime file stands in for a camera, so its frames are released at the file's own
presentation timestamps (like FFmpeg's ``-re``). Timestamps from files are not always smooth:
a recording that was paused, two clips cut together, a transport stream whose clock jumped or
wrapped. Sleeping out such a jump would freeze the stream for as long as the jump (hours, for a
jump of hours). So, as FFmpeg's command-line tool does for formats with timestamp
discontinuities (its ``-dts_delta_threshold``, 10 s by default), a step between consecutive
frames' timestamps larger than ``max_gap`` seconds forward, or backward by more than that, is a
*discontinuity*: the frame is released one nominal frame period after the previous one, the
clock is resynchronised on it, and the caller is told (to count and log it). The source sets
``max_gap`` to the stream's ``stall_timeout`` (10 s by default, the same as FFmpeg's threshold):
a gap that a camera could not have without being declared stalled is a jump in a file, while
slower legitimate pacing (a timelapse file with one frame every 15 s and ``stall_timeout: 40``)
is honoured. So a pacer never waits more than ``max_gap`` s for one frame.

Smaller irregularities: a frame without a timestamp, or one that does not move forward, is
released one nominal period after the previous one (and the clock resynchronised on it). When
the consumer falls behind by more than ``max_gap`` (the process was suspended, the machine
overloaded), the clock is resynchronised to ``now`` instead of releasing the backlog in a burst.

Nothing here reads a clock or sleeps: :meth:`RealtimeClock.schedule` takes ``now`` (monotonic
seconds) and returns how long to wait; tests drive it with plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Release", "RealtimeClock"]


@dataclass(frozen=True)
class Release:
    """When one frame is due.

    ``due``: monotonic seconds; ``delay``: ``max(0, due - now)``, the wait before releasing it
    (never more than ``max_gap``). ``discontinuity``: the timestamp step in seconds (positive
    forward, negative backward) when this frame's timestamp jumped and the clock was
    resynchronised; None otherwise. ``resynced_late``: the consumer had fallen more than
    ``max_gap`` behind and the clock was moved to ``now``.
    """

    due: float
    delay: float
    discontinuity: float | None = None
    resynced_late: bool = False


class RealtimeClock:
    """Maps presentation timestamps (seconds, float or None) to release times.

    ``rate``: the nominal frame rate (frames/s, from the stream's average rate; <= 0 or not
    finite means 25). ``max_gap``: the largest timestamp step honoured as is (seconds, > 0).
    Raises ValueError for a ``max_gap`` that is not a positive finite number.
    """

    def __init__(self, rate: float, max_gap: float) -> None:
        if not (math.isfinite(max_gap) and max_gap > 0):
            raise ValueError(f"max_gap must be a finite number > 0, got {max_gap!r}")
        self.period = 1.0 / rate if math.isfinite(rate) and rate > 0 else 0.04
        self.max_gap = max_gap
        self.last_due: float | None = None  # when the previous frame was due (kept over reset)
        self.reset()

    def reset(self) -> None:
        """Start over (a loop back to the start of the file): the next frame is due one period
        after the last one, as from a camera, not at once (which would run a looped file fast)."""
        self.t0: float | None = None  # monotonic time at which the timestamp pts0 is due
        self.pts0 = 0.0
        self.last_pts = 0.0

    def schedule(self, now: float, pts: float | None) -> Release:
        """When the frame with timestamp ``pts`` is due, seen at ``now``."""
        disc: float | None = None
        if self.t0 is None or self.last_due is None:
            base = now if self.last_due is None else max(now, self.last_due + self.period)
            self._resync(base, pts)
            due = base
        else:
            step = None if pts is None else pts - self.last_pts
            if step is not None and 0 < step <= self.max_gap:
                assert pts is not None
                due = self.t0 + (pts - self.pts0)
                self.last_pts = pts
            else:
                if step is not None and abs(step) > self.max_gap:
                    disc = step
                due = self.last_due + self.period
                self._resync(due, pts)
        late = now - due > self.max_gap
        if late:
            due = now
            self._resync(now, pts)
        self.last_due = due
        return Release(due=due, delay=max(0.0, due - now), discontinuity=disc, resynced_late=late)

    def _resync(self, at: float, pts: float | None) -> None:
        """From now on, timestamp ``pts`` is due at ``at``."""
        if pts is None:
            pts = self.last_pts + self.period
        self.t0, self.pts0, self.last_pts = at, pts, pts
