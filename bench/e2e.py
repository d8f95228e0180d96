"""End-to-end throughput of the daemon vs. a bare ONNX Runtime session vs. OpenCV DNN.

Measured side by side in one run (machines here are shared and noisy, so only the ratios mean
much), each on the same demo frames with the same number of threads:

- bare ORT: ``session.run`` alone on pre-letterboxed frames (the ceiling for any pipeline);
- daemon: a real ``detectd run`` process on the demo file with ``realtime: false``, frames/s
  measured by a ZeroMQ subscriber from the first to the last published message;
- OpenCV DNN (``readNetFromDarknet``, what many users run today): blobFromImage + forward + its
  own [yolo] decode + NMSBoxes per frame.
- per-frame overhead other than decoding and the inference call (letterbox from the decoded
  frame, YOLO decode + NMS, JSON + ZeroMQ send), at 640x360, in-process.

    .venv/bin/python bench/e2e.py [--threads 2] [--rounds 2] [--json bench/results/e2e.json]
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

import av
import numpy as np
import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import ModelConfig  # noqa: E402
from daemon.frames import Frame, FrameResult  # noqa: E402
from daemon.metrics import Metrics  # noqa: E402
from daemon.models import assets  # noqa: E402
from daemon.models.info import ModelInfo  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.publish.publisher import Publisher  # noqa: E402
from daemon.vision.letterbox import letterbox_av  # noqa: E402
from daemon.vision.yolo import postprocess  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decoded_frames(video: Path, n: int, size: tuple[int, int] | None = None) -> list[av.VideoFrame]:
    out = []
    with av.open(str(video)) as c:
        for vf in c.decode(video=0):
            out.append(vf.reformat(width=size[0], height=size[1], format="yuv420p") if size else vf)
            if len(out) >= n:
                break
    return out


def bench_bare_ort(model: Path, info: ModelInfo, frames: list[av.VideoFrame], threads: int) -> float:
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon's backend
    s = ort.InferenceSession(str(model), o, providers=["CPUExecutionProvider"])
    xs = [letterbox_av(f, info.width, info.height)[0][None] for f in frames]
    s.run(info.output_names, {info.input_name: xs[0]})
    t0 = time.perf_counter()
    for x in xs:
        s.run(info.output_names, {info.input_name: x})
    return len(xs) / (time.perf_counter() - t0)


STAGE_LOG: dict[str, dict[str, float]] = {}
STAGE_QUANTILES: dict[str, dict[str, dict[str, float]]] = {}
CURRENT = ["fp32"]


def scrape_stages(url: str) -> dict[str, float]:
    """Mean per-frame milliseconds of each stage, from the daemon's own histograms."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    buckets: dict[str, list[tuple[float, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "detectd_stage_seconds_bucket":
                buckets.setdefault(smp.labels["stage"], []).append((float(smp.labels["le"]), smp.value))
            elif smp.name == "detectd_stage_seconds_sum":
                sums[smp.labels["stage"]] = smp.value
            elif smp.name == "detectd_stage_seconds_count":
                counts[smp.labels["stage"]] = smp.value
    for stage, bs in buckets.items():  # histogram_quantile, as PromQL computes it
        bs.sort()
        total = bs[-1][1]
        q = {}
        for name, phi in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            rank, lo, prev = phi * total, 0.0, 0.0
            for le, c in bs:
                if c >= rank and total:
                    hi = le if le != float("inf") else lo
                    q[name] = 1000 * (lo + (hi - lo) * ((rank - prev) / (c - prev) if c > prev else 1.0))
                    break
                lo, prev = le, c
        STAGE_QUANTILES.setdefault(CURRENT[0], {})[stage] = q
    return {k: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}


