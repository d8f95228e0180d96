"""A typed subscriber for detectd's ZeroMQ stream: the client side of the message contract.

    from daemon.publish.client import Subscriber, DetectionMessage

    with Subscriber("tcp://127.0.0.1:5560", streams=["cam1"]) as sub:
        for msg in sub:
            if isinstance(msg, DetectionMessage):
                for label, box in zip(msg.labels, msg.detections.boxes):
                    ...

- Messages are multipart ``[topic, payload]``; topics are ``detections/<stream>/``,
  ``events/<stream>/`` and ``analytics/<stream>/`` (:class:`AnalyticsMessage`: zone entries and
  exits, line crossings of tracked streams) (always ending in ``/``, so a subscription to ``cam1`` never matches
  ``cam10``). Payloads are UTF-8 JSON; :func:`decode` turns them into :class:`DetectionMessage`
  (boxes, scores and class ids as :class:`daemon.frames.Detections`) or :class:`EventMessage`.
- Reconnecting is ZeroMQ's job: a SUB socket reconnects on its own (``RECONNECT_IVL`` with
  backoff up to ``RECONNECT_IVL_MAX``) and re-sends its subscriptions. Messages published while
  disconnected are lost -- PUB/SUB has no replay -- which is why every payload carries ``seq``.
- ``seq`` counts messages per stream and per kind from 0. The subscriber checks it: a jump forward
  is a :class:`Gap` (``missed`` messages lost: network, a slow subscriber hitting its HWM, or the
  daemon dropping at its own HWM); a jump backward means the daemon restarted and counting starts
  again. The first message seen of a stream is never a gap (a subscriber joins mid-stream).
  Gaps are counted in ``Subscriber.missed`` and passed to ``on_gap``. The daemon counts the
  same messages in ``detectd_frames_dropped_total{reason="zmq_hwm"}``: with its XPUB_NODROP
  socket a message is either queued for every subscriber of its topic or for none.
- A new subscription to a stream's events is answered with an ``event: "state"`` message (its
  current state, next ``seq``), so ``Subscriber.state(stream)`` is known without waiting for a
  transition. Code that reacts to changes skips ``msg.is_snapshot`` (or compares states).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import zmq

from daemon.errors import DetectdError
from daemon.frames import Detections
from daemon.publish.schema import ANALYTICS_EVENTS, EVENT_KINDS, SCHEMA_VERSION
from daemon.vocab import EventKind, Topic

__all__ = [
    "SCHEMA_VERSION",
    "EVENT_KINDS",
    "EVENTS",
    "KINDS",
    "DecodeError",
    "ModelRef",
    "DetectionMessage",
    "EventMessage",
    "TRANSITIONS",
    "AnalyticsMessage",
    "Message",
    "Gap",
    "SeqTracker",
    "topic_prefixes",
    "decode",
    "Subscriber",
]

log = logging.getLogger(__name__)

# The contract's words, from daemon.publish.schema / daemon.vocab (one definition each).
# KINDS: the topics a subscriber may ask for (``--kind``); EVENT_KINDS: every ``event`` of an
# events message (EventKind).
KINDS = tuple(Topic)
# The same set under its first name, kept for subscribers' code that imports it.
EVENTS = EVENT_KINDS
# Transitions change a stream's state; a ``state`` message only repeats it (for late subscribers).
TRANSITIONS = EVENT_KINDS - {EventKind.STATE}


class DecodeError(DetectdError, ValueError):
    """A message does not follow the contract; the text names the field."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    precision: str
    backend: str


