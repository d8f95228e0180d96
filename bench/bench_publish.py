"""Cost of the publishing socket: detectd's XPUB (NODROP, VERBOSE, subscription handling) against
the plain PUB it replaced, publishing real detection payloads to one subscriber that keeps up.

Interleaved rounds (PUB, XPUB, PUB, XPUB, ...) in one process, so that the machine's load hits
both alike; the figure is the ratio of the medians of the per-message send times (the time
``Publisher.publish_result`` takes, which is what the pipeline thread pays per frame).

    python bench/bench_publish.py [--rounds 10] [--messages 5000]

Writes bench/results/bench_publish.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from daemon.frames import Detections, Frame, FrameResult
from daemon.metrics import Metrics
from daemon.publish.publisher import Publisher

LABELS = ["person", "bicycle", "car"]
MODEL = {"name": "yolov3-tiny", "precision": "fp32", "backend": "onnxruntime"}


def result(i: int) -> FrameResult:
    frame = Frame(stream="cam", index=i, width=640, height=272, pts=i / 25, captured_at=time.time(),
                  t_decoded=time.monotonic())
    n = 8  # a busy street scene
    boxes = np.tile(np.array([[10.0, 20.0, 110.0, 220.0]]), (n, 1))
    return FrameResult(frame, Detections(boxes, np.full(n, 0.5), np.arange(n) % 3))


def one_round(kind: str, n: int) -> tuple[float, int]:
    """Seconds per message over ``n`` sends, and how many the subscriber received."""
    ctx = zmq.Context()
    m = Metrics(CollectorRegistry())
    pub = Publisher("tcp://127.0.0.1:0", m, context=ctx)
    if kind == "pub":  # the socket before: a plain PUB, same options otherwise
        pub.sock.close(0)
        pub.sock = ctx.socket(zmq.PUB)
        pub.sock.setsockopt(zmq.SNDHWM, 10000)
        port = pub.sock.bind_to_random_port("tcp://127.0.0.1")
        pub.endpoint = f"tcp://127.0.0.1:{port}"
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.endpoint)
    received = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal received
        while not stop.is_set():
            if sub.poll(50):
                sub.recv_multipart()
                received += 1

    # Slow joiner: publish probes until the subscriber gets one.
    while True:
        pub.sock.send_multipart([b"detections/probe/", b"{}"])
        if kind == "xpub":
            pub.flush_events()
        if sub.poll(20):
            sub.recv_multipart()
            break
    t = threading.Thread(target=reader)
    t.start()
    results = [result(i) for i in range(n)]
    t0 = time.perf_counter()
    for r in results:
        pub.publish_result(r, LABELS, MODEL)
        if kind == "xpub":
            pub.flush_events()  # what the daemon's loop does per iteration
    dt = (time.perf_counter() - t0) / n
    deadline = time.monotonic() + 10
    while received < n and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    t.join()
    sub.close(0)
    if kind == "pub":
        pub.sock.close(0)
    else:
        pub.close()
    ctx.term()
    return dt, received


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--messages", type=int, default=5000)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"pub": [], "xpub": []}
    got: dict[str, list[int]] = {"pub": [], "xpub": []}
    for _ in range(args.rounds):
        for kind in ("pub", "xpub"):
            dt, rec = one_round(kind, args.messages)
            times[kind].append(dt)
            got[kind].append(rec)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "what": "seconds per publish_result (+ flush_events for xpub), one subscriber keeping up",
        "rounds": args.rounds, "messages_per_round": args.messages,
        "median_us": {k: round(v * 1e6, 2) for k, v in med.items()},
        "ratio_xpub_over_pub": round(med["xpub"] / med["pub"], 3),
        "received_min": {k: min(v) for k, v in got.items()},
    }
    print(json.dumps(out, indent=2))
    path = Path(__file__).parent / "results" / "bench_publish.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
