"""PyAV sources (daemon/sources/pyav.py) against bad input, in one real daemon: each broken stream
is an error naming the stream and never stops the others; damaged packets are skipped and
counted; a file served over HTTP is a file. (Bad configs: tests/test_config.py.)"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.harness import DaemonProcess, free_port
from tests.support.messages import detections_of, events_of, sample


def _remux(src_path: Path, dst_path: Path, fmt: str | None = None, damage: set[int] = frozenset()) -> None:
    """Copy the demo's H.264 packets into another container; packets whose index is in
    ``damage`` get random bytes of the same size (the decoder rejects them)."""
    rng = np.random.default_rng(7)
    with av.open(str(src_path)) as src, av.open(str(dst_path), "w", format=fmt) as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for i, packet in enumerate(p for p in src.demux(vin) if p.dts is not None):
            if i in damage:
                bad = av.Packet(rng.integers(0, 256, packet.size, np.uint8).tobytes())
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                packet = bad
            packet.stream = vout
            dst.mux(packet)


def decodable_frames(path: Path) -> tuple[int, int]:
    """(frames, packets rejected) decoding ``path`` independently, packet by packet."""
    frames = errors = 0
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                frames += len(packet.decode())
            except av.FFmpegError:
                errors += 1
    return frames, errors


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory, fp32_onnx: Path, demo_video: Path) -> Any:
    """One daemon with one good stream and every kind of broken one."""
    import socket

    tmp = tmp_path_factory.mktemp("bad")
    notvideo = tmp / "notes.mp4"
    notvideo.write_text("this is not a video\n" * 100)
    full = tmp / "full.mp4"
    _remux(demo_video, full)  # MP4: the index (moov) is written last
    cut = tmp / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    damaged = tmp / "damaged.mkv"
    _remux(demo_video, damaged, "matroska", damage=set(range(60, 200, 7)))
    # "Unreachable": a port that refuses, and one that accepts TCP and never answers RTSP.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    streams = [
        {"id": "good", "url": str(demo_video)},
        {"id": "missing", "url": str(tmp / "nope.mp4")},
        {"id": "notvideo", "url": str(notvideo)},
        {"id": "cut", "url": str(cut)},
        {"id": "damaged", "url": str(damaged)},
        {"id": "refused", "url": f"rtsp://user:secret@127.0.0.1:{free_port()}/cam",
         "open_timeout": 2, "stall_timeout": 2},
        {"id": "silent", "url": f"rtsp://127.0.0.1:{blackhole.getsockname()[1]}/cam",
         "open_timeout": 2, "stall_timeout": 2},
    ]
    d = DaemonProcess(tmp, streams, name="bad", subscribe=b"").launch()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            d.collect(0.5)
            ended = {s for s in ("good", "damaged")
                     if any(e["event"] == "ended" for e in events_of(d.messages, s))}
            silent_retries = [e for e in events_of(d.messages, "silent") if e["event"] == "reconnecting"]
            if ended == {"good", "damaged"} and silent_retries:
                break
        d.collect(2)
        d.metrics_text = d.scrape()
        d.signal(signal.SIGTERM)
        d.rc = d.proc.wait(20)
        d.log_text = d.log()
        d.damaged_path = damaged
        yield d
    finally:
        blackhole.close()
        d.close()


def test_good_stream_unaffected_and_clean_exit(broken_run: Any) -> None:
    assert broken_run.rc == 0, broken_run.log_text
    assert len(detections_of(broken_run.messages, "good")) == 250


@pytest.mark.parametrize("sid, words", [
    ("missing", "file not found"),
    ("notvideo", "not a readable video"),
    ("cut", "not a readable video"),
])
def test_unreadable_file_is_an_error_naming_the_stream(broken_run: Any, sid: str, words: str) -> None:
    errs = [e for e in events_of(broken_run.messages, sid) if e["event"] == "error"]
    assert errs and words in errs[0]["reason"], (sid, events_of(broken_run.messages, sid))
    assert f"stream {sid}:" in broken_run.log_text
    assert not detections_of(broken_run.messages, sid)


def test_damaged_packets_skipped_and_counted_good_frames_published(broken_run: Any) -> None:
    frames, rejected = decodable_frames(broken_run.damaged_path)
    assert rejected >= 1, "the fixture must really contain packets the decoder rejects"
    published = detections_of(broken_run.messages, "damaged")
    assert len(published) == frames, (len(published), frames)
    corrupt = sample(broken_run.metrics_text, "detectd_frames_dropped_total", stream="damaged", reason="corrupt")
    assert corrupt == rejected
    assert any(e["event"] == "ended" for e in events_of(broken_run.messages, "damaged"))


@pytest.mark.parametrize("sid", ["refused", "silent"])
def test_unreachable_rtsp_retries_without_blocking_others(broken_run: Any, sid: str) -> None:
    ev = events_of(broken_run.messages, sid)
    assert any(e["event"] == "reconnecting" for e in ev), ev
    assert sample(broken_run.metrics_text, "detectd_stream_reconnects_total", stream=sid) >= 1
    assert sample(broken_run.metrics_text, "detectd_stream_up", stream=sid) == 0
    assert not detections_of(broken_run.messages, sid)


def test_credentials_never_leave_the_process(broken_run: Any) -> None:
    assert "secret" not in broken_run.log_text
    assert "secret" not in broken_run.metrics_text
    assert all("secret" not in str(m) for _, m in broken_run.messages)


def test_http_file_is_finite_every_frame_then_ended(run_daemon: Any, demo_video: Path, tmp_path: Path) -> None:
    """A video file served over HTTP is a file: no frame dropped, the end of file ends it (it is
    not re-downloaded forever as a 'live' stream would be)."""
    import functools
    import http.server
    import threading

    _remux(demo_video, tmp_path / "clip.ts", "mpegts")  # streamable: no index at the end
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/clip.ts"
        d = run_daemon([{"id": "web", "url": url}], wait=False)
        assert d.collect_until_exit(180) == 0, d.log()
    finally:
        httpd.shutdown()
    dets = detections_of(d.messages, "web")
    assert [m["frame"] for m in dets] == list(range(len(dets))) and len(dets) >= 245
    assert [e["event"] for e in events_of(d.messages, "web")][-1] == "ended"
