"""The MQTT sink: detections, events, analytics and state on an MQTT broker (docs/mqtt.md).

Client: `paho-mqtt <https://pypi.org/project/paho-mqtt/>`_ 2.x (Eclipse; MQTT 3.1.1 and 5,
TLS, last will, thread-safe ``publish``). Alternatives looked at: ``gmqtt`` and ``aiomqtt``
are asyncio-only (the pipeline is a plain thread) and ``aiomqtt`` wraps paho anyway; ``amqtt``
is a broker first. paho it is.

Topics (``P`` = ``mqtt.topic_prefix``), payloads the schema v1 JSON of ZeroMQ
(:mod:`daemon.publish.schema`), so one schema serves both transports:

====================================  ===========  =======  ================================
topic                                 QoS          retain   payload
====================================  ===========  =======  ================================
``P/detections/<stream>``             ``mqtt.qos``  no      one frame (``detections`` v1)
``P/analytics/<stream>``              ``mqtt.qos``  no      zone_enter/zone_exit/line_cross
``P/events/<stream>``                 1            no       a transition (``events`` v1)
``P/state/<stream>``                  1            yes      the stream's state (``event: state``)
``P/availability/<client_id>``        1            yes      ``online`` / ``offline`` (last will)
====================================  ===========  =======  ================================

Per-message topics are never retained (a broker full of retained detections runs out of
memory). State payloads carry ``instance`` (the client id) and ``shard``; the sink subscribes to
``P/state/+`` to know who wrote each retained state last, so that a stream that moved to
another shard keeps its new owner's state (docs/mqtt.md, "Topics"). ``seq`` is per stream and per topic kind, as on ZeroMQ; on ``state/<stream>`` it is the
``seq`` the next event on ``events/<stream>`` will carry.

Threads: the pipeline thread calls every :class:`~daemon.publish.sink.Sink` method except
``post_event`` and ``problem``; one thread of this sink (``mqtt``) connects, reconnects with
backoff and runs paho's network loop. Nothing here blocks the pipeline: while the broker is
away or slow, messages wait in a bounded buffer (``mqtt.buffer``, oldest dropped first) and
every message that does not reach the broker is counted by reason:

- ``buffer_full``: the buffer was at ``mqtt.buffer`` (broker away or too slow for too long);
- ``connection_lost``: QoS 0 only, handed to the client but not yet written when the
  connection dropped (QoS 1 messages not acknowledged are sent again after the reconnect);
- ``shutdown``: still buffered or unacknowledged when the daemon stopped (2 s grace).

Published (``detectd_mqtt_messages_published_total``) means written to the socket at QoS 0 and
acknowledged by the broker (PUBACK) at QoS 1.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import threading
import time
import weakref
from collections import defaultdict, deque
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from prometheus_client import Counter, Gauge

from daemon.frames import FrameResult
from daemon.metrics import Metrics
from daemon.publish import schema, state
from daemon.publish.mqtt_config import MqttConfig, expand_path, read_password
from daemon.redact import redact_text
from daemon.vocab import MqttDropReason, StopReason, StreamState

log = logging.getLogger(__name__)

ATTEMPT_RESULTS = ("ok", "auth", "refused", "error")
# CONNACK codes that mean "your credentials": MQTT 3.1.1 4/5, MQTT 5 134/135 (paho maps to 5's).
_AUTH_CODES = (134, 135)
CLOSE_GRACE = 2.0  # seconds close() waits for the last messages to be written / acknowledged


class MqttMetrics:
    """The sink's Prometheus series, registered once per :class:`daemon.metrics.Metrics`."""

    def __init__(self, registry: Any) -> None:
        self.connected = Gauge("detectd_mqtt_connected",
                               "1 while connected to the MQTT broker (CONNACK accepted).", registry=registry)
        self.attempts = Counter("detectd_mqtt_connection_attempts_total",
                                "Connection attempts to the MQTT broker by result: ok, auth "
                                "(credentials refused), refused (other CONNACK refusal), error "
                                "(network, TLS).", ["result"], registry=registry)
        self.published = Counter("detectd_mqtt_messages_published_total",
                                 "MQTT messages written to the socket (QoS 0) or acknowledged by "
                                 "the broker (QoS 1).", registry=registry)
        self.dropped = Counter("detectd_mqtt_messages_dropped_total",
                               "MQTT messages that did not reach the broker, by reason "
                               "(buffer_full, connection_lost, shutdown).", ["reason"], registry=registry)
        self.buffered = Gauge("detectd_mqtt_buffered_messages",
                              "MQTT messages waiting in the sink's buffer (broker away or slow).",
                              registry=registry)
        for reason in MqttDropReason:
            self.dropped.labels(reason)
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result)

    @classmethod
    def of(cls, metrics: Metrics) -> "MqttMetrics":
        """The series of ``metrics``' registry, created on first use (a registry refuses a name
        twice; a sink rebuilt on the same :class:`Metrics` shares them)."""
        m = _MQTT_METRICS.get(metrics)
        if m is None:
            m = _MQTT_METRICS[metrics] = cls(metrics.registry)
        return m


