"""``detectd build-engine``: build (or verify the cached) TensorRT engine ahead of the first run."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from daemon.errors import ExitCode, exit_code


def run(args: argparse.Namespace) -> int:
    from daemon.backends.select import probe_gpu, probe_tensorrt

    why = probe_tensorrt()
    if why:
        print(f"detectd build-engine: TensorRT is needed to build an engine, but {why}. "
              "Install it on a machine with an NVIDIA GPU (`pip install tensorrt`), "
              "or run with model.backend: onnxruntime.", file=sys.stderr)
        return ExitCode.USAGE
    why = probe_gpu()
    if why:
        print(f"detectd build-engine: an NVIDIA GPU and cuda-python are needed: {why}", file=sys.stderr)
        return ExitCode.USAGE

    from daemon.backends.base import BackendError
    from daemon.config import ModelConfig
    from daemon.detector import Detector

    cfg = ModelConfig(backend="tensorrt", precision=args.precision, max_batch=args.max_batch,
                      onnx=args.onnx, cache_dir=args.cache_dir)
    # SIGTERM/SIGINT abandon the build through TensorRT's progress monitor (nothing cached).
    cancel = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.set())
    try:
        # --onnx is built as it is (for int8: a Q/DQ model); otherwise the configured model,
        # its Q/DQ variant for TensorRT when int8 (made when missing). Warmed up once.
        Detector.open(cfg, cancel=cancel, report=lambda m: print(m, flush=True),
                      model_path=Path(args.onnx) if args.onnx else None).close()
    except (BackendError, OSError, ValueError) as exc:
        print(f"detectd build-engine: {exc}", file=sys.stderr)
        return exit_code(exc)
    print("engine ready (built or verified, deserialized and warmed up)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "build-engine",
        help="build the TensorRT engine for this GPU (cached; the daemon also builds it on first run)",
        description=(
            "Parse the ONNX model with TensorRT's ONNX parser and build a serialized engine for "
            "this GPU and TensorRT version (one optimization profile, batch 1..--max-batch), "
            "cached under a key of model hash, TensorRT version, GPU, precision, batch and "
            "preprocessing. A valid cached engine is only verified and warmed up. int8 builds "
            "from the Q/DQ model of `detectd calibrate --target tensorrt` (made when missing)."
        ),
    )
    p.add_argument("--precision", choices=["int8", "fp16", "fp32"], default="int8")
    p.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="largest batch the engine accepts (default 1)")
    p.add_argument("--onnx", default=None, metavar="PATH",
                   help="ONNX model to build from (default: the configured/fetched YOLOv3-Tiny, "
                        "its Q/DQ variant for int8)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache directory (default: $CACHE_DIRECTORY under systemd, else detectd's)")
    p.set_defaults(func=run)
