"""The daemon end to end: a real process, real video through PyAV, real ZeroMQ, real HTTP scrapes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import av
import numpy as np

from tests.support.messages import detections_of, events_of, iou, sample

CONTRACT_METRICS = [
    "detectd_frames_decoded_total", "detectd_frames_published_total", "detectd_frames_dropped_total",
    "detectd_stage_seconds_bucket", "detectd_frame_latency_seconds_bucket", "detectd_stream_up",
    "detectd_stream_reconnects_total", "detectd_build_info",
]


def test_file_every_frame_published_once_then_exit_0(run_daemon: Any, demo_video: Path) -> None:
    with av.open(str(demo_video)) as c:
        n_frames = sum(1 for _ in c.decode(video=0))
    d = run_daemon([{"id": "cam1", "url": str(demo_video)}], wait=False)
    rc = d.collect_until_exit(180)
    assert rc == 0, d.log()
    dets = detections_of(d.messages, "cam1")
    assert [m["seq"] for m in dets] == list(range(n_frames))
    assert [m["frame"] for m in dets] == list(range(n_frames))
    m0 = dets[0]
    assert m0["v"] == 1 and m0["stream"] == "cam1" and (m0["width"], m0["height"]) == (640, 272)
    assert m0["model"] == {"name": m0["model"]["name"], "precision": "fp32", "backend": "onnxruntime"}
    assert all(m["published_at"] >= m["captured_at"] for m in dets)
    assert all(m["pts"] is not None for m in dets)
    labels = {d["label"] for m in dets for d in m["detections"]}
    assert {"car", "person", "bicycle"} <= labels, labels
    for m in dets:
        for det in m["detections"]:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 272
            assert 0.25 < det["score"] <= 1
    ev = [e["event"] for e in events_of(d.messages, "cam1")]
    assert ev[0] == "up" and ev[-1] == "ended", ev


def test_metrics_contract_and_health(run_daemon: Any, demo_video: Path) -> None:
    d = run_daemon([{"id": "cam1", "url": str(demo_video), "loop": True, "realtime": True}])
    d.collect(3)
    text = d.scrape()
    for name in CONTRACT_METRICS:
        assert name in text, name
    assert sample(text, "detectd_frames_decoded_total", stream="cam1") > 0
    assert sample(text, "detectd_frames_published_total", stream="cam1") > 0
    assert sample(text, "detectd_stream_up", stream="cam1") == 1
    for stage in ("decode", "preprocess", "infer", "postprocess", "publish"):
        assert sample(text, "detectd_stage_seconds_count", stage=stage) > 0, stage
    assert sample(text, "detectd_build_info", backend="onnxruntime", precision="fp32") == 1
    import urllib.request

    assert urllib.request.urlopen(d.metrics_url + "/healthz").status == 200
    assert urllib.request.urlopen(d.metrics_url + "/readyz").status == 200
    # SIGTERM drains and exits 0.
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_subscription_prefix_isolates_streams(run_daemon: Any, demo_clip: Path) -> None:
    """The 60-frame clip: isolation holds per message, the full demo proved nothing more."""
    streams = [{"id": "cam1", "url": str(demo_clip)}, {"id": "cam10", "url": str(demo_clip)}]
    d = run_daemon(streams, subscribe=b"detections/cam1/", wait=False)
    assert d.collect_until_exit(240) == 0
    assert {t for t, _ in d.messages} == {"detections/cam1/"}
    assert len(d.messages) == 60


def test_skip_empty(run_daemon: Any, demo_video: Path) -> None:
    d = run_daemon([{"id": "cam1", "url": str(demo_video)}], wait=False,
                   publish={"skip_empty": True})
    assert d.collect_until_exit(180) == 0
    dets = detections_of(d.messages, "cam1")
    assert dets and all(m["detections"] for m in dets)


def _letterbox_cv2(rgb: np.ndarray, size: int = 416) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    s = min(size / w, size / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    out = np.full((size, size, 3), 0.5, np.float32)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py:py + nh, px:px + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR) / 255.0
    return out.transpose(2, 0, 1)[None].copy()


def test_published_detections_match_opencv_darknet_frame_by_frame(
        run_daemon: Any, demo_video: Path, model_assets: Any) -> None:
    """The daemon's messages vs. an independent YOLOv3-Tiny (OpenCV's Darknet importer, its own
    resize and its own [yolo] decode) on the same decoded frames. Confident detections (score
    >= 0.5) of either side must be found by the other (same label, IoU >= 0.7); resizers differ,
    so borderline scores may flip and are excluded by the margin."""
    import cv2

    d = run_daemon([{"id": "cam1", "url": str(demo_video)}], wait=False)
    assert d.collect_until_exit(180) == 0
    dets = {m["frame"]: m["detections"] for m in detections_of(d.messages, "cam1")}
    net = cv2.dnn.readNetFromDarknet(str(model_assets.cfg), str(model_assets.weights))
    names = model_assets.names.read_text().split("\n")
    out_names = net.getUnconnectedOutLayersNames()
    checked = missing = 0
    with av.open(str(demo_video)) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i % 2:
                continue
            rgb = vf.to_ndarray(format="rgb24")
            net.setInput(_letterbox_cv2(rgb))
            rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in net.forward(out_names)])
            h, w = rgb.shape[:2]
            s = min(416 / w, 416 / h)
            px, py = (416 - round(w * s)) // 2, (416 - round(h * s)) // 2
            scores = rows[:, 5:]
            ri, ci = np.nonzero(scores > 0.25)
            cx, cy, bw, bh = (rows[ri, k] * 416 for k in range(4))
            boxes = np.stack([(cx - bw / 2 - px) / s, (cy - bh / 2 - py) / s,
                              (cx + bw / 2 - px) / s, (cy + bh / 2 - py) / s], 1)
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            # OpenCV's own per-class NMS: nothing of the daemon's post-processing is reused here.
            xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
            keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores[ri, ci].tolist(),
                                                      ci.tolist(), 0.25, 0.45), int).reshape(-1)
            ref = [(names[ci[k]], float(scores[ri[k], ci[k]]), boxes[k].tolist()) for k in keep]
            ours = [(x["label"], x["score"], x["box"]) for x in dets[i]]
            for a_list, b_list in ((ref, ours), (ours, ref)):
                for label, score, box in a_list:
                    if score < 0.5:
                        continue
                    checked += 1
                    if not any(l2 == label and iou(box, b2) >= 0.7 for l2, _, b2 in b_list):
                        missing += 1
    assert checked > 80
    assert missing <= 0.03 * checked, f"{missing} of {checked} confident detections unmatched"
