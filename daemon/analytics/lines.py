"""Directed line crossings per track, debounced by ``min_frames``.

Each confirmed track remembers the side of the line (start -> end) its anchor was last
confirmed on and the last point seen there. When the anchor is seen on the other side for
``min_frames`` consecutive observations, the step from that last point to the first point on
the new side is tested against the segment: if it crosses the segment (not the infinite line:
walking around its end is no crossing), one ``line_cross`` is emitted, stamped with the first
observation on the new side. Direction ``in`` = from the left of start -> end to its right as
seen on screen, ``out`` the reverse. Because only the last confirmed point and the first new
one are compared, a crossing hidden by an occlusion or by dropped frames is still counted once,
and jitter on the line cannot count twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from daemon.analytics.config import LineConfig
from daemon.analytics.geometry import Point, cross, segments_intersect
from daemon.analytics.zones import Stamp

__all__ = ["LineRule"]


@dataclass(slots=True)
class _State:
    side: int
    last: Point
    pending: int = 0
    pending_pt: Point = (0.0, 0.0)
    pending_at: Stamp | None = None


class LineRule:
    """One configured line of one stream; ``counts[(direction, label)]`` crossings so far."""

    def __init__(self, cfg: LineConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        (ax, ay), (bx, by) = cfg.points
        self.a: Point = (float(ax), float(ay))
        self.b: Point = (float(bx), float(by))
        self.length = max(((self.b[0] - self.a[0]) ** 2 + (self.b[1] - self.a[1]) ** 2) ** 0.5, 1e-12)
        self.labels = frozenset(cfg.labels)
        self.state: dict[int, _State] = {}
        self.counts: Counter[tuple[str, str]] = Counter()

    def observe(self, track_id: int, label: str, p: Point, at: Stamp) -> dict[str, Any] | None:
        d = cross(self.a, self.b, p) / self.length  # signed distance, > 0 right of start -> end
        if abs(d) <= self.cfg.margin or d == 0:
            return None  # on the line or within its margin: wait for a side
        s = 1 if d > 0 else -1
        st = self.state.get(track_id)
        if st is None:
            self.state[track_id] = _State(s, p)
            return None
        if s == st.side:
            st.pending = 0
            st.last = p
            return None
        if st.pending == 0:
            st.pending_pt, st.pending_at = p, at
        st.pending += 1
        if st.pending < self.cfg.min_frames:
            return None
        crossed = segments_intersect(st.last, st.pending_pt, self.a, self.b)
        first = st.pending_at or at
        st.side, st.last, st.pending = s, p, 0
        if not crossed or (self.labels and label not in self.labels):
            return None
        direction = "in" if s > 0 else "out"
        self.counts[(direction, label)] += 1
        return {"event": "line_cross", "line": self.name, "direction": direction, "track_id": track_id,
                "label": label, "frame": first.frame, "pts": None if first.pts is None else round(first.pts, 6),
                "captured_at": round(first.captured_at, 6)}

    def end(self, track_id: int) -> None:
        self.state.pop(track_id, None)

    def adopt(self, new_id: int, old_id: int) -> None:
        """Track ``new_id`` continues ``old_id`` (an identity switch, see
        :class:`daemon.analytics.stitch.Stitcher`): it takes over the old track's side and last
        point, so a line passed while the object was hidden or between two identities is counted
        once, from the old track's last point to the new track's first. The old id keeps its
        own state (should the tracker find it again, it counts for itself)."""
        st = self.state.get(old_id)
        if st is not None and new_id not in self.state:
            self.state[new_id] = _State(st.side, st.last)
