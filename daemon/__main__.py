"""``detectd`` / ``python -m daemon``: argument parsing only.

Every module in ``daemon/commands`` that defines ``register(subparsers)`` is a subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from daemon import __version__
from daemon.errors import exit_code


def build_parser() -> argparse.ArgumentParser:
    import daemon.commands as commands

    parser = argparse.ArgumentParser(prog="detectd", description=(
        "Streaming video analytics: PyAV decode -> YOLOv3-Tiny -> ZeroMQ + Prometheus."))
    parser.add_argument("--version", action="version", version=f"detectd {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="override logging.level of the config")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"daemon.commands.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print("detectd: interrupted", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
