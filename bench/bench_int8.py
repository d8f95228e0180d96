"""INT8 vs FP32, side by side in one run: file size, ONNX Runtime latency, agreement, and the
time and peak memory of calibrating on 1000 frames.

    .venv/bin/python bench/bench_int8.py [--frames 1000] [--threads 2] [--runs 40]

Calibration runs in a child process so that its peak RSS is its own (getrusage of the child).
The 1000 frames are the demo video looped (250 frames, re-encoded end to end as many times as
needed), every frame used. Latencies are batch 1, the same thread count for every model, the
models timed in interleaved rounds so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
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
s = CalibrationSettings(count=a["count"], holdout=a["holdout"], every=1, threads=a["threads"])
t = time.perf_counter()
r = calibrate(a["model"], a["source"], target="cpu", out=a["out"], cache=a["cache"], settings=s)
print(json.dumps({"wall": time.perf_counter() - t, "report": json.loads(r.to_json())}))
"""


def looped_video(src: Path, frames: int, out: Path) -> Path:
    """The demo video repeated until it has `frames` frames (H.264 when available)."""
    if out.exists():
        return out
    with av.open(str(src)) as c:
        pics = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    tmp = out.with_suffix(".part.mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(tmp), "w") as o:
        s = o.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = pics[0].shape[1], pics[0].shape[0], "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast"} if codec == "libx264" else {}
        if codec == "mpeg4":
            s.bit_rate = 4_000_000
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(pics[i % len(pics)], format="rgb24")):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    os.replace(tmp, out)
    return out


def calibrate_child(model: Path, source: Path, count: int, holdout: int, threads: int,
                    work: Path) -> dict:
    cache = work / "bench.calib.table"
    for p in (cache, cache.with_name(cache.name + ".json")):
        p.unlink(missing_ok=True)  # measure a real calibration, not a cache hit
    args = {"model": str(model), "source": str(source), "count": count, "holdout": holdout,
            "threads": threads, "out": str(work / "bench.int8.cpu.onnx"), "cache": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"calibration failed:\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_rss_bytes"] = max(peak, before) * 1024
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
    ap.add_argument("--frames", type=int, default=1000, help="calibration frames")
    ap.add_argument("--holdout", type=int, default=50, help="frames scored for agreement")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=40, help="timed inferences per model")
    ap.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    fp32 = fp32_model(ModelConfig(), progress=True)
    video = assets.fetch_demo_video(progress=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="detectd-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    loop = looped_video(video, args.frames + args.holdout, work / f"loop{args.frames}.mp4")

    cal = calibrate_child(fp32, loop, args.frames, args.holdout, args.threads, work)
    rep = cal["report"]
    variants = rep["variants"]

    with av.open(str(video)) as c:
        frames = np.stack([letterbox_av(f, 416, 416)[0]
                           for i, f in enumerate(c.decode(video=0)) if i % 25 == 12])
    lat = latencies({"fp32": str(fp32), "int8 cpu": variants["cpu"]["path"],
                     "int8 tensorrt": variants["tensorrt"]["path"]}, frames, args.threads,
                    args.runs)

    fp32_size = rep["fp32_size_bytes"]
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
        (f"calibration, {rep['frames_calibrated']} frames", f"{cal['wall']:.0f} s",
         f"{rep['frames_calibrated'] / cal['wall']:.1f} frames/s"),
        ("calibration peak RSS", f"{cal['peak_rss_bytes'] / 2**30:.2f} GiB", "(< 3 GB)"),
        (f"agreement cpu, mAP@0.5 ({rep['frames_scored']} held-out)",
         f"{variants['cpu']['map50']:.3f}", "(>= 0.90, goal 0.95)"),
        ("agreement tensorrt, mAP@0.5", f"{variants['tensorrt']['map50']:.3f}",
         "(>= 0.90, goal 0.95)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nINT8 benchmark ({os.cpu_count()} CPUs, onnxruntime {ort.__version__}, "
          f"method {rep['method']})")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    for t in ("cpu", "tensorrt"):
        worst = ", ".join(f"{n} {d:.1f} dB" for n, d in variants[t]["worst_tensors_sqnr_db"])
        heads = ", ".join(f"{n} {d:.1f} dB" for n, d in variants[t]["head_sqnr_db"].items())
        print(f"  SQNR {t}: heads {heads}; lowest tensors {worst}")
    result = {"latency_s": lat, "calibration": {"wall_s": cal["wall"],
              "peak_rss_bytes": cal["peak_rss_bytes"]}, "report": rep}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    ok = (variants["cpu"]["size_bytes"] <= 0.3 * fp32_size
          and lat["int8 cpu"] <= 0.55 * lat["fp32"] and cal["peak_rss_bytes"] < 3e9
          and min(variants[t]["map50"] or 0 for t in variants) >= 0.90)
    print("  all targets met" if ok else "  SOME TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