def bench_daemon(video: Path, threads: int, precision: str = "fp32", *, root: Path = ROOT,
                 backend: str = "onnxruntime", cpu: list[float] | None = None) -> float:
    """Frames/s of ``detectd run`` from the source tree ``root`` (bench/bench_ab_trees.py
    compares two trees). ``cpu`` receives the daemon's CPU seconds (user + system, all threads)
    per frame between the 5th and the 250th message: steadier than wall time on a busy machine."""
    with tempfile.TemporaryDirectory() as tmp:
        ep = f"tcp://127.0.0.1:{free_port()}"
        cfg = {"streams": [{"id": "bench", "url": str(video)}],
               "model": {"backend": backend, "threads": threads, "precision": precision},
               "publish": {"endpoint": ep}, "metrics": {"listen": f"127.0.0.1:{free_port()}"},
               "logging": {"status_interval": 0, "level": "warning"}}
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"detections/")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(ep)
        cfg["shutdown"] = {"drain_timeout": 5}
        cfg["streams"][0]["loop"] = True  # stopped by us after 250 frames, to scrape first
        path.write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=root,
                                env={**os.environ, "PYTHONPATH": str(root)})
        times = []
        cpu_at: list[float] = []
        while proc.poll() is None or sub.poll(0):
            if sub.poll(200):
                sub.recv_multipart()
                times.append(time.perf_counter())
                if len(times) in (5, 250) and proc.poll() is None:
                    cpu_at.append(process_cpu_seconds(proc.pid))
                if len(times) == 250:
                    CURRENT[0] = precision
                    STAGE_LOG[precision] = scrape_stages(f"http://{cfg['metrics']['listen']}/metrics")
                    proc.terminate()
        sub.close(0)
        ctx.term()
        if proc.returncode != 0 or len(times) < 10:
            raise RuntimeError(f"daemon failed: rc={proc.returncode}, {len(times)} messages")
        if cpu is not None and len(cpu_at) == 2:
            cpu.append((cpu_at[1] - cpu_at[0]) / 245)
        # Skip the first few frames (model warm, frame threads spinning up).
        return (len(times) - 5) / (times[-1] - times[4])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_opencv(cfg: Path, weights: Path, frames: list[av.VideoFrame], threads: int) -> float:
    import cv2

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    outs = net.getUnconnectedOutLayersNames()
    imgs = [f.to_ndarray(format="bgr24") for f in frames]

    over = {"preprocess": 0.0, "postprocess": 0.0}

    def one(img: np.ndarray) -> None:
        h, w = img.shape[:2]
        t0 = time.perf_counter()
        net.setInput(cv2.dnn.blobFromImage(img, 1 / 255.0, (416, 416), swapRB=True, crop=False))
        t1 = time.perf_counter()
        forward = net.forward(outs)
        t2 = time.perf_counter()
        rows = np.concatenate(forward)
        scores = rows[:, 5:]
        cid = scores.argmax(1)
        conf = scores[np.arange(len(rows)), cid]
        keep = conf > 0.25
        b = rows[keep, :4] * [w, h, w, h]
        boxes = np.c_[b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 2], b[:, 3]]
        cv2.dnn.NMSBoxes(boxes.tolist(), conf[keep].tolist(), 0.25, 0.45)
        over["preprocess"] += t1 - t0
        over["postprocess"] += time.perf_counter() - t2

    one(imgs[0])
    over["preprocess"] = over["postprocess"] = 0.0
    t0 = time.perf_counter()
    for img in imgs:
        one(img)
    fps = len(imgs) / (time.perf_counter() - t0)
    STAGE_LOG["opencv"] = {k: 1000 * v / len(imgs) for k, v in over.items()}
    return fps


