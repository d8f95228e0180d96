"""Per-stream bounded frame queues and the fair, batching scheduler between sources and backend.

Drop policy, every drop counted in ``detectd_frames_dropped_total{stream,reason}``:

- live sources (RTSP/HTTP, and files with ``realtime: true``): only the newest queued frame is
  inferred, older ones are dropped as superseded; a full queue drops its *oldest*
  frame (``superseded``: a newer frame of the same stream exists); a frame older than the stream's
  ``max_age_ms`` when the scheduler picks it is dropped (``stale``). Latency therefore cannot creep:
  a frame is either fresh or gone.
- files with ``realtime: false``: never dropped; a full queue makes the decoder wait.

Batches are formed round-robin, one frame per stream per round, each take starting at the stream
after the last one served (across batches too), so a busy stream never starves another and, with
more streams than ``max_batch``, every stream gets the same share. Once one
frame is in hand the scheduler waits at most ``max_wait`` for the batch to fill.

:meth:`Scheduler.wake` (any thread) ends an idle :meth:`Scheduler.next_batch` wait at once: a
pipelined backend calls it when a job completes, so the loop publishes that result without
waiting for the next frame or the timeout, and without polling.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.vocab import DropReason


@dataclass
class _Queue:
    size: int
    live: bool
    max_age: float
    frames: deque[Frame] = field(default_factory=deque)


class Scheduler:
    def __init__(self, metrics: Metrics, max_batch: int = 1, max_wait: float = 0.005) -> None:
        self.metrics = metrics
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.cond = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.order: list[str] = []
        self._rr = 0
        self.closed = False
        self._woken = False  # wake() since the last idle wait it ended

    def add_stream(self, stream: str, *, size: int, live: bool, max_age: float) -> None:
        with self.cond:
            self.queues[stream] = _Queue(size, live, max_age)
            if stream not in self.order:
                self.order.append(stream)

    def remove_stream(self, stream: str) -> int:
        """Forget a stream; returns how many queued frames were discarded."""
        with self.cond:
            q = self.queues.pop(stream, None)
            if stream in self.order:
                self.order.remove(stream)
            self.cond.notify_all()
            return len(q.frames) if q else 0

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        """Queue a frame. Live: never blocks (drops the oldest). Non-live: waits for room.
        Returns False if the frame was not queued (stream removed, scheduler closed, stopping)."""
        with self.cond:
            q = self.queues.get(frame.stream)
            if q is None or self.closed:
                return False
            if q.live:
                while len(q.frames) >= q.size:
                    q.frames.popleft()
                    self.metrics.count_drop(frame.stream, DropReason.SUPERSEDED)
            else:
                while len(q.frames) >= q.size:
                    if self.closed or (stop is not None and stop.is_set()) or self.queues.get(frame.stream) is not q:
                        return False
                    self.cond.wait(0.1)
            q.frames.append(frame)
            self.cond.notify_all()
            return True

    def is_full(self, stream: str) -> bool:
        """The stream's queue is full: its next frame pushes out an older one (live) or waits
        (files). Sources report it to the reconnect policy as backpressure, not a stall."""
        with self.cond:
            q = self.queues.get(stream)
            return q is not None and len(q.frames) >= q.size

    def pending(self) -> int:
        with self.cond:
            return sum(len(q.frames) for q in self.queues.values())

    def _take_round(self, batch: list[Frame], now: float) -> None:
        n = len(self.order)
        start = self._rr % n
        for k in range(n):
            if len(batch) >= self.max_batch:
                return
            pos = (start + k) % n
            sid = self.order[pos]
            q = self.queues[sid]
            # Live: only the newest frame is worth inferring; older ones are superseded.
            while q.live and len(q.frames) > 1:
                q.frames.popleft()
                self.metrics.count_drop(sid, DropReason.SUPERSEDED)
            while q.frames:
                f = q.frames.popleft()
                if q.live and now - f.t_decoded > q.max_age:
                    self.metrics.count_drop(sid, DropReason.STALE)
                    continue
                batch.append(f)
                # The next take starts after this stream: with more streams than max_batch,
                # batches walk around the ring instead of favouring its first streams.
                self._rr = (pos + 1) % n
                break

    def next_batch(self, timeout: float) -> list[Frame]:
        """Up to ``max_batch`` frames, or [] after ``timeout`` with nothing to do."""
        deadline = time.monotonic() + timeout
        batch: list[Frame] = []
        with self.cond:
            fill_deadline: float | None = None
            while True:
                now = time.monotonic()
                before = len(batch)
                while len(batch) < self.max_batch:
                    if not self.order:
                        break
                    got = len(batch)
                    self._take_round(batch, now)
                    if len(batch) == got:
                        break
                if batch and before == 0:
                    fill_deadline = now + self.max_wait
                if len(batch) >= self.max_batch:
                    break
                if batch:
                    assert fill_deadline is not None
                    if now >= fill_deadline:
                        break
                    self.cond.wait(fill_deadline - now)
                else:
                    if self._woken:
                        self._woken = False  # consumed: one wake ends one wait
                        break
                    if now >= deadline or self.closed:
                        break
                    self.cond.wait(deadline - now)
            self.cond.notify_all()  # room freed for waiting decoders
        return batch

    def wake(self) -> None:
        """End the current (or the next) idle wait of :meth:`next_batch` now, with whatever is
        in hand (possibly nothing). Safe from any thread, including a backend's callback; a
        wake while a batch is being filled is kept for the next idle wait."""
        with self.cond:
            self._woken = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
