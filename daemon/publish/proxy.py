"""Fan-in of several detectd publishers onto one endpoint: XSUB -> XPUB with counted drops.

Each daemon binds its own PUB socket, so the proxy *connects* its XSUB side to every daemon
(``frontends``) and *binds* its XPUB side (``backends``) for the subscribers. Subscriptions flow
upstream (a subscriber asking for ``detections/cam7/`` makes every daemon filter for it), messages
flow downstream unchanged: topics and ``seq`` are per stream, so as long as each stream id lives
on one daemon (a shard of the stream list per instance), subscribers see exactly what they would
see connected to that daemon.

The XPUB is ``XPUB_VERBOSE``: every subscription is forwarded upstream, repeated ones too (XSUB
passes each on since libzmq 4.2), so a daemon answers a subscriber joining the proxy late with
the ``state`` of its streams, as it would answer one connected directly.

Drops are counted, as in the daemon: the XPUB is ``XPUB_NODROP`` and the loop sends with
``NOBLOCK``, so a message that would exceed ``hwm`` on the queue of any subscriber of its topic
fails with ``EAGAIN``; it is then sent to none of them and counted (:attr:`Proxy.dropped`, per
topic in :attr:`Proxy.dropped_by_topic`; a log line at most every ``report_every`` seconds
names the count and the topics). The proxy never blocks on a stuck subscriber: it drops and
goes on. The cost, as in the daemon: while one subscriber of a topic is ``hwm`` messages behind,
every subscriber of that topic misses those messages (``seq`` gaps equal the counted drops).

The loop (``zmq.Poller`` on both sockets and an inproc control socket) replaces ``zmq.proxy``,
whose blocking sends cannot count. ``stop()`` ends it through the control socket so that SIGTERM
ends it cleanly: signal handlers only run in the main thread.

``ipc://`` backends are claimed like the daemon's endpoint (:class:`daemon.publish.endpoint.IpcClaim`):
a second proxy or a daemon on the same socket file raises :class:`EndpointInUse` instead of
silently taking the path over.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Sequence

import zmq

from daemon.publish.endpoint import IpcClaim

__all__ = ["Proxy"]

log = logging.getLogger(__name__)
_ids = itertools.count()
_BATCH = 256  # messages forwarded per socket per poll wake-up: both directions stay served


class Proxy:
    """XSUB (connected to ``frontends``) -> XPUB (bound on ``backends``), drops counted.

    ``backend_curve`` = ``(server_secret_key_file, allowed_clients_dir)`` protects the subscriber
    side; ``frontend_curve`` = ``(daemon_public_key_file, proxy_key_file)`` lets the proxy
    subscribe to CURVE-protected daemons. ``hwm``: messages queued per subscriber (and received
    per daemon) before dropping. ``report_every``: seconds between drop log lines (at most one).

    Raises ``ValueError`` without endpoints, :class:`daemon.publish.endpoint.EndpointInUse` when
    an ``ipc://`` backend belongs to another live process, ``zmq.ZMQError`` for a bad endpoint or
    a TCP port in use.
    """

    def __init__(
        self,
        frontends: Sequence[str],
        backends: Sequence[str],
        *,
        backend_curve: tuple[str, str] | None = None,
        frontend_curve: tuple[str, str] | None = None,
        hwm: int = 10_000,
        report_every: float = 10.0,
        context: zmq.Context | None = None,  # type: ignore[type-arg]
    ) -> None:
        if not frontends or not backends:
            raise ValueError("a proxy needs at least one frontend and one backend endpoint")
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self._control_addr = f"inproc://detectd-proxy-control-{next(_ids)}"
        self._thread: threading.Thread | None = None
        self._curve_server = None
        self._claims: list[IpcClaim] = []
        self.report_every = report_every
        self.error: BaseException | None = None
        #: messages not forwarded because a subscriber of their topic was at ``hwm``
        self.dropped = 0
        self.dropped_by_topic: collections.Counter[str] = collections.Counter()
        self.forwarded = 0
        self._window: collections.Counter[str] = collections.Counter()  # drops since last log
        self._window_start = time.monotonic()
        self._endpoint_problem: str | None = None
        self._next_endpoint_check = 0.0
        self.xsub = self.context.socket(zmq.XSUB)
        self.xpub = self.context.socket(zmq.XPUB)
        self._control_out = self.context.socket(zmq.PAIR)
        self._control_in = self.context.socket(zmq.PAIR)
        try:
            for s in (self.xsub, self.xpub, self._control_out, self._control_in):
                s.setsockopt(zmq.LINGER, 0)
            self.xsub.setsockopt(zmq.RCVHWM, hwm)
            self.xpub.setsockopt(zmq.SNDHWM, hwm)
            # Forward every subscription upstream, repeated ones too: a daemon answers each with
            # the state of the streams it covers, so a subscriber joining the proxy late learns
            # it like one connected to the daemon. (Without it only the first subscriber of a
            # prefix would be forwarded.)
            self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
            # A full subscriber queue fails the send (EAGAIN) instead of dropping silently for
            # that subscriber: the loop counts it (see the module doc).
            self.xpub.setsockopt(zmq.XPUB_NODROP, 1)
            if frontend_curve is not None:
                from daemon.publish.curve import configure_client

                configure_client(self.xsub, *frontend_curve)
            if backend_curve is not None:
                from daemon.publish.curve import configure_server

                self._curve_server = configure_server(self.xpub, *backend_curve)
            self._control_in.bind(self._control_addr)
            self._control_out.connect(self._control_addr)
            for ep in backends:
                # ZeroMQ's ipc bind unlinks a live socket file: claim it first (a clear error).
                claim = IpcClaim.acquire(ep, key="--backend")
                if claim is not None:
                    self._claims.append(claim)
                self.xpub.bind(ep)
                if claim is not None:
                    claim.bound()
            for ep in frontends:
                self.xsub.connect(ep)
        except Exception:
            self._close()
            raise
        self.frontends = list(frontends)
        self.backends = [self.xpub.getsockopt_string(zmq.LAST_ENDPOINT)] if len(backends) == 1 else list(backends)

    def start(self) -> "Proxy":
        self._thread = threading.Thread(target=self._run, name="detectd-proxy", daemon=True)
        self._thread.start()
        log.info("proxy: %s -> %s", ", ".join(self.frontends), ", ".join(self.backends))
        return self

    def _run(self) -> None:
        try:
            self._loop()
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # surfaced by join(); the CLI exits non-zero
            self.error = exc
            log.error("proxy stopped: %s", exc)
        self._report(force=True)

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in (self.xsub, self.xpub, self._control_in):
            poller.register(sock, zmq.POLLIN)
        self._window_start = time.monotonic()
        while True:
            ready = dict(poller.poll(1000))
            if self._control_in in ready:
                return  # stop(): TERMINATE
            if self.xpub in ready:  # subscriptions, upstream
                for _ in range(_BATCH):
                    try:
                        sub = self.xpub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    # XSUB hands a subscription to every daemon's pipe without waiting: no block.
                    self.xsub.send_multipart(sub)
            if self.xsub in ready:
                for _ in range(_BATCH):
                    try:
                        frames = self.xsub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self.xpub.send_multipart(frames, zmq.NOBLOCK)
                        self.forwarded += 1
                    except zmq.Again:  # a subscriber of this topic is at hwm: counted drop
                        topic = frames[0].decode("utf-8", "replace")
                        self.dropped += 1
                        self.dropped_by_topic[topic] += 1
                        self._window[topic] += 1
            self._report()
            self._check_endpoints()

    def _report(self, force: bool = False) -> None:
        """At most one log line per ``report_every`` s with the drops since the last one."""
        window = self._window
        if not window:
            return
        now = time.monotonic()
        if not force and now - self._window_start < self.report_every:
            return
        top = ", ".join(f"{t} {n}" for t, n in window.most_common(5))
        log.warning("proxy: %d messages dropped in the last %.0f s (%d in all): a subscriber of "
                    "their topic was --hwm messages behind; by topic: %s",
                    sum(window.values()), now - self._window_start, self.dropped, top)
        window.clear()
        self._window_start = now

    def _check_endpoints(self) -> None:
        """Log once when an ipc:// backend's socket file is removed or replaced under us (a stat
        per claim, once a second)."""
        now = time.monotonic()
        if not self._claims or now < self._next_endpoint_check:
            return
        self._next_endpoint_check = now + 1.0
        problems = [p for c in self._claims if (p := c.problem())]
        problem = "; ".join(problems) or None
        if problem and problem != self._endpoint_problem:
            log.error("proxy backend lost: %s", problem)
        self._endpoint_problem = problem

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the proxy thread; True once it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._control_out.send(b"TERMINATE")
            self._thread.join(5)
        self._close()

    def _close(self) -> None:
        if self._curve_server is not None:
            self._curve_server.stop()
            self._curve_server = None
        for s in (self.xsub, self.xpub, self._control_out, self._control_in):
            s.close(linger=0)
        for claim in self._claims:
            claim.release()
        self._claims = []
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
