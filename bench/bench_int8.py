"""INT8 against FP32 on the agreement harness, side by side with the real TensorRT cache.

    .venv/bin/python bench/bench_int8.py [--calib-frames 300] [--methods entropy,percentile]
        [--memory-frames 1000] [--threads 2] [--runs 40] [--rounds 1000]
        [--json bench/results/int8.json]

Frames (daemon/quant/footage.py, all from pinned package assets): each method calibrates on the
demo footage's calibration part (`--calib-frames` spread over its 300 frames: the demo video's
first 150 frames and pans over six photos), in a child process so that its time and peak RSS are
its own. The harness is the footage's held-out part, never calibrated on: the demo video's last
75 frames, two other videos and pans over five other photos, in five codecs and six aspect
ratios. FP32 detections (conf 0.25, NMS 0.45) are the reference; each INT8 model's detections
(conf 0.05) are scored by mAP@0.5, class-averaged and box-weighted, with 95% bootstrap intervals
that resample whole source pictures (`--rounds`).

The reference: TensorRT 7.1.3's own entropy calibration of the same weights
(bench/data/tensorrt-7.1.3-entropy-yolov3-tiny-416.calib), its thresholds mapped onto detectd's
tensors by layer position (daemon/quant/reference.py) and written by detectd's Q/DQ writer, so
the two differ only in the thresholds.

`--memory-frames` runs one more calibration (the default method) on that many frames (the
calibration part, looped) for the time and peak-RSS figure. Latency: batch 1, FP32 and the two
INT8 layouts of the first method, timed in interleaved rounds.
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

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import ModelConfig  # noqa: E402
from daemon.models.info import ModelInfo  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.quant import qdq  # noqa: E402
from daemon.quant.agreement import SqnrAccumulator, bootstrap_over_sources, map_at_50  # noqa: E402
from daemon.quant.histogram import TensorStats  # noqa: E402
from daemon.quant.reference import map_reference_table  # noqa: E402
from daemon.vision.letterbox import letterbox_av  # noqa: E402
from daemon.vision.yolo import postprocess  # noqa: E402

TRT_CACHE = ROOT / "bench" / "data" / "tensorrt-7.1.3-entropy-yolov3-tiny-416.calib"

CHILD = """
import json, sys, time
from daemon.quant.calibrate import calibrate
from daemon.quant.settings import CalibrationSettings
from daemon.quant.sources import FrameSource
from daemon.quant.footage import Footage
a = json.loads(sys.argv[1])
s = CalibrationSettings(count=a["count"], holdout=0, method=a["method"])
src = FrameSource("demo")
part = src.split.calibration
total = sum(x.frames for x in part)
if a["count"] > total:  # the calibration part, looped: a bigger set for the memory figure
    part = part * -(-a["count"] // total)
src.split = Footage(part, src.split.holdout)
t = time.perf_counter()
r = calibrate(a["model"], src, target="cpu", out=a["out"], other_out=a["other"],
              cache=a["cache"], settings=s, threads=a["threads"])
print(json.dumps({"wall": time.perf_counter() - t, "report": json.loads(r.to_json())}))
"""


def calibrate_child(model: Path, count: int, threads: int, method: str, work: Path,
                    tag: str) -> dict:
    cache = work / f"{tag}.calib.table"
    for p in (cache, cache.with_name(cache.name + ".json")):
        p.unlink(missing_ok=True)  # measure a real calibration, not a cache hit
    args = {"model": str(model), "count": count, "threads": threads, "method": method,
            "out": str(work / f"{tag}.cpu.onnx"), "other": str(work / f"{tag}.tensorrt.onnx"),
            "cache": str(cache)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"calibration ({method}, {count} frames) failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["peak_rss_bytes"] = out["report"]["peak_rss_bytes"]
    out["paths"] = {"cpu": args["out"], "tensorrt": args["other"]}
    out["sidecar"] = str(cache.with_name(cache.name + ".json"))
    return out


def harness_frames() -> tuple[np.ndarray, list, list[str]]:
    from daemon.quant.sources import FrameSource

    src = FrameSource("demo")
    xs, infos, sources = [], [], []
    for frame, source, _ in src.split_frames(0, 10**9):
        x, li = letterbox_av(frame, 416, 416)
        xs.append(x)
        infos.append(li)
        sources.append(source)
    return np.stack(xs), infos, sources


def session(model: str | bytes, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, frames: np.ndarray, heads: list[str]) -> list[np.ndarray]:
    parts = [sess.run(heads, {"images": frames[i:i + 4]}) for i in range(0, len(frames), 4)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(heads))]


def latencies(models: dict[str, str], frames: np.ndarray, threads: int, runs: int
              ) -> dict[str, float]:
    sessions = {n: session(p, threads) for n, p in models.items()}
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
    ap.add_argument("--calib-frames", type=int, default=300,
                    help="calibration frames of each method (the demo footage's 300)")
    ap.add_argument("--methods", default="entropy,percentile",
                    help="comma-separated; the first is timed and used for --memory-frames")
    ap.add_argument("--memory-frames", type=int, default=1000,
                    help="one more calibration on this many frames for time and peak RSS "
                         "(0 = skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=40, help="timed inferences per model (0 = skip)")
    ap.add_argument("--rounds", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "int8.json"),
                    help="write the results here ('' = no)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the --memory-frames calibration (JSON: int8-memory.json)")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.perf_counter()

    fp32 = fp32_model(ModelConfig(), progress=True)
    if args.memory_only:
        work = Path(args.work or tempfile.mkdtemp(prefix="detectd-bench-int8-"))
        work.mkdir(parents=True, exist_ok=True)
        r = calibrate_child(fp32, args.memory_frames, args.threads, methods[0], work,
                            f"{methods[0]}-{args.memory_frames}")
        rr = r["report"]
        print(f"[{methods[0]}] calibration, {rr['frames_calibrated']} frames: {r['wall']:.0f} s, "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (< 3 GB); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if args.json:
            out = Path(args.json).with_name("int8-memory.json")
            out.write_text(json.dumps({
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                            "platform": platform.platform()},
                "method": methods[0], "frames": rr["frames_calibrated"], "wall_s": r["wall"],
                "peak_rss_bytes": r["peak_rss_bytes"]}, indent=1) + "\n")
        return 0 if r["peak_rss_bytes"] < 3e9 else 1
    info = ModelInfo.from_onnx(fp32)
    proto = onnx.load(str(fp32))
    heads = [h.name for h in info.heads]
    work = Path(args.work or tempfile.mkdtemp(prefix="detectd-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)

    cal: dict[str, dict] = {}
    for m in methods:
        print(f"calibrating with {m} on {args.calib_frames} frames ...", file=sys.stderr,
              flush=True)
        cal[m] = calibrate_child(fp32, args.calib_frames, args.threads, m, work, m)
    memory = None
    if args.memory_frames:
        print(f"calibrating with {methods[0]} on {args.memory_frames} frames (memory) ...",
              file=sys.stderr, flush=True)
        memory = calibrate_child(fp32, args.memory_frames, args.threads, methods[0], work,
                                 f"{methods[0]}-{args.memory_frames}")

    # the reference: TensorRT 7.1.3's thresholds through detectd's Q/DQ writer
    side = json.loads(Path(cal[methods[0]]["sidecar"]).read_text())
    own = {n: TensorStats(n, t["min"], t["max"], t["threshold"])
           for n, t in side["tensors"].items()}
    trt_stats, unmapped = map_reference_table(proto, TRT_CACHE.read_text(), own)
    models: dict[str, str | bytes] = {}
    for m in methods:
        for t in qdq.TARGETS:
            models[f"{m}/{t}"] = cal[m]["paths"][t]
    for t in qdq.TARGETS:
        models[f"tensorrt-7.1.3-cache/{t}"] = qdq.quantize_model(proto, trt_stats,
                                                                  t).SerializeToString()
    thresholds = {n: {"ours": round(own[n].threshold, 4),
                      "tensorrt_7.1.3": round(trt_stats[n].threshold, 4)}
                  for n in own if n not in unmapped}

    print("decoding the harness ...", file=sys.stderr, flush=True)
    frames, infos, sources = harness_frames()
    ref_out = run(session(str(fp32), args.threads), frames, heads)
    reference = postprocess(ref_out, infos, info.heads, 0.25, 0.45)
    predictions = {}
    sqnr: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        print(f"scoring {name} ...", file=sys.stderr, flush=True)
        out = run(session(model, args.threads), frames, heads)
        predictions[name] = postprocess(out, infos, info.heads, 0.05, 0.45)
        acc = SqnrAccumulator()
        for h, r, q in zip(heads, ref_out, out):
            acc.add(h, r, q)
        sqnr[name] = {k: round(v, 2) for k, v in acc.db().items()}
    scores = {n: map_at_50(reference, p) for n, p in predictions.items()}
    intervals = {}
    for t in qdq.TARGETS:
        group = {n: p for n, p in predictions.items() if n.endswith(f"/{t}")}
        intervals.update(bootstrap_over_sources(reference, group, sources, args.rounds,
                                                baseline=f"tensorrt-7.1.3-cache/{t}"))
    labels = info.labels
    ref_classes = {labels[c]: k for c, k in sorted(scores[next(iter(scores))]
                                                    .boxes_per_class.items(),
                                                    key=lambda kv: -kv[1])}

    lat = None
    if args.runs:
        sample = frames[:: max(1, len(frames) // 12)]
        lat = latencies({"fp32": str(fp32), "int8 cpu": cal[methods[0]]["paths"]["cpu"],
                         "int8 tensorrt": cal[methods[0]]["paths"]["tensorrt"]}, sample,
                        args.threads, args.runs)

    # ------------------------------------------------------------------ report
    n_boxes = sum(len(d) for d in reference)
    print(f"\nINT8 agreement harness: {len(frames)} held-out frames from {len(set(sources))} "
          f"source pictures, {n_boxes} FP32 boxes of {len(ref_classes)} classes "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, onnxruntime "
          f"{ort.__version__})")
    print("  boxes per class: " + ", ".join(f"{k} {v}" for k, v in ref_classes.items()))
    print(f"  {'model':<28} {'class-avg mAP@0.5 [95% CI]':>28} {'box-weighted [95% CI]':>26}"
          f"  head SQNR (dB)")
    checks: list[tuple[str, bool]] = []
    for name, a in scores.items():
        iv = intervals[name]
        heads_db = ", ".join(f"{v:.1f}" for v in sqnr[name].values())
        print(f"  {name:<28} {a.map50:>8.3f} [{iv['map50'].low:.3f}, {iv['map50'].high:.3f}]"
              f"{'':>6} {a.box_weighted:>7.3f} [{iv['box_weighted'].low:.3f}, "
              f"{iv['box_weighted'].high:.3f}]  {heads_db}")
    for m in methods:
        for t in qdq.TARGETS:
            n, base = f"{m}/{t}", f"tensorrt-7.1.3-cache/{t}"
            a, b = scores[n], scores[base]
            d = intervals[n].get(f"map50_minus_{base}")
            print(f"  {n} - {base}: class-avg {a.map50 - b.map50:+.3f}"
                  + (f" (paired 95% CI [{d.low:+.3f}, {d.high:+.3f}])" if d else "")
                  + f", box-weighted {a.box_weighted - b.box_weighted:+.3f}")
            checks += [(f"{n} class-averaged >= 0.90", a.map50 >= 0.90),
                       (f"{n} box-weighted >= 0.975", a.box_weighted >= 0.975),
                       (f"{n} not below the TensorRT cache by more than its interval",
                        a.map50 >= intervals[base]["map50"].low
                        and a.box_weighted >= intervals[base]["box_weighted"].low)]
        checks.append((f"{m}/tensorrt head SQNR >= 24 dB",
                       min(sqnr[f"{m}/tensorrt"].values()) >= 24.0))
    print("\n  thresholds, ours vs TensorRT 7.1.3 (same weights; COCO photos, no border):")
    for n, v in thresholds.items():
        ratio = v["ours"] / v["tensorrt_7.1.3"] if v["tensorrt_7.1.3"] else math.nan
        print(f"    {n:<14} {v['ours']:>9.3f} {v['tensorrt_7.1.3']:>9.3f}  x{ratio:.2f}")
    print()
    for m, r in cal.items():
        rr = r["report"]
        print(f"  [{m}] calibration, {rr['frames_calibrated']} frames: {r['wall']:.0f} s, peak "
              f"RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB; header {rr['cache_header']}")
    if memory:
        rr = memory["report"]
        print(f"  [{methods[0]}] calibration, {rr['frames_calibrated']} frames: "
              f"{memory['wall']:.0f} s, peak RSS {memory['peak_rss_bytes'] / 2**30:.2f} GiB "
              "(< 3 GB)")
        checks.append((f"calibration of {rr['frames_calibrated']} frames peak RSS < 3 GB",
                       memory["peak_rss_bytes"] < 3e9))
    if lat:
        print(f"  latency, batch 1, {args.threads} threads: FP32 {lat['fp32'] * 1e3:.1f} ms, "
              f"int8 cpu {lat['int8 cpu'] * 1e3:.1f} ms ({lat['int8 cpu'] / lat['fp32']:.2f}x), "
              f"int8 tensorrt layout in ORT {lat['int8 tensorrt'] * 1e3:.1f} ms")
    for what, ok in checks:
        print(f"  {'ok  ' if ok else 'MISS'} {what}")

    result = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                    "platform": platform.platform(), "processor": platform.processor(),
                    "onnxruntime": ort.__version__},
        "seconds": time.perf_counter() - t0,
        "harness": {"frames": len(frames), "sources": sorted(set(sources)),
                    "reference_boxes": n_boxes, "classes": len(ref_classes),
                    "boxes_per_class": ref_classes,
                    "frames_per_source": {s: sources.count(s) for s in sorted(set(sources))}},
        "scores": {n: {"map50": a.map50, "map50_box_weighted": a.box_weighted,
                       "interval_95": {k: [v.low, v.high] for k, v in intervals[n].items()},
                       "head_sqnr_db": sqnr[n],
                       "ap_per_class": {labels[c]: round(v, 4) for c, v in a.per_class.items()}}
                   for n, a in scores.items()},
        "calibration": {m: {"frames": r["report"]["frames_calibrated"], "wall_s": r["wall"],
                            "peak_rss_bytes": r["peak_rss_bytes"],
                            "cache_header": r["report"]["cache_header"]}
                        for m, r in cal.items()},
        "memory_run": None if not memory else {
            "method": methods[0], "frames": memory["report"]["frames_calibrated"],
            "wall_s": memory["wall"], "peak_rss_bytes": memory["peak_rss_bytes"]},
        "thresholds_vs_tensorrt_7.1.3": thresholds,
        "unmapped_tensors": unmapped,
        "latency_s": lat,
        "checks": {w: ok for w, ok in checks},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
