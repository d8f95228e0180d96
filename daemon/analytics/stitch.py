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
  pixels) of the old box's last centre, *or* of where the old track would be now had it gone on
  at its last velocity (the mean velocity of its centre over its last ``VELOCITY_WINDOW``
  seconds of matches, on the stream's clock, so dropped frames change nothing), extrapolated
  over at most ``MAX_EXTRAPOLATION`` seconds of the loss and clipped to the frame. The boxes'
  sizes are not compared otherwise: the last box before an occlusion and the first after it are
  typically partial (measured: a 30 x 113 px sliver before, a 77 x 188 px person after), which
  is exactly the case this is for. Why the prediction: a person overtaken by another, hidden for
  0.96 s, walks 204 px (over three of its own widths) before it is seen again (docs/analytics.md,
  scene ``fast``); without it, no track continues it and its crossings are lost.

Candidates are paired greedily, closest first; each old track is continued at most once while
it stays lost (so one object cannot be continued twice, by two later tracks). The old track
keeps its own state: if the tracker finds it again, it was not the object the new track follows
(measured: a bus lost for one frame, while a new track started beside it), and it goes on
counting for itself; from then on it may be continued again the next time it is lost (measured:
the track of the person ``a`` of ``fast`` was unmatched in frames 9-13, a person entering beside
it was linked to it at frame 13, the tracker matched it again at frame 14, and at its real
occlusion (frames 29-51) it could no longer be continued). Pure numpy; no state beyond the ids
involved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

__all__ = ["MAX_EXTRAPOLATION", "MIN_SPAN", "Stitcher", "VELOCITY_WINDOW"]

# The velocity of a lost track: its centre's mean velocity over its last VELOCITY_WINDOW seconds
# of matches (long enough to average out the jitter of partial boxes, short enough to follow a
# turn), and only when those span at least MIN_SPAN seconds (two matches a frame apart at 25
# frames/s and below say too little).
VELOCITY_WINDOW = 0.5
MIN_SPAN = 0.1
# The prediction follows the last velocity for at most this long (seconds of the loss), then
# stays where that took it: ``lost_track_seconds`` may be up to 60 s, and nobody walks straight
# on at one speed for that long unseen (a person stops, turns, or has left the frame). 1.0 s is
# the default ``lost_track_seconds`` and covers the longest loss the prediction was measured to
# bridge (0.96 s, scene ``fast``); the point is clipped to the frame, where the object can be seen.
MAX_EXTRAPOLATION = 1.0


class Stitcher:
    """Links new track ids to lost ones of one stream (see the module docstring).

    ``min_hits``: the tracker's consecutive matches before a track gets an id."""

    def __init__(self, min_hits: int) -> None:
        self.min_hits = max(1, int(min_hits))
        # Stream times of the last ``min_hits`` updates: where a newly confirmed track began.
        self._times: deque[float] = deque(maxlen=self.min_hits)
        # id -> (stream time of the last match, (4,) box x1, y1, x2, y2 pixels, label)
        self.last: dict[int, tuple[float, np.ndarray, str]] = {}
        # id -> (stream time, centre x, centre y pixels) of its matches in the last VELOCITY_WINDOW s
        self.path: dict[int, deque[tuple[float, float, float]]] = {}
        self.linked: set[int] = set()  # old ids already continued by a newer track

    def update(self, t: float, boxes: dict[int, np.ndarray], labels: dict[int, str],
               alive: set[int], size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """One frame at stream time ``t`` (seconds): ``boxes`` the tracks matched in it
        (id -> (4,) pixel box), ``labels`` their labels, ``alive`` every id the tracker keeps
        (matched or lost), ``size`` the frame's (width, height) in pixels (None: predictions
        are not clipped). Returns the (new id, old id) links made in this frame."""
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
                    pred = self._predict(o, t, size)
                    if pred is not None:
                        d = min(d, float(np.hypot(*(np.subtract(_centre(nb), pred)))))
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
            # Found again: whichever track continued it was another object, and the next time
            # this one is lost, it may be continued.
            self.linked.discard(tid)
            self.last[tid] = (t, np.asarray(b, np.float64), labels[tid])
            p = self.path.setdefault(tid, deque())
            p.append((t, *_centre(b)))
            while p[0][0] < t - VELOCITY_WINDOW:
                p.popleft()
        return links

    def _predict(self, tid: int, t: float, size: tuple[int, int] | None = None) -> tuple[float, float] | None:
        """Where lost track ``tid`` would be at ``t`` moving on at its last velocity (pixels):
        the centre's mean velocity over its last VELOCITY_WINDOW seconds of matches, applied for
        at most MAX_EXTRAPOLATION seconds after its last match, clipped to ``size`` (width,
        height, pixels) when given; None when those matches span less than MIN_SPAN seconds
        (so also for a track matched once)."""
        p = self.path.get(tid)
        if not p or p[-1][0] - p[0][0] < MIN_SPAN:
            return None
        (t0, x0, y0), (t1, x1, y1) = p[0], p[-1]
        k = min(max(t - t1, 0.0), MAX_EXTRAPOLATION) / (t1 - t0)
        x, y = x1 + k * (x1 - x0), y1 + k * (y1 - y0)
        if size is not None:
            x, y = min(max(x, 0.0), float(size[0])), min(max(y, 0.0), float(size[1]))
        return (x, y)

    def forget(self, ids: Iterable[int]) -> None:
        """The tracker ended these tracks."""
        for tid in ids:
            self.last.pop(tid, None)
            self.path.pop(tid, None)
            self.linked.discard(tid)


def _centre(b: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) in pixels of a (4,) box x1, y1, x2, y2 in pixels."""
    return (float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2)


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    """Distance in pixels between the centres of two (4,) pixel boxes."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return float(np.hypot(ax - bx, ay - by))


def _size(b: np.ndarray) -> float:
    """A (4,) pixel box's larger side (width or height) in pixels, 0 for an inverted box."""
    return float(max(b[2] - b[0], b[3] - b[1], 0.0))
