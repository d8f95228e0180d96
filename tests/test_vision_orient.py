"""Display orientation and stream selection, as FFmpeg's command-line tool applies them.

Real files: the field case (tests/data/rotated_phone.mp4, 720x540 stored with a 90-degree display
rotation; rotated_upright.mp4 the same scene stored upright) and files written here by PyAV's
muxers with every display matrix ffmpeg distinguishes, cover art and several video streams.
"""

from __future__ import annotations

import signal
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.frames import Frame
from daemon.sources.open import describe_streams, pick_video_stream
from daemon.vision.letterbox import letterbox_frame
from daemon.vision.orient import (ORIENTATIONS, displayed_size, frame_orientation, orient_array,
                                  oriented_rgb)
from tests.support.messages import detections_of, events_of, iou
from tests.support.sources import write_streams

DATA = Path(__file__).parent / "data"

# Display matrices (16.16 fixed point, w = 1<<30) and what ffmpeg -autorotate does with them:
# fftools/ffmpeg_filter.c inserts transpose=clock/cclock/cclock_flip/clock_flip, hflip, vflip.
ONE = 1 << 16
W = 1 << 30
MATRICES = {
    "": [ONE, 0, 0, 0, ONE, 0, 0, 0, W],
    "cclock": [0, -ONE, 0, ONE, 0, 0, 0, 0, W],        # av_display_rotation_set(m, 90)
    "clock": [0, ONE, 0, -ONE, 0, 0, 0, 0, W],         # av_display_rotation_set(m, -90)
    "rotate180": [-ONE, 0, 0, 0, -ONE, 0, 0, 0, W],    # av_display_rotation_set(m, 180)
    "hflip": [-ONE, 0, 0, 0, ONE, 0, 0, 0, W],         # rotation 0 + av_display_matrix_flip(h)
    "vflip": [ONE, 0, 0, 0, -ONE, 0, 0, 0, W],
    "transpose": [0, ONE, 0, ONE, 0, 0, 0, 0, W],      # rotation 90 + horizontal flip
    "clock_flip": [0, -ONE, 0, -ONE, 0, 0, 0, 0, W],   # rotation -90 + horizontal flip
}


