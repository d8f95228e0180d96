"""Analytics (issue 14): geometry and config checks, the timestamp-driven tracker, line and zone
rules, and the real daemon on a constructed video (tests/analytics_scenes.py) read by a real
ZeroMQ subscriber and a real /metrics scrape; SIGHUP changes zones and lines, tracks survive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from daemon.analytics.config import AnalyticsConfig, LineConfig
from daemon.analytics.geometry import polygon_problems
from daemon.analytics.lines import LineRule
from daemon.analytics.state import StreamAnalytics, anchors
from daemon.analytics.shape import ShapeGate
from daemon.analytics.stitch import Stitcher
from daemon.analytics.tracker import Tracker, duplicates
from daemon.analytics.config import TrackerConfig
from daemon.analytics.zones import Stamp
from daemon.config import ConfigError, parse_config
from daemon.frames import Detections, Frame
from tests.analytics_scenes import render, short_scene, true_crossings, true_zone_stays
from tests.harness import ROOT, free_port

SCHEMA = jsonschema.Draft202012Validator(json.loads(
    resources.files("daemon.publish").joinpath("schemas/analytics.v1.json").read_text()))
DET_SCHEMA = jsonschema.Draft202012Validator(json.loads(
    resources.files("daemon.publish").joinpath("schemas/detections.v1.json").read_text()))


# ------------------------------------------------------------------------------ geometry, config


@pytest.mark.parametrize("points, problem", [
    ([[0.1, 0.1], [0.5, 0.1]], "at least 3 points"),
    ([[0.1, 0.1], [1.2, 0.1], [0.5, 0.5]], "point 1 (1.2, 0.1) is outside the frame"),
    ([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]], "self-intersecting: edge 0"),
    ([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], "no area"),
    ([[0.1, 0.1], [0.5, 0.5], [0.1, 0.1]], "repeats a point"),
])
def test_polygon_problems_name_the_fault(points: list[list[float]], problem: str) -> None:
    got = polygon_problems([tuple(p) for p in points])  # type: ignore[misc]
    assert any(problem in g for g in got), got


def test_simple_polygons_pass() -> None:
    assert polygon_problems([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]) == []
    assert polygon_problems([(0.1, 0.1), (0.9, 0.1), (0.5, 0.3), (0.9, 0.9), (0.1, 0.9)]) == []  # concave


def test_check_config_names_the_key_of_bad_geometry(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    cfg = {"streams": [{"id": "cam", "url": str(video), "analytics": {
        "tracker": {},
        "zones": [{"name": "ok", "points": [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4]]},
                  {"name": "bow", "points": [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]}],
        "lines": [{"name": "far", "points": [[0.5, -0.1], [0.5, 1.0]]}],
    }}, {"id": "cam2", "url": str(video), "analytics": {"zones": [
        {"name": "z", "points": [[0.1, 0.1], [0.4, 0.1]]}]}}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    err = p.stderr
    assert "streams[0].analytics.zones[1].points: the polygon is self-intersecting" in err, err
    assert "streams[0].analytics.lines[0].points: point 0 (0.5, -0.1) is outside the frame" in err, err
    assert "streams[1].analytics.zones[0].points: a zone needs at least 3 points, got 2" in err, err
    assert "zones[0]" not in err.split("streams[0].analytics.zones[1]")[0], err  # the good zone passes


def test_zones_and_lines_need_the_tracker() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"streams": [{"id": "a", "url": "rtsp://h/x", "analytics": {
            "lines": [{"name": "l", "points": [[0, 0.5], [1, 0.5]]}]}}]})
    assert any(p.startswith("streams[0].analytics: ") and "tracker" in p for p in e.value.problems), e.value.problems


# --------------------------------------------------------------------------------- line rule


def _at(f: int) -> Stamp:
    return Stamp(f / 25, f / 25, 1.7e9 + f / 25, f)


def test_line_direction_and_debounce() -> None:
    # start -> end points right: "in" is moving down the picture (to the right of the line).
    rule = LineRule(LineConfig(name="l", points=[(0.2, 0.5), (0.8, 0.5)], min_frames=2))
    ys = [0.40, 0.45, 0.49, 0.51, 0.49, 0.52, 0.56, 0.60]  # jitter at the line, then past it
    evs = [rule.observe(1, "person", (0.5, y), _at(f)) for f, y in enumerate(ys)]
    crossed = [e for e in evs if e]
    assert len(crossed) == 1 and crossed[0]["direction"] == "in"
    assert crossed[0]["frame"] == 5  # the first of the two observations that confirmed it
    back = [rule.observe(1, "person", (0.5, y), _at(10 + f)) for f, y in enumerate([0.4, 0.35])]
    assert [e["direction"] for e in back if e] == ["out"]


def test_line_passing_beside_the_segment_is_no_crossing() -> None:
    rule = LineRule(LineConfig(name="l", points=[(0.2, 0.5), (0.4, 0.5)], min_frames=1))
    assert [rule.observe(1, "car", (0.7, y), _at(f)) for f, y in enumerate([0.3, 0.6, 0.7])] == [None] * 3


# ---------------------------------------------------------------------------- tracker (library)


def _dets(*boxes: tuple[float, float, float, float]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32),
                      np.zeros(len(boxes), np.int32))


@pytest.mark.parametrize("step", [1, 2, 4, 3])
def test_track_survives_frame_drops_by_timestamp(step: int) -> None:
    """The same motion seen at every frame or only every 2nd/3rd/4th keeps one id: the Kalman
    step is scaled by the elapsed time, not the call count."""
    tr = Tracker(TrackerConfig(frame_rate=25))
    ids = set()
    for f in range(0, 100, step):
        x = 10 + 4.0 * f  # 100 px/s
        up = tr.update(_dets((x, 100, x + 40, 200)), f / 25)
        if f >= 2 * step:
            ids.add(int(up.ids[0]))
    assert len(ids) == 1 and -1 not in ids


def test_lost_track_budget_is_seconds_not_frames() -> None:
    """Hidden for 0.8 s the track comes back with its id (lost_track_seconds 1.0); hidden for
    1.4 s it has ended and a new id starts -- whatever the number of frames in between."""
    for gap, same in ((0.8, True), (1.4, False)):
        tr = Tracker(TrackerConfig(lost_track_seconds=1.0, frame_rate=25))
        for f in range(10):
            first = tr.update(_dets((100, 100, 140, 200)), f / 25)
        t = 9 / 25 + gap
        tr.update(_dets(), t - 0.01)  # one empty frame just before (superseded frames dropped)
        again = tr.update(_dets((100, 100, 140, 200)), t)
        again = tr.update(_dets((100, 100, 140, 200)), t + 0.04)
        assert (int(again.ids[0]) == int(first.ids[0])) is same, (gap, first.ids, again.ids)


def test_clock_going_back_ends_the_tracks() -> None:
    tr = Tracker(TrackerConfig())
    for f in range(5):
        up = tr.update(_dets((100, 100, 140, 200)), 10 + f / 25)
    old = int(up.ids[0])
    up = tr.update(_dets((100, 100, 140, 200)), 0.0)  # a looped file starts over
    assert up.reset and up.ended == [old]
    for f in range(1, 4):
        up = tr.update(_dets((100, 100, 140, 200)), f / 25)
    assert int(up.ids[0]) > old  # ids are never reused


def test_contained_duplicate_is_not_tracked() -> None:
    boxes = np.array([[100, 100, 200, 300], [130, 140, 170, 280], [400, 100, 450, 200]], np.float32)
    dup = duplicates(boxes, np.array([0.8, 0.9, 0.7], np.float32), np.array([0, 0, 0], np.int32), 0.8)
    assert dup.tolist() == [False, True, False]
    other = duplicates(boxes, np.array([0.8, 0.9, 0.7], np.float32), np.array([0, 1, 0], np.int32), 0.8)
    assert other.tolist() == [False, False, False]  # a different label inside is a different object


# ------------------------------------------------------------------ identity switches, anchors


def _box(cx: float, w: float = 60, h: float = 180) -> np.ndarray:
    return np.array([cx - w / 2, 100, cx + w / 2, 100 + h], np.float64)


def test_stitch_links_a_new_track_to_a_lost_one_nearby() -> None:
    st = Stitcher(min_hits=2)
    assert st.update(0.00, {1: _box(200)}, {1: "person"}, {1}) == []
    assert st.update(0.04, {}, {}, {1}) == []  # hidden
    assert st.update(0.08, {}, {}, {1}) == []
    assert st.update(0.12, {2: _box(260, w=30)}, {2: "person"}, {1, 2}) == [(2, 1)]  # partial, 60 px on
    # One object is continued once: a later new track nearby is not linked to it again.
    assert st.update(0.16, {3: _box(262)}, {3: "person"}, {1, 2, 3}) == []


@pytest.mark.parametrize("case", ["far", "label", "coexisted", "ended"])
def test_stitch_does_not_link_other_objects(case: str) -> None:
    st = Stitcher(min_hits=2)
    st.update(0.00, {1: _box(200)}, {1: "person"}, {1})
    st.update(0.04, {1: _box(204)}, {1: "person"}, {1})
    if case == "coexisted":  # the new track's first (unconfirmed) detection was in a frame with 1
        st.update(0.08, {1: _box(208)}, {1: "person"}, {1})
    else:
        st.update(0.08, {}, {}, {1})
    alive = set() if case == "ended" else {1}
    cx = 500 if case == "far" else 230  # 500: further than the box's size (180 px) away
    label = "car" if case == "label" else "person"
    if case == "ended":
        st.forget([1])
    assert st.update(0.12, {2: _box(cx)}, {2: label}, alive | {2}) == []


def _walk_behind(analytics: StreamAnalytics) -> list[dict[str, Any]]:
    """A person walks right across a line at x 0.5 and is hidden while crossing it: its box
    shrinks to a sliver against an occluder (as the detector sees it), is gone for 0.4 s, and
    comes back past the line with its left part still hidden: ByteTrack's prediction, spoiled by
    the slivers, does not overlap it, so it is a new track."""
    events: list[dict[str, Any]] = []
    for f in range(60):
        x = 200 + 4.0 * f
        if f < 15:
            boxes: list[tuple[float, float, float, float]] = [(x, 100, x + 60, 280)]
        elif f < 20:
            boxes = [(x, 100, 290 - 6 * (f - 15), 280)]  # an occluder from the right
        elif f < 30:
            boxes = []
        else:
            boxes = [(max(x, 350), 100, x + 60, 280)]
        fr = Frame("cam", f, 640, 360, f / 25, 1000 + f / 25, f / 25)
        events += analytics.update(fr, _dets(*boxes))
    return [e for e in events if e["event"] == "line_cross"]


@pytest.mark.parametrize("stitch", [True, False])
def test_crossing_hidden_by_an_identity_switch_counts_once(stitch: bool) -> None:
    cfg = AnalyticsConfig.model_validate({"tracker": {"stitch": stitch},
                                          "lines": [{"name": "l", "points": [[0.5, 0.1], [0.5, 0.9]]}]})
    an = StreamAnalytics("cam", cfg, ["person"])
    got = _walk_behind(an)
    ids = {int(i) for i in an.tracker.alive} if an.tracker else set()
    assert len(ids) >= 1
    if stitch:
        assert [(e["line"], e["direction"]) for e in got] == [("l", "out")], got
        assert got[0]["frame"] >= 30  # stamped when the new identity confirmed the other side
    else:
        assert got == []  # the cause: two identities, each seen on one side only


def test_shape_gate_rejects_partial_and_merged_boxes_and_follows_growth() -> None:
    g = ShapeGate()
    assert [g.check(1, h)[0] for h in (180, 181, 179, 90, 182, 276, 180)] == \
        [True, True, True, False, True, False, True]  # a torso, then a box merged with what is behind
    # An object approaching the camera grows 2 % per observation: always whole.
    assert all(g.check(2, 100 * 1.02 ** k)[0] for k in range(60))
    # A track that began on partial boxes: the whole object, seen 3 times alike, replaces the
    # reference, and the caller is told to forget the sides seen so far.
    assert [g.check(3, h) for h in (70, 72, 180, 182, 181, 183)] == \
        [(True, False), (True, False), (False, False), (False, False), (True, True), (True, False)]


def test_shape_gate_keeps_the_shape_of_the_whole_boxes() -> None:
    """The height / width reference (what a linked track's boxes are compared with) comes from
    the accepted boxes only, and follows a reset to the new kind of box."""
    g = ShapeGate()
    for h, w in ((180, 60), (184, 60), (90, 60), (176, 64)):  # a 90 px torso box is rejected
        g.check(1, h, w)
    assert g.reference_aspect(1) == pytest.approx(180 / 60)
    for h in (300, 302, 298):  # 3 boxes alike replace the reference
        g.check(1, h, 60)
    assert g.reference_aspect(1) == pytest.approx(5.0)
    g.check(2, 100)  # no width given: no shape
    assert g.reference_aspect(2) is None and g.reference_aspect(3) is None


def test_partial_box_beside_a_line_is_no_crossing() -> None:
    """A person walks along 10 px below a horizontal line; for 4 frames its legs are hidden (the
    box ends at its waist, above the line), then it is whole again. Nothing crossed; a real
    crossing later is still counted."""
    cfg = AnalyticsConfig.model_validate({"tracker": {},
                                          "lines": [{"name": "l", "points": [[0.1, 0.7], [0.9, 0.7]]}]})
    an = StreamAnalytics("cam", cfg, ["person"])
    events: list[dict[str, Any]] = []
    for f in range(70):
        x = 100 + 4.0 * f
        bottom = 262.0 if f < 50 else 262.0 - 4.0 * (f - 50)  # then it walks up across the line
        top = bottom - 180
        box = (x, top, x + 60, top + 90 if 20 <= f < 24 else bottom)
        events += an.update(Frame("cam", f, 640, 360, f / 25, 1000 + f / 25, f / 25), _dets(box))
    got = [(e["line"], e["direction"], e["frame"]) for e in events if e["event"] == "line_cross"]
    assert [g[:2] for g in got] == [("l", "out")] and got[0][2] >= 50, got


def test_anchors_stay_inside_the_frame() -> None:
    """A Kalman box overshooting the frame's bottom edge (an object cut by it) is anchored on
    the edge, so a line drawn to the edge is crossed, not walked around."""
    a = anchors(np.array([[100.0, 200.0, 300.0, 361.5], [-20.0, 10.0, 20.0, 50.0]]), 640, 360, "bottom_center")
    assert a.tolist() == [[200 / 640, 1.0], [0.0, 50 / 360]]
    rule = LineRule(LineConfig(name="l", points=[(0.35, 0.85), (0.35, 1.0)], min_frames=2))
    evs = [rule.observe(1, "bus", tuple(anchors(np.array([[x - 150, 170, x + 150, 360.6]]), 640, 360,
                                                "bottom_center")[0]), _at(f))  # type: ignore[arg-type]
           for f, x in enumerate([260.0, 240.0, 210.0, 200.0])]
    assert [e["direction"] for e in evs if e] == ["in"]  # leftwards across a downward line


# ------------------------------------------------------------------------------ the real daemon


@pytest.fixture(scope="module")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(short_scene(), tmp_path_factory.mktemp("scenes") / "short.mp4")


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_daemon_publishes_crossings_and_zone_stays(run_daemon: Any, short_video: Path) -> None:
    scene = short_scene()
    dead = f"rtsp://127.0.0.1:{free_port()}/none"  # keeps the daemon up after the file ends
    d = run_daemon([{"id": "cam", "url": str(short_video), "analytics": scene.analytics},
                    {"id": "idle", "url": dead, "backoff_base": 5, "backoff_cap": 5}])
    deadline = time.monotonic() + 240
    ended = None
    while time.monotonic() < deadline:
        msgs = d.collect(0.5)
        ended = next((i for i, (t, b) in enumerate(msgs) if t == "events/cam/" and b["event"] == "ended"), None)
        if ended is not None:
            break
    assert ended is not None, d.log()
    time.sleep(1.0)  # the loop ends the finished stream's tracks when it is next idle
    msgs = d.collect(1.0)
    metrics = d.scrape()
    events = [b for t, b in msgs if t == "analytics/cam/"]
    dets = [b for t, b in msgs if t == "detections/cam/"]
    for e in events:
        assert not list(SCHEMA.iter_errors(e)), e
    assert [e["seq"] for e in events] == list(range(len(events)))
    # Every detection carries track_id; confirmed ones an int, and the messages stay schema v1.
    assert all("track_id" in x for b in dets for x in b["detections"])
    assert not list(DET_SCHEMA.iter_errors(dets[len(dets) // 2]))
    ids = {x["track_id"] for b in dets for x in b["detections"] if x["track_id"] is not None}
    assert ids, "no confirmed track"

    truth = true_crossings(scene)
    got = sorted((e["line"], e["direction"], e["label"]) for e in events if e["event"] == "line_cross")
    assert got == sorted((t["line"], t["direction"], t["label"]) for t in truth), (got, truth)
    for t in truth:  # stamped with the frame where it happened, give or take the detector's jitter
        e = next(e for e in events if e["event"] == "line_cross" and e["direction"] == t["direction"])
        assert abs(e["frame"] - t["frame"]) <= 3, (e, t)
        assert e["pts"] == pytest.approx(e["frame"] / scene.fps, abs=1e-3)

    stays = true_zone_stays(scene)
    enters = [e for e in events if e["event"] == "zone_enter"]
    exits = [e for e in events if e["event"] == "zone_exit"]
    assert len(enters) == len(stays) == len(exits), (events, stays)
    for s in stays:
        e = min(exits, key=lambda e: abs(e["dwell_seconds"] - s["dwell_seconds"]))
        assert abs(e["dwell_seconds"] - s["dwell_seconds"]) <= 0.4, (e, s)

    # The scrape agrees with the events: counters by line/direction/label, occupancy back to 0.
    for direction in ("in", "out"):
        n = sum(1 for e in events if e["event"] == "line_cross" and e["direction"] == direction)
        assert _metric(metrics, "detectd_line_crossings_total", stream="cam", line="gate",
                       direction=direction, label="person") == n
    assert _metric(metrics, "detectd_zone_entries_total", stream="cam", zone="right", label="person") == len(enters)
    assert _metric(metrics, "detectd_zone_occupancy", stream="cam", zone="right", label="person") == 0
    assert _metric(metrics, "detectd_stage_seconds_count", stage="analytics") > 0


@pytest.mark.slow
def test_sighup_changes_lines_and_zones_without_losing_tracks(run_daemon: Any, short_video: Path) -> None:
    scene = short_scene()
    stream = {"id": "cam", "url": str(short_video), "loop": True, "realtime": True, "analytics": scene.analytics}
    d = run_daemon([stream])
    path = d.config_path

    def tracked(msgs: list[tuple[str, dict[str, Any]]]) -> list[set[int]]:
        return [{x["track_id"] for x in b["detections"] if x.get("track_id") is not None}
                for t, b in msgs if t == "detections/cam/"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(tracked(d.collect(0.5))):
        pass
    # Reload when a track is alive: its id must still be there right after.
    while time.monotonic() < deadline:
        msgs = d.collect(0.3)
        last = tracked(msgs)[-1] if tracked(msgs) else set()
        if last:
            break
    before = len(d.messages)
    cfg = yaml.safe_load(path.read_text())
    cfg["streams"][0]["analytics"] = {
        "tracker": {},
        "lines": [{"name": "gate2", "points": [[0.7, 0.2], [0.7, 0.9]], "labels": ["person"]}],
        "zones": [{"name": "left", "points": [[0.02, 0.3], [0.4, 0.3], [0.4, 0.9], [0.02, 0.9]], "labels": ["person"]}],
    }
    path.write_text(yaml.safe_dump(cfg))
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "analytics changed ['cam']" not in d.log():
        d.collect(0.2)
    assert "analytics changed ['cam']" in d.log(), d.log()
    after_msgs = d.collect(1.5)[before:]
    after = tracked(after_msgs)
    assert after and last & set().union(*after[:10]), (last, after[:10])  # the same track went on
    assert not [b for t, b in after_msgs if t == "events/cam/" and b["event"] == "up"]  # no restart
    m = d.scrape()
    assert _metric(m, "detectd_line_crossings_total", stream="cam", line="gate2", direction="in", label="person") is not None
    assert _metric(m, "detectd_line_crossings_total", line="gate") is None  # the old line's series is gone
    assert _metric(m, "detectd_zone_occupancy", stream="cam", zone="left", label="person") is not None
    assert _metric(m, "detectd_zone_occupancy", zone="right") is None


# ------------------------------------------------------------------------- seen, not just counted


def test_draw_geometry_puts_zones_and_lines_where_the_config_says() -> None:
    from daemon.vision.draw import LINE_COLOR, ZONE_COLOR, draw_geometry

    cfg = AnalyticsConfig.model_validate({"tracker": {}, "zones": [
        {"name": "z", "points": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]]}],
        "lines": [{"name": "l", "points": [[0.8, 0.1], [0.8, 0.9]]}]})
    for w, h in ((640, 360), (1280, 720)):  # normalized: the same place at any resolution
        img = np.zeros((h, w, 3), np.uint8)
        draw_geometry(img, cfg.zones, cfg.lines)
        x_line = round(0.8 * (w - 1))
        assert (img[h // 2, x_line] == LINE_COLOR).all()
        assert (img[round(0.3 * (h - 1)), round(0.1 * (w - 1))] == ZONE_COLOR).all()  # left edge
        assert not img[round(0.3 * (h - 1)), round(0.3 * (w - 1))].any()  # inside: untouched
        # the "in" arrow points to the left of top -> bottom, i.e. towards smaller x
        row = img[h // 2]
        lit = np.flatnonzero((row == LINE_COLOR).all(axis=1))
        assert lit.min() < x_line - 5


@pytest.mark.slow
def test_annotate_draws_and_counts_a_streams_analytics(tmp_path: Path, short_video: Path, fp32_onnx: Path) -> None:
    scene = short_scene()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"streams": [{"id": "cam", "url": str(short_video), "analytics": scene.analytics}],
                                   "model": {"backend": "onnxruntime", "threads": 2}}))
    out, js = tmp_path / "a.mp4", tmp_path / "a.jsonl"
    p = subprocess.run([sys.executable, "-m", "daemon", "annotate", str(short_video), "-o", str(out), "--config",
                        str(cfg), "--stream", "cam", "--json", str(js), "-q"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in js.read_text().splitlines()]
    events = [e for x in lines for e in x.get("analytics", [])]
    got = sorted((e["line"], e["direction"]) for e in events if e["event"] == "line_cross")
    assert got == sorted((t["line"], t["direction"]) for t in true_crossings(scene))
    assert "line_cross/gate/in 1" in p.stderr and "line_cross/gate/out 1" in p.stderr, p.stderr
    assert any(d.get("track_id") is not None for x in lines for d in x.get("detections", []))
    bad = subprocess.run([sys.executable, "-m", "daemon", "annotate", str(short_video), "-o", str(out), "--config",
                          str(cfg), "--stream", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no stream 'nope'" in bad.stderr


def test_typed_client_decodes_analytics_and_track_ids() -> None:
    from daemon.publish import schema
    from daemon.publish.client import AnalyticsMessage, DecodeError, DetectionMessage, decode
    from daemon.vocab import Topic

    ev = {"event": "line_cross", "line": "gate", "direction": "in", "track_id": 7, "label": "person",
          "frame": 12, "pts": 0.48, "captured_at": 1.7e9}
    body = schema.encode(schema.analytics_payload("cam", 3, ev))
    assert not list(SCHEMA.iter_errors(json.loads(body)))
    msg = decode(schema.topic(Topic.ANALYTICS, "cam"), body)
    assert isinstance(msg, AnalyticsMessage)
    assert (msg.event, msg.name, msg.direction, msg.track_id, msg.seq) == ("line_cross", "gate", "in", 7, 3)
    with pytest.raises(DecodeError, match="direction"):
        decode(b"analytics/cam/", {**json.loads(body), "direction": "up"})
    d = Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32), np.array([0.9, 0.8], np.float32),
                   np.array([0, 0], np.int32), np.array([4, -1]))
    items = d.to_list(["person"])
    assert [i["track_id"] for i in items] == [4, None]
    det = decode(b"detections/cam/", {"v": 1, "stream": "cam", "seq": 0, "frame": 0, "pts": 0.0, "captured_at": 1.0,
                                      "published_at": 1.0, "width": 20, "height": 20,
                                      "model": {"name": "m", "precision": "fp32", "backend": "onnxruntime"},
                                      "detections": items})
    assert isinstance(det, DetectionMessage) and det.detections.track_ids.tolist() == [4, -1]  # type: ignore[union-attr]
    assert det.to_dict()["detections"][1]["track_id"] is None


@pytest.mark.slow
def test_preview_draws_the_streams_zones_and_lines(run_daemon: Any, short_video: Path) -> None:
    """The preview's picture (what the page shows) has the line and the zone where the config
    puts them, at the stream's resolution."""
    import urllib.request

    import cv2

    scene = short_scene()
    port = free_port()
    d = run_daemon([{"id": "cam", "url": str(short_video), "loop": True, "realtime": True,
                     "analytics": scene.analytics}], preview={"enabled": True, "listen": f"127.0.0.1:{port}"})
    deadline = time.monotonic() + 60
    img = None
    while time.monotonic() < deadline and img is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream/cam.jpg", timeout=5) as r:
                img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]  # RGB
        except OSError:
            time.sleep(0.3)
    assert img is not None, d.log()
    h, w = img.shape[:2]
    x = round(0.3 * (w - 1))  # the gate line, top to bottom between y 0.2 and 0.9
    col = img[round(0.25 * h):round(0.85 * h), x - 1:x + 2].astype(int).reshape(-1, 3)
    cyan = (col[:, 0] < 110) & (col[:, 1] > 170) & (col[:, 2] > 170)
    assert cyan.mean() > 0.5, col[:10]
    zy = round(0.6 * (h - 1))  # the zone's left edge at x 0.6
    edge = img[zy, round(0.6 * (w - 1)) - 1:round(0.6 * (w - 1)) + 2].astype(int)
    assert ((edge[:, 0] > 180) & (edge[:, 1] > 130) & (edge[:, 2] < 90)).any(), edge  # amber
