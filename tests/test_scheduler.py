"""The fair, batching scheduler: real threads and real queues, a fresh registry per test."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.scheduler import Scheduler


def frame(stream: str, index: int, t: float | None = None) -> Frame:
    now = time.monotonic() if t is None else t
    return Frame(stream=stream, index=index, width=64, height=48, pts=None, captured_at=time.time(),
                 t_decoded=now)


def dropped(m: Metrics, stream: str, reason: str) -> float:
    v = m.registry.get_sample_value("detectd_frames_dropped_total", {"stream": stream, "reason": reason})
    return v or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_round_robin_batches_take_one_frame_per_stream_per_round(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=4, max_wait=0)
    for sid in ("a", "b", "c"):
        s.add_stream(sid, size=100, live=False, max_age=1)
    for i in range(10):
        s.put(frame("a", i))
    s.put(frame("b", 0))
    s.put(frame("c", 0))
    b1 = s.next_batch(0.1)
    assert sorted(f.stream for f in b1) == ["a", "a", "b", "c"]  # b and c are not starved by a
    assert [f.index for f in b1 if f.stream == "a"] == [0, 1]  # in order within a stream


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_a_busy_stream_never_starves_a_slow_one(metrics: Metrics, max_batch: int) -> None:
    """A producer flooding stream 'busy' and one putting a frame now and then into 'slow': every
    slow frame is taken within one round, whatever the flood."""
    s = Scheduler(metrics, max_batch=max_batch, max_wait=0.001)
    s.add_stream("busy", size=4, live=False, max_age=10)
    s.add_stream("slow", size=4, live=False, max_age=10)
    stop = threading.Event()

    def flood() -> None:
        i = 0
        while not stop.is_set():
            s.put(frame("busy", i), stop)
            i += 1

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    waits = []
    try:
        for i in range(20):
            s.put(frame("slow", i))
            t0 = time.monotonic()
            got = False
            for _ in range(3):  # the slow frame must come out within a couple of batches
                if any(f.stream == "slow" for f in s.next_batch(0.5)):
                    got = True
                    break
            assert got, f"slow frame {i} starved"
            waits.append(time.monotonic() - t0)
    finally:
        stop.set()
        s.close()
        t.join(2)
    assert max(waits) < 0.5


def test_sixteen_streams_share_batches_evenly(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=4, max_wait=0)
    ids = [f"s{i}" for i in range(16)]
    for sid in ids:
        s.add_stream(sid, size=1000, live=False, max_age=1)
        for k in range(40):
            s.put(frame(sid, k))
    taken: Counter[str] = Counter()
    for _ in range(40):  # 160 frames = 10 per stream if fair
        for f in s.next_batch(0.1):
            taken[f.stream] += 1
    assert set(taken) == set(ids)
    assert max(taken.values()) - min(taken.values()) <= 1, taken


def test_live_full_queue_drops_oldest_as_superseded(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=8, max_wait=0)
    s.add_stream("cam", size=2, live=True, max_age=10)
    for i in range(5):
        assert s.put(frame("cam", i))
    assert s.is_full("cam")
    batch = s.next_batch(0.1)
    # Only the newest is inferred: 0-2 were pushed out of the full queue, 3 was superseded
    # by 4 when the scheduler took the stream's frame.
    assert [f.index for f in batch] == [4]
    assert dropped(metrics, "cam", "superseded") == 4


def test_live_frames_older_than_max_age_dropped_as_stale(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=4, max_wait=0)
    s.add_stream("cam", size=10, live=True, max_age=0.2)
    now = time.monotonic()
    s.put(frame("cam", 0, now - 1.0))
    s.put(frame("cam", 1, now - 0.5))
    s.put(frame("cam", 2, now))
    batch = s.next_batch(0.1)
    assert [f.index for f in batch] == [2]
    assert dropped(metrics, "cam", "superseded") == 2  # a newer frame was queued behind them
    # The newest frame itself, once too old, is stale.
    s.put(frame("cam", 3, time.monotonic() - 0.5))
    assert s.next_batch(0.05) == []
    assert dropped(metrics, "cam", "stale") == 1


def test_files_never_drop_the_decoder_waits(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=2, max_wait=0)
    s.add_stream("file", size=2, live=False, max_age=0.001)
    n = 50
    done = threading.Event()

    def produce() -> None:
        for i in range(n):
            assert s.put(frame("file", i, time.monotonic() - 100))  # ancient: still never dropped
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    got = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.002)  # a slow consumer
        got += [f.index for f in s.next_batch(0.1)]
    t.join(2)
    assert got == list(range(n))
    for reason in ("stale", "superseded", "queue_full"):
        assert dropped(metrics, "file", reason) == 0


def test_batch_waits_at_most_max_wait_to_fill(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=8, max_wait=0.05)
    s.add_stream("a", size=10, live=False, max_age=1)
    s.put(frame("a", 0))
    t0 = time.monotonic()
    batch = s.next_batch(1.0)
    dt = time.monotonic() - t0
    assert len(batch) == 1 and 0.04 <= dt < 0.5


def test_removed_stream_frames_discarded_and_put_refused(metrics: Metrics) -> None:
    s = Scheduler(metrics, max_batch=4, max_wait=0)
    s.add_stream("a", size=10, live=True, max_age=1)
    s.put(frame("a", 0))
    assert s.remove_stream("a") == 1
    assert not s.put(frame("a", 1))
    assert s.next_batch(0.05) == []


def test_daemon_runs_the_onnx_model_with_batches_of_4(run_daemon: Any, demo_video: Path) -> None:
    """model.max_batch: 4 with four file streams: real batches of 4 reach ONNX Runtime and every
    frame of every stream is published once."""
    from tests.support.messages import detections_of, sample

    streams = [{"id": f"f{i}", "url": str(demo_video)} for i in range(4)]
    d = run_daemon(streams, model={"max_batch": 4, "max_wait_ms": 20}, metrics={})
    deadline = time.monotonic() + 300
    text = ""
    while time.monotonic() < deadline:
        d.collect(1)
        if all(len(detections_of(d.messages, f"f{i}")) >= 60 for i in range(4)):
            text = d.scrape()
            break
    assert text, d.log()[-3000:]
    count = sample(text, "detectd_batch_size_count")
    total = sample(text, "detectd_batch_size_sum")
    le2 = sample(text, "detectd_batch_size_bucket", le="2.0")
    assert count and total / count > 2.5, (count, total)  # mostly full batches
    assert le2 is not None and le2 < count
    for i in range(4):
        seqs = [m["frame"] for m in detections_of(d.messages, f"f{i}")]
        assert seqs == list(range(len(seqs)))
    # The same detections as unbatched inference would give: f0 and f1 read the same file.
    a = {m["frame"]: m["detections"] for m in detections_of(d.messages, "f0")}
    b = {m["frame"]: m["detections"] for m in detections_of(d.messages, "f1")}
    for k in set(a) & set(b):
        assert [x["label"] for x in a[k]] == [x["label"] for x in b[k]]


def test_wake_ends_an_idle_wait_and_is_kept_until_a_wait_consumes_it(metrics: Metrics) -> None:
    """A pipelined engine's completion (``Scheduler.wake`` from its thread) ends the loop's idle
    wait at once; a wake that comes before the wait is not lost, and is used only once."""
    s = Scheduler(metrics, max_batch=2, max_wait=0)
    s.add_stream("a", size=4, live=False, max_age=1)
    out: list[tuple[list[Frame], float]] = []

    def waiter() -> None:
        t0 = time.monotonic()
        out.append((s.next_batch(timeout=30.0), time.monotonic() - t0))

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)  # the waiter is (very likely) waiting; either way the wake must end it
    s.wake()
    t.join(10)
    assert not t.is_alive() and out[0][0] == [] and out[0][1] < 10.0
    s.wake()  # before the wait: kept
    t0 = time.monotonic()
    assert s.next_batch(timeout=30.0) == [] and time.monotonic() - t0 < 10.0
    t0 = time.monotonic()
    assert s.next_batch(timeout=0.3) == [] and time.monotonic() - t0 >= 0.29  # consumed once
    s.wake()  # frames waiting: the batch is returned, not an empty wake-up
    s.put(frame("a", 0))
    assert [f.index for f in s.next_batch(timeout=1.0)] == [0]
