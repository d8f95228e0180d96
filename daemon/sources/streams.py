"""The running streams: one :class:`~daemon.sources.pyav.StreamSource` thread per configured
stream, the threads a reload retired, and the supervisor thread that watches them all.

The app starts and removes streams through :class:`Streams`; it never touches a source thread
itself. A removed stream's thread is *retired*, not joined (a read may block for
``stall_timeout`` + 1 s): it touches no metric or event any more and ends on its own; once it has
ended its series are forgotten once more, so a write racing the retirement cannot bring one back.

The supervisor polls every stream's reconnect policy every ``SUPERVISE_INTERVAL`` seconds: it
notices a stall while a source thread is blocked in a read and exports the seconds since each
stream's last frame.

**A new stream option** is a field of ``config.StreamConfig`` (validated there) read by the
source (``sources/pyav.py``) or, when it concerns reconnects and stalls, by ``sources/policy.py``;
a reload restarts a stream whose options changed (``daemon/reload.py``), so nothing here changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from daemon.config import StreamConfig
from daemon.metrics import Metrics
from daemon.sources.pyav import EventFn, FrameSink, StreamSource
from daemon.sources.status import StreamStatus

log = logging.getLogger("detectd")

SUPERVISE_INTERVAL = 0.25  # seconds between the supervisor's polls of every stream

__all__ = ["SUPERVISE_INTERVAL", "Streams"]


class Streams:
    """``sources``: the live streams by id. ``stop``: the daemon's stop event (ends the
    supervisor). ``on_event``: where the sources' stream events go (the sinks' ``post_event``)."""

    def __init__(self, sink: FrameSink, metrics: Metrics, on_event: EventFn, stop: threading.Event) -> None:
        self.sink, self.metrics, self.on_event, self.stop_event = sink, metrics, on_event, stop
        self.sources: dict[str, StreamSource] = {}
        self.retired: list[StreamSource] = []  # removed by a reload, threads still finishing
        self._forget: set[StreamSource] = set()  # retired streams whose series go for good
        # Held by the supervisor while it polls, and by a removal: a removed stream's gauges are
        # never written again after its series are gone.
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.sources)

    @contextmanager
    def paused_supervision(self) -> Iterator[None]:
        """Hold off the supervisor (a stream is being removed and its series with it)."""
        with self._lock:
            yield

    def start(self, cfg: StreamConfig) -> StreamSource:
        src = StreamSource(cfg, self.sink, self.metrics, self.on_event)
        self.sources[cfg.id] = src
        src.start()
        return src

    def retire(self, sid: str, *, forget_metrics: bool) -> StreamSource | None:
        """Stop stream ``sid`` without waiting for its thread; call under
        :meth:`paused_supervision`. ``forget_metrics``: forget its series again once it ends."""
        src = self.sources.pop(sid, None)
        if src is not None:
            src.retire()
            self.retired.append(src)
            if forget_metrics:
                self._forget.add(src)
        return src

    def start_supervisor(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self.stop_event.wait(SUPERVISE_INTERVAL):
            now = time.monotonic()
            with self._lock:
                for src in list(self.sources.values()):
                    try:
                        src.supervise(now)
                    except Exception:  # never let one stream's surprise stop the supervision of all
                        log.exception("stream %s: supervision failed", src.cfg.id)
                self._sweep_retired()

    def _sweep_retired(self) -> None:
        """Retired threads that have ended: forget their stream's series once more (unless the
        stream is back under the same id), and stop tracking them."""
        for src in [s for s in self.retired if s.finished.is_set()]:
            self.retired.remove(src)
            if src in self._forget and src.cfg.id not in self.sources:
                self.metrics.remove_stream(src.cfg.id)
            self._forget.discard(src)

    # -- questions the loop asks ---------------------------------------------------------------
    def all_finished(self) -> bool:
        return all(s.finished.is_set() for s in self.sources.values())

    def finished(self) -> list[str]:
        return [sid for sid, s in self.sources.items() if s.finished.is_set()]

    def failed(self) -> list[str]:
        return [sid for sid, s in self.sources.items() if s.failed]

    def idle_ok(self) -> bool:
        """Every stream legitimately delivers nothing now (reconnect wait, finished)."""
        return all(s.idle_ok for s in self.sources.values())

    def up(self) -> int:
        return sum(1 for s in self.sources.values() if s.delivering)

    def status(self, sid: str) -> StreamStatus | None:
        """The stream's own snapshot (state, reconnects, drops) for the preview page; None for
        an unknown id."""
        src = self.sources.get(sid)
        return src.status() if src is not None else None

    # -- stopping --------------------------------------------------------------------------------
    def stop_all(self) -> None:
        for src in self.sources.values():
            src.stop()

    def join_all(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the threads (blocked reads are daemon
        threads: the process does not wait for them)."""
        deadline = time.monotonic() + timeout
        for src in [*self.sources.values(), *self.retired]:
            src.join(max(0.0, deadline - time.monotonic()))
