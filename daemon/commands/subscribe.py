"""``detectd subscribe``: print detectd's messages as JSON lines, one per message, on stdout.

The line is the message payload (compact JSON, the contract's fields), so it pipes into ``jq``.
Lost messages (``seq`` gaps) and malformed messages are reported on stderr, never mixed into
stdout. Exit 0 on Ctrl-C, on a closed pipe (``| head``) or after ``--count`` messages; exit 1 when
``--timeout`` passes without a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from daemon.publish.client import KINDS, Subscriber

log = logging.getLogger("daemon.subscribe")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "subscribe",
        help="print the messages of a detectd endpoint as JSON lines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint", action="append", required=True, metavar="EP",
        help="endpoint to connect to, e.g. tcp://127.0.0.1:5560 (repeat for several daemons)",
    )
    p.add_argument("--stream", action="append", metavar="ID", help="only this stream (repeatable)")
    p.add_argument("--kind", choices=KINDS, action="append", help="only these kinds (detections, events, analytics); repeatable")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="exit 1 when no message arrives for S seconds")
    p.add_argument("--server-key", metavar="FILE", help="CURVE: the daemon's public key (server.key)")
    p.add_argument("--client-key", metavar="FILE", help="CURVE: this client's key pair (NAME.key_secret)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.server_key) != bool(args.client_key):
        print("detectd subscribe: --server-key and --client-key go together", file=sys.stderr)
        return 2
    from daemon.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "info")
    curve = (args.server_key, args.client_key) if args.server_key else None
    # SIGTERM (e.g. from a supervisor) ends the loop like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    out = sys.stdout
    n = 0
    try:
        with Subscriber(args.endpoint, args.stream, args.kind or KINDS, curve=curve) as sub:
            while True:
                msg = sub.recv(args.timeout)
                if msg is None:
                    log.error("no message for %.1f s from %s", args.timeout, ", ".join(args.endpoint))
                    return 1
                out.write(json.dumps(msg.raw, separators=(",", ":")) + "\n")
                out.flush()
                n += 1
                if args.count and n >= args.count:
                    return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
