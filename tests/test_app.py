"""The daemon's other paths: the pipelined (GPU-style) backend path, and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon.backends.onnxruntime import OnnxRuntimeBackend
from daemon.config import parse_config
from daemon.models.info import ModelInfo
from daemon.vision.letterbox import letterbox_av, letterbox_rgb
from tests.harness import ROOT, free_port


class StandInPipelinedBackend:
    """TEST DOUBLE standing in for the TensorRT backend, which cannot run here: the same
    ``submit_yuv``/``collect`` ticket interface, the inference done by ONNX Runtime on the CPU.
    Like the real one it copies the frames at submit (so the daemon may release them) and
    computes later; tickets are checked to come back in order, each with its own frames."""

    name = "tensorrt-standin"
    precision = "fp32"

    def __init__(self, model: Path, info: ModelInfo, max_batch: int) -> None:
        self.ort = OnnxRuntimeBackend(model, info.input_name, info.output_names, threads=2, max_batch=max_batch)
        self.info = info
        self.max_batch = max_batch
        self.tickets: dict[int, tuple[np.ndarray, list[Any]]] = {}
        self.next_ticket = 0
        self.collected: list[int] = []
        self.max_in_flight = 0

    def submit_yuv(self, frames: list[Any], infos: list[Any], tags: list[Any]) -> int:
        assert len(frames) <= self.max_batch
        # Like the real one: decoder frames, or RGB arrays (frames turned for display).
        x = np.stack([(letterbox_rgb if isinstance(f, np.ndarray) else letterbox_av)(
            f, self.info.width, self.info.height)[0] for f in frames])
        t = self.next_ticket
        self.next_ticket += 1
        self.tickets[t] = (x, list(tags))
        self.max_in_flight = max(self.max_in_flight, len(self.tickets))
        return t

    def collect(self, ticket: int) -> list[np.ndarray]:
        x, _tags = self.tickets.pop(ticket)
        self.collected.append(ticket)
        return self.ort.infer(x)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.ort.infer(batch)

    def close(self) -> None:
        pass


def _run_inprocess(cfg_dict: dict[str, Any], backend: Any, info: ModelInfo,
                   ran: list[Any] | None = None) -> list[dict[str, Any]]:
    """Run a Daemon in this process until its file streams end; the messages it published.
    ``ran`` receives the Daemon (to look at it afterwards)."""
    from daemon.app import Daemon

    cfg = parse_config(cfg_dict)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"detections/")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(cfg.publish.endpoint)
    msgs: list[dict[str, Any]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or sub.poll(200):
            if sub.poll(100):
                msgs.append(json.loads(sub.recv_multipart()[1]))

    t = threading.Thread(target=reader)
    t.start()
    monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    d = Daemon(cfg, backend=backend, info=info)
    if ran is not None:
        ran.append(d)
    try:
        d.start()
        # ZeroMQ's slow joiner: wait until the SUB has completed its handshake with the PUB (a
        # fixed sleep was too short on a loaded machine), then a moment for the subscription
        # that follows it. File frames wait in their queues meanwhile, none is dropped.
        assert monitor.poll(30000), "the subscriber never connected"
        time.sleep(0.2)
        d.run_loop()
    finally:
        d.shutdown()
        done.set()
        t.join(10)
        sub.disable_monitor()
        monitor.close(0)
        sub.close(0)
        ctx.term()
    assert d.exit_code == 0
    return msgs


def _cfg(video: Path, max_batch: int) -> dict[str, Any]:
    return {"streams": [{"id": "a", "url": str(video)}, {"id": "b", "url": str(video)}],
            "model": {"max_batch": max_batch},
            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"}, "logging": {"status_interval": 0}}


def test_pipelined_backend_attributes_every_result_to_its_frame(fp32_onnx: Path, demo_clip: Path) -> None:
    """A 60-frame clip: attribution is checked per batch (20 batches of 3 with one in flight per
    run), so the demo's 250 frames proved nothing more, at four times the inference."""
    n = 60
    info = ModelInfo.from_onnx(fp32_onnx)
    ref_backend = OnnxRuntimeBackend(fp32_onnx, info.input_name, info.output_names, threads=2, max_batch=1)
    ref = _run_inprocess(_cfg(demo_clip, 1), ref_backend, info)
    stand_in = StandInPipelinedBackend(fp32_onnx, info, max_batch=3)
    got = _run_inprocess(_cfg(demo_clip, 3), stand_in, info)

    assert stand_in.max_in_flight == 2, "one batch must stay in flight while the previous is published"
    assert stand_in.collected == sorted(stand_in.collected)
    key = lambda m: (m["stream"], m["frame"])  # noqa: E731
    ref_by, got_by = {key(m): m for m in ref}, {key(m): m for m in got}
    # A SUB that connects while the PUB binds may miss the very first message (ZeroMQ's slow
    # joiner), so the reference may lack one; every message it has must match.
    assert len(got_by) == 2 * n and len(ref_by) == 2 * n
    # Batches of 3 vs 1 change float summation order in ORT: allow tiny numeric drift, and a
    # rare detection at the score threshold flipping; a result of the wrong frame would differ
    # in most of its boxes.
    flipped = 0
    for k, m in ref_by.items():
        a = sorted((d["label"], d["box"]) for d in m["detections"])
        b = sorted((d["label"], d["box"]) for d in got_by[k]["detections"])
        same = len(a) == len(b) and all(la == lb and np.allclose(ba, bb, atol=0.5)
                                        for (la, ba), (lb, bb) in zip(a, b))
        flipped += not same
    assert flipped <= 3, f"{flipped} frames differ"
    for sid in ("a", "b"):  # per-stream seq contiguous, in frame order
        pairs = [(m["seq"], m["frame"]) for m in got if m["stream"] == sid]
        assert pairs == [(i, i) for i in range(n)]


