"""Where results go: the :class:`Sink` protocol and :class:`FanOut`, which feeds several sinks.

The ZeroMQ :class:`daemon.publish.publisher.Publisher` is the first sink and the contract
(topics, fields, ``seq``) is defined by it (README "Message contract"). Another transport (MQTT,
Redis Streams, NATS...) is one new module with a class that has these methods; the pipeline talks
to one :class:`FanOut`, never to a transport.

Threading: every method except :meth:`Sink.post_event` and :meth:`Sink.problem` is called from
the one publishing (pipeline) thread; ``post_event`` is called from source threads and must only
enqueue (bounded, drops counted).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

from daemon.frames import FrameResult

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """One transport for detections, stream events and analytics events."""

    def add_stream(self, stream: str) -> None:
        """A stream starts: announce its state to consumers that join late."""

    def remove_stream(self, stream: str, reason: str | None = None) -> None:
        """A stream is gone (reload, stop): send its last ``stopped`` state where applicable."""

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool:
        """One frame's detections; False when this sink dropped it (and counted why)."""

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        """One analytics event (``zone_enter``, ``line_cross``...); False when dropped (counted)."""

    def post_event(self, stream: str, event: str, reason: str | None = None, **extra: Any) -> None:
        """Queue a stream event from any thread; sent by :meth:`flush_events`."""

    def flush_events(self) -> int:
        """Send queued events from the publishing thread; returns how many were sent."""

    def problem(self) -> str | None:
        """Why this sink cannot deliver now (``/readyz``), or None when it can. A sink may set
        ``required_for_ready = False`` (read with ``getattr``, default True): its problem is then
        reported in ``/readyz`` but does not make the instance unready (docs/mqtt.md)."""

    def close(self) -> None:
        """Say goodbye (last states, last will) and release the transport."""


class FanOut:
    """Feeds every sink in order; one failing sink never stops the others.

    ``publish_result`` and ``publish_analytics`` return the **first** sink's answer: the first
    sink is the ZeroMQ publisher, whose "published" is the contract's (what
    ``detectd_frames_published_total``, the latency and the detection counts of the pipeline
    count). Another sink buffering a frame that ZeroMQ dropped at its high-water mark does not
    make it published; the other sinks count their own deliveries and drops (e.g.
    ``detectd_mqtt_messages_*``). A sink method that
    raises is logged with the sink's class name and counted by the sink's own metrics where it
    has them; the exception does not reach the pipeline (a broken broker connection must not take
    down ZeroMQ consumers or the daemon).
    """

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = list(sinks)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        out = []
        for s in self.sinks:
            try:
                out.append(getattr(s, method)(*args, **kwargs))
            except Exception:  # noqa: BLE001 - one sink's failure stays in that sink
                log.exception("sink %s: %s failed", type(s).__name__, method)
                out.append(None)
        return out

    def add_stream(self, stream: str) -> None:
        self._each("add_stream", stream)

    def remove_stream(self, stream: str, reason: str | None = None) -> None:
        self._each("remove_stream", stream, reason)

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool:
        """Every sink gets the frame; True when the first (ZeroMQ) published it."""
        answers = self._each("publish_result", result, labels, model)
        return bool(answers[0]) if answers else False

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool:
        """Every sink gets the event; True when the first (ZeroMQ) published it."""
        answers = self._each("publish_analytics", stream, event)
        return bool(answers[0]) if answers else False

    def post_event(self, stream: str, event: str, reason: str | None = None, **extra: Any) -> None:
        self._each("post_event", stream, event, reason, **extra)

    def flush_events(self) -> int:
        return sum(int(r or 0) for r in self._each("flush_events"))

    def problem(self, required_only: bool = False) -> str | None:
        """Every sink's problem joined with ``; ``, or None. ``required_only``: only the sinks
        whose ``required_for_ready`` is True (the default): what fails ``/readyz``."""
        problems = [p for s, p in zip(self.sinks, self._each("problem"))
                    if p and (not required_only or getattr(s, "required_for_ready", True))]
        return "; ".join(problems) if problems else None

    def close(self) -> None:
        self._each("close")