def asymmetric_picture(w: int = 64, h: int = 48) -> np.ndarray:
    """An RGB picture whose every turn and mirror differs: a ramp plus a corner block."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.zeros_like(xx)], -1).astype(np.uint8)
    img[: h // 4, : w // 4, 2] = 255
    return img


def write_video(path: Path, img: np.ndarray, matrix: list[int] | None, n: int = 3) -> None:
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        st.options = {"qp": "0"} if st.codec_context.name == "libx264" else {}
        if matrix is not None:
            st.set_display_matrix(matrix)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_every_display_matrix_is_applied_as_ffmpeg_does(tmp_path: Path, orientation: str) -> None:
    img = asymmetric_picture()
    path = tmp_path / "v.mp4"
    write_video(path, img, MATRICES[orientation])
    with av.open(str(path)) as c:
        vf = next(c.decode(video=0))
    assert frame_orientation(vf) == orientation
    stored = vf.to_ndarray(format="rgb24")
    shown = oriented_rgb(vf, orientation)
    assert shown.flags.c_contiguous and shown.shape[:2][::-1] == displayed_size(64, 48, orientation)
    np.testing.assert_array_equal(shown, orient_array(stored, orientation))
    # The turned picture is the stored one moved, not resampled: the blue corner block moves.
    corner = {"": (0, 0), "hflip": (0, 1), "vflip": (1, 0), "rotate180": (1, 1), "transpose": (0, 0),
              "cclock": (1, 0), "clock": (0, 1), "clock_flip": (1, 1)}[orientation]
    h, w = shown.shape[:2]
    ys = slice(0, h // 5) if corner[0] == 0 else slice(h - h // 5, h)
    xs = slice(0, w // 5) if corner[1] == 0 else slice(w - w // 5, w)
    assert shown[ys, xs, 2].mean() > 200, orientation


def test_letterbox_of_a_turned_frame_equals_letterbox_of_the_displayed_picture() -> None:
    with av.open(str(DATA / "rotated_phone.mp4")) as c:
        vf = next(c.decode(video=0))
    orient = frame_orientation(vf)
    assert orient == "cclock" and (vf.width, vf.height) == (720, 540)
    w, h = displayed_size(vf.width, vf.height, orient)
    frame = Frame("s", 0, w, h, None, 0.0, 0.0, native=vf, orient=orient)
    turned, info = letterbox_frame(frame, 416, 416)
    assert (info.src_w, info.src_h) == (540, 720)
    shown = Frame("s", 0, w, h, None, 0.0, 0.0, image=oriented_rgb(vf, orient))
    reference, info2 = letterbox_frame(shown, 416, 416)
    assert info == info2
    # Same picture; scaling before or after the turn differs only by interpolation rounding.
    assert np.abs(turned - reference).mean() < 0.01


def test_phone_copy_matches_upright_copy_pixel_for_pixel_as_displayed() -> None:
    with av.open(str(DATA / "rotated_phone.mp4")) as a, av.open(str(DATA / "rotated_upright.mp4")) as b:
        fa, fb = next(a.decode(video=0)), next(b.decode(video=0))
    shown = oriented_rgb(fa, frame_orientation(fa)).astype(int)
    upright = fb.to_ndarray(format="rgb24").astype(int)
    assert shown.shape == upright.shape == (720, 540, 3)
    assert np.abs(shown - upright).mean() < 6  # two lossy encodes of one scene
    # ... and each of the other turns is far off: the rule picked the right one.
    for other in ("clock", "transpose", "clock_flip"):
        assert np.abs(oriented_rgb(fa, other).astype(int) - upright).mean() > 30


def test_daemon_detects_the_same_objects_in_the_phone_and_the_upright_copy(run_daemon: Any) -> None:
    """Field case 7: the phone copy gave no detection and was reported as 720x540."""
    d = run_daemon([{"id": "phone", "url": str(DATA / "rotated_phone.mp4")},
                    {"id": "upright", "url": str(DATA / "rotated_upright.mp4")}])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        d.collect(0.5)
        if all(any(e["event"] == "ended" for e in events_of(d.messages, s)) for s in ("phone", "upright")):
            break
    d.signal(signal.SIGTERM)
    d.collect_until_exit(30)
    phone, upright = detections_of(d.messages, "phone"), detections_of(d.messages, "upright")
    assert len(phone) == len(upright) == 5, d.log()
    up = next(e for e in events_of(d.messages, "phone") if e["event"] == "up")
    assert (up["width"], up["height"]) == (540, 720)
    for p, u in zip(phone, upright):
        assert (p["width"], p["height"]) == (u["width"], u["height"]) == (540, 720)
        labels_p = sorted(x["label"] for x in p["detections"])
        assert labels_p == sorted(x["label"] for x in u["detections"])
        assert labels_p.count("person") == 4 and labels_p.count("bus") == 1, labels_p
        for x in p["detections"]:  # the same boxes, in displayed pixels
            best = max(u["detections"], key=lambda y: iou(x["box"], y["box"]) if y["label"] == x["label"] else 0)
            assert iou(x["box"], best["box"]) > 0.85, (x, best)
    assert "turned cclock for display" in d.log()


# --------------------------------------------------------------------------- stream selection

@pytest.mark.parametrize("videos, cover, expect", [
    ([(320, 240, False)], True, (320, 240)),                       # cover art first: skipped
    ([(320, 240, False), (640, 480, False)], False, (640, 480)),   # the largest
    ([(640, 480, False), (320, 240, True)], False, (320, 240)),    # default disposition wins
    ([(320, 240, True), (3840, 2160, False)], False, (3840, 2160)),  # ... unless far smaller
])
def test_the_video_stream_ffmpeg_would_pick(tmp_path: Path, videos: list[tuple[int, int, bool]],
                                            cover: bool, expect: tuple[int, int]) -> None:
    # MP4 for cover art (the mov muxer's "covr"); Matroska otherwise (the mov muxer marks the
    # first track default when none is, which would decide the pick).
    path = tmp_path / ("s.mp4" if cover else "s.mkv")
    write_streams(path, videos, cover=cover)
    with av.open(str(path)) as c:
        st = pick_video_stream(c)
        assert st is not None and (st.codec_context.width, st.codec_context.height) == expect


def test_only_cover_art_and_audio_is_no_video(tmp_path: Path) -> None:
    path = tmp_path / "song.mp4"
    write_streams(path, [], cover=True, audio=True)
    with av.open(str(path)) as c:
        assert pick_video_stream(c) is None
        assert describe_streams(c) == "audio (aac), attached picture (mjpeg)"


def test_annotate_writes_the_phone_video_as_displayed(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out, js = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "daemon", "annotate", str(DATA / "rotated_phone.mp4"),
                        "--out", str(out), "--json", str(js), "--quiet"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in js.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        labels = sorted(d["label"] for d in row["detections"])
        assert (row["width"], row["height"]) == (540, 720)
        assert labels.count("person") == 4 and labels.count("bus") == 1, labels
    with av.open(str(out)) as c:
        vf = next(c.decode(video=0))
        assert (vf.width, vf.height, frame_orientation(vf)) == (540, 720, "")
