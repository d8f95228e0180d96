"""Bad input for the reliability issue, each against a real daemon process: credentials in URLs,
a resolution change mid-stream, a source that ends at once, missing or irregular timestamps."""

from __future__ import annotations

import signal
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.harness import free_port
from tests.support.messages import detections_of, events_of, kinds
from tests.support.sources import FAST


def encode(path: Path, w: int, h: int, n: int, fmt: str | None = None, *,
           pts: list[int] | None = None, rate: int = 25) -> None:
    """n frames of a moving gradient, H.264, in container ``fmt``; ``pts`` in 1/rate units."""
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=rate)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.codec_context.time_base = Fraction(1, rate)
        st.options = {"bf": "0"}
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 0] = (np.arange(w)[None, :] + 8 * i) % 256
            img[:, :, 1] = (np.arange(h)[:, None] * 2) % 256
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = pts[i] if pts is not None else i
            vf.time_base = Fraction(1, rate)
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def decodable(path: Path) -> list[tuple[int, int, float | None]]:
    with av.open(str(path)) as c:
        return [(f.width, f.height, f.time) for f in c.decode(video=0)]


def test_resolution_change_mid_stream(run_daemon: Any, tmp_path: Path) -> None:
    a, b = tmp_path / "a.ts", tmp_path / "b.ts"
    encode(a, 160, 120, 20, "mpegts")
    encode(b, 320, 240, 20, "mpegts")
    both = tmp_path / "both.ts"
    both.write_bytes(a.read_bytes() + b.read_bytes())  # what a camera does when reconfigured
    expected = decodable(both)
    assert {(w, h) for w, h, _ in expected} == {(160, 120), (320, 240)}
    d = run_daemon([{"id": "cam", "url": str(both)}], wait=False)
    assert d.collect_until_exit(120) == 0, d.log()
    dets = detections_of(d.messages, "cam")
    # seq counts published messages: the last one proves every frame went out (the subscriber
    # itself may miss the very first ones: ZeroMQ's slow joiner).
    assert dets[-1]["seq"] == len(expected) - 1 and dets[-1]["frame"] == len(expected) - 1
    assert {(m["width"], m["height"]) for m in dets} == {(160, 120), (320, 240)}
    for m in dets:
        assert (m["width"], m["height"]) == expected[m["frame"]][:2], m
    for m in dets:
        for det in m["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= m["width"] and 0 <= y1 <= y2 <= m["height"]
    assert kinds(d, "cam") == ["up", "ended"]


def test_sources_that_end_at_once_never_hang_the_daemon(run_daemon: Any, tmp_path: Path,
                                                        demo_clip: Path) -> None:
    """Beside a good file (the 60-frame clip: it only has to be read to its end), files that
    end at once end cleanly, one error each, and a looped one-frame file keeps delivering."""
    empty = tmp_path / "empty.ts"
    empty.write_bytes(b"")
    noframes = tmp_path / "noframes.mkv"
    with av.open(str(noframes), "w") as out:  # a valid container with a video track, no frame
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    one = tmp_path / "one.mkv"
    encode(one, 96, 64, 1)
    streams = [{"id": "empty", "url": str(empty)}, {"id": "noframes", "url": str(noframes)},
               {"id": "one", "url": str(one)}, {"id": "good", "url": str(demo_clip)},
               {"id": "oneloop", "url": str(one), "loop": True, "realtime": True}]
    d = run_daemon(streams)
    d.wait_until(lambda: len(detections_of(d.messages, "good")) == 60, 240, "the good file")
    d.collect(1)
    for sid in ("empty", "noframes"):
        ev = events_of(d.messages, sid)
        assert [e["event"] for e in ev] == ["error"], ev
        assert any(w in ev[0]["reason"] for w in ("no decodable video frame", "not a readable video",
                                                   "cannot read")), ev
    assert kinds(d, "one") == ["up", "ended"] and len(detections_of(d.messages, "one")) == 1
    # A one-frame file looped in real time: a camera showing a still image, frames keep coming.
    n = len(detections_of(d.messages, "oneloop"))
    d.collect(2)
    assert len(detections_of(d.messages, "oneloop")) > n
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0


def test_missing_and_irregular_timestamps(run_daemon: Any, tmp_path: Path) -> None:
    raw = tmp_path / "raw.h264"  # Annex B elementary stream: no container, no timestamps
    encode(raw, 160, 120, 30, "h264")
    vfr = tmp_path / "vfr.mkv"  # variable frame rate: gaps and bursts
    pts = [0, 1, 2, 3, 7, 8, 9, 10, 11, 19, 20, 21, 22, 23, 24, 30, 31, 32, 33, 40]
    encode(vfr, 160, 120, len(pts), pts=pts)
    n_raw, n_vfr = len(decodable(raw)), len(decodable(vfr))
    streams = [{"id": "raw", "url": str(raw)}, {"id": "vfr", "url": str(vfr)},
               {"id": "rawrt", "url": str(raw), "realtime": True},
               {"id": "vfrrt", "url": str(vfr), "realtime": True}]
    d = run_daemon(streams, wait=False)
    t0 = time.monotonic()
    assert d.collect_until_exit(120) == 0, d.log()
    assert (n_raw, n_vfr) == (30, 20)
    for sid, n in (("raw", n_raw), ("vfr", n_vfr)):
        last = detections_of(d.messages, sid)[-1]
        assert last["seq"] == last["frame"] == n - 1  # every frame published (seq counts them)
    # Real-time pacing copes with them too (live-like: may drop stale frames, never stalls).
    assert detections_of(d.messages, "rawrt") and detections_of(d.messages, "vfrrt")
    assert time.monotonic() - t0 < 100
    vfr_pts = [m["pts"] for m in detections_of(d.messages, "vfr")]
    assert vfr_pts == sorted(vfr_pts) and vfr_pts[-1] > 1.5  # 40/25 s: the gaps are kept
    for sid in ("raw", "vfr", "rawrt", "vfrrt"):
        assert kinds(d, sid)[-1] == "ended", (sid, kinds(d, sid))


def test_credentials_never_in_logs_events_or_metric_labels(run_daemon: Any) -> None:
    port = free_port()
    streams = [{"id": "cam", "url": f"rtsp://admin:Pa55-w0rd@127.0.0.1:{port}/live?token=T0k3nXYZ&ch=1",
                **FAST},
               {"id": "web", "url": f"http://viewer:Hunter2-pw@127.0.0.1:{port}/cam.mjpg?api_key=K3yK3y",
                **FAST}]
    d = run_daemon(streams)
    d.wait_until(lambda: kinds(d, "cam").count("reconnecting") >= 2
             and kinds(d, "web").count("reconnecting") >= 2, 30, "failed attempts")
    text = d.scrape()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    everything = d.log() + repr(d.messages) + text
    for secret in ("Pa55-w0rd", "T0k3nXYZ", "Hunter2-pw", "K3yK3y", "admin:", "viewer:"):
        assert secret not in everything, secret
    assert "127.0.0.1" not in text  # metric labels carry stream ids and fixed words, not URLs
