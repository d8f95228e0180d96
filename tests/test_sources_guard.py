"""No decoded frame, however odd, takes the process down; damaged video is made visible.

Issue 10, kind E. The frame checks (daemon/sources/validate.py) and damage tracking
(daemon/sources/damage.py) are tested three ways: the pure rules on their own, a table of odd
inputs run through the real source path and every native call in a child process
(tests/frame_harness.py), and real daemons with a bad stream beside a healthy one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import jsonschema
import numpy as np
import pytest

from daemon.sources.damage import DamageTracker
from daemon.sources.validate import MAX_SIDE, SAFE_FORMATS, frame_problem
from tests.harness import ROOT
from tests.support.messages import detections_of, events_of, sample

DATA = ROOT / "tests" / "data"


# -- the rules on their own ------------------------------------------------------------------

@pytest.mark.parametrize("fmt, w, h, problem", [
    ("yuv420p", 640, 272, None),
    ("yuv420p", 1, 1, None),
    ("yuv444p", 3, 5, None),
    ("gray", MAX_SIDE, 2, None),
    ("bayer_rggb8", 16, 8, None),
    ("bayer_rggb8", 17, 9, "Bayer mosaic needs an even width and height"),
    ("bayer_gbrg16le", 16, 9, "Bayer mosaic"),
    ("bayer_bggr8", 17, 10, "Bayer mosaic"),
    ("rgb4", 8, 8, "not a pixel format detectd converts safely"),
    ("cuda", 64, 64, "not a pixel format"),
    ("no_such_format", 64, 64, "not a pixel format"),
    ("gray", MAX_SIDE + 1, 2, "larger than"),
    ("gray", 8200, 8200, "pixels in all"),
    ("yuv420p", 0, 10, "at least 1x1"),
])
def test_frame_rule(fmt: str, w: int, h: int, problem: str | None) -> None:
    got = frame_problem(fmt, w, h)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_every_accepted_format_and_size_converts_without_abort(tmp_path: Path) -> None:
    """The rule against the world: every software pixel format at the sizes that found the
    aborts, through the letterbox conversion in child processes. Whatever the rule accepts must
    convert; every abort must be something the rule refuses."""
    out = tmp_path / "explore.json"
    subprocess.run([sys.executable, "bench/explore_pixfmts.py", "--sizes", "1x1,16x8,17x9",
                    "--ops", "letterbox", "--out", str(out)], cwd=ROOT, check=True, timeout=300,
                   capture_output=True)
    result = json.loads(out.read_text())
    formats, failures = result["formats"], result["failures"]
    assert len(formats) > 200
    accepted_bad = [c for c in failures if frame_problem(c["format"], *map(int, c["size"].split("x"))) is None]
    assert accepted_bad == []
    crashes = [c for c in failures if c["result"] == "crash"]
    assert crashes, "the 17x9 Bayer abort should still be found (else the exploration broke)"
    assert {c["format"] for c in crashes} <= {f for f in formats if f.startswith("bayer_")}
    # The allow-list is not empty by accident: most formats are accepted and convert.
    assert sum(n["ok"] for f, n in formats.items() if f in SAFE_FORMATS) > 600


def _tracker() -> DamageTracker:
    return DamageTracker(time_base=1 / 90000)


def _feed(t: DamageTracker, packets: list[tuple[int, bool, bool]]) -> list[bool]:
    """(pts, keyframe, corrupt) packets, each decoded at once into one frame of that pts."""
    out = []
    for pts, key, corrupt in packets:
        t.on_packet(pts, pts, 0, key, corrupt)
        out.append(t.on_frame(pts, False, key))
    return out


def test_timestamp_gap_marks_until_next_keyframe() -> None:
    step = 9000
    pts = [0, 1, 2, 3, 7, 8, 9, 10, 11]  # frames 4-6 lost
    got = _feed(_tracker(), [(p * step, p in (0, 10), False) for p in pts])
    assert got == [False, False, False, False, True, True, True, False, False]


def test_gap_right_before_a_keyframe_damages_nothing() -> None:
    got = _feed(_tracker(), [(p * 9000, p in (0, 5), False) for p in (0, 1, 2, 5, 6)])
    assert got == [False] * 5


def test_jitter_and_backward_timestamps_are_not_damage() -> None:
    t = _tracker()
    pts = [0, 9000, 19000, 27000, 36500, 45000, 0, 9000, 18000]  # +-12% jitter, then a loop
    assert _feed(t, [(p, i in (0, 6), False) for i, p in enumerate(pts)]) == [False] * 9
    assert t.episodes == 0


def test_a_camera_changing_its_frame_rate_is_not_damage() -> None:
    # 25 fps, then night mode at 10 fps from a keyframe on: one episode at most at the change
    # (the first longer step), over by the next keyframe, and none once the median has moved.
    pts = [i * 3600 for i in range(20)] + [72000 + i * 9000 for i in range(1, 40)]
    got = _feed(_tracker(), [(p, i in (0, 30, 50), False) for i, p in enumerate(pts)])
    assert sum(got[:20]) == 0 and sum(got[30:]) == 0


def test_corrupt_flag_holds_across_an_adjacent_keyframe() -> None:
    # The demuxer flags the packet before the one whose data is missing (measured on MPEG-TS):
    # when that next packet is a keyframe, its whole GOP is damaged.
    got = _feed(_tracker(), [(0, True, False), (9000, False, True), (18000, True, False),
                             (27000, False, False), (36000, False, False)])
    assert got == [False, True, True, True, True]


def test_decoder_flag_marks_output_until_the_decoder_outputs_a_keyframe() -> None:
    t = _tracker()
    for p in range(6):  # all packets in before any frame comes out (frame threads)
        t.on_packet(p * 9000, p * 9000, 0, p == 4, False)
    flags = [(0, False, True), (9000, True, False), (18000, False, False), (27000, False, False),
             (36000, False, True), (45000, False, False)]  # frame 1 concealed an error
    assert [t.on_frame(p, c, k) for p, c, k in flags] == [False, True, True, True, False, False]


# -- odd inputs through the real source path, in a child process ------------------------------

def write_raw(path: Path, fmt: str, w: int, h: int, n: int = 3) -> None:
    """n frames of random bytes in pixel format ``fmt``, rawvideo in NUT (as bayer_17x9.nut)."""
    rng = np.random.default_rng(w * 7 + h)
    with av.open(str(path), "w", format="nut") as out:
        s = out.add_stream("rawvideo", rate=10)
        s.width, s.height, s.pix_fmt = w, h, fmt
        for i in range(n):
            f = av.VideoFrame(w, h, fmt)
            for p in f.planes:
                np.frombuffer(p, np.uint8)[:] = rng.integers(0, 256, p.buffer_size, np.uint8)
            f.pts = i
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)


def harness(video: Path, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "tests.frame_harness", str(video), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"the process did not survive {video.name}: rc {r.returncode}\n{r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


ODD_INPUTS = [
    # (pixel format, width, height, expected): "frames" or the error's words
    ("yuv444p", 1, 1, "frames"),
    ("yuv420p", 2, 2, "frames"),
    ("yuv420p", 3, 5, "frames"),
    ("nv12", 5, 3, "frames"),
    ("gray", 17, 9, "frames"),
    ("gray16le", 1, 7, "frames"),
    ("pal8", 16, 8, "frames"),
    ("monob", 9, 3, "frames"),
    ("yuv444p16le", 5, 3, "frames"),
    ("rgb48le", 7, 7, "frames"),
    ("yuva420p", 9, 7, "frames"),
    ("p010le", 6, 4, "frames"),
    ("gbrpf32le", 3, 3, "frames"),
    ("bayer_grbg8", 16, 8, "frames"),
    ("gray", 16384, 2, "frames"),
    ("bayer_rggb8", 17, 9, "Bayer mosaic"),
    ("bayer_bggr16le", 4000, 3, "Bayer mosaic"),
    ("bayer_gbrg8", 2, 1, "Bayer mosaic"),
    ("rgb4", 8, 8, "not a pixel format"),
    ("gray", 16386, 2, "larger than 16384"),
]


@pytest.mark.parametrize("fmt, w, h, expected", ODD_INPUTS, ids=[f"{f}-{w}x{h}" for f, w, h, _ in ODD_INPUTS])
def test_odd_input_gives_frames_or_a_clear_stream_error(tmp_path: Path, fmt: str, w: int, h: int,
                                                        expected: str) -> None:
    video = tmp_path / f"{fmt}_{w}x{h}.nut"
    write_raw(video, fmt, w, h)
    got = harness(video)
    errors = [e for e in got["events"] if e["event"] == "error"]
    if expected == "frames":
        assert (got["frames"], got["failed"], errors) == (3, False, [])
    else:
        assert got["frames"] == 0 and got["failed"]
        assert len(errors) == 1
        e = errors[0]
        assert (e["pix_fmt"], e["width"], e["height"]) == (fmt, w, h)
        assert expected in e["reason"] and fmt in e["reason"] and f"{w}x{h}" in e["reason"]
        assert got["dropped"]["unsupported_frame"] == 1


def test_live_source_with_unsupported_frames_is_retried_with_backoff() -> None:
    """A camera sending frames detectd refuses is not dead for good (it can be reconfigured):
    retried with backoff, each attempt failing with the same clear reason."""
    got = harness(DATA / "bayer_17x9.nut", "--live", "2.5")
    assert not got["failed"] and got["frames"] == 0
    retries = [e for e in got["events"] if e["event"] == "reconnecting"]
    assert len(retries) >= 3
    assert all("unsupported frame: pixel format bayer_rggb8 at 17x9" in e["reason"] for e in retries)
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))
    assert got["errors_unsupported"] == len(retries) <= got["dropped"]["unsupported_frame"]


@pytest.mark.parametrize("name, expected", [("bayer_17x9.nut", "error"), ("tiny_1x1.nut", "frames")])
def test_field_case_files(name: str, expected: str) -> None:
    got = harness(DATA / name)
    assert got["failed"] == (expected == "error")
    assert (got["frames"] > 0) == (expected == "frames")


# -- damaged video ----------------------------------------------------------------------------

def decoded(path: Path) -> dict[float, np.ndarray]:
    with av.open(str(path)) as c:
        return {f.time: f.to_ndarray(format="gray") for f in c.decode(video=0)}


def smeared(damaged: Path, intact: Path) -> set[float]:
    """Timestamps (s) of the frames of ``damaged`` whose pixels differ from ``intact``'s."""
    a, b = decoded(intact), decoded(damaged)
    return {t for t, img in b.items() if t in a and not np.array_equal(img, a[t])}