def bench_overhead(model: Path, info: ModelInfo, frames: list[av.VideoFrame]) -> dict[str, float]:
    """Per-frame milliseconds of everything but decode and the inference call, at 640x360."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    buf = np.empty((1, 3, info.height, info.width), np.float32)
    outputs = []
    infos = []
    for f in frames:
        _, li = letterbox_av(f, info.width, info.height, out=buf[0])
        outputs.append(s.run(info.output_names, {info.input_name: buf}))
        infos.append(li)
    m = Metrics()
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", m)
    model_desc = {"name": "yolov3-tiny", "precision": "fp32", "backend": "onnxruntime"}
    t = {"preprocess": 0.0, "postprocess": 0.0, "publish": 0.0}
    reps = 3
    for _ in range(reps):
        for f, out, li in zip(frames, outputs, infos):
            t0 = time.perf_counter()
            letterbox_av(f, info.width, info.height, out=buf[0])
            t1 = time.perf_counter()
            dets = postprocess(out, [li], info.heads, 0.25, 0.45)[0]
            t2 = time.perf_counter()
            fr = Frame("bench", 0, f.width, f.height, f.time, time.time(), time.monotonic())
            pub.publish_result(FrameResult(fr, dets), info.labels, model_desc)
            t3 = time.perf_counter()
            t["preprocess"] += t1 - t0
            t["postprocess"] += t2 - t1
            t["publish"] += t3 - t2
    pub.close()
    n = reps * len(frames)
    res = {k: 1000 * v / n for k, v in t.items()}
    res["total"] = sum(res.values())
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "e2e.json"))
    args = ap.parse_args()

    a = assets.fetch_model(progress=False)
    video = assets.fetch_demo_video(progress=False)
    model = fp32_model(ModelConfig(), progress=False)
    info = ModelInfo.from_onnx(model)
    frames = decoded_frames(video, args.frames)
    frames360 = decoded_frames(video, args.frames, (640, 360))

    from daemon.config import CalibrationConfig
    from daemon.quant.ensure import ensure_int8_model

    int8_model = ensure_int8_model(model, CalibrationConfig(), target="cpu")  # cached after first
    rows: dict[str, list[float]] = {"bare_ort": [], "daemon": [], "opencv": [], "bare_ort_int8": [],
                                    "daemon_int8": []}
    for r in range(args.rounds):  # interleaved rounds: drift on a shared machine hits all alike
        rows["bare_ort"].append(bench_bare_ort(model, info, frames, args.threads))
        rows["daemon"].append(bench_daemon(video, args.threads))
        rows["opencv"].append(bench_opencv(a.cfg, a.weights, frames, args.threads))
        rows["bare_ort_int8"].append(bench_bare_ort(int8_model, info, frames, args.threads))
        rows["daemon_int8"].append(bench_daemon(video, args.threads, "int8"))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} fps" for k, v in rows.items()), flush=True)
    fps = {k: float(np.median(v)) for k, v in rows.items()}
    over = bench_overhead(model, info, frames360)

    print(f"\nmachine: {platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    print(f"threads: {args.threads}; frames: demo video 640x272 ({args.frames} for bare ORT/OpenCV, all 250 for the daemon)")
    print(f"{'pipeline':<34}{'frames/s':>10}{'vs bare ORT':>14}")
    for k, label in (("bare_ort", "bare ONNX Runtime session.run"), ("daemon", "detectd end to end (fp32)"),
                     ("opencv", "OpenCV DNN Darknet (+decode/NMS)"),
                     ("bare_ort_int8", "bare ONNX Runtime, INT8 (cpu Q/DQ)"),
                     ("daemon_int8", "detectd end to end (int8)")):
        print(f"{label:<34}{fps[k]:>10.1f}{fps[k] / fps['bare_ort']:>13.2f}x")
    print(f"\nINT8 vs FP32: bare ORT {fps['bare_ort_int8'] / fps['bare_ort']:.2f}x frames/s, "
          f"daemon {fps['daemon_int8'] / fps['daemon']:.2f}x frames/s; "
          f"daemon INT8 vs bare ORT INT8 {fps['daemon_int8'] / fps['bare_ort_int8']:.2f}x")
    print("\nper-frame overhead besides decode and inference, 640x360, in-process (ms):")
    for k, v in over.items():
        print(f"  {k:<12}{v:7.3f}")
    for name, stages in STAGE_LOG.items():
        other = sum(v for k, v in stages.items() if k not in ("decode", "infer"))
        print(f"{name}: mean ms per frame from its own timers (last round, 640x272): "
              + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f"; besides decode+infer {other:.2f}")
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "threads": args.threads,
           "fps": fps, "rounds": rows, "ratio_daemon_vs_bare": fps["daemon"] / fps["bare_ort"],
           "ratio_opencv_vs_bare": fps["opencv"] / fps["bare_ort"],
           "ratio_daemon_int8_vs_fp32": fps["daemon_int8"] / fps["daemon"],
           "throughput": [{"name": k, "fps": v, "rounds": rows[k]} for k, v in fps.items()], "overhead_ms_640x360": over,
           # per-stage latency distribution (ms) from the daemon's own histograms, for plots.py
           "stages": {k: {q: v / 1000 for q, v in d.items()} for k, d in STAGE_QUANTILES.get("fp32", {}).items()},
           "stage_quantiles_ms": STAGE_QUANTILES,
           "stage_means_ms": STAGE_LOG}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
