"""Identity linking for line counts (daemon/analytics/stitch.py, state.py): a lost track is
continued where its last velocity takes it, may be continued again once the tracker has found it
again, and a linked track changes the side it took over only with a box as tall as the object
was (docs/analytics.md, "Identity switches"). Synthetic boxes on the stream's clock; the real
ByteTrack (``trackers``) associates them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from daemon.analytics.config import AnalyticsConfig
from daemon.analytics.state import StreamAnalytics
from daemon.analytics.stitch import Stitcher
from daemon.frames import Detections, Frame


def _box(cx: float, w: float = 60, h: float = 180) -> np.ndarray:
    return np.array([cx - w / 2, 100, cx + w / 2, 100 + h], np.float64)


def _walk(st: Stitcher, times: list[float], speed: float) -> None:
    """Track 1, a 60 x 180 px person, walks right at ``speed`` px/s, seen at ``times``."""
    for t in times:
        st.update(t, {1: _box(100 + speed * t)}, {1: "person"}, {1})


@pytest.mark.parametrize("times", [
    [k / 25 for k in range(13)],              # every frame
    [k / 25 for k in range(0, 13, 4)],        # every 4th frame
    [0.0, 0.04, 0.16, 0.2, 0.32, 0.36, 0.48],  # uneven gaps
])
def test_lost_track_is_continued_where_its_velocity_takes_it(times: list[float]) -> None:
    """Hidden for 0.9 s at 212 px/s (about the overtaken person of scene `fast`), it is seen again
    190 px on: further than its size (180 px) from where it was lost, 10 px from where its
    velocity takes it. Dropped frames change nothing: the velocity is per second."""
    st = Stitcher(min_hits=2)
    _walk(st, times, 212.0)
    t = times[-1] + 0.9
    st.update(t - 0.04, {}, {}, {1})
    assert st.update(t, {2: _box(100 + 212.0 * t + 10)}, {2: "person"}, {1, 2}) == [(2, 1)]


@pytest.mark.parametrize("where", ["behind", "beyond", "standing"])
def test_velocity_does_not_link_what_is_neither_near_nor_ahead(where: str) -> None:
    st = Stitcher(min_hits=2)
    times = [k / 25 for k in range(13)]
    _walk(st, times, 0.0 if where == "standing" else 212.0)
    t = times[-1] + 0.9
    st.update(t - 0.04, {}, {}, {1})
    last = 100 + (0.0 if where == "standing" else 212.0) * times[-1]
    ahead = 100 + (0.0 if where == "standing" else 212.0) * t
    cx = {"behind": last - 200, "beyond": ahead + 200, "standing": last + 200}[where]
    assert st.update(t, {2: _box(cx)}, {2: "person"}, {1, 2}) == []


def test_track_found_again_can_be_continued_again() -> None:
    """Track 1 is lost for a moment and another person appearing beside it is linked to it; the
    tracker finds 1 again, so that link was wrong; when 1 is lost again, a new track there
    continues it (before: never again, as each old track was continued once in its life)."""
    st = Stitcher(min_hits=2)
    st.update(0.00, {1: _box(200)}, {1: "person"}, {1})
    st.update(0.04, {}, {}, {1})
    st.update(0.08, {}, {}, {1})
    assert st.update(0.12, {2: _box(250)}, {2: "person"}, {1, 2}) == [(2, 1)]
    st.update(0.16, {1: _box(204), 2: _box(252)}, {1: "person", 2: "person"}, {1, 2})  # found again
    st.update(0.20, {2: _box(254)}, {2: "person"}, {1, 2})
    st.update(0.24, {2: _box(256)}, {2: "person"}, {1, 2})
    assert st.update(0.28, {3: _box(150)}, {3: "person"}, {1, 2, 3}) == [(3, 1)]


# -------------------------------------------------------------- a linked track's first boxes


def _dets(*boxes: tuple[float, float, float, float]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32),
                      np.zeros(len(boxes), np.int32))


def _run(before: tuple[float, float], after: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """A person (60 px wide) walks right at 4 px/frame below a horizontal line at y 0.7 (252 px)
    with boxes spanning ``before`` (top, bottom) for 20 frames, is gone for 6 frames, and comes
    back 100 px further on (no overlap with the tracker's prediction: a new track, which the
    stitcher links to the lost one) with boxes ``after[k]`` (top, bottom) in its k-th frame."""
    cfg = AnalyticsConfig.model_validate({"tracker": {},
                                          "lines": [{"name": "l", "points": [[0.0, 0.7], [1.0, 0.7]]}]})
    an = StreamAnalytics("cam", cfg, ["person"])
    events: list[dict[str, Any]] = []
    for f in range(26 + len(after)):
        x = 100 + 4.0 * f
        if f < 20:
            boxes = [(x, before[0], x + 60, before[1])]
        elif f < 26:
            boxes = []
        else:
            top, bottom = after[f - 26]
            boxes = [(x + 100, top, x + 160, bottom)]
        events += an.update(Frame("cam", f, 640, 360, f / 25, 1000 + f / 25, f / 25), _dets(*boxes))
    return [e for e in events if e["event"] == "line_cross"]


def test_linked_track_on_cut_boxes_does_not_cross() -> None:
    """Scene `approach`, every 4th frame: the person's feet are below the line (y 290 px); it is
    lost while something hides its legs, and the new track begins on boxes cut at its waist
    (bottom 200 px, above the line). The cut boxes say nothing about its feet: no crossing.
    When it is whole again below the line, still none (it never crossed)."""
    got = _run((110, 290), [(110, 200)] * 12 + [(110, 290)] * 6)
    assert got == [], got


def test_linked_track_crosses_once_whole() -> None:
    """The same person really walks up across the line while hidden: the cut boxes still do not
    count, and the first whole box above the line does, once, stamped with its frame."""
    got = _run((110, 290), [(40, 130)] * 6 + [(20, 200)] * 6)
    assert [(e["direction"], e["frame"]) for e in got] == [("out", 32)], got


def test_linked_track_taller_than_a_partial_reference_crosses() -> None:
    """The lost track only ever saw a torso (70 px); the new one shows the whole person (180 px)
    past the line: taller than the reference is not held back (the reference was partial)."""
    got = _run((200, 270), [(30, 210)] * 6)
    assert [e["direction"] for e in got] == ["out"], got


# ------------------------------------------------------------ a track handed to another object


def test_line_counts_what_the_track_is_now() -> None:
    """ByteTrack associates by overlap only, so a bus driving past may take over the track of a
    person it covers (measured: 40 frames, scene `overtake`). Its crossing of a bus line is
    counted as a bus, although the track's whole-life majority is still `person`."""
    cfg = AnalyticsConfig.model_validate({"tracker": {},
                                          "lines": [{"name": "road", "points": [[0.7, 0.5], [0.7, 1.0]],
                                                     "labels": ["bus"]}]})
    an = StreamAnalytics("cam", cfg, ["person", "bus"])
    events: list[dict[str, Any]] = []
    labels_seen = []
    for f in range(70):
        if f < 40:  # a person standing at x 0.25
            box, cid = (130.0, 100.0, 190.0, 300.0), 0
        else:  # the bus, overlapping where the person was, then driving right across x 0.7
            x = 100.0 + 12.0 * (f - 40)
            box, cid = (x, 150.0, x + 250.0, 300.0), 1
        d = Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([cid], np.int32))
        events += an.update(Frame("cam", f, 640, 360, f / 25, 1000 + f / 25, f / 25), d)
        assert an.tracker is not None
        tid = int(d.track_ids[0])  # type: ignore[index]
        labels_seen.append(an.tracker.label_of(tid) if tid >= 0 else None)
    assert labels_seen[-1] == 0  # one track all along, still a person by its whole life
    got = [(e["line"], e["direction"], e["label"]) for e in events if e["event"] == "line_cross"]
    assert got == [("road", "out", "bus")], got


def test_recent_label_follows_the_last_second() -> None:
    from daemon.analytics.config import TrackerConfig
    from daemon.analytics.tracker import Tracker

    tr = Tracker(TrackerConfig())
    tid = -1
    for f in range(60):
        cid = 0 if f < 40 or f % 7 == 0 else 1  # then mostly class 1, class 0 now and then
        up = tr.update(Detections(np.array([[100, 100, 160, 280]], np.float32), np.array([0.9], np.float32),
                                  np.array([cid], np.int32)), f / 25)
        tid = int(up.ids[0])
        if f == 45:  # 6 of the last 25 matches are class 1: still class 0
            assert tr.recent_label_of(tid) == 0
    assert tr.recent_label_of(tid) == 1 and tr.label_of(tid) == 0
    assert tr.recent_label_of(10_000) == -1
