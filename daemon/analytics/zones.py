"""Zone occupancy per track: enter / exit events with dwell times, debounced by ``min_frames``.

A track is *inside* a zone once its anchor point (normalized frame coordinates) has been inside
the polygon for ``min_frames`` consecutive observations; it leaves after as many consecutive
observations outside, or when the tracker ends it (lost for ``lost_track_seconds``). Times are
the stream's own clock (seconds, frame pts): the entry happens at the first observation inside,
the exit at the first observation outside (or the last one inside for a lost track), and the
dwell time is the difference. Only observations of matched detections count: a track that is
occluded keeps its state until it is seen again or ended.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from daemon.analytics.config import ZoneConfig
from daemon.analytics.geometry import Point, point_in_polygon

__all__ = ["Stamp", "ZoneRule"]


@dataclass(frozen=True, slots=True)
class Stamp:
    """When an observation was made: ``t`` the stream clock in seconds (pts, or the monotonic
    decode time when the stream has none), ``pts`` as published (None without timestamps),
    ``captured_at`` unix seconds, ``frame`` the decoded-frame index."""

    t: float
    pts: float | None
    captured_at: float
    frame: int


@dataclass(slots=True)
class _State:
    inside: bool = False
    pending: int = 0
    pending_at: Stamp | None = None
    entered_at: Stamp | None = None
    last_inside: Stamp | None = None
    label: str = ""


class ZoneRule:
    """One configured zone of one stream. ``occupancy`` counts confirmed tracks inside, by label."""

    def __init__(self, cfg: ZoneConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.polygon: list[Point] = [(float(x), float(y)) for x, y in cfg.points]
        self.labels = frozenset(cfg.labels)
        self.state: dict[int, _State] = {}
        self.occupancy: Counter[str] = Counter()

    def observe(self, track_id: int, label: str, p: Point, at: Stamp) -> dict[str, Any] | None:
        """One observation of a confirmed track; returns a ``zone_enter``/``zone_exit`` event."""
        if self.labels and label not in self.labels:
            return None
        inside = point_in_polygon(p, self.polygon)
        st = self.state.get(track_id)
        if st is None:
            if not inside:
                return None  # nothing to remember about a track that has never been inside
            st = self.state[track_id] = _State()
        if inside == st.inside:
            st.pending = 0
            if inside:
                st.last_inside = at
            return None
        if st.pending == 0:
            st.pending_at = at
        st.pending += 1
        if st.pending < self.cfg.min_frames:
            return None
        first = st.pending_at or at
        st.pending = 0
        if inside:
            st.inside, st.entered_at, st.last_inside, st.label = True, first, at, label
            self.occupancy[label] += 1
            return self._event("zone_enter", track_id, label, first)
        ev = self._exit(track_id, st, first, "left")
        del self.state[track_id]
        return ev

    def end(self, track_id: int, reason: str = "lost") -> dict[str, Any] | None:
        """The tracker ended ``track_id`` (``lost``), or the stream ended (``ended``): a
        ``zone_exit`` stamped with its last observation inside, if it was inside."""
        st = self.state.pop(track_id, None)
        if st is None or not st.inside:
            return None
        return self._exit(track_id, st, st.last_inside or st.entered_at, reason)  # type: ignore[arg-type]

    def _exit(self, track_id: int, st: _State, at: Stamp, reason: str) -> dict[str, Any]:
        self.occupancy[st.label] -= 1
        if self.occupancy[st.label] <= 0:
            self.occupancy[st.label] = 0
        dwell = max(0.0, at.t - st.entered_at.t) if st.entered_at is not None else 0.0
        ev = self._event("zone_exit", track_id, st.label, at)
        ev["dwell_seconds"] = round(dwell, 6)
        ev["reason"] = reason
        return ev

    def _event(self, kind: str, track_id: int, label: str, at: Stamp) -> dict[str, Any]:
        return {"event": kind, "zone": self.name, "track_id": track_id, "label": label,
                "frame": at.frame, "pts": None if at.pts is None else round(at.pts, 6),
                "captured_at": round(at.captured_at, 6)}
