"""``detectd run --config PATH``: run the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from daemon import errors
from daemon.config import ConfigError, load_config
from daemon.publish.curve import CurveError

log = logging.getLogger("detectd")


def run(args: argparse.Namespace) -> int:
    from daemon.logs import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        setup_logging(args.log_level or "info")
        for line in exc.problems:
            print(line, file=sys.stderr)
        return errors.exit_code(exc)
    setup_logging(args.log_level or cfg.logging.level)
    if getattr(args, "shard", None) is not None:
        from daemon import shard

        shard.set_override(args.shard)  # wins over shard: of this config and of every reload
    from daemon.prepare import resolve_demo_urls

    try:
        cfg = resolve_demo_urls(cfg)  # fetched at start, never while the config is validated
    except ConfigError as exc:
        for line in exc.problems:
            log.error("%s", line)
        return errors.exit_code(exc)
    from daemon import app

    try:
        return app.run(cfg, config_path=args.config)
    except (errors.DetectdError, OSError) as exc:  # bind failures, the model, a key file: named
        # publish.curve: a missing or malformed key file, named by its config key
        return errors.fail(exc, log, "publish.curve: " if isinstance(exc, CurveError) else "")


def register(subparsers: Any) -> None:
    from daemon.shard import shard_arg

    p = subparsers.add_parser("run", help="run the daemon", description=(
        "Run the daemon: decode the configured streams, detect, publish on ZeroMQ and serve "
        "metrics. SIGINT/SIGTERM drain and exit 0; a second SIGINT forces exit; SIGHUP re-reads "
        "the config (streams added, removed or changed without touching the others)."))
    p.add_argument("--config", "-c", required=True, help="path of the YAML config")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/N", help=(
        "serve shard I of N (0 <= I < N): the streams rendezvous hashing on the stream id gives "
        "it; overrides shard: of the config (docs/scaling.md)"))
    p.set_defaults(func=run)
