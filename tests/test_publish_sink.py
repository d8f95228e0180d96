"""``FanOut`` (daemon/publish/sink.py): what "published" means when several sinks run.

The sinks here are test doubles (``Recorder``): FanOut's rule of combining answers is what is
tested; the real transports have their own tests (test_publish_*.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from daemon.frames import Detections, Frame, FrameResult
from daemon.publish.sink import FanOut


class Recorder:
    """A test double of a sink that answers ``answer`` and records what it got."""

    def __init__(self, answer: bool | None, raises: bool = False) -> None:
        self.answer, self.raises, self.got = answer, raises, 0

    def publish_result(self, result: FrameResult, labels: list[str], model: dict[str, str]) -> bool | None:
        self.got += 1
        if self.raises:
            raise RuntimeError("broken transport")
        return self.answer

    def publish_analytics(self, stream: str, event: dict[str, Any]) -> bool | None:
        return self.publish_result(None, [], {})  # type: ignore[arg-type]


def result() -> FrameResult:
    frame = Frame("cam1", 0, 4, 4, None, 0.0, 0.0, np.zeros((4, 4, 3), np.uint8))
    return FrameResult(frame, Detections.empty(), {})


def test_published_is_the_first_sinks_answer() -> None:
    """ZeroMQ (first) dropped it at its high-water mark while MQTT buffered it: not published
    (the pipeline's counters and latency are ZeroMQ's, the contract's)."""
    zmq, mqtt = Recorder(False), Recorder(True)
    fan = FanOut([zmq, mqtt])  # type: ignore[list-item]
    assert fan.publish_result(result(), [], {}) is False
    assert fan.publish_analytics("cam1", {}) is False
    assert (zmq.got, mqtt.got) == (2, 2), "every sink still gets every message"
    assert FanOut([Recorder(True), Recorder(False)]).publish_result(result(), [], {}) is True  # type: ignore[list-item]


def test_a_raising_sink_neither_stops_the_others_nor_counts_as_published() -> None:
    first, second = Recorder(None, raises=True), Recorder(True)
    fan = FanOut([first, second])  # type: ignore[list-item]
    assert fan.publish_result(result(), [], {}) is False
    assert second.got == 1
    assert FanOut([]).publish_result(result(), [], {}) is False
