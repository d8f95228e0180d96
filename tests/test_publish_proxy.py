"""``detectd proxy`` loses nothing silently: its ``ipc://`` backends are claimed like the daemon's
endpoint, and a message it cannot queue for a subscriber is counted.

Real parts: real ZeroMQ sockets (a PUB standing in for a daemon's publisher, SUBs as
subscribers) on loopback TCP and on ipc:// socket files, and the real ``detectd proxy`` command.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from daemon.publish.endpoint import EndpointInUse
from daemon.publish.proxy import Proxy
from tests.harness import detectd_command, free_port, wait_for


def test_a_second_proxy_cannot_take_over_an_ipc_backend(tmp_path: Path) -> None:
    backend = f"ipc://{tmp_path}/out.sock"
    upstream = f"tcp://127.0.0.1:{free_port()}"
    with Proxy([upstream], [backend]):
        with pytest.raises(EndpointInUse, match=r"--backend: .*out\.sock is in use"):
            Proxy([upstream], [backend])
        # The real command: exit 1 with one clear line, and the first proxy keeps its socket.
        cli = subprocess.run([*detectd_command(), "proxy", "--frontend", upstream, "--backend", backend],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 1, cli.stderr
        assert "is in use by another detectd" in cli.stderr and "Traceback" not in cli.stderr
    # Released on stop: the path can be bound again.
    with Proxy([upstream], [backend]):
        pass


def test_a_proxy_cannot_take_over_a_socket_another_process_listens_on(tmp_path: Path) -> None:
    # A daemon (or any ZeroMQ publisher) bound on the path without detectd's lock.
    path = tmp_path / "pub.sock"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{path}")
    try:
        with pytest.raises(EndpointInUse, match="a process listens on"):
            Proxy([f"tcp://127.0.0.1:{free_port()}"], [f"ipc://{path}"], context=ctx)
        assert path.is_socket()  # still the publisher's socket
    finally:
        pub.close(0)
        ctx.term()


def test_drops_at_the_proxy_are_counted_and_never_forwarded(tmp_path: Path) -> None:
    """A subscriber that reads nothing: the proxy drops at its hwm instead of blocking and counts
    each drop; what it forwarded reached every subscriber, exactly."""
    ctx = zmq.Context()
    upstream = ctx.socket(zmq.XPUB)  # stands in for a daemon's publisher; sees subscriptions
    upstream.setsockopt(zmq.SNDHWM, 0)  # never drops itself: every loss is the proxy's
    upstream.setsockopt(zmq.XPUB_VERBOSE, 1)
    port = upstream.bind_to_random_port("tcp://127.0.0.1")
    backend = f"ipc://{tmp_path}/proxy.sock"
    proxy = Proxy([f"tcp://127.0.0.1:{port}"], [backend], hwm=10, report_every=0.5, context=ctx).start()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 10)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    fast = ctx.socket(zmq.SUB)
    fast.setsockopt(zmq.RCVHWM, 0)
    got: list[int] = []
    try:
        for sub in (stuck, fast):
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(backend)
            sub.setsockopt(zmq.SUBSCRIBE, b"detections/cam/")
        # Both subscriptions reached the "daemon" through the proxy (XPUB_VERBOSE both ways).
        subs = 0
        while subs < 2:
            assert upstream.poll(10_000), "a subscription was not forwarded"
            subs += upstream.recv()[:1] == b"\x01"
        done = threading.Event()

        def read_fast() -> None:
            while not done.is_set():
                if fast.poll(100):
                    got.append(int(fast.recv_multipart()[1]))

        reader = threading.Thread(target=read_fast, daemon=True)
        reader.start()
        sent = 3000
        body = b"x" * 10_000
        for i in range(sent):
            upstream.send_multipart([b"detections/cam/", str(i).encode(), body])
        assert wait_for(lambda: proxy.forwarded + proxy.dropped == sent, 30), (proxy.forwarded, proxy.dropped)
        assert wait_for(lambda: len(got) == proxy.forwarded, 10), (len(got), proxy.forwarded)
        done.set()
        reader.join(5)
        assert proxy.dropped > 0, "the stuck subscriber never filled its queue"
        assert proxy.dropped_by_topic == {"detections/cam/": proxy.dropped}
        # NODROP: what was forwarded was queued for every subscriber, the stuck one included.
        stuck_got = 0
        while stuck.poll(500):
            stuck.recv_multipart()
            stuck_got += 1
        assert stuck_got == proxy.forwarded
        # The fast subscriber's gaps are exactly the counted drops.
        assert got == sorted(got) and sent - len(got) == proxy.dropped
    finally:
        proxy.stop()
        for s in (stuck, fast, upstream):
            s.close(0)
        ctx.term()


def test_proxy_logs_its_drops_and_never_blocks(tmp_path: Path) -> None:
    """The real command with a subscriber that reads nothing: a rate-limited log line counts the
    drops by topic, and SIGTERM still ends it at once (the loop never blocks on the subscriber)."""
    ctx = zmq.Context()
    upstream = ctx.socket(zmq.XPUB)
    upstream.setsockopt(zmq.SNDHWM, 0)
    port = upstream.bind_to_random_port("tcp://127.0.0.1")
    backend = f"tcp://127.0.0.1:{free_port()}"
    proxy = subprocess.Popen([*detectd_command(), "proxy", "--frontend", f"tcp://127.0.0.1:{port}",
                              "--backend", backend, "--hwm", "5"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 5)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.LINGER, 0)
    try:
        stuck.connect(backend)
        stuck.setsockopt(zmq.SUBSCRIBE, b"events/")
        assert upstream.poll(30_000), "the subscription did not reach the upstream publisher"
        upstream.recv()
        for i in range(2000):
            upstream.send_multipart([b"events/cam/", b"y" * 10_000])
        time.sleep(1.0)
        t0 = time.monotonic()
        proxy.send_signal(signal.SIGTERM)
        out, _ = proxy.communicate(timeout=20)
        assert time.monotonic() - t0 < 5
    finally:
        if proxy.poll() is None:
            proxy.kill()
        stuck.close(0)
        upstream.close(0)
        ctx.term()
    assert proxy.returncode == 0, out
    assert "messages dropped" in out and "events/cam/" in out, out
    assert "dropped" in out.splitlines()[-1], out  # the final line sums up
