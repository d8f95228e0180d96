"""Nothing is lost silently on the publishing side (issue 10, kind A), with real ZeroMQ sockets,
real ``detectd run`` processes and real HTTP scrapes:

- a message that a connected subscriber will not get (its queue at the high-water mark) is
  counted in ``detectd_frames_dropped_total{reason="zmq_hwm"}`` and never as published; the
  subscriber's ``seq`` gaps are exactly the counted drops;
- a second daemon cannot take over an ``ipc://`` endpoint (exit 1, the endpoint named), a crashed
  daemon's socket file is reclaimed, and ``/readyz`` turns 503 when the socket file is removed;
- a subscriber that connects late learns every stream's current state without a transition,
  directly and through ``detectd proxy``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics
from daemon.publish.client import EventMessage, Subscriber
from daemon.publish.endpoint import EndpointInUse, IpcClaim
from daemon.publish.publisher import Publisher
from tests.harness import DaemonProcess, demo_stream, detectd_command, free_port, ops_daemon, wait_for
from tests.support.messages import frame_result, validate

pytestmark = pytest.mark.slow

LABELS = ["person", "bicycle", "car"]
MODEL = {"name": "yolov3-tiny", "precision": "fp32", "backend": "onnxruntime"}


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name}{labels} not in the scrape")


def readyz(d: DaemonProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(d.metrics_url + "/readyz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def slow_sub(ctx: zmq.Context, endpoint: str, prefix: bytes = b"") -> zmq.Socket:  # type: ignore[type-arg]
    """A SUB that will not read for a while: tiny receive queue and kernel buffer, so the
    publisher's queue for it fills after a few messages instead of after megabytes."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    return sub


def drain(sub: zmq.Socket, quiet: float = 1.0) -> list[tuple[bytes, dict[str, Any]]]:  # type: ignore[type-arg]
    out = []
    while sub.poll(int(quiet * 1000)):
        t, p = sub.recv_multipart()
        out.append((t, json.loads(p)))
    return out


# ------------------------------------------------------------------------------ 1. HWM accounting


def test_publisher_counts_exactly_what_a_stuck_subscriber_misses() -> None:
    """The Publisher itself on a real socket: a subscriber that reads nothing while 3000
    messages are published. Whatever it then receives was counted published, every seq it
    misses was counted dropped, and the sum is what was offered."""
    m = Metrics(CollectorRegistry())
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", m, sndhwm=20, context=ctx)
    sub = slow_sub(ctx, pub.endpoint)
    try:
        # Slow joiner: the subscription must reach the XPUB before we count anything.
        assert wait_for(lambda: pub.sock.poll(100) and pub.sock.recv() == b"\x01", 10)
        n = 3000
        for i in range(n):
            pub.publish_result(frame_result("cam", i), LABELS, MODEL)
        published = m.registry.get_sample_value("detectd_frames_published_total", {"stream": "cam"})
        dropped = m.registry.get_sample_value("detectd_frames_dropped_total",
                                              {"stream": "cam", "reason": "zmq_hwm"})
        assert published is not None and dropped is not None
        assert published + dropped == n
        assert dropped > 0, "the stuck subscriber's queue never filled: nothing tested"
        got = [p["seq"] for t, p in drain(sub)]
    finally:
        sub.close(0)
        pub.close()
        ctx.term()
    assert got == sorted(got) and len(set(got)) == len(got)
    assert len(got) == published
    assert n - len(got) == dropped  # seq gaps (and a dropped tail) == counted drops


