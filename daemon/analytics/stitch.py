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

A linked track inherits the matches of the track it continues as the start of its own history,
so its velocity is the object's (over its last ``VELOCITY_WINDOW`` seconds of matches under
either id): a track that is linked and lost again within a few frames has too few matches of its
own to give a velocity (measured: ``fast``, uneven gaps, two matches 0.04 s apart), and the
object, seen again later where its motion leads, could not be continued.

Candidates are paired greedily, closest first; each old track is continued at most once while
it stays lost (so one object cannot be continued twice, by two later tracks). The old track
keeps its own state: if the tracker finds it again, it was not the object the new track follows
(measured: a bus lost for one frame, while a new track started beside it), and it goes on
counting for itself; from then on it may be continued again the next time it is lost (measured:
the track of the person ``a`` of ``fast`` was unmatched in frames 9-13, a person entering beside
it was linked to it at frame 13, the tracker matched it again at frame 14, and at its real
occlusion (frames 29-51) it could no longer be continued).

A track the tracker ended stays a candidate until ``keep_seconds`` after its last match
(StreamAnalytics passes 2 x ``lost_track_seconds``), linked only where its velocity leads: at
sparse frame rates the tracker loses a partly hidden object's match earlier, so its budget runs
out while the object is still hidden (measured: ``fast``, every 2nd frame, seen again 1.36 s
after the last match). Tracks of one object are continued once: continuing one also uses up
every other candidate of its label lost within SAME_TIME of it whose box, the latest time both
were matched, was nested in its box (CONTAINED): YOLO reports a person twice (whole body, upper
body), both tracks are lost together, and without this both were continued and the person's
crossings counted twice (``fast``, full rate, 9 of 7). Pure numpy; no state beyond the ids
involved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

__all__ = ["CONTAINED", "HISTORY", "MAX_EXTRAPOLATION", "MIN_SPAN", "SAME_TIME", "Stitcher", "VELOCITY_WINDOW"]

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
# Two tracks followed one object when, the last time both were matched (within SAME_TIME
# seconds of each one's last match), one box had at least CONTAINED of its area inside the
# other (YOLO's whole body and upper body of one person; 0.8 is ``suppress_contained``'s default).
SAME_TIME = 0.5
CONTAINED = 0.8
# How much of a track's recent matches is kept: enough for both of the above.
HISTORY = max(VELOCITY_WINDOW, SAME_TIME)


