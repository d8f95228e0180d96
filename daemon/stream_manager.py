"""Adding, retuning and removing one stream across every part that knows it, in order.

A stream lives in the metrics (its series), the sinks (its state topic), the scheduler (its
queue), the pipeline (its analytics), the preview (its tile) and :class:`~daemon.sources.streams.Streams`
(its source thread). :class:`StreamManager` is the one place that touches all of them, for the
start-up and for a reload (``daemon/reload.py`` calls it through the daemon).
"""

from __future__ import annotations

from typing import Any

from daemon.config import StreamConfig
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.publish.sink import FanOut
from daemon.scheduler import Scheduler
from daemon.sources.streams import Streams
from daemon.vocab import DropReason, StopReason

__all__ = ["StreamManager"]


class StreamManager:
    """``preview``: the :class:`~daemon.preview.hub.PreviewHub` when the page is served, else
    None."""

    def __init__(self, metrics: Metrics, sink: FanOut, scheduler: Scheduler, streams: Streams,
                 pipeline: Pipeline, preview: Any = None) -> None:
        self.metrics, self.sink, self.scheduler = metrics, sink, scheduler
        self.streams, self.pipeline, self.preview = streams, pipeline, preview

    def add(self, s: StreamConfig) -> None:
        self.metrics.init_stream(s.id)
        self.sink.add_stream(s.id)  # a late subscriber can learn its state
        self.scheduler.add_stream(s.id, size=s.queue_size, live=s.is_live, max_age=s.max_age_ms / 1000)
        if self.preview is not None:
            self.preview.add_stream(s.id)
        self.set_analytics(s)
        self.streams.start(s)

    def set_analytics(self, s: StreamConfig) -> None:
        """Create, reconfigure (a reload: tracks kept) or end a stream's tracker/zones/lines."""
        self.pipeline.set_analytics(s.id, s.analytics)
        if self.preview is not None:
            an = s.analytics
            self.preview.set_geometry(s.id, an.zones if an else [], an.lines if an else [])

    def remove(self, sid: str, *, forget_metrics: bool = True,
               reason: str = StopReason.REMOVED) -> None:
        """Stop a stream without waiting for its thread (``Streams.retire``). ``forget_metrics``:
        removed for good (not a restart): every series of the stream goes from /metrics, its
        preview tile from the page, and subscribers hear it is stopped, with ``reason``
        (``StopReason.MOVED`` when another shard serves it now)."""
        self.pipeline.flush()  # batches in flight publish (and count) before the removal
        with self.streams.paused_supervision():  # the supervisor writes per-stream gauges
            self.streams.retire(sid, forget_metrics=forget_metrics)
            self.pipeline.set_analytics(sid, None)
            dropped = self.scheduler.remove_stream(sid)
            self.sink.remove_stream(sid, reason if forget_metrics else None)
            if forget_metrics:
                self.metrics.remove_stream(sid)
                if self.preview is not None:
                    self.preview.remove_stream(sid)
            elif dropped:
                self.metrics.count_drop(sid, DropReason.SHUTDOWN, dropped)
