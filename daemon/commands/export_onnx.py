"""``detectd export-onnx --out PATH``: Darknet cfg + weights -> ONNX with detectd metadata."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.errors import ExitCode, exit_code
from daemon.models import assets
from daemon.models.darknet import DarknetError


def run(args: argparse.Namespace) -> int:
    # Imported here so that `detectd --help` does not pay for importing onnx.
    from daemon.models.export import export_onnx

    cfg, weights, names = args.cfg, args.weights, args.names
    try:
        if cfg is None or weights is None:
            if (cfg is None) != (weights is None):
                print("detectd export-onnx: give both --cfg and --weights, or neither",
                      file=sys.stderr)
                return ExitCode.USAGE
            from daemon.logs import setup_logging

            setup_logging(args.log_level or "info")  # the fetch's progress lines
            fetched = assets.fetch_model(args.cache_dir, progress=True)
            cfg, weights = fetched.cfg, fetched.weights
            names = names if names is not None else fetched.names
        out = export_onnx(cfg, weights, args.out, names)
    except (assets.AssetError, DarknetError, OSError) as e:
        print(f"detectd export-onnx: {e}", file=sys.stderr)
        return exit_code(e)
    print(f"wrote {out}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a Darknet YOLO cfg + weights to ONNX (default: the fetched YOLOv3-Tiny)",
        description=(
            "Write an ONNX model (input `images` float32 [batch,3,H,W], one raw output per "
            "[yolo] layer, detectd metadata with anchors and labels). Without --cfg/--weights, "
            "uses the YOLOv3-Tiny files of `detectd fetch-model`, fetching them if needed."
        ),
    )
    p.add_argument("--out", required=True, help="where to write the .onnx file")
    p.add_argument("--cfg", default=None, help="Darknet .cfg (default: fetched yolov3-tiny.cfg)")
    p.add_argument("--weights", default=None, help="Darknet .weights (default: fetched)")
    p.add_argument("--names", default=None,
                   help="class names, one per line (default: fetched coco.names with the "
                        "default model, else class_0, class_1, ...)")
    p.add_argument("--cache-dir", default=None, help="cache directory for the fetched files")
    p.set_defaults(func=run)
