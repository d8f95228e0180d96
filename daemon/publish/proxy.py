"""Fan-in of several detectd publishers onto one endpoint: an XSUB/XPUB ``zmq.proxy``.

Each daemon binds its own PUB socket, so the proxy *connects* its XSUB side to every daemon
(``frontends``) and *binds* its XPUB side (``backends``) for the subscribers. Subscriptions flow
upstream (a subscriber asking for ``detections/cam7/`` makes every daemon filter for it), messages
flow downstream unchanged: topics and ``seq`` are per stream, so as long as each stream id lives
on one daemon (a shard of the stream list per instance), subscribers see exactly what they would
see connected to that daemon.

The proxy never blocks a publisher: when a subscriber is slow its XPUB queue (``SNDHWM``) fills and
ZeroMQ drops for that subscriber only, which it sees as a ``seq`` gap. Unlike the daemon (whose
XPUB_NODROP socket counts every such drop), the proxy cannot count them: ``zmq.proxy`` sends
blocking, so NODROP here would let one stuck subscriber stall every daemon's stream; subscribers
behind a proxy rely on ``seq`` gaps alone.

``zmq.proxy_steerable`` runs in a thread and is stopped through its control socket (``TERMINATE``)
so that SIGTERM ends it cleanly: signal handlers only run in the main thread, between bytecodes,
never while the main thread sits inside the C proxy loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Sequence

import zmq

__all__ = ["Proxy"]

log = logging.getLogger(__name__)
_ids = itertools.count()


class Proxy:
    """XSUB (connected to ``frontends``) -> XPUB (bound on ``backends``).

    ``backend_curve`` = ``(server_secret_key_file, allowed_clients_dir)`` protects the subscriber
    side; ``frontend_curve`` = ``(daemon_public_key_file, proxy_key_file)`` lets the proxy
    subscribe to CURVE-protected daemons.
    """

    def __init__(
        self,
        frontends: Sequence[str],
        backends: Sequence[str],
        *,
        backend_curve: tuple[str, str] | None = None,
        frontend_curve: tuple[str, str] | None = None,
        hwm: int = 10_000,
        context: zmq.Context | None = None,  # type: ignore[type-arg]
    ) -> None:
        if not frontends or not backends:
            raise ValueError("a proxy needs at least one frontend and one backend endpoint")
        self._own_context = context is None
        self.context = zmq.Context() if context is None else context
        self._control_addr = f"inproc://detectd-proxy-control-{next(_ids)}"
        self._thread: threading.Thread | None = None
        self._curve_server = None
        self.error: BaseException | None = None
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
            if frontend_curve is not None:
                from daemon.publish.curve import configure_client

                configure_client(self.xsub, *frontend_curve)
            if backend_curve is not None:
                from daemon.publish.curve import configure_server

                self._curve_server = configure_server(self.xpub, *backend_curve)
            self._control_in.bind(self._control_addr)
            self._control_out.connect(self._control_addr)
            for ep in backends:
                self.xpub.bind(ep)
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
            zmq.proxy_steerable(self.xsub, self.xpub, None, self._control_in)
        except zmq.ContextTerminated:
            pass
        except BaseException as exc:  # surfaced by join(); the CLI exits non-zero
            self.error = exc
            log.error("proxy stopped: %s", exc)

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
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
