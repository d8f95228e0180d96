"""``detectd keygen DIR``: create a CURVE key pair for the publisher or for one subscriber.

Writes ``DIR/NAME.key`` (public, share it) and ``DIR/NAME.key_secret`` (secret, mode 0600).
For the daemon: ``detectd keygen /etc/detectd/curve --name server``. For each subscriber:
``detectd keygen ~/.config/detectd --name alice``, then copy ``alice.key`` (never the secret)
into the daemon's authorized keys directory (``publish.curve.authorized_keys_dir``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.errors import ExitCode, exit_code
from daemon.publish.curve import CurveError, generate_keypair


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="create a CURVE key pair (NAME.key, NAME.key_secret) for encrypted publishing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="directory for the key files (created if missing)")
    p.add_argument("--name", default="server", help="file name stem (default: server)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.name or "/" in args.name or args.name.startswith("."):
        print(f"detectd keygen: invalid --name {args.name!r}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        public, secret = generate_keypair(args.dir, args.name, force=args.force)
    except (CurveError, OSError) as exc:
        print(f"detectd keygen: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(f"public key: {public}")
    print(f"secret key: {secret}")
    return 0
