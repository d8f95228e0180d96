"""``detectd proxy``: fan in several detectd daemons to one endpoint (XSUB/XPUB).

    detectd proxy --frontend tcp://gpu-host-1:5560 --frontend tcp://gpu-host-2:5560 \
                  --backend tcp://0.0.0.0:5570

Frontends are the daemons' publish endpoints (the proxy connects to them; each daemon binds its
own); backends are bound here for subscribers (``detectd subscribe --endpoint tcp://proxy:5570``).
Subscriptions are forwarded upstream, so each daemon only sends what someone asked for.
A message a subscriber's queue (--hwm) cannot take is dropped for every subscriber of its topic
and counted: a warning at most every 10 s names the count and topics, and the last line sums up.
An ipc:// backend another process owns: exit 1. SIGINT/SIGTERM stop it; exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from daemon.errors import ExitCode, fail
from daemon.publish.proxy import Proxy

log = logging.getLogger("daemon.proxy")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="fan in several daemons' ZeroMQ streams to one endpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--frontend", action="append", required=True, metavar="EP",
                   help="a daemon's publish endpoint to connect to (repeat for each daemon)")
    p.add_argument("--backend", action="append", required=True, metavar="EP",
                   help="endpoint to bind for subscribers (repeatable)")
    p.add_argument("--hwm", type=int, default=10_000, help="messages queued per subscriber before dropping")
    p.add_argument("--server-key", metavar="FILE",
                   help="CURVE on the backend: this proxy's secret key (server.key_secret)")
    p.add_argument("--authorized-keys", metavar="DIR",
                   help="CURVE on the backend: directory of the subscribers' public keys")
    p.add_argument("--frontend-server-key", metavar="FILE",
                   help="CURVE on the frontends: the daemons' public key (server.key)")
    p.add_argument("--frontend-client-key", metavar="FILE",
                   help="CURVE on the frontends: this proxy's key pair, authorized by the daemons")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "info")
    if bool(args.server_key) != bool(args.authorized_keys):
        print("detectd proxy: --server-key and --authorized-keys go together", file=sys.stderr)
        return ExitCode.USAGE
    if bool(args.frontend_server_key) != bool(args.frontend_client_key):
        print("detectd proxy: --frontend-server-key and --frontend-client-key go together", file=sys.stderr)
        return ExitCode.USAGE
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        proxy = Proxy(
            args.frontend,
            args.backend,
            backend_curve=(args.server_key, args.authorized_keys) if args.server_key else None,
            frontend_curve=(args.frontend_server_key, args.frontend_client_key) if args.frontend_server_key else None,
            hwm=args.hwm,
        ).start()
    except Exception as exc:  # bad endpoint, port or ipc path in use, unreadable key: one line
        return fail(exc, log, "cannot start the proxy: ")
    while not stop.wait(0.5):
        if proxy.join(0):
            break
    proxy.stop()
    summary = f"{proxy.forwarded} messages forwarded, {proxy.dropped} dropped at --hwm"
    if proxy.error is not None:
        log.error("proxy failed: %s", summary)
        return ExitCode.FAILURE
    log.info("proxy stopped: %s", summary)
    return 0
