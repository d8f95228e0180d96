"""Published messages and metric samples, as the tests read them."""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

import jsonschema
import numpy as np

from daemon.frames import Detections, Frame, FrameResult

Messages = list[tuple[str, dict[str, Any]]]


def detections_of(msgs: Messages, stream: str) -> list[dict[str, Any]]:
    """The stream's ``detections`` messages, in arrival order."""
    return [m for t, m in msgs if t == f"detections/{stream}/"]


def events_of(msgs: Messages, stream: str) -> list[dict[str, Any]]:
    """The stream's transitions; ``state`` snapshots (answers to subscriptions) left out."""
    return [m for t, m in msgs if t == f"events/{stream}/" and m.get("event") != "state"]


def kinds(d: Any, sid: str) -> list[str]:
    """The ``event`` field of each transition of stream ``sid`` a DaemonProcess collected."""
    return [e["event"] for e in events_of(d.messages, sid)]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample ``name`` whose labels include ``labels`` in Prometheus text
    ``text``; None when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when the union is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def load_schema(kind: str) -> dict[str, Any]:
    """The shipped JSON Schema of a message kind (``detections``, ``events``), itself checked."""
    text = resources.files("daemon.publish").joinpath(f"schemas/{kind}.v1.json").read_text()
    s = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(s)
    return s


VALIDATORS = {k: jsonschema.Draft202012Validator(load_schema(k)) for k in ("detections", "events")}


def validate(topic: bytes, payload: bytes) -> dict[str, Any]:
    """Decode a message and assert it matches its kind's shipped schema; the decoded body."""
    kind = topic.decode().split("/", 1)[0]
    body = json.loads(payload)
    errors = sorted(VALIDATORS[kind].iter_errors(body), key=str)
    assert not errors, f"{topic!r}: {[e.message for e in errors]}"
    return body


def frame_result(stream: str, index: int) -> FrameResult:
    """A 64x48 frame's result with one box, for publishers fed without a model."""
    frame = Frame(stream=stream, index=index, width=64, height=48, pts=index / 25, captured_at=time.time(),
                  t_decoded=time.monotonic())
    dets = Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([2]))
    return FrameResult(frame, dets)
