"""Per-stream analytics: the tracker, the zones and the lines of one stream, and what they say.

The pipeline loop calls :meth:`StreamAnalytics.update` once per processed frame, after
post-processing and before publishing: it writes the track id of every detection into
``Detections.track_ids`` (published as ``track_id``) and returns the analytics events of that
frame (``zone_enter``, ``zone_exit``, ``line_cross``), each a dict of the payload fields beyond
``v``/``stream``/``seq`` (see ``daemon/publish/schemas/analytics.v1.json``). Metrics are updated
here too. A reload swaps zones and lines with :meth:`reconfigure` and keeps the tracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.analytics.config import AnalyticsConfig
from daemon.analytics.lines import LineRule
from daemon.analytics.shape import RESET_AFTER, TOLERANCE, ShapeGate
from daemon.analytics.stitch import Stitcher
from daemon.analytics.tracker import Tracker
from daemon.analytics.zones import Stamp, ZoneRule
from daemon.frames import Detections, Frame

__all__ = ["StreamAnalytics", "anchors"]


def anchors(boxes: np.ndarray, width: int, height: int, kind: str) -> np.ndarray:
    """(N, 2) float64 anchor points in normalized coordinates of (N, 4) pixel boxes x1,y1,x2,y2:
    ``bottom_center`` ((x1+x2)/2, y2) or ``center``, clipped to the frame ([0, 1]). Why clip:
    the boxes are Kalman estimates, which overshoot the frame edge by a pixel or so when an
    object is cut by it (a bus whose bottom is the frame's bottom); the object itself is seen
    only inside the frame, and a line drawn to the edge must be crossed there, not missed
    because the anchor slid just past the segment's end."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x = (b[:, 0] + b[:, 2]) / 2 / width
    y = (b[:, 3] if kind == "bottom_center" else (b[:, 1] + b[:, 3]) / 2) / height
    return np.clip(np.stack([x, y], axis=1), 0.0, 1.0)


@dataclass(slots=True)
class _Wait:
    """A linked track not yet seen whole (see :meth:`StreamAnalytics.update`)."""

    height: float  # pixels: the object's height as the track(s) it continues last saw it whole
    aspect: float | None  # that object's height / width (median of the same boxes), None: unknown
    shaped: int = 0  # this track's latest boxes in a row with that shape, only shorter


class StreamAnalytics:
    """Tracking, zones and lines of one stream. ``metrics`` is a :class:`daemon.metrics.Metrics`
    (or None in benchmarks and tests that read the events only)."""

    def __init__(self, stream: str, cfg: AnalyticsConfig, labels: Sequence[str], metrics: Any = None) -> None:
        self.stream = stream
        self.labels = list(labels)
        self.metrics = metrics
        self.cfg = cfg
        self.tracker = Tracker(cfg.tracker) if cfg.tracker is not None else None
        self.stitcher = self._new_stitcher(cfg)
        self.shape = ShapeGate()
        # Linked tracks not yet seen whole: new id -> what it waits for (see update).
        self._verify: dict[int, _Wait] = {}
        self.zones: list[ZoneRule] = []
        self.lines: list[LineRule] = []
        self._series: set[tuple[str, tuple[str, ...]]] = set()
        self._install(cfg)

    @staticmethod
    def _new_stitcher(cfg: AnalyticsConfig) -> Stitcher | None:
        tc = cfg.tracker
        # A track the tracker ended stays a link candidate for another ``lost_track_seconds``:
        # at sparse frame rates the tracker loses a partly hidden object's match earlier (its
        # partial boxes no longer overlap the prediction), so its budget runs out while the object
        # is still hidden (measured: fast, every 2nd frame: last match frame 22, seen again 56).
        if tc is None or not tc.stitch:
            return None
        return Stitcher(tc.min_hits, 2 * tc.lost_track_seconds)

    @property
    def enabled(self) -> bool:
        return self.tracker is not None

    def _name(self, cid: int) -> str:
        return self.labels[cid] if 0 <= cid < len(self.labels) else str(cid)

    def _install(self, cfg: AnalyticsConfig) -> None:
        old_z = {z.name: z for z in self.zones}
        old_l = {ln.name: ln for ln in self.lines}
        # An unchanged zone or line keeps its state (who is inside, which side each track is on).
        self.zones = [old_z[z.name] if z.name in old_z and old_z[z.name].cfg == z else ZoneRule(z) for z in cfg.zones]
        self.lines = [old_l[ln.name] if ln.name in old_l and old_l[ln.name].cfg == ln else LineRule(ln)
                      for ln in cfg.lines]
        if self.metrics is not None:
            live_z = {z.name: z for z in self.zones}
            live_l = {ln.name for ln in self.lines}
            for kind, key in list(self._series):
                name = key[1]
                if (kind in "ze" and name not in live_z) or (kind == "c" and name not in live_l):
                    self._remove(kind, key)
                elif kind == "z" and live_z[name] is not old_z.get(name):
                    self._gauge(key, 0)  # a changed zone starts empty
            # Series at zero from the start, so rate() and Grafana see them before the first event.
            for ln in self.lines:
                for lab in ln.cfg.labels:
                    for d in ("in", "out"):
                        self._counter("c", (self.stream, ln.name, d, lab), 0)
            for z in self.zones:
                for lab in z.cfg.labels:
                    self._gauge((self.stream, z.name, lab), z.occupancy.get(lab, 0))
                    self._counter("e", (self.stream, z.name, lab), 0)
        self.cfg = cfg

    def _metric(self, kind: str) -> Any:
        m = self.metrics
        return {"c": m.line_crossings, "z": m.zone_occupancy, "e": m.zone_entries}[kind]

    def _counter(self, kind: str, key: tuple[str, ...], n: int) -> None:
        self._series.add((kind, key))
        c = self._metric(kind).labels(*key)
        if n:
            c.inc(n)

    def _gauge(self, key: tuple[str, ...], v: float) -> None:
        self._series.add(("z", key))
        self.metrics.zone_occupancy.labels(*key).set(v)

    def _remove(self, kind: str, key: tuple[str, ...]) -> None:
        self._series.discard((kind, key))
        try:
            self._metric(kind).remove(*key)
        except KeyError:
            pass

    def reconfigure(self, cfg: AnalyticsConfig) -> None:
        """New zones/lines (a reload). Tracks survive: the tracker is rebuilt only when its own
        settings changed (and then its tracks end, as a restart would)."""
        if cfg.tracker != self.cfg.tracker:
            self.tracker = Tracker(cfg.tracker) if cfg.tracker is not None else None
            self.stitcher = self._new_stitcher(cfg)
            self.shape = ShapeGate()
            self._verify.clear()
            for z in self.zones:
                z.state.clear()
                z.occupancy.clear()
            for ln in self.lines:
                ln.state.clear()
        self._install(cfg)

    def update(self, frame: Frame, dets: Detections) -> list[dict[str, Any]]:
        """Track ``dets`` of ``frame``; set ``dets.track_ids``; return this frame's events."""
        if self.tracker is None:
            return []
        t = frame.pts if frame.pts is not None else frame.t_decoded
        up = self.tracker.update(dets, t)
        dets.track_ids = up.ids
        events: list[dict[str, Any]] = []
        for tid in up.ended:
            for z in self.zones:
                ev = z.end(tid)
                if ev is not None:
                    events.append(ev)
            if self.stitcher is None:
                for ln in self.lines:
                    ln.end(tid)
            self.shape.end(tid)
            self._verify.pop(tid, None)
        if up.reset and self.stitcher is not None:
            for tid in self.stitcher.forget(list(self.stitcher.last), None):
                for ln in self.lines:
                    ln.end(tid)
            self.stitcher = self._new_stitcher(self.cfg)
        elif self.stitcher is not None:
            for tid in self.stitcher.forget(up.ended, t):
                for ln in self.lines:
                    ln.end(tid)
        if self.zones or self.lines:
            at = Stamp(t, frame.pts, frame.captured_at, frame.index)
            ids = sorted(up.boxes)
            names = [self._name(self.tracker.label_of(tid)) for tid in ids]
            # A line crossing is counted (and filtered) by what the track is *now*, its recent
            # label: ByteTrack may hand a track to another object of another class (measured: a
            # bus took over a walking person's track and followed it for 40 frames, so its
            # crossing of a bus line was filed under the whole track's majority, person, and
            # filtered out). The stitcher keeps the whole life's label: it continues the object
            # that was lost, which is the one the track followed longest.
            now = [self._name(self.tracker.recent_label_of(tid)) for tid in ids] if self.lines else names
            if self.stitcher is not None and self.lines:
                links = self.stitcher.update(t, up.boxes, dict(zip(ids, names)), self.tracker.alive,
                                             (frame.width, frame.height))
                for new, old in links:
                    for ln in self.lines:
                        ln.adopt(new, old)
                    # The new track takes over the old one's sides, which its boxes may change only
                    # once one of them is as tall as the object was (less TOLERANCE): a linked track
                    # often starts on partial boxes (legs hidden by what hid the object), whose
                    # bottom is not the feet, and a new track has no heights of its own to judge
                    # them by (measured: approach, every 4th frame: a waist-cut box 142 px high,
                    # the person 245 px, "crossed" a line 0.25 of the frame above its feet). Only shorter
                    # boxes are held back: the old reference may itself come from partial boxes (a
                    # track that began on a torso), and then the whole object is taller. An old
                    # track still waiting passes on the taller of its own and its awaited height.
                    # The wait also ends when the new track's boxes show the object's shape, only
                    # smaller (below).
                    waited, own = self._verify.get(old), self.shape.reference(old)
                    if waited is not None and waited.height >= (own or 0.0):
                        self._verify[new] = _Wait(waited.height, waited.aspect)
                    elif own:
                        self._verify[new] = _Wait(own, self.shape.reference_aspect(old))
            if ids:
                rules: list[ZoneRule | LineRule] = [*self.zones, *self.lines]
                tb = np.array([up.boxes[tid] for tid in ids])
                pts = {k: anchors(tb, frame.width, frame.height, k).tolist() for k in {r.cfg.anchor for r in rules}}
                whole = []
                for tid in ids:
                    hgt = float(up.boxes[tid][3] - up.boxes[tid][1])
                    wid = float(up.boxes[tid][2] - up.boxes[tid][0])
                    ok, reset = self.shape.check(tid, hgt, wid)
                    want = self._verify.get(tid)
                    if want is not None and hgt >= (1 - TOLERANCE) * want.height:
                        # A linked track seen whole: its own earlier (partial) heights are no
                        # reference, and it may change the side it took over.
                        del self._verify[tid]
                        self.shape.restart(tid, hgt, wid)
                        ok, reset = True, False
                    elif want is not None:
                        # Shorter. A box cut off by what is in front (legs behind a bus, only the
                        # head above it) loses height but keeps its width; the object farther
                        # away (it shrank while hidden) or another, smaller one of the label
                        # (a wrong link) keeps its shape. RESET_AFTER boxes in a row with the
                        # awaited height / width (within TOLERANCE) end the wait: the track is
                        # then judged by its own heights like any other, and the sides it took
                        # over are forgotten (reset), so no crossing is counted between the
                        # old track's boxes and these. Cut boxes keep it waiting as long as
                        # they last: their bottom is not the feet.
                        shaped = (want.aspect is not None and wid > 0
                                  and abs(hgt / wid - want.aspect) <= TOLERANCE * want.aspect)
                        want.shaped = want.shaped + 1 if shaped else 0
                        if want.shaped >= RESET_AFTER:
                            del self._verify[tid]
                            self.shape.restart(tid, hgt, wid)
                            ok, reset = True, True
                        else:
                            ok, reset = False, False
                    if reset:
                        for ln in self.lines:
                            ln.end(tid)
                    whole.append(ok)
                for rule in rules:
                    ps = pts[rule.cfg.anchor]
                    gate = isinstance(rule, LineRule) and rule.cfg.anchor == "bottom_center"
                    for tid, name, (x, y), ok in zip(ids, now if isinstance(rule, LineRule) else names, ps, whole):
                        if gate and not ok:
                            continue  # not the whole object: its box's bottom is not its feet
                        ev = rule.observe(tid, name, (x, y), at)
                        if ev is not None:
                            events.append(ev)
        if events and self.metrics is not None:
            self._count(events)
        return events

    def _count(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            kind = ev["event"]
            if kind == "line_cross":
                self._counter("c", (self.stream, ev["line"], ev["direction"], ev["label"]), 1)
            else:
                z = next(z for z in self.zones if z.name == ev["zone"])
                if kind == "zone_enter":
                    self._counter("e", (self.stream, z.name, ev["label"]), 1)
                self._gauge((self.stream, z.name, ev["label"]), z.occupancy.get(ev["label"], 0))

    def end_tracks(self) -> list[dict[str, Any]]:
        """End every track (the stream ended): the zone exits of the tracks still inside, with
        reason ``ended``; occupancy drops to zero. The tracker itself carries on (a stream that
        starts again restarts its clock, which resets it anyway)."""
        events: list[dict[str, Any]] = []
        self.shape = ShapeGate()
        self._verify.clear()
        if self.stitcher is not None:
            for tid in self.stitcher.ended:  # kept as link candidates: their sides go now
                for ln in self.lines:
                    ln.end(tid)
            self.stitcher = self._new_stitcher(self.cfg)
        if self.tracker is not None and self.tracker.alive:
            for tid in self.tracker.end_all():
                for z in self.zones:
                    ev = z.end(tid, "ended")
                    if ev is not None:
                        events.append(ev)
                for ln in self.lines:
                    ln.end(tid)
        if events and self.metrics is not None:
            self._count(events)
        return events

    def close(self) -> list[dict[str, Any]]:
        """The stream is removed: its tracks end (see :meth:`end_tracks`) and its series are
        removed from the registry. Returns the zone exits."""
        events = self.end_tracks()
        if self.metrics is not None:
            for kind, key in list(self._series):
                self._remove(kind, key)
        return events