@dataclass(frozen=True, slots=True)
class DetectionMessage:
    """One processed frame of one stream (topic ``detections/<stream>/``).

    ``detections`` holds the boxes (x1, y1, x2, y2 in source-frame pixels), scores and class ids,
    and on tracked streams ``track_ids`` ((N,) int64, -1 where the payload says null);
    ``labels`` the class name of each, in the same order. ``raw`` is the payload as received.
    """

    v: int
    stream: str
    seq: int
    frame: int
    pts: float | None
    captured_at: float
    published_at: float
    width: int
    height: int
    model: ModelRef
    detections: Detections
    labels: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Packets were lost since the last keyframe: the picture may be smeared (docs/robustness.md).
    # Added within v1; a message from an older daemon has no such field and reads as False.
    damaged: bool = False

    kind = "detections"

    @property
    def latency(self) -> float:
        """Seconds from decode to publish, as measured by the daemon."""
        return self.published_at - self.captured_at

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON form again (unknown fields of the payload kept)."""
        items: list[dict[str, Any]] = [
            {"label": label, "class_id": int(cid), "score": float(score), "box": [float(v) for v in box]}
            for label, cid, score, box in zip(
                self.labels, self.detections.class_ids.tolist(), self.detections.scores.tolist(),
                self.detections.boxes.tolist(),
            )
        ]
        if self.detections.track_ids is not None:
            for item, tid in zip(items, self.detections.track_ids.tolist()):
                item["track_id"] = tid if tid >= 0 else None
        out = dict(self.extra)
        out.update(
            v=self.v, stream=self.stream, seq=self.seq, frame=self.frame, pts=self.pts,
            captured_at=self.captured_at, published_at=self.published_at, width=self.width,
            height=self.height, damaged=self.damaged,
            model={"name": self.model.name, "precision": self.model.precision, "backend": self.model.backend},
            detections=items,
        )
        return out


@dataclass(frozen=True, slots=True)
class EventMessage:
    """A stream state change (topic ``events/<stream>/``), or with ``event == "state"`` a snapshot
    of the stream's current state (the daemon's answer to a new subscription, see
    :attr:`is_snapshot`); ``extra`` holds the fields beyond the common ones (``attempt``,
    ``delay``, ``state``, ``last_event``... as the daemon sends them)."""

    v: int
    stream: str
    seq: int
    event: str
    reason: str | None
    at: float
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    kind = "events"

    @property
    def is_snapshot(self) -> bool:
        """True for a ``state`` message: it repeats the current state, nothing changed."""
        return self.event == "state"

    @property
    def state(self) -> str | None:
        """The stream's state after this message (``connecting``, ``up``, ``backoff``,
        ``stalled``, ``auth_failed``, ``ended``, ``stopped``, ``error``), when the daemon sent it."""
        st = self.extra.get("state")
        return st if isinstance(st, str) else None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(v=self.v, stream=self.stream, seq=self.seq, event=self.event, reason=self.reason, at=self.at)
        return out


@dataclass(frozen=True, slots=True)
class AnalyticsMessage:
    """A zone entry or exit, or a line crossing, of one tracked object (topic
    ``analytics/<stream>/``; schemas/analytics.v1.json). ``name`` is the zone or line;
    ``direction`` (``in``/``out``) is set for ``line_cross``, ``dwell_seconds`` and ``reason``
    (``left``/``lost``) for ``zone_exit``. ``pts``/``captured_at``/``frame`` are those of the
    frame where it happened."""

    v: int
    stream: str
    seq: int
    event: str
    track_id: int
    label: str
    frame: int
    pts: float | None
    captured_at: float
    at: float
    name: str
    direction: str | None = None
    dwell_seconds: float | None = None
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    kind = "analytics"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


Message = Union[DetectionMessage, EventMessage, AnalyticsMessage]


@dataclass(frozen=True, slots=True)
class Gap:
    """``missed`` messages of ``kind`` on ``stream`` were lost between seq ``last`` and ``seq``."""

    kind: str
    stream: str
    last: int
    seq: int

    @property
    def missed(self) -> int:
        return self.seq - self.last - 1


# ---------------------------------------------------------------------------------------- decode


def _field(payload: Mapping[str, Any], name: str, types: type | tuple[type, ...], where: str) -> Any:
    if name not in payload:
        raise DecodeError(f"{where}: missing field {name!r}")
    value = payload[name]
    # bool is an int in Python; JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DecodeError(f"{where}: field {name!r} must be {_names(types)}, got {value!r}")
    if not isinstance(value, types):
        raise DecodeError(f"{where}: field {name!r} must be {_names(types)}, got {type(value).__name__}")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in ts)


def _number(payload: Mapping[str, Any], name: str, where: str, nullable: bool = False) -> float | None:
    types: tuple[type, ...] = (int, float, type(None)) if nullable else (int, float)
    value = _field(payload, name, types, where)
    if value is None:
        return None
    if not math.isfinite(value):
        raise DecodeError(f"{where}: field {name!r} must be finite")
    return float(value)


def _count(payload: Mapping[str, Any], name: str, where: str) -> int:
    value = _field(payload, name, int, where)
    if value < 0:
        raise DecodeError(f"{where}: field {name!r} must be >= 0, got {value}")
    return int(value)


def _decode_detections(p: Mapping[str, Any], where: str) -> DetectionMessage:
    model = _field(p, "model", dict, where)
    items = _field(p, "detections", list, where)
    boxes = np.zeros((len(items), 4), np.float32)
    scores = np.zeros(len(items), np.float32)
    class_ids = np.zeros(len(items), np.int32)
    labels = []
    track_ids = np.full(len(items), -1, np.int64) if any(isinstance(it, dict) and "track_id" in it for it in items) else None
    for i, item in enumerate(items):
        w = f"{where}: detections[{i}]"
        if not isinstance(item, dict):
            raise DecodeError(f"{w} must be an object")
        box = _field(item, "box", list, w)
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise DecodeError(f"{w}: box must be 4 numbers [x1, y1, x2, y2]")
        boxes[i] = box
        scores[i] = _number(item, "score", w)  # type: ignore[assignment]
        class_ids[i] = _count(item, "class_id", w)
        labels.append(_field(item, "label", str, w))
        if track_ids is not None and item.get("track_id") is not None:
            track_ids[i] = _count(item, "track_id", w)
    known = {"v", "stream", "seq", "frame", "pts", "captured_at", "published_at", "width", "height", "model",
             "detections", "damaged"}
    damaged = p.get("damaged", False)
    if not isinstance(damaged, bool):
        raise DecodeError(f"{where}: damaged must be true or false, got {damaged!r}")
    return DetectionMessage(
        v=_count(p, "v", where),
        stream=_field(p, "stream", str, where),
        seq=_count(p, "seq", where),
        frame=_count(p, "frame", where),
        pts=_number(p, "pts", where, nullable=True),
        captured_at=_number(p, "captured_at", where),  # type: ignore[arg-type]
        published_at=_number(p, "published_at", where),  # type: ignore[arg-type]
        width=_count(p, "width", where),
        height=_count(p, "height", where),
        model=ModelRef(
            name=_field(model, "name", str, f"{where}: model"),
            precision=_field(model, "precision", str, f"{where}: model"),
            backend=_field(model, "backend", str, f"{where}: model"),
        ),
        detections=Detections(boxes, scores, class_ids, track_ids),
        labels=tuple(labels),
        extra={k: v for k, v in p.items() if k not in known},
        raw=p,
        damaged=damaged,
    )


def _decode_event(p: Mapping[str, Any], where: str) -> EventMessage:
    event = _field(p, "event", str, where)
    if event not in EVENT_KINDS:
        # New states may be added by later daemons: keep them, but say so once per message.
        log.debug("%s: unknown event %r", where, event)
    known = {"v", "stream", "seq", "event", "reason", "at"}
    return EventMessage(
        v=_count(p, "v", where),
        stream=_field(p, "stream", str, where),
        seq=_count(p, "seq", where),
        event=event,
        reason=_field(p, "reason", (str, type(None)), where) if "reason" in p else None,
        at=_number(p, "at", where),  # type: ignore[arg-type]
        extra={k: v for k, v in p.items() if k not in known},
        raw=p,
    )


def _decode_analytics(p: Mapping[str, Any], where: str) -> AnalyticsMessage:
    event = _field(p, "event", str, where)
    if event not in ANALYTICS_EVENTS:
        raise DecodeError(f"{where}: unknown analytics event {event!r}")
    key = "line" if event == "line_cross" else "zone"
    known = {"v", "stream", "seq", "event", "track_id", "label", "frame", "pts", "captured_at", "at", key,
             "direction", "dwell_seconds", "reason"}
    direction = _field(p, "direction", str, where) if event == "line_cross" else None
    if direction is not None and direction not in ("in", "out"):
        raise DecodeError(f"{where}: field 'direction' must be 'in' or 'out', got {direction!r}")
    return AnalyticsMessage(
        v=_count(p, "v", where),
        stream=_field(p, "stream", str, where),
        seq=_count(p, "seq", where),
        event=event,
        track_id=_count(p, "track_id", where),
        label=_field(p, "label", str, where),
        frame=_count(p, "frame", where),
        pts=_number(p, "pts", where, nullable=True),
        captured_at=_number(p, "captured_at", where),  # type: ignore[arg-type]
        at=_number(p, "at", where),  # type: ignore[arg-type]
        name=_field(p, key, str, where),
        direction=direction,
        dwell_seconds=_number(p, "dwell_seconds", where) if event == "zone_exit" else None,
        reason=_field(p, "reason", str, where) if event == "zone_exit" else None,
        extra={k: v for k, v in p.items() if k not in known},
        raw=p,
    )


def decode(topic: bytes | str, payload: bytes | str | Mapping[str, Any]) -> Message:
    """Decode one message. Raises :class:`DecodeError` naming the topic and field when the
    message breaks the contract (unknown kind, bad JSON, a missing or mistyped field, a topic
    whose stream disagrees with the payload)."""
    t = topic.decode("utf-8", "replace") if isinstance(topic, bytes) else topic
    parts = t.split("/")
    if len(parts) != 3 or parts[2] != "" or parts[0] not in KINDS or not parts[1]:
        raise DecodeError(f"topic {t!r}: expected 'detections/<stream>/', 'events/<stream>/' or 'analytics/<stream>/'")
    kind, stream = parts[0], parts[1]
    if isinstance(payload, Mapping):
        p = payload
    else:
        try:
            p = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(f"{t}: payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(p, dict):
        raise DecodeError(f"{t}: payload must be a JSON object")
    msg: Message = (_decode_detections(p, t) if kind == "detections" else _decode_event(p, t) if kind == "events"
                    else _decode_analytics(p, t))
    if msg.stream != stream:
        raise DecodeError(f"{t}: payload stream {msg.stream!r} disagrees with the topic")
    return msg


def topic_prefixes(streams: Iterable[str] | None = None, kinds: Iterable[str] = KINDS) -> list[bytes]:
    """Subscription prefixes: every stream of each kind, or exactly the given streams."""
    kinds = list(kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown message kind {k!r} (expected one of {', '.join(KINDS)})")
    if streams is None:
        return [f"{k}/".encode() for k in kinds]
    out: list[bytes] = []
    for s in streams:
        if not s or "/" in s:
            raise ValueError(f"invalid stream id {s!r}")
        out.extend(f"{k}/{s}/".encode() for k in kinds)
    return out


# ------------------------------------------------------------------------------------------- seq


class SeqTracker:
    """Per ``(kind, stream)`` sequence check. Pure: feed it ``(kind, stream, seq)``."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.missed: dict[tuple[str, str], int] = {}
        self.restarts: dict[tuple[str, str], int] = {}

    def check(self, kind: str, stream: str, seq: int) -> Gap | None:
        key = (kind, stream)
        last = self.last.get(key)
        self.last[key] = seq
        if last is None or seq == last + 1:
            return None
        if seq <= last:
            # The publisher restarted (seq begins at 0 again) or a second daemon publishes the same
            # stream id: start counting afresh rather than report a negative gap.
            self.restarts[key] = self.restarts.get(key, 0) + 1
            return None
        gap = Gap(kind, stream, last, seq)
        self.missed[key] = self.missed.get(key, 0) + gap.missed
        return gap


