"""One broken stream never slows the others: 16 live streams, once all healthy, once with one
of them broken; the frames/s of the 15 healthy ones must stay within 5%.

The healthy streams are files read in real time (``realtime: true, loop: true``), at a frame rate
the machine can sustain for all 16 (a clip encoded at ``--fps``, default 1), so each stream's
published frames/s is set by its source, and anything the broken stream costs the others shows
up as a loss. The broken stream is, by ``--broken``:

- ``silent`` (default): the real RTSP server of the tests in its silent mode (answers RTSP, never
  sends media): connect, stall, reconnect, again and again;
- ``refused``: an RTSP URL on a port where nothing listens (instant failures, backoff);
- ``blackhole``: a loopback port that takes the connection and never answers (every attempt
  hangs until its timeout).

Timings of the broken stream are short (stall 1 s, backoff 0.1-1 s) to make it churn as much as
possible. Frames/s is read from ``detectd_frames_published_total`` over the measured window.

    .venv/bin/python bench/bench_broken_stream.py [--seconds 60] [--fps 1] [--broken silent]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import ROOT, bench_daemon, demo_video, free_port, machine, measure, per_stream, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))


def make_clip(path: Path, fps: float, seconds: float = 20.0) -> Path:
    """The demo video's frames re-encoded at ``fps`` (H.264 in MKV, 640x272): a slow camera."""
    import av

    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(demo_video())) as src, av.open(str(path), "w") as out:
        st = out.add_stream("libx264" if "libx264" in av.codecs_available else "h264", rate=rate)
        st.width, st.height, st.pix_fmt = 640, 272, "yuv420p"
        st.codec_context.time_base = 1 / rate
        n = max(2, int(seconds * fps))
        for i, vf in enumerate(src.decode(video=0)):
            if i >= n:
                break
            img = vf.to_ndarray(format="rgb24")
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = i, 1 / rate
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def broken_url(kind: str, workdir: Path) -> tuple[str, Any]:
    if kind == "refused":
        return f"rtsp://127.0.0.1:{free_port()}/cam", None
    if kind == "blackhole":
        # A loopback listener that never accepts: the kernel completes the TCP handshake into
        # its backlog and nothing ever answers the RTSP request, so every attempt hangs until
        # its timeout. (Only loopback: this bench sends no traffic off the machine.)
        import socket

        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        return f"rtsp://127.0.0.1:{hole.getsockname()[1]}/cam", hole
    from tests.rtsp_fixtures import RtspServer, rtsp_server_available

    ok, why = rtsp_server_available()
    if not ok:
        raise SystemExit(why)
    srv = RtspServer(log_dir=workdir, mode="silent").start()
    return srv.url, srv


def run_one(clip: Path, n: int, broken: str | None, warmup: float, seconds: float,
            workdir: Path) -> dict[str, Any]:
    streams: list[dict[str, Any]] = [
        {"id": f"s{i:02d}", "url": str(clip), "loop": True, "realtime": True, "max_age_ms": 5000}
        for i in range(n - (1 if broken else 0))]
    srv = None
    if broken:
        url, srv = broken_url(broken, workdir)
        streams.append({"id": "broken", "url": url, "stall_timeout": 1, "open_timeout": 1,
                        "read_timeout": 1, "backoff_base": 0.1, "backoff_cap": 1})
    d = bench_daemon(streams, workdir, f"broken-{broken or 'none'}", model={"max_batch": 8, "max_wait_ms": 10})
    try:
        a, b, t0, t1 = measure(d, warmup, seconds)
    finally:
        if srv is not None:
            srv.kill() if hasattr(srv, "kill") else srv.close()
    pa, pb = per_stream(a, "detectd_frames_published_total"), per_stream(b, "detectd_frames_published_total")
    fps = {k: (pb[k] - pa.get(k, 0.0)) / (t1 - t0) for k in pb}
    healthy = {k: v for k, v in fps.items() if k != "broken" and k in [s["id"] for s in streams]}
    first15 = sorted(healthy)[: n - 1]
    errs = per_stream(b, "detectd_stream_errors_total").get("broken", 0.0) - \
        per_stream(a, "detectd_stream_errors_total").get("broken", 0.0)
    drops = sum(v for lab, v in b.get("detectd_frames_dropped_total", []) if lab.get("stream") != "broken") - \
        sum(v for lab, v in a.get("detectd_frames_dropped_total", []) if lab.get("stream") != "broken")
    return {"broken": broken, "seconds": t1 - t0, "healthy_frames_per_s": sum(fps[k] for k in first15),
            "per_stream_frames_per_s": {k: round(v, 4) for k, v in fps.items()},
            "broken_stream_failures": errs, "healthy_dropped": drops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--fps", type=float, default=1.0, help="frame rate of each healthy stream")
    ap.add_argument("--broken", choices=("silent", "refused", "blackhole"), default="silent")
    ap.add_argument("--json", default="bench_broken_stream")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mkv", a.fps)
        base = run_one(clip, a.streams, None, a.warmup, a.seconds, Path(tmp))
        print(f"{a.streams} healthy: the first {a.streams - 1} publish {base['healthy_frames_per_s']:.3f} frames/s "
              f"(dropped {base['healthy_dropped']:.0f})", flush=True)
        bad = run_one(clip, a.streams, a.broken, a.warmup, a.seconds, Path(tmp))
        print(f"{a.streams - 1} healthy + 1 broken ({a.broken}, {bad['broken_stream_failures']:.0f} failures "
              f"in the window): {bad['healthy_frames_per_s']:.3f} frames/s (dropped {bad['healthy_dropped']:.0f})",
              flush=True)
    ratio = bad["healthy_frames_per_s"] / base["healthy_frames_per_s"] if base["healthy_frames_per_s"] else 0.0
    ok = abs(ratio - 1) <= 0.05
    print(f"ratio {ratio:.4f} ({'within' if ok else 'OUTSIDE'} 5%)")
    path = write_result(a.json, {"benchmark": "broken_stream", "streams": a.streams, "fps_per_stream": a.fps,
                                 "broken_kind": a.broken, "baseline": base, "with_broken": bad,
                                 "ratio": ratio, "within_5_percent": ok, "machine": machine(),
                                 "at": time.time()})
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
