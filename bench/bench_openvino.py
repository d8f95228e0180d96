"""OpenVINO vs ONNX Runtime vs OpenCV DNN on the CPU, side by side in one run (issue 13).

Machines here are shared and noisy: every section runs its candidates in interleaved rounds
and reports medians and ratios measured in the same run, never absolute speeds alone.

1. bare engines: batch 1, 416x416, ``--threads`` threads, the demo video's frames letterboxed
   beforehand; ms per inference call (no copies, no post-processing): ONNX Runtime FP32;
   OpenVINO INT8 as the daemon runs it (the ``cpu`` model in OpenVINO's form,
   daemon/backends/ov_graph.py, uint8 input; and the same with float input); ONNX Runtime INT8
   ``cpu`` variant, INT8 symmetric (``tensorrt``) variant; OpenVINO FP32, symmetric, ``cpu``
   variant (f32 inference precision, as the daemon's backend runs it), the ``cpu`` variant with
   OpenVINO's default bf16 precision on CPUs that have it, the symmetric variant with the route
   (concat) Q/DQ removed (the investigation, docs/openvino.md); OpenCV's Darknet importer.
   Then CPU milliseconds per inference with one thread (process time), which a shared machine
   disturbs far less than wall time.
2. end to end on the same file (``realtime: false``): a real ``detectd run`` process with
   OpenVINO INT8 and with ONNX Runtime INT8 (today's daemon), frames/s counted by a ZeroMQ
   subscriber; OpenCV DNN end to end in-process (PyAV decode, blobFromImage, forward, [yolo]
   decode, NMSBoxes). Stage means from the daemon's own histograms.
3. 8 file streams: total frames/s of the daemon for OpenVINO at max_batch 1/4/8, infer requests
   and the performance hint, against ONNX Runtime INT8 (max_batch 1) in the same run.
4. agreement with FP32 (ONNX Runtime FP32 detections as reference) of each INT8 model on each
   engine: recall / precision (IoU 0.5, same class, conf 0.25) and mAP@0.5, on all 250 demo
   frames + the two photos; and OpenVINO against ONNX Runtime on the same model.
5. per-frame overhead in-process: letterbox (swscale context made per frame, as before, vs kept
   per thread and geometry), YOLO decode + NMS.

    .venv/bin/python bench/bench_openvino.py [--rounds 3] [--frames 60] [--threads 2]
        [--sections bare,e2e,streams,agreement,overhead] [--json bench/results/openvino.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np
import onnx
import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import decoded_frames, free_port, scrape_stages  # noqa: E402

from daemon.config import CalibrationConfig, ModelConfig  # noqa: E402
from daemon.frames import Detections  # noqa: E402
from daemon.models import assets  # noqa: E402
from daemon.models.info import ModelInfo  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.quant.agreement import iou_matrix, map_at_50  # noqa: E402
from daemon.quant.ensure import ensure_int8_model  # noqa: E402
from daemon.vision.letterbox import (INTERPOLATION, _fill, letterbox_av, letterbox_params,  # noqa: E402
                                     letterbox_rgb)
from daemon.vision.yolo import postprocess  # noqa: E402
from daemon.backends.ov_graph import derive, quantize_pixels  # noqa: E402


def load() -> float:
    return os.getloadavg()[0]


# -- 1. bare engines ---------------------------------------------------------------------------
def ort_runner(path: Path, info: ModelInfo, threads: int) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon's backend
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    return lambda x: s.run(info.output_names, {info.input_name: x})


def ov_runner(path: Path | onnx.ModelProto, threads: int, precision: str = "f32",
              hint: str = "LATENCY") -> Callable[[np.ndarray], Any]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path if isinstance(path, Path) else path.SerializeToString())
    name = model.inputs[0].get_any_name()
    shape = model.inputs[0].get_partial_shape()
    model.reshape({name: ov.PartialShape([1, shape[1], shape[2], shape[3]])})
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    uint8 = model.inputs[0].get_element_type() == ov.Type.u8
    cache: dict[int, np.ndarray] = {}  # float frame -> its uint8 pixels, made once (not timed)

    def run(x: np.ndarray) -> Any:
        if uint8 and x.dtype != np.uint8:
            if id(x) not in cache:
                cache[id(x)] = quantize_pixels(x)
            x = cache[id(x)]
        req.set_input_tensor(ov.Tensor(x, shared_memory=True))
        req.infer()
        return [req.get_output_tensor(i).data for i in range(len(req.model_outputs))]

    return run


def opencv_runner(a: Any, threads: int) -> Callable[[np.ndarray], Any]:
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(a.cfg), str(a.weights))
    outs = net.getUnconnectedOutLayersNames()

    def run(x: np.ndarray) -> Any:  # the same letterboxed RGB 0..1 input as the others
        net.setInput(x)
        return net.forward(outs)

    return run


def without_route_qdq(path: Path) -> onnx.ModelProto:
    """The symmetric model with the Q/DQ pair after every Concat removed (its consumer
    convolution then runs in float): the variant OpenVINO computes as ONNX Runtime does."""
    m = onnx.load(str(path))
    concat = {n.output[0] for n in m.graph.node if n.op_type == "Concat"}
    q_out = {n.output[0]: n.input[0] for n in m.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] in concat}
    rename = {n.output[0]: q_out[n.input[0]] for n in m.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in q_out}
    keep = [n for n in m.graph.node if n.output[0] not in q_out and n.output[0] not in rename]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def ov_form(path: Path, uint8_input: bool = True) -> onnx.ModelProto:
    """The graph the daemon's OpenVINO backend runs for precision int8 (daemon/backends/ov_graph.py)."""
    return derive(onnx.load(str(path)), uint8_input=uint8_input).model


