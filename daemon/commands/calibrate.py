"""``detectd calibrate``: FP32 ONNX + real frames -> INT8 Q/DQ models + TensorRT cache."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from daemon.errors import ExitCode, exit_code


def run(args: argparse.Namespace) -> int:
    # Imported here so that `detectd --help` does not pay for onnx / onnxruntime.
    from daemon.quant.calibrate import calibrate
    from daemon.quant.ensure import gated_agreement
    from daemon.quant.errors import CalibrationError
    from pydantic import ValidationError

    from daemon.quant.settings import CalibrationSettings, describe_invalid

    from daemon.redact import redact_text
    from daemon.sources.urls import register_url

    # --source may be a stream URL with a password: nothing printed or written below may echo it.
    register_url(args.source)

    def say(text: str) -> None:
        print(redact_text(text), file=sys.stderr)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = CalibrationSettings(source=args.source, count=args.count, every=args.every,
                                       holdout=args.holdout, method=args.method,
                                       percentile=args.percentile,
                                       fallback_max_drop=args.fallback_max_drop,
                                       fallback_max_layers=args.fallback_max_layers,
                                       fallback_targets=[t.strip() for t in
                                                         args.fallback_targets.split(",")
                                                         if t.strip()])
    except ValidationError as e:
        say(f"detectd calibrate: {describe_invalid(e, prefix='--')}")
        return ExitCode.USAGE
    if args.threads < 0:
        say(f"detectd calibrate: --threads {args.threads}: expected 0 (one per core) or more")
        return ExitCode.USAGE
    gate = args.min_agreement
    if gate is not None and not 0.0 <= gate <= 1.0:
        say(f"detectd calibrate: --min-agreement {gate}: expected a number in [0, 1]")
        return ExitCode.USAGE
    try:
        report = calibrate(args.model, args.source, args.count, args.target, args.out,
                           args.cache, settings=settings, threads=args.threads,
                           progress=None if args.quiet else print_progress)
    except (CalibrationError, OSError) as e:  # OSError: e.g. an output directory that cannot be made
        say(f"\ndetectd calibrate: {e}")
        return exit_code(e)
    except KeyboardInterrupt as e:
        # the outputs are committed as one set at the very end, rolled back if interrupted:
        # whatever was there before (or nothing) is still there, unchanged
        say("\ndetectd calibrate: interrupted; no output was written or changed")
        return exit_code(e)
    if not args.quiet:
        print(file=sys.stderr)
    print(redact_text(report.summary()))
    if args.report:
        with open(args.report, "w") as f:
            f.write(redact_text(report.to_json()) + "\n")
    v = report.variants[args.target]
    achieved = gated_agreement(v.map50_box_weighted, v.map50)
    if gate is not None and gate > 0 and achieved is None:
        say(f"detectd calibrate: --min-agreement {gate}: no held-out frame was scored, "
            "agreement unknown")
        return ExitCode.BELOW_GATE
    if gate is not None and achieved is not None and achieved < gate:
        say(f"detectd calibrate: agreement {achieved:.3f} (box-weighted mAP@0.5) is below "
            f"--min-agreement {gate} "
            "(the outputs are written; nothing uses them automatically)")
        return ExitCode.BELOW_GATE
    return 0


def print_progress(done: int, total: int) -> None:
    print(f"\rcalibrating: {min(done, total)}/{total} frames", end="", file=sys.stderr,
          flush=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="INT8-calibrate an FP32 ONNX model on real frames (Q/DQ models + TensorRT cache)",
        description=(
            "Run the FP32 model over real frames (the daemon's own letterbox preprocessing), "
            "collect per-tensor activation histograms, choose clipping thresholds, and write "
            "an explicitly quantized (Q/DQ) INT8 model for --target, the other target's model "
            "beside it (NAME.cpu.onnx or NAME.tensorrt.onnx), and a TensorRT calibration cache. "
            "An unchanged model + calibration set + settings reuses the cache and skips "
            "calibration. Prints the INT8-vs-FP32 agreement (mAP@0.5 on held-out frames) and "
            "the tensors with the lowest signal-to-quantization-noise ratio."
        ),
    )
    p.add_argument("--model", required=True, help="the FP32 ONNX model (detectd export-onnx)")
    p.add_argument("--source", default="demo",
                   help="a text file listing image paths (one a line), a directory of images, "
                        "a video file or stream URL (every k-th frame), or 'demo' (default: "
                        "the demo footage: its own calibration and held-out parts)")
    p.add_argument("--count", type=int, default=300, help="calibration frames (default 300)")
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="which model --out gets: tensorrt (int8 symmetric Q/DQ on conv inputs "
                        "and weights) or cpu (uint8 activations, fastest in ONNX Runtime)")
    p.add_argument("--out", required=True, help="where to write the INT8 model for --target")
    p.add_argument("--cache", default=None,
                   help="TensorRT calibration cache (default: OUT with .calib.table); a "
                        "sidecar CACHE.json holds its key")
    p.add_argument("--every", type=int, default=0,
                   help="video: take every k-th frame (default: spread --count over a file, "
                        "every 10th frame of a stream)")
    p.add_argument("--holdout", type=int, default=300,
                   help="frames read after the --count calibration frames (the end of a "
                        "video, the last files of a list; for 'demo' its held-out part), "
                        "never calibrated, to score INT8 against FP32 (default 300)")
    p.add_argument("--method", default="entropy",
                   help="threshold method: entropy (TensorRT EntropyCalibrator2, KL, default; "
                        "header EntropyCalibration2), percentile (of |x|; header "
                        "MinMaxCalibration), mse, max (header MinMaxCalibration)")
    p.add_argument("--percentile", type=float, default=99.99,
                   help="--method percentile: the percentile of |x| kept (default 99.99)")
    p.add_argument("--fallback-max-layers", type=int, default=2,
                   help="mixed precision: at most this many convolution inputs kept in float "
                        "(the most sensitive first) while the INT8 model's box-weighted agreement "
                        "with FP32 on calibration frames is below 1 - --fallback-max-drop; 0 = "
                        "every convolution INT8 (default 2; docs/int8.md)")
    p.add_argument("--fallback-max-drop", type=float, default=0.01,
                   help="mixed precision: the agreement drop accepted (default 0.01)")
    p.add_argument("--fallback-targets", default="tensorrt",
                   help="mixed precision: the variants it applies to, comma-separated: "
                        "tensorrt, cpu, or '' for none (default tensorrt)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="exit 3 when the --target model's mAP@0.5 agreement is below this "
                        "(or when no held-out frame was left to measure it)")
    p.add_argument("--report", default=None, help="also write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)
