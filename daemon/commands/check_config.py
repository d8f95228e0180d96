"""``detectd check-config [--config PATH]`` (default ``config.yaml`` here): exit 0 when valid, else exit 2 with one line per
problem, ``key.path: message``.

Besides the config's types, it checks the files the daemon will open: stream files, model files
and, with ``publish.curve``, the CURVE key files (paths expanded as the daemon expands them, so run
it where the daemon runs -- systemd's ``ExecStartPre`` sees the same ``$CREDENTIALS_DIRECTORY``).

It never fetches anything: an asset the config needs that is not cached yet (the demo video of
``demo://``) is a ``note:`` line on stdout, not a problem; ``detectd run`` fetches it at start.
Duplicate YAML keys are problems, with their line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.config import ConfigError, check_config, load_config
from daemon.errors import ExitCode, exit_code


DEFAULT_CONFIG = "config.yaml"  # in the current directory: the checkout's demo config


def run(args: argparse.Namespace) -> int:
    if args.config is None:  # check-config only: `run` always names its config
        if not Path(DEFAULT_CONFIG).is_file():
            print(f"detectd check-config: no --config given and no {DEFAULT_CONFIG} in the current "
                  "directory", file=sys.stderr)
            return ExitCode.USAGE
        args.config = DEFAULT_CONFIG
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exit_code(exc)
    from daemon.publish import curve

    from daemon.prepare import pending_fetches

    from daemon.publish import mqtt_config

    problems = (check_config(cfg) + curve.check_files(cfg.publish.curve)
                + mqtt_config.check_files(cfg.mqtt))
    for line in problems:
        print(line, file=sys.stderr)
    # Information, not a problem: validation never downloads; `detectd run` fetches at start.
    for line in pending_fetches(cfg):
        print(f"note: {line}")
    if problems:
        return ExitCode.USAGE
    n = len(cfg.streams)
    print(f"{args.config}: ok ({n} stream{'' if n == 1 else 's'})")
    if args.shard is not None or cfg.shard.count > 1:
        from daemon.shard import set_override, shard_report

        set_override(args.shard)
        print(shard_report(cfg, every=args.shard is None))
    return 0


def register(subparsers: Any) -> None:
    from daemon.shard import shard_arg

    p = subparsers.add_parser("check-config", help="validate a config file", description=__doc__)
    p.add_argument("--config", "-c", default=None,
                   help=f"path of the YAML config (default: {DEFAULT_CONFIG} in the current "
                        "directory, when there is one)")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/N",
                   help="print the streams shard I of N serves (without it, with shard.count > 1 "
                        "in the config: every shard's streams)")
    p.set_defaults(func=run)
