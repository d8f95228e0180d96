"""Analytics figures (issue 14): line counts, tracking quality and cost, on videos whose answers
are known by construction (tests/analytics_scenes.py) and on the demo video counted by hand.

1. Accuracy. Each constructed scene is rendered (H.264, PyAV), the real model (YOLOv3-Tiny FP32,
   ONNX Runtime) detects every frame once, and detectd's analytics (ByteTrack + zones + lines,
   daemon/analytics/) runs over the frames that a stream would process:
   ``full`` (every frame), ``half`` (only every 2nd frame), ``quarter`` (only every 4th) and
   ``uneven`` (gaps of 1 to 4 frames at random, seeded: what superseded-frame drops look like).
   Scenes: tests/analytics_scenes.py, plus ``overtake`` defined here (built after the second
   session's linking changes and run once as their held-out check; docs/analytics.md). Each
   result says which changes its scene was held out for (``held_out_for``, from HELD_OUT); the
   figures are the current code's, which includes later changes derived from those scenes.
   The "before" (first session's code) figures of docs/analytics.md were measured once by
   running that code and are not produced here.
   Reported: line crossings against the truth (per line and direction: counted, true, exact),
   zone dwell error, and CLEAR-MOT (MOTA, IDSW; Bernardin & Stiefelhagen 2008) and IDF1 (Ristani
   et al. 2016) against the true tracks, IoU >= 0.5, computed by ``trackers.eval`` (a port of
   TrackEval). Truth boxes less than 25 % visible are left out; tracker boxes of persons
   standing inside the bus cut-out (the photo has people in front of the bus) are ignored, as
   MOTChallenge ignores distractors.
2. The demo video (bikes.mp4) with a line across the road, against the hand count in
   docs/analytics.md.
3. Cost: frames/s of the per-frame pipeline (decode -> letterbox -> infer -> postprocess) on 8
   streams with tracking + 4 zones + 4 lines against tracking off, modes interleaved round by
   round in one run (the machine is shared: only the ratio means something).

    .venv/bin/python bench/bench_analytics.py [--rounds 3] [--frames 48] [--json bench/results/analytics.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.analytics.config import AnalyticsConfig  # noqa: E402
from daemon.analytics.state import StreamAnalytics  # noqa: E402
from daemon.config import ModelConfig  # noqa: E402
from daemon.detector import Detector  # noqa: E402
from daemon.frames import Detections, Frame  # noqa: E402
from daemon.models.assets import cache_dir, fetch_demo_video  # noqa: E402
from tests.analytics_scenes import (HELD_OUT, SCENES, Mover, Scene, render, true_boxes,  # noqa: E402
                                    true_crossings, true_zone_stays)


def overtake_scene() -> Scene:
    """Built after the velocity-gated linking and the linked-track height check (second
    session) and run once as their held-out check (docs/analytics.md): a quick person overtakes
    a slow one in front of it while both cross two lines walking left, a bus drives right in
    front of their legs and of a third person walking away across a horizontal line, and a
    fourth walks towards the camera across another."""
    w, h = 640, 360
    return Scene(
        "overtake", w, h, 25, 200,
        (
            Mover("slow", "walker", (58, 176), (620.0, 240.0), (-20.0, 240.0), 0, 110),
            Mover("quick", "coach", (106, 176), (700.0, 252.0), (-60.0, 252.0), 20, 100),
            Mover("leaver", "coach", (80, 230), (150.0, 350.0), (200.0, 200.0), 40, 150, end_size=(50, 140)),
            Mover("comer", "walker", (36, 110), (520.0, 170.0), (480.0, 350.0), 30, 140, end_size=(80, 240)),
            Mover("bus", "bus", (280, 160), (-300.0, 358.0), (900.0, 358.0), 60, 170),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "v", "points": [[0.45, 0.25], [0.45, 0.8]], "labels": ["person"]},
                {"name": "w", "points": [[0.2, 0.25], [0.2, 0.8]], "labels": ["person"]},
                {"name": "h", "points": [[0.05, 0.75], [0.6, 0.75]], "labels": ["person"]},
                {"name": "h2", "points": [[0.6, 0.62], [0.95, 0.62]], "labels": ["person"]},
                {"name": "road", "points": [[0.7, 0.85], [0.7, 1.0]], "labels": ["bus"]},
            ],
        },
    )


# Scenes of this benchmark only, each built after a change to the counting and run once as its
# held-out check (so not in tests/analytics_scenes.py, whose scenes the counting was developed on).
CHECK_SCENES = {"overtake": overtake_scene}



class Model:
    def __init__(self) -> None:
        self.detector = Detector.open(ModelConfig(backend="onnxruntime", threads=2), progress=False)
        self.info = self.detector.info

    def detect(self, vf: Any) -> Detections:
        return self.detector.detect([vf])[0]


def detect_video(model: Model, path: Path) -> tuple[list[Detections], int, int, float]:
    dets = []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        fps = float(st.average_rate or 25)
        for vf in c.decode(st):
            dets.append(model.detect(vf))
            w, h = vf.width, vf.height
    return dets, w, h, fps


def keep_frames(n: int, mode: str) -> list[int]:
    if mode == "full":
        return list(range(n))
    if mode == "half":
        return list(range(0, n, 2))
    if mode == "quarter":
        return list(range(0, n, 4))
    rng = np.random.default_rng(14)
    out, f = [], 0
    while f < n:
        out.append(f)
        f += int(rng.integers(1, 5))
    return out


def run_analytics(sid: str, acfg: dict[str, Any], labels: list[str], dets: list[Detections], frames: list[int],
                  w: int, h: int, fps: float) -> tuple[list[dict[str, Any]], dict[int, Detections]]:
    an = StreamAnalytics(sid, AnalyticsConfig.model_validate(acfg), labels)
    events: list[dict[str, Any]] = []
    tracked: dict[int, Detections] = {}
    t0 = time.time()
    for f in frames:
        d = Detections(dets[f].boxes.copy(), dets[f].scores.copy(), dets[f].class_ids.copy())
        fr = Frame(sid, f, w, h, f / fps, t0 + f / fps, time.monotonic())
        events += an.update(fr, d)
        tracked[f] = d
    events += an.close()
    return events, tracked


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def tracking_quality(scene: Scene, tracked: dict[int, Detections], labels: list[str]) -> dict[str, Any]:
    from trackers.eval import compute_clear_metrics, compute_identity_metrics

    gt_index: dict[str, int] = {}
    tr_index: dict[int, int] = {}
    gt_ids, tr_ids, sims = [], [], []
    for f, d in sorted(tracked.items()):
        truth = true_boxes(scene, f)
        gb = np.array([t[2] for t in truth], np.float64).reshape(-1, 4)
        ok = d.track_ids >= 0  # type: ignore[operator]
        tb = d.boxes[ok].astype(np.float64)
        tid = d.track_ids[ok]  # type: ignore[index]
        names = [labels[c] for c in d.class_ids[ok].tolist()]
        bus = scene_bus_box(scene, f)
        if bus is not None and len(tb):  # distractors: the people photographed in front of the bus
            inside = _ioa(tb, bus) > 0.5
            keep = ~(inside & np.array([n != "bus" for n in names]))
            tb, tid = tb[keep], tid[keep]
        gt_ids.append(np.array([gt_index.setdefault(t[0], len(gt_index)) for t in truth], np.int64))
        tr_ids.append(np.array([tr_index.setdefault(int(i), len(tr_index)) for i in tid.tolist()], np.int64))
        sims.append(_iou(gb, tb))
    clear = compute_clear_metrics(gt_ids, tr_ids, sims, 0.5)
    ident = compute_identity_metrics(gt_ids, tr_ids, sims, 0.5)
    return {"MOTA": round(float(clear["MOTA"]), 4), "IDF1": round(float(ident["IDF1"]), 4),
            "IDSW": int(clear["IDSW"]), "TP": int(clear["CLR_TP"]), "FN": int(clear["CLR_FN"]),
            "FP": int(clear["CLR_FP"]), "true_tracks": len(gt_index), "tracks": len(tr_index)}


def scene_bus_box(scene: Scene, f: int) -> np.ndarray | None:
    for m in scene.movers:
        if m.kind == "bus" and m.box(f) is not None:
            return np.array(m.box(f), np.float64)
    return None


def _ioa(boxes: np.ndarray, region: np.ndarray) -> np.ndarray:
    x1 = np.maximum(boxes[:, 0], region[0])
    y1 = np.maximum(boxes[:, 1], region[1])
    x2 = np.minimum(boxes[:, 2], region[2])
    y2 = np.minimum(boxes[:, 3], region[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)


def crossing_report(truth: list[dict[str, Any]], events: list[dict[str, Any]], fps: float) -> dict[str, Any]:
    keys = sorted({(t["line"], t["direction"]) for t in truth} | {(e["line"], e["direction"]) for e in events
                                                                   if e["event"] == "line_cross"})
    per: dict[str, dict[str, Any]] = {}
    for line, direction in keys:
        tr = [t for t in truth if (t["line"], t["direction"]) == (line, direction)]
        ev = [e for e in events if e["event"] == "line_cross" and (e["line"], e["direction"]) == (line, direction)]
        per[f"{line}/{direction}"] = {"true": len(tr), "counted": len(ev),
                                      "true_frames": [t["frame"] for t in tr], "frames": [e["frame"] for e in ev]}
    true_n = len(truth)
    counted = sum(v["counted"] for v in per.values())
    exact = all(v["true"] == v["counted"] for v in per.values())
    err = sum(abs(v["true"] - v["counted"]) for v in per.values())
    return {"exact": exact, "true": true_n, "counted": counted, "abs_error": err,
            "error_pct": round(100.0 * err / max(true_n, 1), 1), "per_line": per}


def dwell_report(scene: Scene, events: list[dict[str, Any]]) -> dict[str, Any]:
    stays = true_zone_stays(scene)
    exits = [e for e in events if e["event"] == "zone_exit"]
    errs = []
    for s in stays:
        cands = [e for e in exits if e["zone"] == s["zone"] and e["label"] == s["label"]]
        if cands:
            best = min(cands, key=lambda e: abs(e["frame"] - s["exit"]) + abs(e["dwell_seconds"] - s["dwell_seconds"]))
            errs.append(abs(best["dwell_seconds"] - s["dwell_seconds"]))
    return {"true_stays": len(stays), "exits": len(exits),
            "entries": sum(1 for e in events if e["event"] == "zone_enter"),
            "dwell_abs_error_s_median": round(statistics.median(errs), 3) if errs else None,
            "dwell_abs_error_s_max": round(max(errs), 3) if errs else None}


def accuracy(model: Model, out_dir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, make in {**SCENES, **CHECK_SCENES}.items():
        scene = make()
        path = render(scene, out_dir / f"{name}.mp4")
        dets, w, h, fps = detect_video(model, path)
        truth = true_crossings(scene)
        res[name] = {}
        for mode in ("full", "half", "quarter", "uneven"):
            frames = keep_frames(len(dets), mode)
            events, tracked = run_analytics(name, scene.analytics, model.info.labels, dets, frames, w, h, fps)
            res[name][mode] = {"frames": len(frames), "crossings": crossing_report(truth, events, fps),
                               "zones": dwell_report(scene, events),
                               "tracking": tracking_quality(scene, tracked, model.info.labels)}
            # The same without linking identity switches (tracker.stitch false), for comparison.
            plain = {**scene.analytics, "tracker": {**scene.analytics.get("tracker", {}), "stitch": False}}
            ev0, _ = run_analytics(name, plain, model.info.labels, dets, frames, w, h, fps)
            c0 = crossing_report(truth, ev0, fps)
            res[name][mode]["crossings_without_stitch"] = {k: c0[k] for k in ("exact", "counted", "abs_error", "error_pct")}
            # The changes this scene was a held-out check for; these figures come from later code
            # (see HELD_OUT), so none of them is a held-out figure of the current code.
            res[name][mode]["held_out_for"] = list(HELD_OUT.get(name, ()))
            r = res[name][mode]
            print(f"{name:9s} {mode:8s} crossings {r['crossings']['counted']}/{r['crossings']['true']} "
                  f"exact={r['crossings']['exact']} MOTA {r['tracking']['MOTA']:.3f} IDF1 {r['tracking']['IDF1']:.3f} "
                  f"IDSW {r['tracking']['IDSW']} dwell err med {r['zones']['dwell_abs_error_s_median']} "
                  f"(without stitch {c0['counted']}, error {c0['error_pct']} %)", flush=True)
    return res


def bikes(model: Model) -> dict[str, Any]:
    path = fetch_demo_video(progress=False)
    dets, w, h, fps = detect_video(model, path)
    hand = json.loads((ROOT / "bench" / "bikes_hand_count.json").read_text())
    first, last = hand["shot"]
    acfg = {"tracker": {}, "lines": hand["lines"]}
    res = {}
    for mode in ("full", "half", "quarter", "uneven"):
        frames = [first + f for f in keep_frames(last - first + 1, mode)]
        events, _ = run_analytics("bikes", acfg, model.info.labels, dets, frames, w, h, fps)
        cross = [e for e in events if e["event"] == "line_cross"]
        got = {ln["name"]: {d: sum(1 for e in cross if e["line"] == ln["name"] and e["direction"] == d)
                            for d in ("in", "out")} for ln in hand["lines"]}
        res[mode] = {"counted": got, "hand": hand["counts"], "exact": got == hand["counts"],
                     "events": [(e["line"], e["frame"], e["direction"], e["label"], e["track_id"]) for e in cross]}
        print(f"bikes     {mode:8s} counted {got} by hand {hand['counts']} {res[mode]['events']}", flush=True)
    return res


def cost(model: Model, rounds: int, frames: int, streams: int = 8) -> dict[str, Any]:
    """Frames/s of decode -> letterbox -> infer -> postprocess [-> analytics] over ``streams``
    decoders of one constructed scene, round-robin; modes interleaved per round."""
    scene = SCENES["crossing"]()
    path = render(scene, cache_dir() / "bench-analytics" / "crossing.mp4")
    acfg = AnalyticsConfig.model_validate(scene.analytics)
    assert len(acfg.zones) == 4 and len(acfg.lines) == 4

    def one(mode: str) -> tuple[float, float]:
        conts = [av.open(str(path)) for _ in range(streams)]
        decs = [c.decode(video=0) for c in conts]
        ans = [StreamAnalytics(f"s{i}", acfg, model.info.labels) for i in range(streams)] if mode == "on" else None
        t_an = 0.0
        t0 = time.perf_counter()
        n = 0
        for k in range(frames):
            i = k % streams
            vf = next(decs[i])
            d = model.detect(vf)
            if ans is not None:
                ta = time.perf_counter()
                ans[i].update(Frame(f"s{i}", k // streams, vf.width, vf.height, vf.time, time.time(), time.monotonic()), d)
                t_an += time.perf_counter() - ta
            n += 1
        dt = time.perf_counter() - t0
        for c in conts:
            c.close()
        return n / dt, t_an / n

    one("on")  # warm-up: imports the tracker library, fills caches
    off, on, per = [], [], []
    for _ in range(rounds):
        off.append(one("off")[0])
        fps_on, t_an = one("on")
        on.append(fps_on)
        per.append(t_an)
    ratio = [b / a for a, b in zip(off, on)]
    res = {"streams": streams, "zones": 4, "lines": 4, "frames_per_round": frames, "rounds": rounds,
           "fps_off": [round(v, 2) for v in off], "fps_on": [round(v, 2) for v in on],
           "ratio_per_round": [round(v, 4) for v in ratio], "ratio_median": round(statistics.median(ratio), 4),
           "analytics_ms_per_frame_median": round(1000 * statistics.median(per), 3)}
    print(f"cost: off {res['fps_off']} on {res['fps_on']} ratio median {res['ratio_median']} "
          f"(analytics {res['analytics_ms_per_frame_median']} ms/frame)", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=48, help="frames per round and mode in the cost run")
    ap.add_argument("--skip", action="append", default=[], choices=["accuracy", "bikes", "cost"],
                    help="leave a part out (its figures already in --json are kept)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "analytics.json"))
    args = ap.parse_args()
    model = Model()
    old = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    out: dict[str, Any] = {k: old[k] for k in args.skip if k in old}  # a skipped part keeps its last figures
    out |= {"machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
                           "model": "yolov3-tiny fp32, onnxruntime, conf 0.25, nms 0.45"}
    if "accuracy" not in args.skip:
        out["accuracy"] = accuracy(model, cache_dir() / "bench-analytics")
    if "bikes" not in args.skip:
        out["bikes"] = bikes(model)
    if "cost" not in args.skip:
        out["cost"] = cost(model, args.rounds, args.frames)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
