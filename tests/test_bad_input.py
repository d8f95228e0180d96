"""Bad input: each gets a clear error naming the key or the stream, and never stops the others."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import pytest

from tests.conftest import ROOT, free_port
from tests.test_e2e import detections_of, events_of, sample


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("text, expected", [
    (None, "config file not found"),
    ("streams:\n  - id: a\n    url: [unclosed\n", "YAML syntax error at line"),
    ("streams:\n  - id: a\n    url: x.mp4\n    colour: red\n", "streams[0].colour: unknown key"),
    ("streams:\n  - {id: a, url: x.mp4}\n  - {id: a, url: y.mp4}\n", "streams[1].id: duplicate stream id 'a'"),
    ("streams:\n  - {id: 'a/b', url: x.mp4}\n", "streams[0].id: stream id 'a/b' must match"),
    ("streams:\n  - {id: a, url: x.mp4}\nmodel: {backend: cuda}\n", "model.backend:"),
    ("streams:\n  - {id: a, url: x.mp4}\nmetrics: {listen: nowhere}\n", "metrics.listen:"),
    ("streams:\n  - {id: a, url: /nonexistent/video.mp4}\n", "streams[0].url: stream 'a': file not found"),
    ("streams: []\n", "streams:"),
])
def test_check_config_names_the_problem(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    r = check_config(path)
    assert r.returncode == 2, r
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_ok(tmp_path: Path, demo_video: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"streams:\n  - {{id: a, url: {demo_video}}}\n")
    r = check_config(path)
    assert r.returncode == 0, r.stderr


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - id: a\n    url: x.mp4\n  bad: : :\n")
    r = check_config(path)
    assert r.returncode == 2 and "line 4" in r.stderr, r.stderr


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: a, url: x.mp4, fps: 3}\n")
    r = subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "streams[0].fps: unknown key" in r.stderr


def _make_bad_media(tmp: Path, demo: Path) -> dict[str, Path]:
    notvideo = tmp / "notes.mp4"
    notvideo.write_text("this is not a video\n" * 100)
    # An MP4 whose index (moov, written last) is cut off.
    full = tmp / "full.mp4"
    with av.open(str(demo)) as src, av.open(str(full), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
    cut = tmp / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    # MPEG-TS with damaged packets in the middle: the rest must still decode.
    ts = tmp / "good.ts"
    with av.open(str(demo)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            dst.mux(packet)
    raw = bytearray(ts.read_bytes())
    n = len(raw) // 188
    for k in range(n // 3, n // 3 + 40, 2):  # scramble payloads of 20 TS packets
        raw[k * 188 + 4: (k + 1) * 188] = bytes((i * 37 + k) & 0xFF for i in range(184))
    bad_ts = tmp / "damaged.ts"
    bad_ts.write_bytes(bytes(raw))
    return {"notvideo": notvideo, "cut": cut, "damaged": bad_ts}


def test_broken_streams_never_stop_the_others(run_daemon: Any, demo_video: Path, tmp_path: Path) -> None:
    media = _make_bad_media(tmp_path, demo_video)
    with av.open(str(media["damaged"])) as c:
        decodable = 0
        try:
            for _ in c.decode(video=0):
                decodable += 1
        except av.FFmpegError:
            pass
    dead_port = free_port()
    streams = [
        {"id": "good", "url": str(demo_video)},
        {"id": "missing", "url": str(tmp_path / "nope.mp4")},
        {"id": "notvideo", "url": str(media["notvideo"])},
        {"id": "cut", "url": str(media["cut"])},
        {"id": "damaged", "url": str(media["damaged"])},
        {"id": "rtsp", "url": f"rtsp://user:secret@127.0.0.1:{dead_port}/cam", "open_timeout": 2,
         "read_timeout": 2},
    ]
    d = run_daemon(streams, wait=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        d.collect(0.5)
        ends = {s for s in ("good", "damaged") if any(e["event"] == "ended" for e in events_of(d.messages, s))}
        if ends == {"good", "damaged"}:
            break
    d.collect(2)
    text = d.scrape()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.log()
    log = d.log()

    assert len(detections_of(d.messages, "good")) == 250
    # The damaged file: every frame the decoder could make is published, the damage counted.
    damaged = detections_of(d.messages, "damaged")
    assert len(damaged) >= min(decodable, 200), (len(damaged), decodable)
    for sid, words in (("missing", "file not found"), ("notvideo", "not a readable video"),
                       ("cut", "not a readable video")):
        errs = [e for e in events_of(d.messages, sid) if e["event"] == "error"]
        assert errs and words in errs[0]["reason"], (sid, events_of(d.messages, sid))
        assert f"stream {sid}:" in log
        assert not detections_of(d.messages, sid)
    rt = events_of(d.messages, "rtsp")
    assert any(e["event"] == "reconnecting" for e in rt), rt
    assert sample(text, "detectd_stream_reconnects_total", stream="rtsp") >= 1
    assert sample(text, "detectd_stream_up", stream="rtsp") == 0
    # Credentials never leave the process.
    assert "secret" not in log
    assert all("secret" not in str(e) for e in rt)
