"""INT8 vs FP32, side by side in one run: file size, ONNX Runtime latency, agreement of each
threshold method (percentile and entropy by default), and the time and peak memory of
calibration.

    .venv/bin/python bench/bench_int8.py [--calib-frames 1000] [--method percentile]
        [--compare entropy] [--threads 2] [--runs 40] [--json bench/results/int8.json]

Frames: the demo video has 250 frames. Its LAST `--holdout` frames (default 50, 2 s) are the
held-out set and are never calibrated on; the `--gap` frames before them (default 25, 1 s) are
not used at all, so no calibration frame is a near-copy of a scored one; the frames before the gap
(175 by default) are looped to make `--calib-frames` calibration frames. The bench writes one
video: the loop, then the held-out frames, and calibrates with count = --calib-frames,
holdout = --holdout, every = 1, so calibrate() scores exactly the held-out stretch.

Each method's calibration runs in a child process so that its peak RSS is its own (getrusage of
the child). Latencies are batch 1, the same thread count for every model, the models timed in
interleaved rounds so that load from other processes hits all of them alike; they are measured on
the first method's models (the methods change scales, not the graph).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import ModelConfig  # noqa: E402
from daemon.models import assets  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.vision.letterbox import letterbox_av  # noqa: E402

CHILD = """
import json, sys, time
from daemon.quant.calibrate import calibrate, CalibrationSettings
a = json.loads(sys.argv[1])
s = CalibrationSettings(count=a["count"], holdout=a["holdout"], every=1, threads=a["threads"],
                        method=a["method"])
