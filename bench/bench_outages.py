"""Outages: how soon does a camera that comes back deliver frames again?

A real RTSP server (GStreamer's, ``tests/rtsp_server.py``) is killed (SIGKILL: the camera loses
power) and restarted on the same port N times (default 100), each time down for a random
0.5-8 s (seeded), with a random 2-5 s of service in between (shorter than ``stable_after``, so
the reconnect backoff is never reset by a long healthy run: the hard case, in which the backoff
window grows to its 30 s cap). One real ``detectd run`` reads it with the default reconnect
settings. For every outage:

- ``recovery_s``: from the server's return (``start()`` returned: the process listens and the
  port accepts TCP) to the decoding of the first frame that is then published (its
  ``captured_at``: frames decoded before the kill may still be in the pipeline, so a message's
  arrival alone cannot tell); ``published_s``: to that message's arrival at a ZeroMQ
  subscriber (adds the inference backlog of the loaded machine);
- ``opens``: connection attempts during the outage (increase of ``detectd_stream_reconnects_total``),
  to show that the daemon never spins; ``probes``: reachability probes made.

Prints p50/p90/p99/max of ``recovery_s`` and the opens per outage; writes
``bench/results/bench_outages.json`` (``--out NAME`` writes ``NAME.json``). ``--probe-interval 0`` runs the
daemon without reachability probes (the backoff alone, as before issue 10) for comparison.

    .venv/bin/python bench/bench_outages.py [--outages 100] [--seed 10] [--probe-interval 1]
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batching import ROOT, bench_daemon, machine, scrape, total, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.rtsp_fixtures import RtspServer, rtsp_server_available  # noqa: E402


class Arrivals(threading.Thread):
    """For every ``detections/<sid>/`` message: the frame's ``captured_at`` (wall clock, set
    when the daemon decoded it) and its receive time (wall clock), in arrival order."""

    def __init__(self, endpoint: str, sid: str) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"detections/{sid}/".encode())
        self.sock.connect(endpoint)
        self.times: list[float] = []  # captured_at
        self.recv: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(100):
                while True:
                    try:
                        _, body = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    now = time.time()
                    captured = float(json.loads(body)["captured_at"])
                    with self.lock:
                        if not self.times or captured >= self.times[-1]:
                            self.times.append(captured)
                            self.recv.append(now)
        self.sock.close(0)
        self.ctx.term()

    def first_after(self, t: float) -> tuple[float, float] | None:
        """(captured_at, received_at) of the first frame decoded after wall time ``t``."""
        with self.lock:
            i = bisect.bisect_right(self.times, t)
            return (self.times[i], self.recv[i]) if i < len(self.times) else None

    def wait_after(self, t: float, timeout: float) -> tuple[float, float] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.first_after(t)
            if got is not None:
                return got
            time.sleep(0.01)
        return None


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outages", type=int, default=100)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--down-min", type=float, default=0.5)
    ap.add_argument("--down-max", type=float, default=8.0)
    ap.add_argument("--up-min", type=float, default=2.0)
    ap.add_argument("--up-max", type=float, default=5.0)
    ap.add_argument("--probe-interval", type=float, default=None,
                    help="streams[].probe_interval for the daemon (default: the config default; 0 = off)")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--out", default="bench_outages", help="result name under bench/results/ (.json)")
    a = ap.parse_args()
    ok, why = rtsp_server_available()
    if not ok:
        print(why, file=sys.stderr)
        return 2
    # SIGTERM (nohup runs are stopped that way) unwinds through the finally below, so the
    # daemon and the server are not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-outages-"))
    srv = RtspServer(log_dir=work, fps=a.fps).start()
    stream: dict[str, Any] = {"id": "cam", "url": srv.url}
    if a.probe_interval is not None:
        stream["probe_interval"] = a.probe_interval
    d = bench_daemon([stream], work, "outages", model={"max_batch": 1})
    arr = Arrivals(d.cfg["publish"]["endpoint"], "cam")
    arr.start()
    rows: list[dict[str, Any]] = []
    try:
        d.wait_ready()
        if arr.wait_after(0.0, 120) is None:
            raise RuntimeError(f"no frames at start; daemon log: {d.log_path.read_text()[-3000:]}")
        for i in range(a.outages):
            time.sleep(rng.uniform(a.up_min, a.up_max))
            down = rng.uniform(a.down_min, a.down_max)
            before = scrape(d)
            srv.kill()
            time.sleep(down)
            t_spawn = time.time()
            srv.start()
            t_ready = time.time()
            got = arr.wait_after(t_spawn, 90)
            after = scrape(d)
            opens = total(after, "detectd_stream_reconnects_total") - total(before, "detectd_stream_reconnects_total")
            probes = total(after, "detectd_stream_probes_total") - total(before, "detectd_stream_probes_total")
            row = {"i": i, "down_s": round(down, 3), "server_start_s": round(t_ready - t_spawn, 3),
                   "recovery_s": None if got is None else round(got[0] - t_ready, 3),
                   "published_s": None if got is None else round(got[1] - t_ready, 3),
                   "opens": int(opens), "probes": int(probes)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        arr.stop.set()
        d.stop(30)
        srv.kill()
    rec = [r["recovery_s"] for r in rows if r["recovery_s"] is not None]
    pub = [r["published_s"] for r in rows if r["published_s"] is not None]
    opens = [r["opens"] for r in rows]
    summary = {
        "outages": len(rows), "recovered": len(rec), "seed": a.seed,
        "down_s": [a.down_min, a.down_max], "up_s": [a.up_min, a.up_max],
        "probe_interval": a.probe_interval if a.probe_interval is not None else "default",
        "recovery_s": {"p50": pct(rec, 50), "p90": pct(rec, 90), "p99": pct(rec, 99),
                       "max": max(rec) if rec else None},
        "published_s": {q: pct(pub, n) for q, n in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "opens_per_outage": {"mean": float(np.mean(opens)) if opens else None,
                             "max": max(opens) if opens else None,
                             "opens_per_down_second_max": max(
                                 (r["opens"] / r["down_s"] for r in rows), default=None)},
        "machine": machine(),
    }
    print(json.dumps(summary, indent=1))
    write_result(a.out, {"summary": summary, "outages": rows})
    return 0 if len(rec) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
