"""Identity switches for line counting: which new track continues a lost one.

ByteTrack associates by the overlap of a track's Kalman prediction with a detection. When an
object is hidden (by another object, or because the detector misses it for a few frames) and its
last boxes were partial ones (a sliver beside the occluder, a torso instead of the whole body),
the prediction drifts or collapses, the object comes back as a *new* track, and a line it passed
meanwhile is never seen crossed by either identity (measured: docs/analytics.md). Appearance
re-identification would need an embedding model, which detectd does not ship; this is the
motion-gated tracklet linking of the two-stage trackers instead, kept to what counting needs.

A new track is linked to an old one when all of these hold:

- the old track is *lost*: the tracker still keeps it (not yet ``lost_track_seconds`` without a
  match) but did not match it in this frame, so the two never coexist in one frame;
- its last match came before the new track's first detection (the new track was confirmed after
  ``min_hits`` consecutive matches, so its first one is ``min_hits`` processed frames back);
- both have the same label;
- the new box's centre is within one box size (the largest width or height of the two boxes,
  pixels) of the old box's last centre: a person or car does not move further than its own
  length in the second or so a lost track is kept. The boxes' sizes are not compared
  otherwise: the last box before an occlusion and the first after it are typically partial
  (measured: a 30 x 113 px sliver before, a 77 x 188 px person after), which is exactly the
  case this is for.

Candidates are paired greedily, closest first; each old track is continued at most once in its
life (so one object cannot be continued twice, by two later tracks). The old track keeps its own
state: if the tracker finds it again, it was not the object the new track follows (measured: a
bus lost for one frame, while a new track started beside it), and it goes on counting for
itself. Pure numpy; no state beyond the ids involved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

__all__ = ["Stitcher"]

class Stitcher:
    """Links new track ids to lost ones of one stream (see the module docstring).

    ``min_hits``: the tracker's consecutive matches before a track gets an id."""

    def __init__(self, min_hits: int) -> None:
        self.min_hits = max(1, int(min_hits))
        # Stream times of the last ``min_hits`` updates: where a newly confirmed track began.
        self._times: deque[float] = deque(maxlen=self.min_hits)
        # id -> (stream time of the last match, (4,) box x1, y1, x2, y2 pixels, label)
        self.last: dict[int, tuple[float, np.ndarray, str]] = {}
        self.linked: set[int] = set()  # old ids already continued by a newer track

    def update(self, t: float, boxes: dict[int, np.ndarray], labels: dict[int, str],
               alive: set[int]) -> list[tuple[int, int]]:
        """One frame at stream time ``t`` (seconds): ``boxes`` the tracks matched in it
        (id -> (4,) pixel box), ``labels`` their labels, ``alive`` every id the tracker keeps
        (matched or lost). Returns the (new id, old id) links made in this frame."""
        self._times.append(t)
        first_seen = self._times[0]  # the earliest a track confirmed now can have begun
        new = [tid for tid in boxes if tid not in self.last]
        links: list[tuple[int, int]] = []
        if new:
            lost = [tid for tid in alive if tid not in boxes and tid in self.last
                    and tid not in self.linked and self.last[tid][0] < first_seen]
            pairs = []
            for n in new:
                nb = boxes[n]
                for o in lost:
                    _, ob, olab = self.last[o]
                    if olab != labels[n]:
                        continue
                    d = _dist(nb, ob)
                    if d <= max(_size(ob), _size(nb)):
                        pairs.append((d, n, o))
            used_new: set[int] = set()
            used_old: set[int] = set()
            for _, n, o in sorted(pairs):
                if n in used_new or o in used_old:
                    continue
                used_new.add(n)
                used_old.add(o)
                links.append((n, o))
                self.linked.add(o)
        for tid, b in boxes.items():
            self.last[tid] = (t, np.asarray(b, np.float64), labels[tid])
        return links

    def forget(self, ids: Iterable[int]) -> None:
        """The tracker ended these tracks."""
        for tid in ids:
            self.last.pop(tid, None)
            self.linked.discard(tid)


def _centre(b: np.ndarray) -> tuple[float, float]:
    return (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return float(np.hypot(ax - bx, ay - by))


def _size(b: np.ndarray) -> float:
    return float(max(b[2] - b[0], b[3] - b[1], 0.0))