def test_slow_subscriber_drops_are_counted_by_a_real_daemon(tmp_path: Path) -> None:
    """Field case 1: a looping file, ``publish.sndhwm: 1``, a subscriber that connects and then
    reads nothing for a while. To end with final counters the stream is then switched to play
    the file once (SIGHUP; its counters and seq carry on) and a second stream that never connects
    keeps the daemon running for the last scrape. Then the subscriber's missing seqs are exactly
    the ``zmq_hwm`` drops, and what it got is exactly ``frames_published_total``."""
    endpoint = f"ipc://{tmp_path / 'pub.sock'}"
    idle = {"id": "idle", "url": f"rtsp://127.0.0.1:{free_port()}/x", "backoff_base": 30}
    # Large messages (``model.conf_threshold`` near 0: dozens of boxes per frame), so that the
    # kernel's socket buffers behind a stuck subscriber fill within a few dozen frames and the
    # test does not depend on how fast this machine runs the model.
    d = ops_daemon(tmp_path, [demo_stream("cam"), idle], model={"conf_threshold": 0.005},
                   publish={"sndhwm": 1, "endpoint": endpoint})
    ctx = zmq.Context()
    # Connected before the bind: it misses nothing by joining late.
    sub = slow_sub(ctx, endpoint, b"detections/cam/")
    try:
        with d:
            def counters() -> tuple[float, float, float]:
                text = d.scrape()
                return (sample(text, "detectd_frames_published_total", stream="cam"),
                        sample(text, "detectd_frames_dropped_total", stream="cam", reason="zmq_hwm"),
                        sample(text, "detectd_stream_state", stream="cam", state="ended"))

            t0 = time.monotonic()
            assert wait_for(lambda: counters()[1] > 0, 150), d.log()
            print(f"first zmq_hwm drop after {time.monotonic() - t0:.1f} s, counters {counters()}")
            d.cfg["streams"][0] = demo_stream("cam", loop=False)
            d.write_config()
            d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            assert wait_for(lambda: counters()[2] == 1, 60), d.log()

            def in_flight() -> float:
                """Frames decoded but neither published nor dropped yet (the file's last frames
                may still be in the pipeline behind the end of file)."""
                text = d.scrape()
                done = sample(text, "detectd_frames_published_total", stream="cam") + sum(
                    sample(text, "detectd_frames_dropped_total", stream="cam", reason=r)
                    for r in ("stale", "superseded", "queue_full", "zmq_hwm", "shutdown"))
                return sample(text, "detectd_frames_decoded_total", stream="cam") - done

            assert wait_for(lambda: in_flight() == 0, 60), (in_flight(), d.log())
            before = counters()
            got = drain(sub)  # reading at last: everything still queued arrives
            published, dropped, _ = after = counters()
            assert before == after, ("still publishing after the end of the file", before, after)
    finally:
        sub.close(0)
        ctx.term()
    seqs = [p["seq"] for t, p in got if t == b"detections/cam/"]
    print(f"published {published:.0f}, dropped {dropped:.0f}, received {len(seqs)}")
    assert dropped > 0 and seqs == sorted(seqs)
    assert len(seqs) == published, (len(seqs), published, dropped)
    # Every seq handed out is either received or counted dropped: nothing lost silently.
    assert len(set(range(int(published + dropped))) - set(seqs)) == dropped
    assert max(seqs) < published + dropped


# -------------------------------------------------------------------------- 2. ipc:// ownership


def test_claim_refuses_a_foreign_listener_and_reclaims_a_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "pub.sock"
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    foreign.bind(str(path))
    foreign.listen()
    with pytest.raises(EndpointInUse, match=f"publish.endpoint: ipc://{path} is in use: a process listens"):
        IpcClaim.acquire(f"ipc://{path}")
    foreign.close()  # the file stays, nobody listens: a crashed owner's leftover
    assert path.exists()
    claim = IpcClaim.acquire(f"ipc://{path}")
    assert claim is not None
    with pytest.raises(EndpointInUse, match=r"in use by another detectd \(pid %d" % os.getpid()):
        IpcClaim.acquire(f"ipc://{path}")
    claim.release()
    assert IpcClaim.acquire("tcp://127.0.0.1:5560") is None
    assert IpcClaim.acquire("ipc://@abstract-name") is None


