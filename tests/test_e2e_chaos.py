"""Fault injection: three real RTSP servers killed, stopped and restarted at random for a while,
next to a healthy stream. Afterwards every camera is back with frames flowing, the healthy stream
never paused, and the daemon (never restarted) holds no more threads or file descriptors than
before: nothing leaks per reconnect."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from tests.support.messages import detections_of, events_of
from tests.support.sources import FAST


def threads_and_fds(pid: int) -> tuple[int, int]:
    threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def thread_names(pid: int) -> dict[str, int]:
    """Thread names of a process (``/proc/<pid>/task/*/comm``) with their counts: what grew."""
    names: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        names[name] = names.get(name, 0) + 1
    return names


def test_random_outages_and_restarts(run_daemon: Any, rtsp_server: Any, demo_video: Path) -> None:
    rng = random.Random(20261125)
    servers = [rtsp_server() for _ in range(3)]
    cams = [f"cam{i}" for i in range(3)]
    streams = [{"id": c, "url": s.url, **FAST} for c, s in zip(cams, servers)]
    streams.append({"id": "file", "url": str(demo_video), "loop": True, "realtime": True, "max_age_ms": 2000})
    d = run_daemon(streams)
    d.wait_until(lambda: all(len(detections_of(d.messages, c)) >= 3 for c in cams + ["file"]), 90,
             "every stream's first frames")
    d.collect(2)
    threads0, fds0 = threads_and_fds(d.proc.pid)
    names0 = thread_names(d.proc.pid)

    actions = []
    end = time.monotonic() + 40
    while time.monotonic() < end:
        i = rng.randrange(3)
        srv = servers[i]
        action = rng.choice(["kill", "stop", "restart"] if srv.alive else ["start"])
        actions.append((cams[i], action))
        getattr(srv, action)()
        d.collect(rng.uniform(0.3, 3.0))
    t_back = time.time()
    for srv in servers:
        if not srv.alive:
            srv.start()

    def recovered() -> bool:
        return all(any(m["captured_at"] > t_back for m in detections_of(d.messages, c)) for c in cams)

    d.wait_until(recovered, 60, f"every camera back after {actions}")
    d.collect(3)
    assert d.proc.poll() is None
    for c in cams:
        ev = [e["event"] for e in events_of(d.messages, c)]
        assert "down" in ev or "reconnecting" in ev, (c, ev)
    # The healthy stream never paused while the others churned.
    at = [m["published_at"] for m in detections_of(d.messages, "file")]
    gaps = [b - a for a, b in zip(at, at[1:])]
    assert max(gaps) < 2.0, max(gaps)
    threads1, fds1 = threads_and_fds(d.proc.pid)
    assert threads1 <= threads0 + 4, (threads0, threads1, names0, thread_names(d.proc.pid))
    assert fds1 <= fds0 + 8, (fds0, fds1)
