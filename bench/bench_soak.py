"""Soak: 8 live streams at 25 fps (the demo video, ``realtime: true, loop: true``) while inference
is slower than their total arrival rate (200 frames/s), for N minutes (default 10).

What must hold (issue 5): no latency creep -- the p99 of frame latency (decoded -> published) in
the last minute within 10% of its value in the first minute; RSS flat within 5% (end vs. after
the first minute); every dropped frame counted in ``detectd_frames_dropped_total{reason}``.

Latency is measured two ways: exactly, from every published message (``published_at -
captured_at``, one clock, read by a ZeroMQ subscriber), and as Prometheus would, by
``histogram_quantile`` over ``detectd_frame_latency_seconds`` bucket deltas. RSS is the daemon
process's VmRSS, sampled every 5 s.

    .venv/bin/python bench/bench_soak.py [--minutes 10] [--streams 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import bench_daemon, demo_video, machine, scrape, total, write_result  # noqa: E402


def hist_quantile(q: float, a: dict[str, Any], b: dict[str, Any], name: str) -> float | None:
    """Prometheus' histogram_quantile over the bucket increase between scrapes a and b."""
    def buckets(m: dict[str, Any]) -> dict[float, float]:
        out: dict[float, float] = {}
        for lab, v in m.get(name + "_bucket", []):
            le = float(lab["le"])
            out[le] = out.get(le, 0.0) + v
        return out

    ba, bb = buckets(a), buckets(b)
    les = sorted(bb)
    counts = [bb[le] - ba.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return None


class Subscriber(threading.Thread):
    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"detections/")
        self.sock.connect(endpoint)
        self.samples: list[tuple[float, float]] = []  # (published_at, latency)
        self.gaps = 0
        self.last_seq: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(200):
                continue
            while True:
                try:
                    _, body = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                m = json.loads(body)
                self.samples.append((m["published_at"], m["published_at"] - m["captured_at"]))
                prev = self.last_seq.get(m["stream"])
                if prev is not None and m["seq"] != prev + 1:
                    self.gaps += 1
                self.last_seq[m["stream"]] = m["seq"]
        self.sock.close(0)
        self.ctx.term()

    def p99(self, t0: float, t1: float) -> tuple[float | None, int]:
        lat = [lat for at, lat in self.samples if t0 <= at < t1]
        return (float(np.percentile(lat, 99)) if lat else None), len(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--window", type=float, default=60.0, help="seconds of the first and last windows")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--json", default="bench_soak")
    a = ap.parse_args()
    video = demo_video()
    duration = a.minutes * 60
    if duration < 2 * a.window:
        raise SystemExit("--minutes must cover two windows")
    streams = [{"id": f"cam{i}", "url": str(video), "loop": True, "realtime": True} for i in range(a.streams)]
    rss: list[tuple[float, int]] = []
    load: list[tuple[float, float]] = []  # the machine's 1-min load average: others share it
    with tempfile.TemporaryDirectory() as tmp:
        d = bench_daemon(streams, Path(tmp), "soak", model={"max_batch": a.max_batch, "max_wait_ms": 5})
        sub = Subscriber(d.cfg["publish"]["endpoint"])
        sub.start()
        try:
            d.wait_ready()
            t_start, wall0 = time.monotonic(), time.time()
            scrapes = {"start": scrape(d)}
            next_rss = 0.0
            while (el := time.monotonic() - t_start) < duration:
                if el >= next_rss:
                    rss.append((el, d.rss_bytes()))
                    load.append((el, os.getloadavg()[0]))
                    next_rss += 5
                if "first" not in scrapes and el >= a.window:
                    scrapes["first"] = scrape(d)
                if "last_start" not in scrapes and el >= duration - a.window:
                    scrapes["last_start"] = scrape(d)
                if d.proc.poll() is not None:
                    raise RuntimeError("the daemon died")
                time.sleep(0.5)
            scrapes["end"] = scrape(d)
            rss.append((time.monotonic() - t_start, d.rss_bytes()))
            wall1 = time.time()
        finally:
            rc = d.stop(30)
            sub.stop.set()
            sub.join(5)
        log_tail = d.log_path.read_text()[-1500:]
    p99_first, n_first = sub.p99(wall0, wall0 + a.window)
    p99_last, n_last = sub.p99(wall1 - a.window, wall1)
    h_first = hist_quantile(0.99, scrapes["start"], scrapes["first"], "detectd_frame_latency_seconds")
    h_last = hist_quantile(0.99, scrapes["last_start"], scrapes["end"], "detectd_frame_latency_seconds")
    rss_first = next(v for t, v in rss if t >= a.window)
    # Per minute: p99, published frames/s and the machine's load, so a latency change can be
    # told apart from other processes taking the CPU (creep grows steadily; contention follows
    # the load).
    minutes = []
    for k in range(int(duration // 60)):
        p, n = sub.p99(wall0 + 60 * k, wall0 + 60 * (k + 1))
        la = [v for t, v in load if 60 * k <= t < 60 * (k + 1)]
        minutes.append({"minute": k + 1, "p99_s": p, "published_per_s": n / 60,
                        "loadavg_1m": sum(la) / len(la) if la else None})
    rss_end = rss[-1][1]
    end = scrapes["end"]
    drops = {}
    for lab, v in end.get("detectd_frames_dropped_total", []):
        drops[lab["reason"]] = drops.get(lab["reason"], 0.0) + v
    decoded = total(end, "detectd_frames_decoded_total")
    published = total(end, "detectd_frames_published_total")
    res = {
        "benchmark": "soak", "streams": a.streams, "fps_per_stream": 25, "minutes": a.minutes,
        "window_s": a.window, "max_batch": a.max_batch,
        "arrival_frames_per_s": a.streams * 25,
        "published_frames_per_s": published / (wall1 - wall0),
        "p99_latency_first_window_s": p99_first, "p99_latency_last_window_s": p99_last,
        "messages_first_window": n_first, "messages_last_window": n_last,
        "p99_ratio": (p99_last / p99_first) if p99_first and p99_last else None,
        "p99_hist_first_s": h_first, "p99_hist_last_s": h_last,
        "rss_after_first_window_bytes": rss_first, "rss_end_bytes": rss_end,
        "rss_ratio": rss_end / rss_first if rss_first else None,
        "per_minute": minutes, "rss_samples": rss,
        # for bench/plots.py: latency and RSS over time
        "timeline": {"t": [60.0 * m["minute"] for m in minutes],
                     "latency_p99_s": [m["p99_s"] for m in minutes],
                     "fps": [m["published_per_s"] for m in minutes]}, "frames_decoded": decoded, "frames_published": published,
        "frames_dropped_by_reason": drops,
        "accounted": decoded - published - sum(drops.values()),
        "seq_gaps_seen_by_subscriber": sub.gaps, "exit_code": rc,
        "machine": machine(), "at": time.time(),
    }
    print(f"{a.streams} streams x 25 fps = {a.streams * 25} frames/s arriving, "
          f"{res['published_frames_per_s']:.1f} frames/s published over {a.minutes:g} min")
    print(f"p99 latency: first {a.window:.0f}s {p99_first * 1000:.0f} ms, last {a.window:.0f}s "
          f"{p99_last * 1000:.0f} ms (ratio {res['p99_ratio']:.3f}); histogram_quantile "
          f"{(h_first or 0) * 1000:.0f} -> {(h_last or 0) * 1000:.0f} ms")
    for mi in minutes:
        print(f"  minute {mi['minute']:2d}: p99 {(mi['p99_s'] or 0) * 1000:4.0f} ms, "
              f"{mi['published_per_s']:5.1f} frames/s published, load {mi['loadavg_1m'] or 0:.1f}")
    print(f"RSS: {rss_first / 2**20:.1f} MiB after {a.window:.0f}s -> {rss_end / 2**20:.1f} MiB at the end "
          f"(ratio {res['rss_ratio']:.4f})")
    print(f"frames: decoded {decoded:.0f}, published {published:.0f}, dropped {drops} "
          f"(decoded - published - dropped = {res['accounted']:.0f}: frames in flight)")
    print(f"exit code {rc}; " + log_tail.strip().splitlines()[-1] if log_tail.strip() else "")
    path = write_result(a.json, res)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