def test_second_daemon_cannot_take_over_an_ipc_endpoint(tmp_path: Path) -> None:
    """Field case 2 with two real daemons: the second exits 1 naming the endpoint, the first
    keeps its subscribers; after the first is killed (SIGKILL, its socket file left behind) a new
    daemon reclaims the path; removing the socket file turns its /readyz to 503."""
    sock_dir = tmp_path / "x"
    sock_dir.mkdir()
    endpoint = f"ipc://{sock_dir / 'pub.sock'}"
    first = ops_daemon(tmp_path, [demo_stream("cam1")], name="first", publish={"endpoint": endpoint})
    second = ops_daemon(tmp_path, [demo_stream("cam2")], name="second", publish={"endpoint": endpoint})
    with first, Subscriber(endpoint, kinds=["detections"]) as sub:
        with pytest.raises(RuntimeError, match="exited with 1") as err:
            second.start()
        assert f"{endpoint} is in use by another detectd (pid {first.proc.pid}" in str(err.value)  # type: ignore[union-attr]
        # The first still owns it: its messages keep arriving, it stays ready.
        got = [sub.recv(5) for _ in range(5)]
        assert all(m is not None and m.stream == "cam1" for m in got), first.log()
        assert readyz(first)[0] == 200

        first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        first.proc.wait(10)  # type: ignore[union-attr]
        assert (sock_dir / "pub.sock").exists()  # the crashed daemon's leftover
        with second:  # reclaims the stale file
            assert wait_for(lambda: (m := sub.recv(0.5)) is not None and m.stream == "cam2", 60), second.log()
            code, body = readyz(second)
            assert code == 200 and body["publisher_bound"] is True and "publisher_problem" not in body, body
            (sock_dir / "pub.sock").unlink()  # a /tmp cleaner, say
            assert wait_for(lambda: readyz(second)[0] == 503, 10)
            code, body = readyz(second)
            assert body["publisher_bound"] is False and "was removed" in body["publisher_problem"], body
            assert wait_for(lambda: sample(second.scrape(), "detectd_publish_endpoint_ok") == 0, 5)
            assert "publish.endpoint" in second.log() and "lost" in second.log()


# ------------------------------------------------------------------------- 3. late subscribers


def _states(sub: Subscriber, want: set[str], timeout: float) -> dict[str, EventMessage]:
    seen: dict[str, EventMessage] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= set(seen):
        m = sub.recv(0.2)
        if m is None:
            continue
        validate(f"{m.kind}/{m.stream}/".encode(), json.dumps(m.raw).encode())
        if isinstance(m, EventMessage) and m.is_snapshot:
            seen[m.stream] = m
    return seen


