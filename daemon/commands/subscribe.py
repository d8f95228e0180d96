"""``detectd subscribe``: print detectd's messages as JSON lines, one per message, on stdout.

The line is the message payload (compact JSON, the contract's fields), so it pipes into ``jq``.
Lost messages (``seq`` gaps) and malformed messages are reported on stderr, never mixed into
stdout. Exit 0 on Ctrl-C, on a closed pipe (``| head``) or after ``--count`` messages; exit 1 when
``--timeout`` passes without a message. When nothing has arrived after a few seconds, one hint
line on stderr says so, with the streams the endpoint does publish (a mistyped ``--stream``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any

from daemon.config import PublishConfig
from daemon.errors import ExitCode
from daemon.publish.client import KINDS, Subscriber
from daemon.publish.curve import CurveError, load_public_key, load_secret_key

log = logging.getLogger("daemon.subscribe")
DEFAULT_ENDPOINT = PublishConfig().endpoint  # one source of truth: the config's default
# Seconds without any message before the hint line: the demo publishes 25 messages a second and
# every new subscriber gets a state snapshot at once, so silence this long means a wrong address
# or stream id rather than a quiet one.
HINT_AFTER_S = 5.0
PROBE_S = 1.5  # how long the hint listens to every stream to list those the endpoint has


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "subscribe",
        help="print the messages of a detectd endpoint as JSON lines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint", action="append", default=None, metavar="EP",
        help=f"endpoint to connect to (repeat for several daemons; default {DEFAULT_ENDPOINT}, "
             "the daemon's default publish.endpoint)",
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
        return ExitCode.USAGE
    from daemon.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "info")
    endpoints = args.endpoint or [DEFAULT_ENDPOINT]
    curve = (args.server_key, args.client_key) if args.server_key else None
    if curve is not None:  # a wrong file is a clear line naming the option and the file
        for option, load in (("--server-key", load_public_key), ("--client-key", load_secret_key)):
            try:
                load(getattr(args, option[2:].replace("-", "_")))
            except CurveError as exc:
                print(f"detectd subscribe: {option}: {exc}", file=sys.stderr)
                return ExitCode.USAGE  # a key file named on the command line: the arguments
    # SIGTERM (e.g. from a supervisor) ends the loop like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    out = sys.stdout
    n = 0
    try:
        with Subscriber(endpoints, args.stream, args.kind or KINDS, curve=curve) as sub:
            hint_at: float | None = time.monotonic() + HINT_AFTER_S
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            while True:
                waits = [t - time.monotonic() for t in (deadline, hint_at) if t is not None]
                msg = sub.recv(max(0.0, min(waits)) if waits else None)
                if msg is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        log.error("no message for %.1f s from %s", args.timeout,
                                  ", ".join(endpoints))
                        return ExitCode.FAILURE
                    hint_at = None  # once
                    print(_hint(endpoints, args.stream, curve), file=sys.stderr, flush=True)
                    continue
                hint_at = None
                if args.timeout is not None:
                    deadline = time.monotonic() + args.timeout
                out.write(json.dumps(msg.raw, separators=(",", ":")) + "\n")
                out.flush()
                n += 1
                if args.count and n >= args.count:
                    return 0
    except KeyboardInterrupt:
        return 0
    except CurveError as exc:  # e.g. a libzmq without CURVE: said, not a traceback
        print(f"detectd subscribe: {exc}", file=sys.stderr)
        return ExitCode.USAGE  # CURVE options this libzmq cannot serve
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not complain again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _hint(endpoints: list[str], streams: list[str] | None,
          curve: tuple[str, str] | None) -> str:
    """The line for a subscriber that has heard nothing for HINT_AFTER_S: the streams the
    endpoints publish, from PROBE_S of listening to all of them (each new subscriber gets every
    stream's state at once, so a live daemon shows up even with no detections)."""
    seen: set[str] = set()
    with Subscriber(endpoints, None, KINDS, curve=curve) as probe:
        until = time.monotonic() + PROBE_S
        while (left := until - time.monotonic()) > 0:
            msg = probe.recv(left)
            if msg is not None:
                seen.add(msg.stream)
    where = ", ".join(endpoints)
    what = f" for stream {', '.join(repr(s) for s in streams)}" if streams else ""
    found = (f"streams seen: {', '.join(sorted(seen))}" if seen else
             "no stream seen there either: is a daemon publishing on it (its publish.endpoint)?")
    return f"detectd subscribe: no message yet{what} on {where} after {HINT_AFTER_S:.0f} s; {found}"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