def bench_bare(models: dict[str, Any], info: ModelInfo, frames: list[av.VideoFrame], a: Any,
               threads: int, rounds: int) -> dict[str, Any]:
    xs = [letterbox_av(f, info.width, info.height)[0][None].copy() for f in frames]
    engines: dict[str, Callable[[np.ndarray], Any]] = {
        "ort_fp32": ort_runner(models["fp32"], info, threads),
        "ov_int8": ov_runner(ov_form(models["cpu"]), threads),
        "ov_int8_f32_input": ov_runner(ov_form(models["cpu"], uint8_input=False), threads),
        "ort_int8_cpu": ort_runner(models["cpu"], info, threads),
        "ort_int8_sym": ort_runner(models["tensorrt"], info, threads),
        "ov_fp32": ov_runner(models["fp32"], threads),
        "ov_int8_sym": ov_runner(models["tensorrt"], threads),
        "ov_int8_cpu": ov_runner(models["cpu"], threads),
        "ov_int8_cpu_bf16": ov_runner(models["cpu"], threads, precision=""),
        "ov_int8_sym_no_route_qdq": ov_runner(without_route_qdq(models["tensorrt"]), threads),
        "opencv_darknet": opencv_runner(a, threads),
    }
    ms: dict[str, list[float]] = {k: [] for k in engines}
    loads = []
    for r in range(rounds):
        for k, run in engines.items():
            run(xs[0])
            t0 = time.perf_counter()
            for x in xs:
                run(x)
            ms[k].append(1000 * (time.perf_counter() - t0) / len(xs))
        loads.append(load())
        print(f"bare round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in ms.items())
              + f" ms (load {loads[-1]:.1f})", flush=True)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    return {"ms": med, "rounds_ms": ms, "vs_ort_fp32": {k: med["ort_fp32"] / v for k, v in med.items()},
            "load": loads, "cpu_ms_1_thread": bench_cpu_time(models, info, xs, rounds)}