def test_late_subscriber_learns_every_state_without_a_transition(tmp_path: Path) -> None:
    """Field case 3: streams up and reconnecting for a while; a subscriber that connects now
    gets a ``state`` message per stream it covers within a second, with no transition having
    happened, the same through ``detectd proxy``; an early subscriber sees contiguous seqs."""
    closed = free_port()
    d = ops_daemon(tmp_path, [demo_stream("cam"), {"id": "cam_dead", "url": f"rtsp://127.0.0.1:{closed}/x",
                                                   "backoff_base": 30, "backoff_cap": 30}])
    backend = f"tcp://127.0.0.1:{free_port()}"
    with Subscriber(d.endpoint, kinds=["events"]) as early, d:
        assert wait_for(lambda: sample(d.scrape(), "detectd_stream_up", stream="cam") == 1, 60), d.log()
        # cam_dead now waits 30 s before its next attempt: no transition for either stream.
        time.sleep(1.0)
        t0 = time.time()
        with Subscriber(d.endpoint, kinds=["events"]) as late:
            st = _states(late, {"cam", "cam_dead"}, 3)
            assert set(st) == {"cam", "cam_dead"}, d.log()
            assert st["cam"].state == "up" and st["cam"].extra["last_event"] == "up"
            assert st["cam"].extra["width"] == 640 and st["cam"].at >= t0
            assert st["cam_dead"].state == "backoff" and st["cam_dead"].reason
            assert st["cam_dead"].extra["last_event"] == "reconnecting"
            assert late.state("cam") == "up" and late.state("cam_dead") == "backoff"
        # One stream's events only: only its state.
        with Subscriber(d.endpoint, streams=["cam_dead"], kinds=["events"]) as one:
            st = _states(one, {"cam_dead", "cam"}, 2)
            assert set(st) == {"cam_dead"}
        # Through the proxy (XSUB/XPUB): a subscriber joining it late learns the same.
        proxy = subprocess.Popen([*detectd_command(), "proxy", "--frontend", d.endpoint, "--backend", backend],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with Subscriber(backend, kinds=["events"]) as first_via_proxy:
                assert set(_states(first_via_proxy, {"cam", "cam_dead"}, 10)) == {"cam", "cam_dead"}
                with Subscriber(backend, kinds=["events"]) as second_via_proxy:
                    st = _states(second_via_proxy, {"cam", "cam_dead"}, 5)
                    assert {s: m.state for s, m in st.items()} == {"cam": "up", "cam_dead": "backoff"}
        finally:
            proxy.send_signal(signal.SIGTERM)
            out, _ = proxy.communicate(timeout=20)
        assert proxy.returncode == 0, out
        msgs = []
        while (m := early.recv(0.5)) is not None:
            msgs.append(m)
    # The early subscriber got every answer too, in one contiguous seq per stream.
    for sid in ("cam", "cam_dead"):
        seqs = [m.seq for m in msgs if m.stream == sid]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (sid, seqs)
    assert not early.missed


def test_state_answers_follow_the_subscription_prefix() -> None:
    """Which subscriptions are answered: any prefix of ``events/<id>/`` (the empty one too), and
    nothing for detections-only subscribers; unit-sized, on real sockets."""
    m = Metrics(CollectorRegistry())
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", m, context=ctx)
    for sid in ("cam1", "cam10", "door"):
        pub.add_stream(sid)
    pub.flush_events()  # the announcements at add: to nobody yet
    pub.post_event("cam1", "up", None, state="up", width=64, height=48)
    pub.flush_events()
    try:
        for prefix, want in [(b"", {"cam1", "cam10", "door"}), (b"events/", {"cam1", "cam10", "door"}),
                             (b"events/cam1", {"cam1", "cam10"}), (b"events/cam1/", {"cam1"}),
                             (b"detections/", set())]:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
            sub.connect(pub.endpoint)
            got: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                pub.flush_events()
                if sub.poll(50):
                    t, p = sub.recv_multipart()
                    body = validate(t, p)
                    got[body["stream"]] = body
            sub.close(0)
            assert set(got) == want, prefix
            if "cam1" in got:
                assert got["cam1"]["state"] == "up" and got["cam1"]["event"] == "state"
            if "door" in got:
                assert got["door"]["state"] == "connecting" and got["door"]["last_event"] is None
    finally:
        pub.close()
        ctx.term()


def test_removed_streams_and_a_stopping_daemon_say_stopped() -> None:
    """A stream removed for good, and every stream when the publisher closes, get a last
    ``state: stopped``: no consumer keeps showing them as up."""
    m = Metrics(CollectorRegistry())
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", m, context=ctx)
    for sid in ("gone", "kept"):
        pub.add_stream(sid)
    pub.post_event("gone", "up", None, state="up", attempt=0)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"events/")
    sub.connect(pub.endpoint)
    try:
        def until(pred: Any) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not pred(got):
                pub.flush_events()
                if sub.poll(50):
                    got.append(validate(*sub.recv_multipart()))
            return got

        first = until(lambda g: {b["stream"] for b in g if b["event"] == "state"} == {"gone", "kept"})
        assert {b["stream"]: b["state"] for b in first if b["event"] == "state"} == {"gone": "up", "kept": "connecting"}
        pub.remove_stream("gone", "removed from the configuration")
        bye = until(lambda g: len(g) >= 1)
        assert [(b["stream"], b["event"], b["state"], b["reason"]) for b in bye] == [
            ("gone", "state", "stopped", "removed from the configuration")]
        gone = [b["seq"] for b in first + bye if b["stream"] == "gone"]
        assert gone == list(range(gone[0], gone[0] + len(gone)))  # snapshots take the next seq
        pub.close()
        last = [validate(*sub.recv_multipart()) for _ in range(1) if sub.poll(2000)]
        assert [(b["stream"], b["state"], b["reason"]) for b in last] == [("kept", "stopped", "detectd stopped")]
    finally:
        sub.close(0)
        ctx.term()
