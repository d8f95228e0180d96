"""The versioned message contract (v1) shared by the publisher and the subscriber client.

Topics end in a delimiter so that a subscription to ``detections/cam1/`` never receives
``cam10``. Payloads are UTF-8 JSON objects carrying ``v`` (schema version). Additive changes keep
``v``; a change that removes or retypes a field bumps it. This module is the only definition of
the version; the words (topics, event kinds) are :mod:`daemon.vocab`'s, and the JSON Schemas
beside it (``schemas/*.v1.json``) spell the same sets out for other languages
(``tests/test_vocab.py`` keeps them equal).
"""

from __future__ import annotations

import json
import time
from typing import Any

from daemon.frames import FrameResult
from daemon.vocab import AnalyticsEvent, EventKind, Topic

SCHEMA_VERSION = 1
# Every event kind; "state" is not a transition but the stream's current state, sent in answer to
# a new subscription (see daemon.publish.publisher).
EVENT_KINDS = frozenset(EventKind)
ANALYTICS_EVENTS = frozenset(AnalyticsEvent)


def topic(kind: Topic | str, stream: str) -> bytes:
    """``b"<kind>/<stream>/"``: the delimiter keeps ``cam1`` from matching ``cam10``."""
    return f"{kind}/{stream}/".encode()


def detections_payload(result: FrameResult, seq: int, labels: list[str], model: dict[str, str],
                       published_at: float | None = None) -> dict[str, Any]:
    f = result.frame
    return {
        "v": SCHEMA_VERSION,
        "stream": f.stream,
        "seq": seq,
        "frame": f.index,
        "pts": None if f.pts is None else round(f.pts, 6),
        "captured_at": round(f.captured_at, 6),
        "published_at": round(time.time() if published_at is None else published_at, 6),
        "width": f.width,
        "height": f.height,
        "model": model,
        "detections": result.detections.to_list(labels),
        "damaged": f.damaged,
    }


def event_payload(stream: str, seq: int, event: EventKind | str, reason: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {event!r}")
    return {"v": SCHEMA_VERSION, "stream": stream, "seq": seq, "event": str(event), "reason": reason,
            "at": round(time.time(), 6), **extra}


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def analytics_payload(stream: str, seq: int, event: dict[str, Any]) -> dict[str, Any]:
    """Topic ``analytics/<stream>/``: one zone_enter, zone_exit or line_cross (the fields of
    ``event`` as made by :mod:`daemon.analytics`; schemas/analytics.v1.json)."""
    if event.get("event") not in ANALYTICS_EVENTS:
        raise ValueError(f"unknown analytics event {event.get('event')!r}")
    return {"v": SCHEMA_VERSION, "stream": stream, "seq": seq, **event, "at": round(time.time(), 6)}
