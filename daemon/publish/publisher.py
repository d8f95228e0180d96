"""The ZeroMQ PUB side. One thread owns the socket (ZeroMQ sockets are not thread-safe): the
pipeline loop publishes from its own thread, and events raised by source threads reach it through
a bounded queue (full -> dropped and counted).

PUB never blocks: ``SNDHWM`` bounds what is queued for a slow subscriber, and ``zmq.NOBLOCK``
sends that would exceed it are counted in ``detectd_frames_dropped_total{reason="zmq_hwm"}``
(events: ``detectd_events_dropped_total``).
"""

from __future__ import annotations

import logging
import queue
from collections import defaultdict
from typing import Any

import zmq

from daemon.frames import FrameResult
from daemon.metrics import Metrics
from daemon.publish import schema

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, endpoint: str, metrics: Metrics, *, sndhwm: int = 10000,
                 skip_empty: bool = False, curve: Any = None, event_queue_size: int = 1024,
                 context: zmq.Context | None = None) -> None:
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.authenticator = None
        if curve is not None:
            from daemon.publish import curve as curve_mod

            self.authenticator = curve_mod.configure_server(
                self.sock, curve.server_secret_key, curve.authorized_keys_dir)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self.sock.close(0)
            raise OSError(f"publish.endpoint: cannot bind {endpoint}: {exc}") from exc
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.metrics = metrics
        self.skip_empty = skip_empty
        self.seq: dict[str, int] = defaultdict(int)
        self.event_seq: dict[str, int] = defaultdict(int)
        self.analytics_seq: dict[str, int] = defaultdict(int)
        self.events: queue.Queue[tuple[str, str, str | None, dict[str, Any]]] = queue.Queue(event_queue_size)

    def _send(self, t: bytes, body: bytes) -> bool:
        try:
            self.sock.send_multipart([t, body], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool:
        """Publish one frame's detections. Returns False when skipped or dropped."""
        stream = result.frame.stream
        if self.skip_empty and len(result.detections) == 0:
            return False
        payload = schema.detections_payload(result, self.seq[stream], labels, model)
        # seq advances even when ZeroMQ drops the message, so subscribers see the gap.
        self.seq[stream] += 1
        if not self._send(schema.topic(schema.DETECTIONS, stream), schema.encode(payload)):
            self.metrics.frames_dropped.labels(stream, "zmq_hwm").inc()
            return False
        self.metrics.frames_published.labels(stream).inc()
        return True

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        """Publish one analytics event (topic ``analytics/<stream>/``, own per-stream ``seq``);
        from the publishing thread. A drop at the HWM is counted in detectd_events_dropped_total."""
        payload = schema.analytics_payload(stream, self.analytics_seq[stream], event)
        self.analytics_seq[stream] += 1
        if not self._send(schema.topic(schema.ANALYTICS, stream), schema.encode(payload)):
            self.metrics.events_dropped.inc()
            return False
        return True

    def post_event(self, stream: str, event: str, reason: str | None = None, **extra: Any) -> None:
        """Thread-safe: queue an event for the publishing thread."""
        try:
            self.events.put_nowait((stream, event, reason, extra))
        except queue.Full:
            self.metrics.events_dropped.inc()

    def flush_events(self) -> int:
        """Publish queued events; call from the publishing thread only."""
        n = 0
        while True:
            try:
                stream, event, reason, extra = self.events.get_nowait()
            except queue.Empty:
                return n
            payload = schema.event_payload(stream, self.event_seq[stream], event, reason, **extra)
            self.event_seq[stream] += 1
            if not self._send(schema.topic(schema.EVENTS, stream), schema.encode(payload)):
                self.metrics.events_dropped.inc()
            n += 1

    def close(self) -> None:
        self.flush_events()
        self.sock.close(linger=1000)
        if self.authenticator is not None:
            self.authenticator.stop()