def test_intact_file_shows_no_damage() -> None:
    got = harness(DATA / "loss_intact.ts")
    assert got["frames"] == 60 and got["damaged"] == [] and got["frames_damaged"] == 0


def test_lost_packets_mark_exactly_the_smeared_frames() -> None:
    differ = smeared(DATA / "loss_3_packets.ts", DATA / "loss_intact.ts")
    assert len(differ) > 30
    got = harness(DATA / "loss_3_packets.ts")
    marked = {round(got["pts"][i], 6) for i in got["damaged"]}
    assert marked == {round(t, 6) for t in differ}
    assert got["frames_damaged"] == len(differ)
    # From the loss up to (not including) the next keyframe, contiguous.
    assert got["damaged"] == list(range(got["damaged"][0], got["damaged"][-1] + 1))


def test_skip_policy_drops_and_counts_the_smeared_frames() -> None:
    differ = smeared(DATA / "loss_3_packets.ts", DATA / "loss_intact.ts")
    got = harness(DATA / "loss_3_packets.ts", "--damage", "skip")
    assert got["frames"] == 57 - len(differ) and got["damaged"] == []
    assert got["dropped"]["damaged"] == len(differ) == got["frames_damaged"]
    assert not {round(p, 6) for p in got["pts"]} & {round(t, 6) for t in differ}
    # The skipped frames keep their indexes: the next published frame shows the gap.
    assert got["decoded"] == 57 and got["index"][-1] == 56
    assert max(b - a for a, b in zip(got["index"], got["index"][1:])) == len(differ) + 1