t = time.perf_counter()
r = calibrate(a["model"], a["source"], target="cpu", out=a["out"], cache=a["cache"], settings=s)
print(json.dumps({"wall": time.perf_counter() - t, "report": json.loads(r.to_json())}))
"""


def bench_video(src: Path, calib_frames: int, holdout: int, gap: int, out: Path) -> Path:
    """The calibration range of the demo video (its frames before `gap` + `holdout`) looped to
    `calib_frames` frames, then its last `holdout` frames, which the loop never contains."""
    if out.exists():
        return out
    with av.open(str(src)) as c:
        pics = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    cal_range = len(pics) - holdout - gap
    if cal_range < 1 or holdout < 1:
        sys.exit(f"the demo video has {len(pics)} frames: too few for --holdout {holdout} and "
                 f"--gap {gap}")
    sequence = [pics[i % cal_range] for i in range(calib_frames)] + pics[-holdout:]
    tmp = out.with_suffix(".part.mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(tmp), "w") as o:
        s = o.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = pics[0].shape[1], pics[0].shape[0], "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast"} if codec == "libx264" else {}
        if codec == "mpeg4":
            s.bit_rate = 4_000_000
        for p in sequence:
            for pkt in s.encode(av.VideoFrame.from_ndarray(p, format="rgb24")):
                o.mux(pkt)
        for pkt in s.encode():
            o.mux(pkt)
    os.replace(tmp, out)
    return out


def calibrate_child(model: Path, source: Path, count: int, holdout: int, threads: int,
                    method: str, work: Path) -> dict:
    """One calibration in a fresh process; its peak RSS is the child's own ru_maxrss (getrusage
    of itself at the end of calibrate(), in the report)."""
    cache = work / f"bench-{method}.calib.table"
    for p in (cache, cache.with_name(cache.name + ".json")):
        p.unlink(missing_ok=True)  # measure a real calibration, not a cache hit
    args = {"model": str(model), "source": str(source), "count": count, "holdout": holdout,
            "threads": threads, "method": method,
            "out": str(work / f"bench-{method}.int8.cpu.onnx"), "cache": str(cache)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"calibration ({method}) failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_rss_bytes"] = out["report"]["peak_rss_bytes"]
    return out


def latencies(models: dict[str, str], frames: np.ndarray, threads: int, runs: int
              ) -> dict[str, float]:
    sessions = {}
    for name, path in models.items():
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        sessions[name] = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    times: dict[str, list[float]] = {n: [] for n in models}
    for i in range(runs + 3):
        x = frames[i % len(frames)][None]
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"images": x})
            if i >= 3:  # warm-up rounds not counted
                times[name].append(time.perf_counter() - t)
    return {n: float(np.median(t)) for n, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib-frames", "--frames", type=int, default=1000,
                    help="calibration frames (the demo's calibration range, looped)")
    ap.add_argument("--holdout", type=int, default=50,
                    help="the demo video's last N frames, scored for agreement, never calibrated")
    ap.add_argument("--gap", type=int, default=25,
                    help="frames between the calibration range and the held-out ones, unused")
    ap.add_argument("--method", default="percentile",
                    choices=("percentile", "entropy", "mse", "max"),
                    help="the method whose models are timed (and calibrated first)")
    ap.add_argument("--compare", default="entropy",
                    help="other methods to calibrate and score side by side, comma-separated; "
                         "'none' for none (default: entropy, or percentile with --method "
                         "entropy)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=40, help="timed inferences per model")
    ap.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "int8.json"),
                    help="write the results here (default bench/results/int8.json; '' = no)")
    args = ap.parse_args()
    compare = [m for m in args.compare.split(",") if m and m != "none"]
    if args.method == "entropy" and args.compare == "entropy":
        compare = ["percentile"]
    methods = [args.method] + [m for m in compare if m != args.method]

    fp32 = fp32_model(ModelConfig(), progress=True)
    video = assets.fetch_demo_video(progress=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="detectd-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    src = bench_video(video, args.calib_frames, args.holdout, args.gap,
                      work / f"cal{args.calib_frames}-gap{args.gap}-hold{args.holdout}.mp4")

    runs = {}
    for m in methods:
        print(f"calibrating with {m} on {args.calib_frames} frames ...", file=sys.stderr,
              flush=True)
        runs[m] = calibrate_child(fp32, src, args.calib_frames, args.holdout, args.threads, m,
                                  work)
    rep = runs[args.method]["report"]
    variants = rep["variants"]

    with av.open(str(video)) as c:
        frames = np.stack([letterbox_av(f, 416, 416)[0]
                           for i, f in enumerate(c.decode(video=0)) if i % 25 == 12])
    lat = latencies({"fp32": str(fp32), "int8 cpu": variants["cpu"]["path"],
                     "int8 tensorrt": variants["tensorrt"]["path"]}, frames, args.threads,
                    args.runs)

    fp32_size = rep["fp32_size_bytes"]
    cal = runs[args.method]
    rows = [
        ("FP32 model size", f"{fp32_size / 1e6:.1f} MB", ""),
        ("INT8 cpu model size", f"{variants['cpu']['size_bytes'] / 1e6:.1f} MB",
         f"{variants['cpu']['size_bytes'] / fp32_size:.2f}x (<= 0.30x)"),
        ("INT8 tensorrt model size", f"{variants['tensorrt']['size_bytes'] / 1e6:.1f} MB",
         f"{variants['tensorrt']['size_bytes'] / fp32_size:.2f}x (<= 0.30x)"),
        (f"FP32 latency ({args.threads} threads)", f"{lat['fp32'] * 1e3:.1f} ms", ""),
        ("INT8 cpu latency", f"{lat['int8 cpu'] * 1e3:.1f} ms",
         f"{lat['int8 cpu'] / lat['fp32']:.2f}x (<= 0.55x, goal 0.40x)"),
        ("INT8 tensorrt layout in ORT", f"{lat['int8 tensorrt'] * 1e3:.1f} ms",
         f"{lat['int8 tensorrt'] / lat['fp32']:.2f}x (for TensorRT, not ORT)"),
    ]
    for m, r in runs.items():
        rr = r["report"]
        rows += [
            (f"[{m}] calibration, {rr['frames_calibrated']} frames", f"{r['wall']:.0f} s",
             f"{rr['frames_calibrated'] / r['wall']:.1f} frames/s; peak RSS "
             f"{r['peak_rss_bytes'] / 2**30:.2f} GiB (< 3 GB)"),
            (f"[{m}] agreement mAP@0.5, {rr['frames_scored']} held-out "
             f"({rr['reference_detections']} FP32 boxes)",
             f"{_f(rr['variants']['tensorrt']['map50'])} / {_f(rr['variants']['cpu']['map50'])}",
             "tensorrt / cpu (>= 0.90, goal 0.95)"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\nINT8 benchmark ({os.cpu_count()} CPUs, onnxruntime {ort.__version__}; held-out: "
          f"the demo's last {args.holdout} frames, never calibrated; calibration: its first "
          f"{250 - args.holdout - args.gap} frames looped to {args.calib_frames})")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>13}  {note}")
    for m, r in runs.items():
        for t in ("cpu", "tensorrt"):
            v = r["report"]["variants"][t]
            worst = ", ".join(f"{n} {d:.1f} dB" for n, d in v["worst_tensors_sqnr_db"])
            heads = ", ".join(f"{n} {d:.1f} dB" for n, d in v["head_sqnr_db"].items())
            print(f"  [{m}] SQNR {t}: heads {heads}; lowest tensors {worst}")
    result = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                    "platform": platform.platform(), "onnxruntime": ort.__version__},
        "frames": {"calibration": args.calib_frames, "holdout": args.holdout, "gap": args.gap,
                   "layout": f"demo frames 0..{249 - args.holdout - args.gap} looped, then "
                             f"frames {250 - args.holdout}..249 scored (never calibrated)"},
        "timed_method": args.method,
        "latency_s": lat,
        "latency_ratio": {"int8 cpu / fp32": lat["int8 cpu"] / lat["fp32"],
                          "int8 tensorrt / fp32": lat["int8 tensorrt"] / lat["fp32"]},
        "size_bytes": {"fp32": fp32_size, **{t: v["size_bytes"] for t, v in variants.items()}},
        "methods": {m: {"wall_s": r["wall"], "peak_rss_bytes": r["peak_rss_bytes"],
                        "frames_calibrated": r["report"]["frames_calibrated"],
                        "frames_scored": r["report"]["frames_scored"],
                        # few boxes of few classes: one box of a rare class moves mAP by 0.1-0.25
                        "reference_detections": r["report"]["reference_detections"],
                        "cache_header": r["report"]["cache_header"],
                        "map50": {t: v["map50"] for t, v in r["report"]["variants"].items()},
                        "head_sqnr_db": {t: v["head_sqnr_db"]
                                         for t, v in r["report"]["variants"].items()},
                        "worst_tensors_sqnr_db": {t: v["worst_tensors_sqnr_db"]
                                                  for t, v in r["report"]["variants"].items()},
                        "warnings": r["report"]["warnings"]}
                    for m, r in runs.items()},
    }
    if args.json:
        save(Path(args.json), result)
    ok = (variants["cpu"]["size_bytes"] <= 0.3 * fp32_size
          and lat["int8 cpu"] <= 0.55 * lat["fp32"] and cal["peak_rss_bytes"] < 3e9
          and min(variants[t]["map50"] or 0 for t in variants) >= 0.90)
    print(f"  all targets met ({args.method})" if ok else
          f"  SOME TARGET MISSED ({args.method})")
    return 0 if ok else 1


def run_key(result: dict) -> str:
    return f"calib{result['frames']['calibration']}-" + "+".join(result["methods"])


def save(path: Path, result: dict) -> None:
    """Keep one entry per (frame count, methods) in `path`: a 300-frame side-by-side run and a
    1000-frame memory run live in the same file, each replaced by its own rerun."""
    runs: dict = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            runs = old["runs"] if "runs" in old else {run_key(old): old}
        except (ValueError, KeyError, TypeError):
            runs = {}
    runs[run_key(result)] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


def _f(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(main())