def bench_cpu_time(models: dict[str, Any], info: ModelInfo, xs: list[np.ndarray], rounds: int
                   ) -> dict[str, Any]:
    """CPU seconds per inference with ONE thread (process time, interleaved rounds): what each
    engine costs the machine, far less sensitive than wall time to other processes sharing
    the cores (they take time slices, not CPU seconds from us)."""
    engines: dict[str, Callable[[np.ndarray], Any]] = {
        "ort_fp32": ort_runner(models["fp32"], info, 1),
        "ort_int8_cpu": ort_runner(models["cpu"], info, 1),
        "ov_int8": ov_runner(ov_form(models["cpu"]), 1),
        "ov_int8_cpu": ov_runner(models["cpu"], 1),
        "ov_int8_sym": ov_runner(models["tensorrt"], 1),
    }
    ms: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for k, run in engines.items():
            run(xs[0])
            t0 = time.process_time()
            for x in xs[:20]:
                run(x)
            ms[k].append(1000 * (time.process_time() - t0) / len(xs[:20]))
    med = {k: float(np.median(v)) for k, v in ms.items()}
    print("cpu ms/inference, 1 thread: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
    return {"ms": med, "rounds_ms": ms, "vs_ort_fp32": {k: med["ort_fp32"] / v for k, v in med.items()}}


# -- 2./3. the daemon --------------------------------------------------------------------------
def run_daemon(video: Path, model: dict[str, Any], streams: int, messages: int,
               scrape: bool = False) -> tuple[float, dict[str, float]]:
    """Frames/s of a real `detectd run` on `streams` looped copies of `video` (realtime off),
    from the 10th to the `messages`-th published message; optionally its stage means (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{free_port()}"
        listen = f"127.0.0.1:{free_port()}"
        cfg = {"streams": [{"id": f"s{i}", "url": str(video), "realtime": False, "loop": True,
                            "queue_size": 8} for i in range(streams)],
               "model": model, "publish": {"endpoint": ep}, "metrics": {"listen": listen},
               "logging": {"status_interval": 0, "level": "warning"}, "shutdown": {"drain_timeout": 5}}
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"detections/")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(ep)
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=ROOT)
        times: list[float] = []
        stages: dict[str, float] = {}
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if sub.poll(200):
                sub.recv_multipart()
                times.append(time.perf_counter())
                if len(times) == messages:
                    if scrape:
                        stages = scrape_stages(f"http://{listen}/metrics")
                    proc.terminate()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        sub.close(0)
        ctx.term()
        if len(times) < messages:
            raise RuntimeError(f"daemon failed: rc={proc.returncode}, {len(times)} messages")
        return (len(times) - 10) / (times[-1] - times[9]), stages


def bench_opencv_e2e(a: Any, video: Path, threads: int, n: int) -> float:
    """OpenCV DNN end to end in-process: PyAV decode, blob, forward, [yolo] decode, NMS."""
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(a.cfg), str(a.weights))
    outs = net.getUnconnectedOutLayersNames()
    done = 0
    t0 = time.perf_counter()
    with av.open(str(video)) as c:
        for vf in c.decode(video=0):
            img = vf.to_ndarray(format="bgr24")
            h, w = img.shape[:2]
            net.setInput(cv2.dnn.blobFromImage(img, 1 / 255.0, (416, 416), swapRB=True, crop=False))
            rows = np.concatenate(net.forward(outs))
            scores = rows[:, 5:]
            cid = scores.argmax(1)
            conf = scores[np.arange(len(rows)), cid]
            keep = conf > 0.25
            b = rows[keep, :4] * [w, h, w, h]
            boxes = np.c_[b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 2], b[:, 3]]
            cv2.dnn.NMSBoxes(boxes.tolist(), conf[keep].tolist(), 0.25, 0.45)
            done += 1
            if done >= n:
                break
    return done / (time.perf_counter() - t0)


def bench_e2e(video: Path, a: Any, threads: int, rounds: int, models: dict[str, Any],
              info: ModelInfo, frames: list[av.VideoFrame], messages: int) -> dict[str, Any]:
    """The daemon, OpenCV end to end and the bare engines they are judged against, interleaved
    in the same rounds (frames/s)."""
    xs = [letterbox_av(f, info.width, info.height)[0][None].copy() for f in frames]
    bare = {"bare_ov_int8": ov_runner(ov_form(models["cpu"]), threads),
            "bare_ort_int8": ort_runner(models["cpu"], info, threads),
            "bare_ort_fp32": ort_runner(models["fp32"], info, threads)}

    def time_bare(run: Callable[[np.ndarray], Any]) -> float:
        run(xs[0])
        t0 = time.perf_counter()
        for x in xs:
            run(x)
        return len(xs) / (time.perf_counter() - t0)

    runs = {
        "daemon_ov_int8": {"backend": "openvino", "precision": "int8", "threads": threads},
        "daemon_ort_int8": {"backend": "onnxruntime", "precision": "int8", "threads": threads},
    }
    fps: dict[str, list[float]] = {k: [] for k in [*bare, *runs, "opencv_e2e"]}
    stages: dict[str, dict[str, float]] = {}
    loads = []
    for r in range(rounds):
        for k, run in bare.items():
            fps[k].append(time_bare(run))
        for k, model in runs.items():
            f, st = run_daemon(video, model, 1, messages, scrape=True)
            fps[k].append(f)
            stages[k] = st
        fps["opencv_e2e"].append(bench_opencv_e2e(a, video, threads, messages))
        loads.append(load())
        print(f"e2e round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in fps.items())
              + f" frames/s (load {loads[-1]:.1f})", flush=True)
    med = {k: float(np.median(v)) for k, v in fps.items()}
    return {"fps": med, "rounds_fps": fps, "stage_means_ms": stages, "load": loads,
            "daemon_ov_int8_vs_bare_ov_int8": med["daemon_ov_int8"] / med["bare_ov_int8"],
            "daemon_ort_int8_vs_bare_ort_int8": med["daemon_ort_int8"] / med["bare_ort_int8"],
            "bare_ov_int8_vs_bare_ort_fp32": med["bare_ov_int8"] / med["bare_ort_fp32"],
            "daemon_ov_int8_vs_opencv_e2e": med["daemon_ov_int8"] / med["opencv_e2e"],
            "daemon_ov_int8_vs_daemon_ort_int8": med["daemon_ov_int8"] / med["daemon_ort_int8"]}


def bench_streams(video: Path, threads: int, rounds: int, n_streams: int, per_stream: int
                  ) -> dict[str, Any]:
    t = threads
    ov = {"backend": "openvino", "precision": "int8", "threads": t}
    runs: dict[str, dict[str, Any]] = {
        "ort_int8_mb1": {"backend": "onnxruntime", "precision": "int8", "threads": t},
        "ov_int8_mb1_latency": {**ov, "performance_hint": "latency"},
        "ov_int8_mb1_latency_req1": {**ov, "performance_hint": "latency", "infer_requests": 1},
        "ov_int8_mb1_throughput": {**ov, "performance_hint": "throughput"},
        "ov_int8_mb1_throughput_req4": {**ov, "performance_hint": "throughput", "infer_requests": 4},
        "ov_int8_mb4_throughput": {**ov, "performance_hint": "throughput", "max_batch": 4},
        "ov_int8_mb8_throughput": {**ov, "performance_hint": "throughput", "max_batch": 8},
    }
    fps: dict[str, list[float]] = {k: [] for k in runs}
    loads = []
    for r in range(rounds):
        for k, model in runs.items():
            fps[k].append(run_daemon(video, model, n_streams, per_stream * n_streams)[0])
        loads.append(load())
        print(f"streams round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in fps.items())
              + f" frames/s (load {loads[-1]:.1f})", flush=True)
    med = {k: float(np.median(v)) for k, v in fps.items()}
    return {"streams": n_streams, "fps": med, "rounds_fps": fps, "load": loads, "configs": runs,
            "vs_ort_int8_mb1": {k: v / med["ort_int8_mb1"] for k, v in med.items()}}


# -- 4. agreement ------------------------------------------------------------------------------
def detect_all(run: Callable[[np.ndarray], Any], info: ModelInfo, inputs: list[tuple[np.ndarray, Any]],
               conf: float) -> list[Detections]:
    return [postprocess(run(x), [li], info.heads, conf, 0.45)[0] for x, li in inputs]


def recall_precision(ref: list[Detections], got: list[Detections]) -> tuple[float, float, int]:
    """Greedy one-to-one matching at IoU 0.5, same class; (recall, precision, reference boxes)."""
    tp = n_ref = n_got = 0
    for r, g in zip(ref, got):
        n_ref += len(r.boxes)
        n_got += len(g.boxes)
        iou = iou_matrix(r.boxes, g.boxes)
        iou[r.class_ids[:, None] != g.class_ids[None, :]] = 0.0
        for i in np.argsort(-r.scores):
            if iou.shape[1] and iou[i].max() >= 0.5:
                iou[:, int(np.argmax(iou[i]))] = -1.0  # each found box matches once
                tp += 1
    return tp / max(n_ref, 1), tp / max(n_got, 1), n_ref


def bench_agreement(models: dict[str, Any], info: ModelInfo, video: Path, threads: int,
                    every: int) -> dict[str, Any]:
    inputs = []
    with av.open(str(video)) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i % every:
                continue
            x, li = letterbox_av(vf, info.width, info.height)
            inputs.append((x[None].copy(), li))
    for photo in assets.fetch_photos(progress=False).values():
        with av.open(str(photo)) as c:
            rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
        x, li = letterbox_rgb(rgb, info.width, info.height)
        inputs.append((x[None].copy(), li))
    ref = detect_all(ort_runner(models["fp32"], info, threads), info, inputs, 0.25)
    out: dict[str, Any] = {"frames": len(inputs), "fp32_boxes": sum(len(d.boxes) for d in ref)}
    for variant in ("cpu", "tensorrt"):
        engines = {"onnxruntime": ort_runner(models[variant], info, threads),
                   "openvino": ov_runner(models[variant], threads)}
        if variant == "cpu":
            engines["openvino_bf16"] = ov_runner(models[variant], threads, precision="")
            # what the daemon runs: the derived graph, on OpenVINO and (as reference) ONNX Runtime
            with tempfile.TemporaryDirectory() as tmp:
                form = Path(tmp) / "ov-form.onnx"
                onnx.save(ov_form(models[variant]), str(form))
                s = __import__("onnxruntime").InferenceSession(str(form), providers=["CPUExecutionProvider"])
            engines["onnxruntime_ov_form"] = lambda x: s.run(info.output_names, {info.input_name: quantize_pixels(x)})
            engines["openvino_ov_form"] = ov_runner(ov_form(models[variant]), threads)
        dets = {}
        for name, run in engines.items():
            got = detect_all(run, info, inputs, 0.25)
            low = detect_all(run, info, inputs, 0.01)
            r, p, _ = recall_precision(ref, got)
            dets[name] = got
            out[f"{variant}/{name}"] = {"recall": r, "precision": p, "map50": map_at_50(ref, low).map50}
        for name in [k for k in dets if k != "onnxruntime"]:
            r, p, _ = recall_precision(dets["onnxruntime"], dets[name])
            out[f"{variant}/{name}_vs_onnxruntime"] = {"recall": r, "precision": p}
        if "openvino_ov_form" in dets:
            r, p, _ = recall_precision(dets["onnxruntime_ov_form"], dets["openvino_ov_form"])
            out[f"{variant}/openvino_ov_form_vs_onnxruntime_ov_form"] = {"recall": r, "precision": p}
    return out


# -- 5. overhead -------------------------------------------------------------------------------
def bench_overhead(info: ModelInfo, frames: list[av.VideoFrame], threads: int, fp32: Path,
                   rounds: int) -> dict[str, float]:
    buf = np.empty((3, info.height, info.width), np.float32)

    def old_letterbox(f: av.VideoFrame) -> None:  # a fresh SwsContext per frame (before)
        li = letterbox_params(f.width, f.height, info.width, info.height)
        rgb = f.reformat(width=li.new_w, height=li.new_h, format="rgb24",
                         interpolation=INTERPOLATION).to_ndarray()
        _fill(buf, li, rgb)

    run = ort_runner(fp32, info, threads)
    outs = [(run(letterbox_av(f, info.width, info.height)[0][None]), letterbox_av(f, 416, 416)[1])
            for f in frames]
    t = {"letterbox_per_frame_context": [], "letterbox": [], "decode_nms": []}  # type: dict[str, list[float]]
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in frames:
            old_letterbox(f)
        t1 = time.perf_counter()
        for f in frames:
            letterbox_av(f, info.width, info.height, out=buf)
        t2 = time.perf_counter()
        for o, li in outs:
            postprocess(o, [li], info.heads, 0.25, 0.45)
        t3 = time.perf_counter()
        n = len(frames)
        t["letterbox_per_frame_context"].append(1000 * (t1 - t0) / n)
        t["letterbox"].append(1000 * (t2 - t1) / n)
        t["decode_nms"].append(1000 * (t3 - t2) / n)
    return {k: float(np.median(v)) for k, v in t.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--stream-frames", type=int, default=120, help="frames per stream per run")
    ap.add_argument("--e2e-frames", type=int, default=250, help="daemon messages per e2e run")
    ap.add_argument("--every", type=int, default=1, help="agreement: every k-th demo frame")
    ap.add_argument("--sections", default="bare,e2e,streams,agreement,overhead")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "openvino.json"))
    args = ap.parse_args()
    sections = set(args.sections.split(","))

    import openvino as ov

    a = assets.fetch_model(progress=False)
    video = assets.fetch_demo_video(progress=False)
    fp32 = fp32_model(ModelConfig(), progress=False)
    info = ModelInfo.from_onnx(fp32)
    models: dict[str, Any] = {"fp32": fp32}
    for variant in ("cpu", "tensorrt"):  # built once by the daemon's own code, then cached
        models[variant] = Path(ensure_int8_model(fp32, CalibrationConfig(), target=variant))
    frames = decoded_frames(video, args.frames)
    doc: dict[str, Any] = {"benchmark": "openvino",
                           "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
                           "openvino": ov.get_version(), "threads": args.threads,
                           "models": {k: Path(v).name for k, v in models.items()}}
    prev = Path(args.json)
    if prev.is_file():  # a run of some sections keeps the others' results
        doc = {**json.loads(prev.read_text()), **doc}
    if "bare" in sections:
        doc["bare"] = bench_bare(models, info, frames, a, args.threads, args.rounds)
        pretty = {"ort_fp32": "ONNX Runtime FP32",
                  "ov_int8": "OpenVINO INT8 (as the daemon runs it)",
                  "ov_int8_f32_input": "OpenVINO INT8, float input", "ort_int8_cpu": "ONNX Runtime INT8 (cpu variant)",
                  "ort_int8_sym": "ONNX Runtime INT8 symmetric", "ov_fp32": "OpenVINO FP32",
                  "ov_int8_sym": "OpenVINO INT8 symmetric", "ov_int8_cpu": "OpenVINO INT8 (cpu variant)",
                  "ov_int8_cpu_bf16": "OpenVINO INT8 cpu, bf16 default",
                  "ov_int8_sym_no_route_qdq": "OpenVINO INT8 sym, no route Q/DQ",
                  "opencv_darknet": "OpenCV DNN Darknet"}
        doc["throughput"] = [{"name": pretty[k], "fps": 1000 / v,
                              "rounds": [1000 / x for x in doc["bare"]["rounds_ms"][k]]}
                             for k, v in doc["bare"]["ms"].items()]
    if "e2e" in sections:
        doc["e2e"] = bench_e2e(video, a, args.threads, args.rounds, models, info, frames, args.e2e_frames)
    if "streams" in sections:
        doc["streams"] = bench_streams(video, args.threads, args.rounds, args.streams, args.stream_frames)
    if "agreement" in sections:
        doc["agreement"] = bench_agreement(models, info, video, args.threads, args.every)
    if "overhead" in sections:
        doc["overhead_ms"] = bench_overhead(info, frames, args.threads, fp32, args.rounds)
    for section in ("bare", "e2e", "streams", "agreement", "overhead_ms"):
        if section.split("_")[0] in sections:  # how each section's figures were made
            doc.setdefault("commands", {})[section] = "bench/bench_openvino.py " + " ".join(sys.argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: doc[k] for k in ("bare", "e2e", "streams", "agreement", "overhead_ms") if k in doc},
                     indent=1)[:6000])
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
