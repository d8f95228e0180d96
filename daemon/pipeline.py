"""The per-frame loop: scheduler -> detector -> analytics -> sinks, and the drain on SIGTERM.

Runs on the main thread; the only code that publishes. Each turn (:meth:`Pipeline.step`) takes a
fair batch from the scheduler, submits it to the detector (``daemon/detector.py``), and publishes
every finished job: detections and analytics events to the sinks (one ``FanOut``: ZeroMQ, and any
other transport), then each result to the result hooks (the preview hub). :meth:`Pipeline.run`
adds what happens between turns: a stop request starts a :class:`Drain`, a reload request is
handed to the app, systemd's watchdog is fed while frames move, a status line is logged.

Pipelined engines keep jobs in flight: a job is collected when the in-flight limit is reached,
when a completion wakes the loop (``CompletionSource``: then every ready job is collected at
once), or -- for an engine that cannot say when it is done -- as soon as no frame is waiting.

Where things go: a new per-frame stage goes in :meth:`Pipeline.publish` (with its
``detectd_stage_seconds`` label in ``metrics.py``); a new transport is a ``Sink``
(``publish/sink.py``), not code here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from daemon.analytics.config import AnalyticsConfig, unknown_labels
from daemon.analytics.state import StreamAnalytics
from daemon.config import Config
from daemon.detector import Detected, Detector, Job
from daemon.frames import Frame, FrameResult
from daemon.metrics import Metrics
from daemon.vocab import DropReason
from daemon.publish.sink import Sink
from daemon.scheduler import Scheduler
from daemon.sources.streams import Streams

log = logging.getLogger("detectd")

ResultHook = Callable[[FrameResult, list[str]], None]
SETTLE_S = 0.5  # a draining source blocked in a network read gets this long to hand over


@dataclass
class Window:
    """Recent figures for the status line (bounded: never grows)."""

    frames: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    labels: Counter[str] = field(default_factory=Counter)
    since: float = field(default_factory=time.monotonic)


@dataclass
class Drain:
    """A stop in progress: frames queued or in flight are published until ``deadline``."""

    started: float
    deadline: float
    frames_before: int  # frames_total when the drain began

    def over(self, now: float, frames_total: int, queued: int, in_flight: int, sources_ended: bool) -> bool:
        """Done when nothing is queued or in flight and the sources have ended, or have had
        ``SETTLE_S`` to hand over their last frame (a read blocked on the network must not hold
        the exit to the full deadline); or at the deadline."""
        if queued == 0 and in_flight == 0 and (sources_ended or now - self.started > SETTLE_S):
            n = frames_total - self.frames_before
            log.info("drained: %d frame%s in flight published", n, "" if n == 1 else "s")
            return True
        if now >= self.deadline:
            log.warning("drain deadline reached: %d frames published, %d not published",
                        frames_total - self.frames_before, queued)
            return True
        return False


class Host(Protocol):
    """What :meth:`Pipeline.run` needs from the app around it."""

    cfg: Config
    stop_requested: threading.Event
    reload_requested: threading.Event
    notifier: Any  # daemon.systemd.Notifier or None

    def begin_drain(self) -> None: ...

    def reload(self) -> bool: ...


class Pipeline:
    def __init__(self, scheduler: Scheduler, detector: Detector, sink: Sink, metrics: Metrics,
                 streams: Streams, model_desc: dict[str, str]) -> None:
        self.scheduler, self.detector, self.sink, self.metrics = scheduler, detector, sink, metrics
        self.streams, self.model_desc = streams, model_desc
        self.labels = detector.labels
        self.analytics: dict[str, StreamAnalytics] = {}  # streams with analytics.tracker
        self.hooks: list[ResultHook] = []  # e.g. the preview hub's offer
        self.keep_native: Callable[[], bool] = lambda: False  # the preview is being watched
        self.pending: deque[Job] = deque()  # submitted, not yet published, oldest first
        self.frames_total = 0  # frames processed (published or not), for the watchdog
        self._wd_frames = 0
        self.window = Window()
        self.exit_code = 0
        # Completion-driven collection: the engine wakes the scheduler when a job is done.
        self.completes = detector.set_on_complete(scheduler.wake)

    # -- one turn --------------------------------------------------------------------------------
    def step(self) -> bool:
        """Take a batch (waiting up to 0.1 s when idle, less with results in flight), submit it,
        publish what is done. True when a batch was taken."""
        # With results in flight and no completion callback, only take frames already waiting:
        # when none is, publish the oldest now (a wait of at most one inference) rather than leave
        # it until more frames arrive (a live stream's result would wait in_flight-1 periods).
        batch = self.scheduler.next_batch(timeout=0.0 if self.pending and not self.completes else 0.1)
        if batch:
            self.process(batch)
        elif self.pending and not self.completes:
            self.collect_one()  # idle: nothing to overlap with, publish now
        elif not self.pending and self.analytics:
            self.end_finished_analytics()
        if self.completes:
            while self.pending and self.detector.ready(self.pending[0]):
                self.collect_one()
        return bool(batch)

    def process(self, batch: list[Frame]) -> None:
        while len(self.pending) >= self.detector.in_flight:
            self.collect_one()
        job = self.detector.submit(batch, release=not self.keep_native())
        for frame, exc in job.rejected:
            self.metrics.count_drop(frame.stream, DropReason.UNSUPPORTED_FRAME)
            log.error("stream %s: frame %d not converted: %s", frame.stream, frame.index, exc)
        m = self.metrics.stage["preprocess"]
        for s in job.preprocess_s:
            m.observe(s)
        if job.frames:
            self.pending.append(job)
        while len(self.pending) > self.detector.in_flight - 1:
            self.collect_one()

    def collect_one(self) -> None:
        self.publish(self.detector.collect(self.pending.popleft()))

    def flush(self) -> None:
        """Publish every job in flight (before a stream is removed, at the end)."""
        while self.pending:
            self.collect_one()

    def publish(self, done: Detected) -> None:
        m, labels = self.metrics.stage, self.labels
        self.metrics.batch_size.observe(len(done.frames))
        t_infer, t_post = done.infer_s, done.post_s
        for frame, d in zip(done.frames, done.detections):
            m["infer"].observe(t_infer)
            m["postprocess"].observe(t_post)
            analytics = self.analytics.get(frame.stream)
            events: list[dict[str, Any]] = []
            if analytics is not None:  # tracks, zones, lines: sets d.track_ids
                t0 = time.perf_counter()
                events = analytics.update(frame, d)
                m["analytics"].observe(time.perf_counter() - t0)
            result = FrameResult(frame, d, {"infer": t_infer, "postprocess": t_post})
            t0 = time.perf_counter()
            published = self.sink.publish_result(result, labels, self.model_desc)
            self.publish_analytics(frame.stream, events)
            m["publish"].observe(time.perf_counter() - t0)
            latency = time.monotonic() - frame.t_decoded
            if published:
                self.metrics.frame_latency.labels(frame.stream).observe(latency)
                for cid in d.class_ids.tolist():
                    name = labels[cid] if 0 <= cid < len(labels) else str(cid)
                    self.metrics.detections.labels(frame.stream, name).inc()
                    self.window.labels[name] += 1
            self.window.frames += 1
            self.window.latencies.append(latency)
            for hook in self.hooks:
                hook(result, labels)
        self.frames_total += len(done.frames)

    def publish_analytics(self, sid: str, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.sink.publish_analytics(sid, ev)

    def set_analytics(self, sid: str, cfg: AnalyticsConfig | None) -> None:
        """Create, reconfigure (tracks kept) or, for ``None`` or no tracker, end stream ``sid``'s
        tracker/zones/lines (its last events are published)."""
        a = self.analytics.get(sid)
        if cfg is not None:
            for problem in unknown_labels(cfg, self.labels):
                log.warning("stream %s: %s", sid, problem)
        if cfg is None or cfg.tracker is None:
            if a is not None:
                self.publish_analytics(sid, self.analytics.pop(sid).close())
        elif a is None:
            self.analytics[sid] = StreamAnalytics(sid, cfg, self.labels, self.metrics)
            log.info("stream %s: analytics on: tracker, zones %s, lines %s", sid,
                     [z.name for z in cfg.zones] or "none", [ln.name for ln in cfg.lines] or "none")
        else:
            a.reconfigure(cfg)

    def end_all_tracks(self) -> None:
        for sid, a in self.analytics.items():
            self.publish_analytics(sid, a.end_tracks())

    def end_finished_analytics(self) -> None:
        """A finite stream that has ended (and whose frames are all processed) ends its tracks:
        the zone exits of whoever was still inside are published (reason ``ended``)."""
        for sid in [sid for sid in self.streams.finished() if sid in self.analytics]:
            self.publish_analytics(sid, self.analytics[sid].end_tracks())

    # -- the loop --------------------------------------------------------------------------------
    def run(self, host: Host) -> int:
        """Turn until stopped and drained, or until every source has ended; the exit status."""
        # The first window starts with the loop: model loading and calibration are not time in
        # which frames could have flowed, so they must not dilute the first rate.
        self.window = Window()
        next_status = time.monotonic() + (host.cfg.logging.status_interval or float("inf"))
        wd_interval = host.notifier.watchdog_interval() if host.notifier is not None else None
        next_wd = time.monotonic()
        drain: Drain | None = None
        while True:
            if drain is None and host.stop_requested.is_set():
                now = time.monotonic()
                drain = Drain(now, now + host.cfg.shutdown.drain_timeout, self.frames_total)
                queued = self.scheduler.pending()
                log.info("stopping: draining %d queued frame%s (deadline %.1fs)", queued,
                         "" if queued == 1 else "s", host.cfg.shutdown.drain_timeout)
                host.begin_drain()
            elif drain is None and host.reload_requested.is_set():
                host.reload_requested.clear()
                host.reload()
            took = self.step()
            self.sink.flush_events()
            now = time.monotonic()
            if wd_interval is not None and now >= next_wd and drain is None and self.watchdog_ok():
                host.notifier.watchdog()
                next_wd = now + wd_interval
            if now >= next_status:
                self.status_line()
                interval = host.cfg.logging.status_interval
                next_status = now + interval if interval else float("inf")
            if drain is not None:
                if drain.over(now, self.frames_total, self.scheduler.pending(), len(self.pending),
                              self.streams.all_finished()):
                    return self.exit_code
            elif (not took and not self.pending and len(self.streams) and self.streams.all_finished()
                  and self.scheduler.pending() == 0):
                failed = self.streams.failed()
                if len(failed) == len(self.streams):
                    # Nothing ever worked: under systemd that is a failure, not a clean stop.
                    log.error("every stream failed (%s): exiting with status 1", ", ".join(failed))
                    self.exit_code = 1
                else:
                    log.info("every source has ended: exiting")
                return self.exit_code

    def watchdog_ok(self) -> bool:
        """Feed systemd's watchdog only while frames were processed since the last feed, or
        every stream is legitimately idle (waiting to reconnect, or finished): an alive but
        stuck daemon (a hung backend, a stream up but silent past its stall detection) gets
        restarted by systemd."""
        moved = self.frames_total != self._wd_frames
        self._wd_frames = self.frames_total
        return moved or self.streams.idle_ok()

    def status_line(self) -> None:
        w = self.window
        dt = time.monotonic() - w.since
        lat = np.asarray(w.latencies) * 1000 if w.latencies else np.zeros(1)
        top = ", ".join(f"{k} {v}" for k, v in w.labels.most_common(6)) or "none"
        log.info("status: %.1f frames/s (%d frames in %.1f s), latency p50 %.0f ms p99 %.0f ms, "
                 "streams up %d/%d, detections: %s", w.frames / dt if dt > 0 else 0.0, w.frames, dt,
                 np.percentile(lat, 50), np.percentile(lat, 99), self.streams.up(), len(self.streams), top)
        self.window = Window()
