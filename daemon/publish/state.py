"""A stream's state as every sink reports it (``event: "state"`` messages, retained MQTT state).

One definition for the ZeroMQ publisher and the MQTT sink: the state is the stream's last
transition (its payload fields, without those that describe the moment of the change), or
``connecting`` before any, or ``stopped`` once the stream is gone.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from daemon.publish import schema
from daemon.vocab import EventKind, StreamState

# Fields of a transition that describe the change itself, not the state: left out of ``state``
# snapshots, where they would be stale (``delay`` until a retry that has happened since, etc.).
TRANSIENT = frozenset({"delay", "seconds_since_frame"})


def initial() -> dict[str, Any]:
    """A stream just added: ``connecting``."""
    return {"state": StreamState.CONNECTING, "reason": None, "last_event": None, "last_event_at": None}


def after(event: str, reason: str | None, extra: dict[str, Any], at: float) -> dict[str, Any]:
    """The state after a transition ``event`` (``extra``: its payload fields; ``at``: its time)."""
    return {**{k: v for k, v in extra.items() if k not in TRANSIENT},
            "state": extra.get("state", event), "reason": reason, "last_event": event,
            "last_event_at": at}


def stopped(prev: dict[str, Any], reason: str) -> dict[str, Any]:
    """The last state of a stream that is gone (removed, or the daemon stops)."""
    return {"state": StreamState.STOPPED, "reason": reason, "last_event": None, "last_event_at": None,
            **{k: prev[k] for k in ("attempt",) if k in prev}}


def payload(stream: str, seq: int, st: dict[str, Any], **origin: Any) -> dict[str, Any]:
    """The ``event: "state"`` message (schema v1) for state ``st``. ``origin``: fields that say
    who sends it (the MQTT sink's ``instance`` and ``shard``), added to the payload."""
    fields = {**st, **origin}
    reason = fields.pop("reason")
    return schema.event_payload(stream, seq, EventKind.STATE, reason, **fields)


Queued = tuple[str, str, str | None, dict[str, Any]]  # (stream, event, reason, extra) posted by sources


def drain(events: queue.Queue[Queued], seqs: dict[str, int],
          states: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every event queued by the sources, in order, as ``(stream, payload)``: numbered with the
    stream's next events ``seq`` and applied to its state (streams in ``states`` only). Both sinks
    send what this yields; what a sink does when a send fails is its own."""
    while True:
        try:
            stream, event, reason, extra = events.get_nowait()
        except queue.Empty:
            return
        payload = schema.event_payload(stream, seqs[stream], event, reason, **extra)
        seqs[stream] += 1
        if stream in states:
            states[stream] = after(event, reason, extra, payload["at"])
        yield stream, payload
