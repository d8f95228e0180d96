"""The ZeroMQ publishing side. One thread owns the socket (ZeroMQ sockets are not thread-safe):
the pipeline loop publishes from its own thread, and events raised by source threads reach it
through a bounded queue (full -> dropped and counted).

Delivery semantics (README "Message contract", docs/publishing.md):

- The socket is an XPUB with ``ZMQ_XPUB_NODROP``: a send that would exceed ``SNDHWM`` on the queue
  of any subscriber of that topic fails at once (``zmq.Again``, the send is ``NOBLOCK``) instead of
  being discarded silently for that subscriber, as a plain PUB does. Such a message reaches *no*
  subscriber: it is counted in ``detectd_frames_dropped_total{reason="zmq_hwm"}`` (events:
  ``detectd_events_dropped_total``) and never in ``detectd_frames_published_total``. Every
  subscriber connected throughout therefore sees exactly the counted drops as ``seq`` gaps. The
  price: while one subscriber of a topic is ``SNDHWM`` messages behind, the others miss those
  messages too (counted); a subscriber that reads nothing for long is the one to fix.
- ``XPUB_VERBOSE``: every subscription, repeated ones included, reaches this thread. A new
  subscription whose prefix covers ``events/<id>/`` is answered with an ``event: "state"``
  message per covered stream: its current state (the state of its last transition) with the
  next ``seq`` of its events. A ``state`` message is also sent when a stream is added, and after
  a transition was dropped at the HWM (as soon as the queue has room), so no consumer is left
  with a stale state. A ``state`` message that meets a full queue is retried, not dropped. A
  stream removed by a reload, and every stream when the daemon stops, gets a last ``state``
  message ``stopped``.
- ``ipc://`` endpoints are claimed (:mod:`daemon.publish.endpoint`): a second daemon on the same
  path exits with a clear error, and :meth:`Publisher.endpoint_problem` reports a socket file
  that was removed or replaced (``/readyz``).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import defaultdict
from typing import Any

import zmq

from daemon.frames import FrameResult
from daemon.metrics import Metrics
from daemon.publish import schema, state
from daemon.publish.endpoint import IpcClaim
from daemon.vocab import DropReason, Topic

log = logging.getLogger(__name__)

ENDPOINT_CHECK_INTERVAL = 1.0  # seconds between checks that an ipc socket file is still ours


class Publisher:
    """Publishes detections and events on one XPUB socket bound at ``endpoint``.

    Raises ``OSError`` naming ``publish.endpoint`` when the endpoint cannot be bound, or is owned
    by another live process (:class:`daemon.publish.endpoint.EndpointInUse`, for ``ipc://``).
    Every method except :meth:`post_event` and :meth:`endpoint_problem` must be called from the
    one publishing thread.
    """

    def __init__(self, endpoint: str, metrics: Metrics, *, sndhwm: int = 10000,
                 skip_empty: bool = False, curve: Any = None, event_queue_size: int = 1024,
                 context: zmq.Context | None = None) -> None:  # type: ignore[type-arg]
        self.ctx = context or zmq.Context.instance()
        self.claim = IpcClaim.acquire(endpoint)  # before the bind, which would unlink a live one
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.authenticator = None
        try:
            if curve is not None:
                from daemon.publish import curve as curve_mod

                self.authenticator = curve_mod.configure_server(
                    self.sock, curve.server_secret_key, curve.authorized_keys_dir)
            try:
                self.sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise OSError(f"publish.endpoint: cannot bind {endpoint}: {exc}") from exc
            if self.claim is not None:
                self.claim.bound()
        except BaseException:
            self.sock.close(0)
            if self.authenticator is not None:
                self.authenticator.stop()
            if self.claim is not None:
                self.claim.release()
            raise
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.metrics = metrics
        self.skip_empty = skip_empty
        self.seq: dict[str, int] = defaultdict(int)
        self.event_seq: dict[str, int] = defaultdict(int)
        self.analytics_seq: dict[str, int] = defaultdict(int)
        self.events: queue.Queue[state.Queued] = queue.Queue(event_queue_size)
        # Per tracked stream: its last transition (payload fields), the source of ``state``.
        self.states: dict[str, dict[str, Any]] = {}
        self.state_due: set[str] = set()  # streams whose ``state`` message is to be sent
        self._problem: str | None = None
        self._next_check = 0.0
        metrics.publish_endpoint_ok.set(1)

    # -- detections --------------------------------------------------------------------------
    def _send(self, t: bytes, body: bytes) -> bool:
        try:
            self.sock.send_multipart([t, body], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:  # XPUB_NODROP: a subscriber's queue is at SNDHWM; nobody got it
            return False

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool:
        """Publish one frame's detections. Returns False when skipped (``skip_empty``) or
        dropped at the HWM (counted, ``reason="zmq_hwm"``); True when queued for every
        subscriber of its topic."""
        stream = result.frame.stream
        if self.skip_empty and len(result.detections) == 0:
            return False
        payload = schema.detections_payload(result, self.seq[stream], labels, model)
        # seq advances even when the message is dropped, so subscribers see the gap.
        self.seq[stream] += 1
        if not self._send(schema.topic(Topic.DETECTIONS, stream), schema.encode(payload)):
            self.metrics.count_drop(stream, DropReason.ZMQ_HWM)
            return False
        self.metrics.frames_published.labels(stream).inc()
        return True

    # -- streams and their state ---------------------------------------------------------------
    def add_stream(self, stream: str) -> None:
        """Track ``stream``'s state from now on (``connecting``) and announce it."""
        self.flush_events()  # a predecessor's queued transitions belong to the old stream
        self.states[stream] = state.initial()
        self.state_due.add(stream)

    def remove_stream(self, stream: str, reason: str | None = None) -> None:
        """Stop tracking ``stream``. With a ``reason`` (the stream is gone for good), its
        subscribers get a last ``state`` message, ``stopped`` with that reason, so that no
        consumer keeps showing a stream that no longer exists as up."""
        self.flush_events()
        if reason is not None and stream in self.states:
            self._farewell(stream, reason)
        self.states.pop(stream, None)
        self.state_due.discard(stream)

    def _farewell(self, stream: str, reason: str) -> None:
        self.states[stream] = state.stopped(self.states[stream], reason)
        self.state_due.add(stream)
        self._send_states(only=stream)
        if stream in self.state_due:  # no room, and no later chance: counted
            self.metrics.events_dropped.inc()

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        """Publish one analytics event (topic ``analytics/<stream>/``, own per-stream ``seq``);
        from the publishing thread. A drop at the HWM is counted in detectd_events_dropped_total."""
        payload = schema.analytics_payload(stream, self.analytics_seq[stream], event)
        self.analytics_seq[stream] += 1
        if not self._send(schema.topic(Topic.ANALYTICS, stream), schema.encode(payload)):
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
        """Publish queued events, answer new subscriptions with ``state`` messages and check the
        endpoint; call from the publishing thread only. Returns the events published."""
        n = 0
        for stream, payload in state.drain(self.events, self.event_seq, self.states):
            if self._send(schema.topic(Topic.EVENTS, stream), schema.encode(payload)):
                n += 1
            else:
                self.metrics.events_dropped.inc()
                if stream in self.states:
                    self.state_due.add(stream)  # repair: the state follows once there is room
        self._read_subscriptions()
        self._send_states()
        self._check_endpoint()
        return n

    def _read_subscriptions(self) -> None:
        """Subscription messages (``\\x01`` + prefix; ``\\x00`` unsubscribes) from XPUB."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] != 1:
                continue
            prefix = msg[1:]
            for stream in self.states:
                if schema.topic(Topic.EVENTS, stream).startswith(prefix):
                    self.state_due.add(stream)

    def _send_states(self, only: str | None = None) -> None:
        for stream in sorted(self.state_due) if only is None else [only]:
            st = self.states.get(stream)
            if st is None:
                self.state_due.discard(stream)
                continue
            payload = state.payload(stream, self.event_seq[stream], st)
            if not self._send(schema.topic(Topic.EVENTS, stream), schema.encode(payload)):
                return  # a queue is full: retried at the next flush, nothing is lost
            self.event_seq[stream] += 1
            self.state_due.discard(stream)

    # -- endpoint health -----------------------------------------------------------------------
    def endpoint_problem(self) -> str | None:
        """None while subscribers can reach this publisher at its endpoint; else why not (an
        ``ipc://`` socket file removed or replaced). Thread-safe."""
        return None if self.claim is None else self.claim.problem()

    def problem(self) -> str | None:
        """:class:`daemon.publish.sink.Sink` readiness: the endpoint problem, if any."""
        return self.endpoint_problem()

    def _check_endpoint(self) -> None:
        """Once a second: log when the endpoint is lost or back, and export it as a gauge."""
        now = time.monotonic()
        if self.claim is None or now < self._next_check:
            return
        self._next_check = now + ENDPOINT_CHECK_INTERVAL
        problem = self.claim.problem()
        if problem != self._problem:
            if problem is not None:
                log.error("publish.endpoint %s lost: %s; restart detectd to bind it again",
                          self.endpoint, problem)
            else:
                log.info("publish.endpoint %s is ours again", self.endpoint)
            self._problem = problem
        self.metrics.publish_endpoint_ok.set(0 if problem else 1)

    def close(self) -> None:
        """Publish what is queued, tell subscribers every stream is ``stopped`` (a last
        ``state`` each), and close; queued messages get ``LINGER`` (1 s) to leave."""
        self.flush_events()
        for stream in sorted(self.states):
            self._farewell(stream, "detectd stopped")
        self.sock.close(linger=1000)
        if self.authenticator is not None:
            self.authenticator.stop()
        if self.claim is not None:
            self.claim.release()