def test_completion_driven_collection_publishes_every_result_in_order(fp32_onnx: Path, demo_video: Path) -> None:
    """OpenVINO reports completion (backends/base.py CompletionSource): the loop is woken by it
    and collects ready jobs; every frame's result is still published once, in order."""
    pytest.importorskip("openvino")
    from daemon.backends.openvino import OpenVinoBackend

    info = ModelInfo.from_onnx(fp32_onnx)
    backend = OpenVinoBackend(fp32_onnx, info.input_name, info.output_names, threads=2, max_batch=2,
                              in_flight=3)
    calls: list[int] = []
    ready = backend.ready
    backend.ready = lambda t: calls.append(1) or ready(t)  # type: ignore[method-assign]
    ran: list[Any] = []
    got = _run_inprocess(_cfg(demo_video, 2), backend, info, ran)
    assert ran[0].pipeline.completes and calls, "the completion path was not taken"
    assert len({(m["stream"], m["frame"]) for m in got}) == 500
    for sid in ("a", "b"):  # per-stream seq contiguous, in frame order
        pairs = [(m["seq"], m["frame"]) for m in got if m["stream"] == sid]
        assert pairs == [(i, i) for i in range(250)]


def test_pipelined_backend_sees_a_phone_video_as_displayed(fp32_onnx: Path) -> None:
    """Rotated frames take the RGB route of submit_yuv (the YUV kernel reads planes as stored)."""
    data = Path(__file__).parent / "data"
    info = ModelInfo.from_onnx(fp32_onnx)
    cfg = _cfg(data / "rotated_phone.mp4", 2)
    cfg["streams"] = [{"id": "phone", "url": str(data / "rotated_phone.mp4")},
                      {"id": "upright", "url": str(data / "rotated_upright.mp4")}]
    got = _run_inprocess(cfg, StandInPipelinedBackend(fp32_onnx, info, max_batch=2), info)
    by = {(m["stream"], m["frame"]): m for m in got}
    assert len(by) == 10
    for i in range(5):
        p, u = by[("phone", i)], by[("upright", i)]
        assert (p["width"], p["height"]) == (u["width"], u["height"]) == (540, 720)
        labels = sorted(d["label"] for d in p["detections"])
        assert labels == sorted(d["label"] for d in u["detections"])
        assert labels.count("person") == 4 and labels.count("bus") == 1, labels


def test_exit_status_1_when_every_stream_failed(tmp_path: Path, fp32_onnx: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"streams:\n  - {{id: gone, url: {tmp_path / 'missing.mp4'}}}\n"
        f"publish: {{endpoint: 'tcp://127.0.0.1:{free_port()}'}}\n"
        f"metrics: {{listen: '127.0.0.1:{free_port()}'}}\n")
    r = subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "every stream failed (gone)" in r.stderr
