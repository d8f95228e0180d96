"""Source-side helpers: short timings, ``check-config`` runs, odd media files, a failing server."""

from __future__ import annotations

import http.server
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.harness import ROOT

# Short timings: production defaults are 10 s stall, 0.5 s base, 30 s cap, 60 s after 401.
FAST = {"stall_timeout": 2, "open_timeout": 3, "read_timeout": 3, "backoff_base": 0.2,
        "backoff_cap": 2, "stable_after": 1, "auth_backoff": 4}


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``detectd check-config --config PATH`` from this checkout: exit status and output."""
    return subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def write_streams(path: Path, videos: list[tuple[int, int, bool]], cover: bool = False, audio: bool = False) -> None:
    """A Matroska/MP4 file with the given (width, height, default) video streams, optionally a
    cover-art picture first (attached_pic) and an audio track."""
    with av.open(str(path), "w") as out:
        streams = []
        if cover:
            art = out.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = 1280, 1280, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            streams.append((art, 1280, 1280))
        for w, h, default in videos:
            st = out.add_stream("mpeg4", rate=10)
            st.width, st.height, st.pix_fmt = w, h, "yuv420p"
            st.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
            streams.append((st, w, h))
        if audio:
            au = out.add_stream("aac", rate=8000)
        for i in range(3):
            for st, w, h in streams:
                if i and st.disposition & av.stream.Disposition.attached_pic:
                    continue  # cover art is one picture (the muxer writes it as "covr")
                f = av.VideoFrame.from_ndarray(np.full((h, w, 3), 40 * (i + 1), np.uint8), format="rgb24")
                f.pts = i
                for p in st.encode(f):
                    out.mux(p)
            if audio:
                af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts = 8000, i * 1024
                for p in au.encode(af):
                    out.mux(p)
        for st, _, _ in streams:
            for p in st.encode(None):
                out.mux(p)
        if audio:
            for p in au.encode(None):
                out.mux(p)


class Error503(http.server.BaseHTTPRequestHandler):
    """An HTTP server's handler that answers every GET with 503 Service Unavailable."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def clip(src_path: Path, dst_path: Path, frames: int) -> int:
    """Copy the first ``frames`` video packets of ``src_path`` (decode order, no re-encoding)
    into ``dst_path``; the number of packets (= frames) written.

    A prefix in decode order is always decodable (every reference of a packet comes before it)
    and each decoded frame has the same pixels and pts as the source's frame of that pts; with
    B-frames the last few pts skip the frames whose packets come later. For tests whose
    property does not depend on the clip's length (a shorter run, same proof)."""
    n = 0
    with av.open(str(src_path)) as src, av.open(str(dst_path), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        for packet in src.demux(vin):
            if packet.dts is None:
                continue  # the demuxer's flush packet
            if n == frames:
                break
            packet.stream = vout
            dst.mux(packet)
            n += 1
    return n