# Metrics -> its MQTT series; typed, and gone with the Metrics (tests build many).
_MQTT_METRICS: "weakref.WeakKeyDictionary[Metrics, MqttMetrics]" = weakref.WeakKeyDictionary()


class MqttSink:
    """A :class:`daemon.publish.sink.Sink` that publishes to the broker of ``cfg``.

    ``metrics`` is the daemon's :class:`daemon.metrics.Metrics` (the ``detectd_mqtt_*`` series are
    added to its registry). Raises :class:`daemon.publish.mqtt_config.MqttCredentialError`
    (naming ``mqtt.password_file``) when the password cannot be read, and ``OSError`` naming
    ``mqtt.tls`` when the TLS files cannot be loaded. The broker being away is no error: the
    sink connects in the background and :meth:`problem` says why it is not connected.
    """

    def __init__(self, cfg: MqttConfig, metrics: Metrics, *, client_id: str, shard: tuple[int, int] = (0, 1),
                 event_queue_size: int = 1024) -> None:
        self.cfg = cfg
        self.m = MqttMetrics.of(metrics)
        self.prefix = cfg.topic_prefix
        self.client_id = client_id
        # Who sends a retained state (``instance``, ``shard`` in its payload): when streams move
        # between shards, the old and the new owner write the same state/<stream> topic.
        self.origin: dict[str, Any] = {"instance": client_id, "shard": {"index": shard[0], "count": shard[1]}}
        self.required_for_ready = cfg.required_for_ready  # FanOut.problem(required_only=True)
        self.where = f"{cfg.host}:{cfg.broker_port}"
        self.availability_topic = f"{self.prefix}/availability/{client_id}"
        password = read_password(cfg)
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=paho.MQTTv311, clean_session=True)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            t = cfg.tls
            try:
                c.tls_set(ca_certs=None if t.ca_file is None else str(expand_path(t.ca_file)),
                          certfile=None if t.cert_file is None else str(expand_path(t.cert_file)),
                          keyfile=None if t.key_file is None else str(expand_path(t.key_file)),
                          cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise OSError(f"mqtt.tls: cannot load the certificate files: {exc}") from exc
            if t.insecure:
                c.tls_insecure_set(True)
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        # Our own bound (self.cfg.inflight) comes first; paho's must not refuse before it.
        c.max_inflight_messages_set(cfg.inflight)
        c.max_queued_messages_set(cfg.inflight + 16)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_message = self._on_state_seen
        # Pipeline-thread state.
        self.buffer: deque[tuple[str, bytes, int, bool]] = deque()
        self.seq: dict[str, int] = defaultdict(int)
        self.event_seq: dict[str, int] = defaultdict(int)
        self.analytics_seq: dict[str, int] = defaultdict(int)
        self.states: dict[str, dict[str, Any]] = {}
        self.state_due: set[str] = set()
        self.events: queue.Queue[state.Queued] = queue.Queue(event_queue_size)
        # Shared with the network thread, under self.lock.
        self.lock = threading.Lock()
        self.inflight: dict[int, int] = {}  # mid -> QoS, handed to paho, not yet written/acked
        self.early: set[int] = set()  # mids paho confirmed before publish() returned
        # state/<stream> as the broker last delivered it to us: stream -> the sending instance.
        self.owner: dict[str, str] = {}
        self.owned: set[str] = set()  # streams this instance serves (mirror of self.states)
        self.reclaim: set[str] = set()  # owned streams another instance marked stopped
        self.connected = False
        self.resync = False  # set on (re)connect: the pipeline re-sends retained states
        self.since = time.monotonic()
        self.reason = "connecting"
        self.closing = threading.Event()  # close() began: end after the DISCONNECT is written
        self.stop = threading.Event()  # end the network loop now
        self.m.connected.set(0)
        self.thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self.thread.start()

    # -- the network thread --------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self.closing.is_set():
            try:
                self.client.connect(self.cfg.host, self.cfg.broker_port, self.cfg.keepalive)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.m.attempts.labels("error").inc()
                self._set_down(f"cannot connect: {redact_text(str(exc)) or type(exc).__name__}")
            else:
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                while not self.stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = self.client.loop(timeout=0.5)
                with self.lock:
                    was_up = self.connected
                if was_up:
                    attempt = 0  # it worked: the next wait starts small again
                if self.closing.is_set():
                    return
                self._lost(rc)
            # Full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015).
            cap = min(self.cfg.reconnect_max, self.cfg.reconnect_min * 2 ** min(attempt, 30))
            attempt += 1
            self.closing.wait(max(0.1, random.uniform(0, cap)))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        code = getattr(reason, "value", reason)
        if getattr(reason, "is_failure", bool(code)):
            if code in _AUTH_CODES:
                self.m.attempts.labels("auth").inc()
                user = "no mqtt.username" if self.cfg.username is None else f"mqtt.username {self.cfg.username!r}"
                pw = "mqtt.password_file" if self.cfg.password_file else "no mqtt.password_file"
                self._set_down(f"the broker refused the credentials ({user}, {pw}): {reason}")
            else:
                self.m.attempts.labels("refused").inc()
                self._set_down(f"the broker refused the connection: {reason}")
            return
        self.m.attempts.labels("ok").inc()
        # paho emptied its packet queue in connect(): a QoS 0 message handed over while the old
        # connection was dying is gone (counted here if _lost could not see it yet).
        self._drop_unwritten_qos0()
        # Every state/<stream>, retained ones first: who wrote each last (see _on_state_seen).
        self.client.subscribe(f"{self.prefix}/state/+", qos=1)
        self._publish("availability", self.availability_topic, b"online", 1, True)
        with self.lock:
            self.connected, self.resync, self.reason = True, True, ""
            self.since = time.monotonic()
        self.m.connected.set(1)
        log.info("mqtt: connected to %s as %s", self.where, self.client_id)

    def _set_down(self, reason: str) -> None:
        with self.lock:
            changed = reason != self.reason
            if self.connected or changed:
                self.since = time.monotonic()
            self.connected, self.reason = False, reason
        self.m.connected.set(0)
        if changed:  # once per distinct reason, not once per retry
            log.error("mqtt: %s: %s; retrying with backoff, messages buffered (up to mqtt.buffer=%d)",
                      self.where, reason, self.cfg.buffer)

    def _lost(self, rc: Any) -> None:
        """The network loop ended: QoS 0 messages not written are gone (counted); QoS 1 ones stay
        with paho, which sends them again after the next CONNACK."""
        self._drop_unwritten_qos0()
        with self.lock:
            was_up = self.connected
        if was_up:
            self._set_down(f"connection lost ({paho.error_string(rc)})")

    def _drop_unwritten_qos0(self) -> None:
        with self.lock:
            lost = [mid for mid, q in self.inflight.items() if q == 0]
            for mid in lost:
                del self.inflight[mid]
        if lost:
            self.m.dropped.labels(MqttDropReason.CONNECTION_LOST).inc(len(lost))

    def _on_state_seen(self, client: Any, userdata: Any, msg: Any) -> None:
        """A state/<stream> message (ours echoed, or another instance's). Network thread.

        Records who wrote the topic last (the broker delivers one topic's messages in order, so
        that is the retained value); a ``stopped`` from another instance on a stream we serve
        (its late goodbye after the stream moved to us) makes us publish our state again."""
        stream = msg.topic.rsplit("/", 1)[-1]
        try:
            p = json.loads(msg.payload) if msg.payload else {}
            sender, st = str(p.get("instance", "")), p.get("state")
        except (ValueError, AttributeError):
            sender, st = "", None  # not ours to judge: someone else's payload
        with self.lock:
            if not msg.payload:
                self.owner.pop(stream, None)  # retained value cleared
                return
            self.owner[stream] = sender
            if sender != self.client_id and st == StreamState.STOPPED and stream in self.owned:
                self.reclaim.add(stream)

    def _writes_last(self, stream: str) -> bool:
        """True when the broker's retained state of ``stream`` is ours as far as we saw (or we
        saw none): only then may this instance overwrite it with ``stopped``."""
        with self.lock:
            return self.owner.get(stream, self.client_id) == self.client_id

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.lock:
            if self.inflight.pop(mid, None) is None:
                self.early.add(mid)
        self.m.published.inc()

    # -- publishing (pipeline thread; _publish also from on_connect) ---------------------------
    def _publish(self, kind: str, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Hand one message to paho; False when not connected or at the ``inflight`` bound."""
        with self.lock:
            if not self.connected and kind != "availability":
                return False
            if len(self.inflight) >= self.cfg.inflight:
                return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            return False  # the socket just closed: the caller keeps the message
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return False  # MQTT_ERR_QUEUE_SIZE: paho's own bound, kept by the caller
        with self.lock:  # QoS 1 with NO_CONN stays in paho and is sent after the reconnect
            if info.mid in self.early:
                self.early.discard(info.mid)
            else:
                self.inflight[info.mid] = qos
        return True

    def _send(self, topic: str, payload: bytes, qos: int) -> bool:
        """A per-message topic (never retained): sent now, or buffered (oldest dropped)."""
        if self.buffer:
            self._drain()  # older messages first, and room before anything is dropped
        if not self.buffer and self._publish("message", topic, payload, qos, False):
            return True
        if len(self.buffer) >= self.cfg.buffer:
            self.buffer.popleft()
            self.m.dropped.labels(MqttDropReason.BUFFER_FULL).inc()
        self.buffer.append((topic, payload, qos, False))
        self.m.buffered.set(len(self.buffer))
        return True

    def _drain(self) -> None:
        while self.buffer:
            topic, payload, qos, retain = self.buffer[0]
            if not self._publish("message", topic, payload, qos, retain):
                break
            self.buffer.popleft()
        self.m.buffered.set(len(self.buffer))

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool:
        """One frame on ``<prefix>/detections/<stream>``; True when sent or buffered (a buffered
        message may be dropped later, counted); False when skipped (``mqtt.skip_empty``)."""
        stream = result.frame.stream
        if self.cfg.skip_empty and len(result.detections) == 0:
            return False
        payload = schema.detections_payload(result, self.seq[stream], labels, model)
        self.seq[stream] += 1
        return self._send(f"{self.prefix}/detections/{stream}", schema.encode(payload), self.cfg.qos)

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        payload = schema.analytics_payload(stream, self.analytics_seq[stream], event)
        self.analytics_seq[stream] += 1
        return self._send(f"{self.prefix}/analytics/{stream}", schema.encode(payload), self.cfg.qos)

    def add_stream(self, stream: str) -> None:
        self.flush_events()
        self.states[stream] = state.initial()
        with self.lock:
            self.owned.add(stream)
        self.state_due.add(stream)
        self._send_states()

    def remove_stream(self, stream: str, reason: str | None = None) -> None:
        """With a ``reason`` the retained state becomes ``stopped`` (kept on the broker, so a
        late client learns the stream is gone rather than seeing its last ``up``), unless the
        stream moved to another shard (:attr:`StopReason.MOVED`: its new owner writes the
        state) or another instance wrote the retained state since (it serves the stream now)."""
        self.flush_events()
        if reason not in (None, StopReason.MOVED) and stream in self.states and self._writes_last(stream):
            self._stopped(stream, str(reason))
        self.states.pop(stream, None)
        self.state_due.discard(stream)
        with self.lock:
            self.owned.discard(stream)
            self.reclaim.discard(stream)

    def _stopped(self, stream: str, reason: str) -> None:
        self.states[stream] = state.stopped(self.states[stream], reason)
        self.state_due.add(stream)
        self._send_states(only=stream)

    def post_event(self, stream: str, event: str, reason: str | None = None, **extra: Any) -> None:
        """Thread-safe: queue an event (full queue: dropped, counted as ``buffer_full``)."""
        try:
            self.events.put_nowait((stream, event, reason, extra))
        except queue.Full:
            self.m.dropped.labels(MqttDropReason.BUFFER_FULL).inc()

    def flush_events(self) -> int:
        """Send queued events, the buffer, and retained states due (after a reconnect: all)."""
        n = 0
        for stream, payload in state.drain(self.events, self.event_seq, self.states):
            if stream in self.states:
                self.state_due.add(stream)
            self._send(f"{self.prefix}/events/{stream}", schema.encode(payload), 1)
            n += 1
        with self.lock:
            resync, self.resync = self.resync, False
            reclaim, self.reclaim = self.reclaim, set()
        self.state_due.update(s for s in reclaim if s in self.states)
        if resync:  # a restarted broker without persistence forgot the retained states
            self.state_due.update(self.states)
        self._drain()
        self._send_states()
        return n

    def _send_states(self, only: str | None = None) -> None:
        for stream in sorted(self.state_due) if only is None else [only]:
            st = self.states.get(stream)
            if st is None:
                self.state_due.discard(stream)
                continue
            payload = state.payload(stream, self.event_seq[stream], st, **self.origin)
            if not self._publish("state", f"{self.prefix}/state/{stream}", schema.encode(payload), 1, True):
                return  # away: every state is sent again on the next connect
            self.state_due.discard(stream)

    # -- health and the end ------------------------------------------------------------------
    def problem(self) -> str | None:
        """``/readyz``: why the broker cannot be reached now, or None. Thread-safe."""
        with self.lock:
            if self.connected:
                return None
            reason, since = self.reason, self.since
        return (f"mqtt: not connected to {self.where} for {time.monotonic() - since:.0f} s: {reason}; "
                f"{len(self.buffer)} messages buffered")

    def close(self) -> None:
        """Last states ``stopped`` (only where the retained state is still ours: a stream that
        moved may already be ``up`` from its new owner), availability ``offline`` (retained; a
        clean disconnect does not fire the last will), up to :data:`CLOSE_GRACE` s for what is in
        flight, then count the rest as ``shutdown`` and disconnect."""
        self.flush_events()
        for stream in sorted(self.states):
            if self._writes_last(stream):
                self._stopped(stream, StopReason.SHUTDOWN)
        self._publish("availability", self.availability_topic, b"offline", 1, True)
        deadline = time.monotonic() + CLOSE_GRACE
        while time.monotonic() < deadline:
            self._drain()
            with self.lock:
                busy = bool(self.inflight) and self.connected
            if not busy and not (self.buffer and self.connected):
                break
            time.sleep(0.02)
        with self.lock:
            left = len(self.inflight) + len(self.buffer)
            self.inflight.clear()
        self.buffer.clear()
        if left:
            self.m.dropped.labels(MqttDropReason.SHUTDOWN).inc(left)
            log.warning("mqtt: %d messages not delivered to %s at shutdown (counted)", left, self.where)
        self.closing.set()
        try:
            self.client.disconnect()  # written by the network loop, which then ends
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.thread.join(CLOSE_GRACE)
        self.stop.set()
        self.thread.join(1.0)
        self.m.connected.set(0)
        self.m.buffered.set(0)