@pytest.mark.parametrize("cut", [350, 640, 1000])
def test_one_transport_packet_lost_elsewhere(tmp_path: Path, cut: int) -> None:
    """The kind, not the instance: one 188-byte TS packet cut at other places (mid-GOP, and
    inside the next GOP's keyframe) -- no timestamp gap, only the demuxer's and decoder's flags."""
    src = (DATA / "loss_intact.ts").read_bytes()
    bad = tmp_path / f"cut{cut}.ts"
    bad.write_bytes(src[:cut * 188] + src[(cut + 1) * 188:])
    differ = smeared(bad, DATA / "loss_intact.ts")
    assert differ
    got = harness(bad)
    marked = {round(got["pts"][i], 6) for i in got["damaged"]}
    assert {round(t, 6) for t in differ} <= marked
    assert len(marked) <= len(differ) + 2  # the flagged packet before the loss, at most


# -- real daemons -----------------------------------------------------------------------------

def load_schema(kind: str) -> dict[str, Any]:
    return json.loads((ROOT / "daemon" / "publish" / "schemas" / f"{kind}.v1.json").read_text())


def test_bayer_stream_fails_alone_beside_a_healthy_and_a_damaged_stream(
        run_daemon: Any, demo_video: Path, tmp_path: Path) -> None:
    bayer = tmp_path / "bayer.nut"
    shutil.copy(DATA / "bayer_17x9.nut", bayer)
    d = run_daemon([
        {"id": "bad", "url": str(bayer)},
        {"id": "good", "url": str(demo_video), "realtime": True, "loop": True},
        {"id": "lossy", "url": str(DATA / "loss_3_packets.ts")},
    ])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d.collect(0.5)
        errs = [e for e in events_of(d.messages, "bad") if e["event"] == "error"]
        if errs and len(detections_of(d.messages, "good")) > 20 and \
                any(e["event"] == "ended" for e in events_of(d.messages, "lossy")):
            break
    assert d.proc.poll() is None, d.log()
    (err,) = [e for e in events_of(d.messages, "bad") if e["event"] == "error"]
    assert (err["pix_fmt"], err["width"], err["height"]) == ("bayer_rggb8", 17, 9)
    assert "bayer_rggb8 at 17x9" in err["reason"]
    jsonschema.validate(err, load_schema("events"))
    # The healthy stream goes on publishing after the bad one failed.
    n = len(detections_of(d.messages, "good"))
    deadline = time.monotonic() + 30
    while len(detections_of(d.messages, "good")) < n + 10 and time.monotonic() < deadline:
        d.collect(0.5)
    assert len(detections_of(d.messages, "good")) >= n + 10
    assert d.proc.poll() is None
    text = d.scrape()
    assert sample(text, "detectd_frames_dropped_total", stream="bad", reason="unsupported_frame") == 1
    assert sample(text, "detectd_stream_errors_total", stream="bad", kind="unsupported") == 1
    assert sample(text, "detectd_stream_state", stream="bad", state="error") == 1
    assert sample(text, "detectd_stream_up", stream="good") == 1
    assert "stream bad: unsupported frame: pixel format bayer_rggb8 at 17x9" in d.log()
    # The damaged file: its smeared frames published marked, valid against the v1 schema.
    differ = {round(t, 6) for t in smeared(DATA / "loss_3_packets.ts", DATA / "loss_intact.ts")}
    lossy = detections_of(d.messages, "lossy")
    validator = jsonschema.Draft202012Validator(load_schema("detections"))
    for m in lossy + detections_of(d.messages, "good")[:5]:
        validator.validate(m)
    assert {round(m["pts"], 6) for m in lossy if m["damaged"]} == differ & {round(m["pts"], 6) for m in lossy}
    assert not any(m["damaged"] for m in detections_of(d.messages, "good"))
    assert sample(text, "detectd_frames_damaged_total", stream="lossy") == len(differ)
    assert sample(text, "detectd_frames_damaged_total", stream="good") == 0
    assert "stream lossy: packets lost at 0.800 s" in d.log()


@pytest.mark.parametrize("name, rc", [("bayer_17x9.nut", 1), ("tiny_1x1.nut", 0)])
def test_annotate_refuses_unsafe_frames_with_a_clear_error(tmp_path: Path, name: str, rc: int) -> None:
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "daemon", "annotate", str(DATA / name), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == rc, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    if rc:
        assert f"{name}: unsupported frame: pixel format bayer_rggb8 at 17x9" in r.stderr
        assert not out.exists() and not (tmp_path / ".o.partial.mp4").exists()
    else:
        with av.open(str(out)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 10