# ------------------------------------------------------------------------------------ subscriber


class Subscriber:
    """A SUB socket connected to one or more detectd endpoints (or a ``detectd proxy``).

    ``streams=None`` receives every stream; ``kinds`` selects detections and/or events.
    ``curve`` is ``(server_public_key_file, client_key_file)`` for a CURVE-protected endpoint.
    Malformed messages are logged and counted in ``malformed``, never raised from ``recv``.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        streams: Iterable[str] | None = None,
        kinds: Iterable[str] = KINDS,
        *,
        curve: tuple[str, str] | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        context: zmq.Context | None = None,  # type: ignore[type-arg]
        rcvhwm: int = 10_000,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 5_000,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self.socket = self.context.socket(zmq.SUB)
        self.seq = SeqTracker()
        self.on_gap = on_gap
        self.malformed = 0
        self.received = 0
        self.states: dict[str, EventMessage] = {}
        try:
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
            self.socket.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
            self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_ivl_max_ms)
            if curve is not None:
                from daemon.publish.curve import configure_client

                configure_client(self.socket, *curve)
            for prefix in topic_prefixes(streams, kinds):
                self.socket.setsockopt(zmq.SUBSCRIBE, prefix)
            for ep in self.endpoints:
                self.socket.connect(ep)
        except Exception:
            self.close()
            raise

    def state(self, stream: str) -> str | None:
        """The last known state of ``stream`` (from a transition or a ``state`` snapshot, which
        the daemon sends to every new subscriber of its events), or None before either came.
        :attr:`states` holds the message it came from, per stream."""
        msg = self.states.get(stream)
        return None if msg is None else msg.state

    @property
    def missed(self) -> dict[tuple[str, str], int]:
        """Messages lost so far, by ``(kind, stream)``."""
        return self.seq.missed

    def recv_raw(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """The next ``(topic, payload)``, or ``None`` after ``timeout`` seconds."""
        if timeout is not None and not self.socket.poll(int(max(timeout, 0) * 1000)):
            return None
        frames = self.socket.recv_multipart()
        if len(frames) != 2:
            # Not from detectd; report it as malformed to recv() rather than guess a split.
            return b"", b"".join(frames)
        return frames[0], frames[1]

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next well-formed message, or ``None`` once ``timeout`` seconds pass without one."""
        deadline = None if timeout is None else _now() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - _now())
            raw = self.recv_raw(left)
            if raw is None:
                return None
            try:
                msg = decode(*raw)
            except DecodeError as exc:
                self.malformed += 1
                log.warning("dropping malformed message: %s", exc)
                continue
            self.received += 1
            if isinstance(msg, EventMessage) and msg.state is not None:
                self.states[msg.stream] = msg
            gap = self.seq.check(msg.kind, msg.stream, msg.seq)
            if gap is not None:
                log.warning(
                    "%s/%s: %d message(s) lost (seq %d -> %d)", gap.kind, gap.stream, gap.missed, gap.last, gap.seq
                )
                if self.on_gap is not None:
                    self.on_gap(gap)
            return msg

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_now = time.monotonic
