"""The tracker adapter: detectd's :class:`~daemon.frames.Detections` in, a track id per
detection out, driven by the frames' timestamps.

The tracker itself is ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating
Every Detection Box", ECCV 2022) as implemented by Roboflow's ``trackers`` package
(``trackers.ByteTrackTracker``; why this one: docs/analytics.md). That implementation counts
its lost-track buffer in "30 FPS frames" and its Kalman step in frames *unless* ``update`` is
given a ``timestamp``: then the Kalman transition is scaled by the real elapsed time and the
lost-track budget is applied in seconds (``lost_track_buffer / 30``). detectd always passes the
frame's timestamp, so a stream whose scheduler drops superseded frames (uneven gaps) is tracked
on its own clock, and ``lost_track_seconds`` means seconds whatever the frame rate.

The library is imported lazily (it pulls in supervision and takes seconds to import): a config
without a tracker never loads it.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any

import numpy as np

from daemon.analytics.config import TrackerConfig
from daemon.frames import Detections

__all__ = ["Tracker", "TrackUpdate", "duplicates"]

# What a track is *now*: the class most often detected for it over its last RECENT_SECONDS of
# matches (stream time). Long enough to outvote a detector hesitating between car and truck for
# a frame or two, short enough to notice within a second that the track now follows another
# object (ByteTrack associates by overlap only: measured, a bus driving past took over a walking
# person's track and kept it for 40 frames; see recent_label_of).
RECENT_SECONDS = 1.0


def duplicates(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, contained: float) -> np.ndarray:
    """(N,) bool: which detections duplicate another one. Same label: at least ``contained`` of
    the box's area lies inside a larger box (intersection over the smaller area, the
    "containment" test). Any label: IoU >= 0.9 with a more confident box. ``contained`` 0 =
    nothing is a duplicate. Boxes (N, 4) x1, y1, x2, y2 pixels."""
    n = len(boxes)
    dup = np.zeros(n, bool)
    if n < 2 or contained <= 0:
        return dup
    b = boxes.astype(np.float64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    np.fill_diagonal(inter, 0.0)
    same = class_ids[:, None] == class_ids[None, :]
    # i is inside j: inter / area_i, and j is the larger box
    inside = (inter / np.maximum(area[:, None], 1e-9) >= contained) & (area[None, :] > area[:, None]) & same
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
    better = (scores[None, :] > scores[:, None]) | ((scores[None, :] == scores[:, None])
                                                     & (np.arange(n)[None, :] < np.arange(n)[:, None]))
    twin = (iou >= 0.9) & better & ~same
    dup = inside.any(axis=1) | twin.any(axis=1)
    return dup


class TrackUpdate:
    """What one :meth:`Tracker.update` found.

    ``ids``: (N,) int64, the track id of each input detection in input order, -1 for a
    detection not (yet) part of a confirmed track. ``ended``: ids of confirmed tracks the
    tracker dropped at this step (lost for longer than ``lost_track_seconds``, or all of them
    after a clock reset). ``reset``: the stream's clock went backwards (a looped file, a
    reopened stream) and every track was ended. ``boxes``: track id -> (4,) float64 box
    x1, y1, x2, y2 pixels of the Kalman filter's state after this update, for every confirmed
    track matched in this frame: steadier than the raw detection (used for zone/line anchors).
    """

    __slots__ = ("ids", "ended", "reset", "boxes")

    def __init__(self, ids: np.ndarray, ended: list[int], reset: bool = False,
                 boxes: dict[int, np.ndarray] | None = None) -> None:
        self.ids = ids
        self.ended = ended
        self.reset = reset
        self.boxes = boxes or {}


class Tracker:
    """One stream's ByteTrack. Not thread-safe: the pipeline loop owns it."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._id_base = 0  # ids stay unique across clock resets (a fresh tracker counts from 0)
        self._issued = 0  # one past the largest id handed out
        self._last_t: float | None = None
        self.alive: set[int] = set()
        self._votes: dict[int, Counter[int]] = {}
        self._recent: dict[int, deque[tuple[float, int]]] = {}
        self._impl = self._new()

    def _new(self) -> Any:
        from trackers import ByteTrackTracker
        from trackers.utils.iou import BIoU, IoU
        from trackers.utils.state_representations import XCYCSRStateEstimator, XYXYStateEstimator

        c = self.cfg
        return ByteTrackTracker(
            state_estimator_class=XCYCSRStateEstimator if c.motion == "xcycsr" else XYXYStateEstimator,
            iou=BIoU(buffer_ratio=c.buffer_ratio) if c.buffer_ratio > 0 else IoU(),
            # The library's buffer is in 30 FPS frames and becomes lost_track_buffer / 30 seconds
            # in timestamp mode: convert our seconds to it exactly.
            lost_track_buffer=max(1, math.ceil(c.lost_track_seconds * 30.0)),
            frame_rate=c.frame_rate,
            track_activation_threshold=c.activation_threshold,
            minimum_consecutive_frames=c.min_hits,
            minimum_iou_threshold=c.min_iou,
            high_conf_det_threshold=c.high_conf_threshold,
        )

    def label_of(self, track_id: int) -> int:
        """The class id most often detected for ``track_id`` (ByteTrack is class-agnostic, so a
        track keeps one identity when the detector hesitates between, say, car and truck)."""
        votes = self._votes.get(track_id)
        return votes.most_common(1)[0][0] if votes else -1

    def recent_label_of(self, track_id: int) -> int:
        """The class most often detected for ``track_id`` over its last ``RECENT_SECONDS`` of
        matches (ties: the latest), -1 if none. Unlike :meth:`label_of` (the whole life's
        majority) it changes when the track is handed from one object to another of another
        class, which ByteTrack, associating by overlap alone, does (a bus taking over the track
        of a person it passes)."""
        recent = self._recent.get(track_id)
        if not recent:
            return -1
        votes = Counter(c for _, c in recent)
        best = max(votes.values())
        return next(c for _, c in reversed(recent) if votes[c] == best)

    def update(self, dets: Detections, t: float) -> TrackUpdate:
        """Associate ``dets`` (one frame, boxes in pixels) at stream time ``t`` (seconds:
        the frame's pts, or its decode time on the monotonic clock when it has none)."""
        import supervision as sv

        reset = False
        ended: list[int] = []
        if self._last_t is not None and t < self._last_t:
            # The stream's clock restarted: old tracks cannot continue into the new timeline.
            ended = sorted(self.alive)
            self.alive = set()
            self._votes.clear()
            self._recent.clear()
            self._id_base = self._issued
            self._impl = self._new()
            reset = True
        elif self._last_t is not None and t == self._last_t:
            t = math.nextafter(t, math.inf)  # the library skips the prediction (and warns) on ties
        self._last_t = t
        n = len(dets)
        keep = np.flatnonzero(~duplicates(dets.boxes, dets.scores, dets.class_ids, self.cfg.suppress_contained))
        if len(keep):
            sd = sv.Detections(xyxy=dets.boxes[keep].astype(np.float32), confidence=dets.scores[keep],
                               class_id=dets.class_ids[keep], data={"i": keep})
        else:
            sd = sv.Detections.empty()
            sd.data = {"i": np.zeros(0, np.int64)}
        out = self._impl.update(sd, timestamp=t)
        ids = np.full(n, -1, np.int64)
        if len(out):
            local = np.asarray(out.tracker_id, np.int64)
            idx = np.asarray(out.data["i"], np.int64)
            ok = local >= 0
            ids[idx[ok]] = local[ok] + self._id_base
            if ok.any():
                self._issued = max(self._issued, int(local[ok].max()) + self._id_base + 1)
            for tid, cid in zip(ids[idx[ok]].tolist(), dets.class_ids[idx[ok]].tolist()):
                self._votes.setdefault(tid, Counter())[cid] += 1
                recent = self._recent.setdefault(tid, deque())
                recent.append((t, cid))
                while recent[0][0] < t - RECENT_SECONDS:
                    recent.popleft()
        alive = set()
        boxes = {}
        for tr in self._impl.tracks:
            if tr.tracker_id >= 0:
                tid = int(tr.tracker_id) + self._id_base
                alive.add(tid)
                if tr.time_since_update == 0:
                    boxes[tid] = np.asarray(tr.get_state_bbox(), np.float64).reshape(4)
        gone = self.alive - alive
        for tid in gone:
            self._votes.pop(tid, None)
            self._recent.pop(tid, None)
        ended.extend(sorted(gone))
        self.alive = alive
        return TrackUpdate(ids, ended, reset, boxes)

    def end_all(self) -> list[int]:
        """End every track (the stream ended or is removed): their ids, for zone exits. The
        next update starts afresh, with new ids."""
        ended = sorted(self.alive)
        self.alive = set()
        self._votes.clear()
        self._recent.clear()
        self._id_base = self._issued
        self._impl = self._new()
        return ended