class Stitcher:
    """Links new track ids to lost ones of one stream (see the module docstring).

    ``min_hits``: the tracker's consecutive matches before a track gets an id."""

    def __init__(self, min_hits: int, keep_seconds: float = 0.0) -> None:
        self.min_hits = max(1, int(min_hits))
        # How long after its last match a track the tracker ended stays a link candidate
        # (seconds; 0: not at all), and those tracks.
        self.keep_seconds = float(keep_seconds)
        self.ended: set[int] = set()
        # Stream times of the last ``min_hits`` updates: where a newly confirmed track began.
        self._times: deque[float] = deque(maxlen=self.min_hits)
        # id -> (stream time of the last match, (4,) box x1, y1, x2, y2 pixels, label)
        self.last: dict[int, tuple[float, np.ndarray, str]] = {}
        # id -> (stream time, (4,) box pixels) of its matches in the last HISTORY s before its
        # latest: its velocity (_predict) and its boxes beside another track's (_same_object).
        # A track that continues another starts with that one's matches (one object's history).
        self.path: dict[int, deque[tuple[float, np.ndarray]]] = {}
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
            lost = [tid for tid in (alive | self.ended) if tid not in boxes and tid in self.last
                    and tid not in self.linked and self.last[tid][0] < first_seen]
            pairs = []
            for n in new:
                nb = boxes[n]
                for o in lost:
                    _, ob, olab = self.last[o]
                    if olab != labels[n]:
                        continue
                    # An ended track is continued only where its velocity leads, not near where
                    # it was lost: past the tracker's budget, a box there is more likely another
                    # object (measured: fast, every 2nd frame, with the last centre allowed too, a
                    # person was linked to a small box lost 1.5 s before and miscounted).
                    d = float("inf") if o in self.ended else _dist(nb, ob)
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
                # The link says both tracks followed one object, so the new one starts with the
                # old one's matches as its own history: its velocity is the object's over its
                # last VELOCITY_WINDOW s of matches under either id, not only the few of the
                # new id (measured: fast, uneven gaps: a track on the overtaken person, linked
                # at frame 25 and lost again at 26, had two matches 0.04 s apart, so no velocity
                # of its own, and when the person came back 1.2 s later nothing continued it).
                if o in self.path:
                    self.path[n] = deque(self.path[o])
                # The other tracks of the same object are continued with it: none of them may be
                # continued again by another new track.
                for s in self._same_object(o, lost):
                    self.linked.add(s)
                    used_old.add(s)
        for tid, b in boxes.items():
            # Found again: whichever track continued it was another object, and the next time
            # this one is lost, it may be continued.
            self.linked.discard(tid)
            box = np.asarray(b, np.float64)
            self.last[tid] = (t, box, labels[tid])
            p = self.path.setdefault(tid, deque())
            p.append((t, box))
            while p[0][0] < t - HISTORY:
                p.popleft()
        return links

    def _predict(self, tid: int, t: float, size: tuple[int, int] | None = None) -> tuple[float, float] | None:
        """Where lost track ``tid`` would be at ``t`` moving on at its last velocity (pixels):
        the centre's mean velocity over its last VELOCITY_WINDOW seconds of matches, applied for
        at most MAX_EXTRAPOLATION seconds after its last match, clipped to ``size`` (width,
        height, pixels) when given; None when those matches span less than MIN_SPAN seconds
        (so also for a track matched once)."""
        p = self._recent(tid, VELOCITY_WINDOW)
        if not p or p[-1][0] - p[0][0] < MIN_SPAN:
            return None
        t0, t1 = p[0][0], p[-1][0]
        (x0, y0), (x1, y1) = _centre(p[0][1]), _centre(p[-1][1])
        k = min(max(t - t1, 0.0), MAX_EXTRAPOLATION) / (t1 - t0)
        x, y = x1 + k * (x1 - x0), y1 + k * (y1 - y0)
        if size is not None:
            x, y = min(max(x, 0.0), float(size[0])), min(max(y, 0.0), float(size[1]))
        return (x, y)

    def _recent(self, tid: int, seconds: float) -> list[tuple[float, np.ndarray]]:
        """``tid``'s (stream time, (4,) pixel box) matches within ``seconds`` of its latest."""
        p = self.path.get(tid)
        return [m for m in p if m[0] >= p[-1][0] - seconds] if p else []

    def _same_object(self, o: int, lost: list[int]) -> list[int]:
        """The candidates in ``lost`` other than ``o`` that followed the same object as ``o``:
        same label, last matched within SAME_TIME seconds of ``o``, and at the latest time both
        were matched one's box had CONTAINED of its area (or more) inside the other's."""
        to, _, lo = self.last[o]
        out = []
        for s in lost:
            if s == o:
                continue
            ts, _, ls = self.last[s]
            if ls != lo or abs(ts - to) > SAME_TIME:
                continue
            # Their boxes at the latest time both were matched (within the last SAME_TIME s of
            # each): two tracks of one object often alternate on it, one frame on its upper
            # body, the next on the whole, so their last matches are rarely in one frame.
            hs = dict(self._recent(s, SAME_TIME))
            both = [(tb, b, hs[tb]) for tb, b in self._recent(o, SAME_TIME) if tb in hs]
            if both and _contained(both[-1][1], both[-1][2]) >= CONTAINED:
                out.append(s)
        return out

    def forget(self, ids: Iterable[int], t: float | None = None) -> list[int]:
        """The tracker ended these tracks at stream time ``t``: they stay link candidates until
        ``keep_seconds`` after their last match. Returns the ids dropped now (their time is
        over), for which the caller forgets its own state (line sides)."""
        for tid in ids:
            if tid in self.last:
                self.ended.add(tid)
        gone = [tid for tid in self.ended
                if t is None or t - self.last[tid][0] > self.keep_seconds]
        for tid in gone:
            self.ended.discard(tid)
            self.last.pop(tid, None)
            self.path.pop(tid, None)
            self.linked.discard(tid)
        return gone


def _contained(a: np.ndarray, b: np.ndarray) -> float:
    """The share of the smaller of two (4,) pixel boxes' area that lies inside the other (0-1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(float(w), 0.0) * max(float(h), 0.0)
    small = min(_area(a), _area(b))
    return inter / small if small > 0 else 0.0


def _area(b: np.ndarray) -> float:
    return max(float(b[2] - b[0]), 0.0) * max(float(b[3] - b[1]), 0.0)


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
