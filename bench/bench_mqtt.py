"""The MQTT sink's cost and its accounting across a broker restart, on real processes.

1. Throughput: frames/s of a real ``detectd run`` (the demo video looped as fast as the model
   goes, ONNX Runtime) with ZeroMQ only, with MQTT at QoS 0 and with MQTT at QoS 1, a real
   mosquitto and a subscriber reading everything. Interleaved rounds (zmq, qos0, qos1, zmq, ...)
   in one run, so the machine's load hits all alike; each round measures the growth of
   ``detectd_frames_published_total`` over a window after warm-up. The figure is the ratio of
   the medians (goal: QoS 0 >= 0.95x ZeroMQ only), and the median of each round's own ratio.
   Whole-daemon frames/s on a shared machine is noisy, so the bench also measures in one
   process what the pipeline thread pays per frame (``FanOut.publish_result``) with and without
   MQTT, interleaved, and reports the throughput ratio that cost implies at the measured frame
   rate; and per round the daemon's frames per CPU-second (psutil), whose ratio is the work the
   sink adds, little affected by other processes.
2. Losses across a broker restart at QoS 1 (a persistent subscriber session on a persisting
   broker, so the broker itself loses nothing on a clean stop): the broker is stopped under load
   for ``--outage`` seconds and started again. Per case, the messages the subscriber missed
   (gaps in ``seq``) against ``detectd_mqtt_messages_dropped_total``: the default buffer (nothing
   dropped), a buffer of 5 messages (drops, every one counted), and a SIGKILL of the broker
   (whatever the broker acknowledged but had not saved is lost beyond the daemon's view; shown).

    python bench/bench_mqtt.py [--rounds 6] [--window 10] [--outage 6]

Writes bench/results/bench_mqtt.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import DaemonProcess  # noqa: E402  (the one daemon-process harness)
from tests.mqtt_broker import Collector, Mosquitto  # noqa: E402


def scrape_sum(d: DaemonProcess, name: str) -> float:
    total = 0.0
    for line in d.scrape().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start(tmp: Path, name: str, video: Path, **sections: Any) -> DaemonProcess:
    return DaemonProcess(tmp, [{"id": "cam1", "url": str(video), "loop": True}], name=name,
                         subscribe=b"events/", **sections).start(180)


def pid(d: DaemonProcess) -> int:
    assert d.proc is not None, "started by start()"
    return d.proc.pid


def throughput_round(tmp: Path, kind: str, video: Path, broker: Mosquitto, warmup: float,
                     window: float, i: int) -> dict[str, Any]:
    mq: dict[str, Any] = {}
    col = None
    if kind != "zmq":
        mq = {"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 0 if kind == "qos0" else 1,
                       "client_id": f"bench-{kind}-{i}", "topic_prefix": f"bench{i}{kind}"}}
        col = Collector(broker.port, [f"bench{i}{kind}/detections/#"], qos=1)
    d = start(tmp, f"{kind}-{i}", video, model={"backend": "onnxruntime", "threads": 2}, **mq)
    import psutil

    proc = psutil.Process(pid(d))
    try:
        time.sleep(warmup)
        n0, t0, c0 = scrape_sum(d, "detectd_frames_published_total"), time.monotonic(), proc.cpu_times()
        time.sleep(window)
        n1, t1, c1 = scrape_sum(d, "detectd_frames_published_total"), time.monotonic(), proc.cpu_times()
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        # Frames per CPU-second of the daemon: what the sinks cost in work, much less sensitive
        # than frames/s to what other processes do to the machine meanwhile.
        out: dict[str, Any] = {"kind": kind, "round": i, "fps": (n1 - n0) / (t1 - t0),
                               "frames_per_cpu_second": (n1 - n0) / cpu if cpu > 0 else 0.0,
                               "frames": n1 - n0, "cpu_seconds": cpu}
        if col is not None:
            out["mqtt_published"] = scrape_sum(d, "detectd_mqtt_messages_published_total")
            out["mqtt_dropped"] = scrape_sum(d, "detectd_mqtt_messages_dropped_total")
    finally:
        d.close()
        if col is not None:
            time.sleep(0.5)
            with col.lock:
                out["subscriber_received"] = sum(1 for t, _p, _r in col.messages if "/detections/" in t)
            col.close()
    print(json.dumps(out), flush=True)
    return out


def sink_cost(broker: Mosquitto, rounds: int, n: int) -> dict[str, Any]:
    """In one process: seconds per ``FanOut.publish_result`` call (what the pipeline thread pays per
    frame) with ZeroMQ only, ZeroMQ + MQTT QoS 0 and ZeroMQ + MQTT QoS 1; interleaved rounds, a
    subscriber on each transport reading everything, real payloads (8 boxes)."""
    import threading

    import numpy as np
    import zmq
    from prometheus_client import CollectorRegistry

    from daemon.frames import Detections, Frame, FrameResult
    from daemon.metrics import Metrics
    from daemon.publish.mqtt import MqttSink
    from daemon.publish.mqtt_config import MqttConfig
    from daemon.publish.publisher import Publisher
    from daemon.publish.sink import FanOut

    labels, model = ["person", "bicycle", "car"], {"name": "yolov3-tiny", "precision": "fp32", "backend": "onnxruntime"}
    boxes = np.tile(np.array([[10.0, 20.0, 110.0, 220.0]]), (8, 1))

    def result(i: int) -> FrameResult:
        frame = Frame(stream="cam", index=i, width=640, height=272, pts=i / 25, captured_at=time.time(),
                      t_decoded=time.monotonic())
        return FrameResult(frame, Detections(boxes, np.full(8, 0.5), np.arange(8) % 3))

    per_call: dict[str, list[float]] = {"zmq": [], "qos0": [], "qos1": []}
    for r in range(rounds):
        for kind in per_call:
            ctx = zmq.Context()
            m = Metrics(CollectorRegistry())
            pub = Publisher("tcp://127.0.0.1:0", m, context=ctx)
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(pub.endpoint)
            stop = threading.Event()

            def reader() -> None:
                while not stop.is_set():
                    if sub.poll(50):
                        sub.recv_multipart()

            t = threading.Thread(target=reader, daemon=True)
            t.start()
            sinks: list[Any] = [pub]
            col = None
            if kind != "zmq":
                cfg = MqttConfig(host="127.0.0.1", port=broker.port, qos=0 if kind == "qos0" else 1,
                                 topic_prefix=f"cost{r}{kind}")
                sinks.append(MqttSink(cfg, m, client_id=f"cost-{r}-{kind}"))
                col = Collector(broker.port, [f"cost{r}{kind}/detections/#"], qos=1)
                while sinks[1].problem() is not None:
                    time.sleep(0.05)
            fan = FanOut(sinks)
            fan.add_stream("cam")
            time.sleep(0.3)  # ZeroMQ's slow joiner
            times = []
            for i in range(n):
                res = result(i)
                t0 = time.perf_counter()
                fan.publish_result(res, labels, model)
                times.append(time.perf_counter() - t0)
                if i % 50 == 0:
                    fan.flush_events()
            fan.close()
            stop.set()
            t.join()
            sub.close(0)
            ctx.term()
            if col is not None:
                col.close()
            per_call[kind].append(statistics.median(times))
    med = {k: statistics.median(v) for k, v in per_call.items()}
    return {"messages_per_round": n, "rounds": rounds, "median_seconds_per_call": med,
            "mqtt_extra_us_qos0": (med["qos0"] - med["zmq"]) * 1e6,
            "mqtt_extra_us_qos1": (med["qos1"] - med["zmq"]) * 1e6}


def readyz(d: DaemonProcess) -> int:
    try:
        with urllib.request.urlopen(d.metrics_url + "/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def restart_case(tmp: Path, video: Path, name: str, buffer: int | None, kill: bool,
                 outage: float) -> dict[str, Any]:
    broker = Mosquitto(tmp / f"broker-{name}", persistence=True).start()
    col = Collector(broker.port, ["detectd/detections/cam1"], qos=1, client_id=f"watch-{name}",
                    clean_session=False)
    mq: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "qos": 1, "reconnect_min": 0.2,
                          "reconnect_max": 1.0}
    if buffer is not None:
        mq["buffer"] = buffer
    d = start(tmp, f"restart-{name}", video, mqtt=mq, model={"backend": "onnxruntime", "threads": 2})
    try:
        time.sleep(5)
        if kill:
            broker.kill()
        else:
            broker.stop()
        t_down = time.monotonic()
        time.sleep(outage)
        broker.start()
        while readyz(d) != 200 and time.monotonic() - t_down < outage + 60:
            time.sleep(0.1)
        reconnect_s = time.monotonic() - t_down - outage
        time.sleep(5)  # resends, the buffer and the broker's queue for the watcher drain
        dropped = {r: scrape_sum(d, f'detectd_mqtt_messages_dropped_total{{reason="{r}"}}')
                   for r in ("buffer_full", "connection_lost", "shutdown")}
        seqs = [p["seq"] for p in col.json("detectd/detections/cam1")]
        top = max(seqs)
        out = {"case": name, "broker_stop": "SIGKILL" if kill else "SIGTERM", "buffer": buffer or 10000,
               "outage_s": outage, "reconnected_after_s": round(reconnect_s, 2),
               "sent_up_to_seq": top, "received_distinct": len(set(seqs)),
               "duplicates": len(seqs) - len(set(seqs)), "missed": top + 1 - len(set(seqs)),
               "counted_dropped": dropped, "counted_total": sum(dropped.values()),
               "daemon_restarted": d.proc is not None and d.proc.poll() is not None}
    finally:
        d.close()
        col.close()
        broker.stop()
    print(json.dumps(out), flush=True)
    return out


def paired(rounds: list[dict[str, Any]], kind: str, key: str = "fps") -> float:
    zmq = {r["round"]: r[key] for r in rounds if r["kind"] == "zmq"}
    return statistics.median(r[key] / zmq[r["round"]] for r in rounds if r["kind"] == kind)


def pooled_cpu_ratio(rounds: list[dict[str, Any]], kind: str) -> float:
    """Frames per CPU-second of ``kind`` over all its rounds together, over the same for ZeroMQ
    only: every frame weighs the same, so a short or disturbed round cannot swing the figure."""
    def rate(k: str) -> float:
        rs = [r for r in rounds if r["kind"] == k]
        return sum(r["frames"] for r in rs) / sum(r["cpu_seconds"] for r in rs)
    return rate(kind) / rate("zmq")


def spread(rounds: list[dict[str, Any]], kind: str, key: str) -> dict[str, float]:
    """The per-round ratios of ``kind`` to the same round's ZeroMQ: min, max, and (max-min)/median."""
    zmq = {r["round"]: r[key] for r in rounds if r["kind"] == "zmq"}
    xs = [r[key] / zmq[r["round"]] for r in rounds if r["kind"] == kind]
    return {"min": min(xs), "max": max(xs), "relative": (max(xs) - min(xs)) / statistics.median(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=float, default=5.0)
    # Long windows: at a few frames/s a 10 s window holds ~50 frames and the CPU ratio's round
    # spread exceeded 5 %; 30 s windows and the pooled ratio below are the headline now.
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--outage", type=float, default=6.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_mqtt.json"))
    args = ap.parse_args()
    from daemon.models import assets

    video = assets.fetch_demo_video(progress=False)
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as t:
        tmp = Path(t)
        broker = Mosquitto(tmp / "broker").start()
        rounds = []
        try:
            cost = sink_cost(broker, 5, 2000)
            print(json.dumps(cost), flush=True)
            for i in range(args.rounds):
                for kind in ("zmq", "qos0", "qos1"):
                    rounds.append(throughput_round(tmp, kind, video, broker, args.warmup, args.window, i))
        finally:
            broker.stop()
        med = {k: statistics.median(r["fps"] for r in rounds if r["kind"] == k) for k in ("zmq", "qos0", "qos1")}
        restarts = [restart_case(tmp, video, "default-buffer", None, False, args.outage),
                    restart_case(tmp, video, "buffer-5", 5, False, args.outage),
                    restart_case(tmp, video, "broker-sigkill", None, True, args.outage)]
    result = {
        "what": "detectd frames/s with MQTT on vs ZeroMQ only (interleaved rounds), and QoS 1 losses "
                "across a broker restart, counted vs missed by a persistent subscriber",
        "cpu_count": os.cpu_count(), "rounds": rounds,
        "median_fps": med,
        "ratio_qos0_vs_zmq": med["qos0"] / med["zmq"], "ratio_qos1_vs_zmq": med["qos1"] / med["zmq"],
        # Each round's MQTT figure over the ZeroMQ figure of the same round (neighbours in time,
        # so a load change between rounds cancels), then the median over rounds.
        "paired_ratio_qos0": paired(rounds, "qos0"), "paired_ratio_qos1": paired(rounds, "qos1"),
        "cpu_ratio_qos0": paired(rounds, "qos0", "frames_per_cpu_second"),
        "cpu_ratio_qos1": paired(rounds, "qos1", "frames_per_cpu_second"),
        # The headline: frames per CPU-second pooled over all rounds (goal: QoS 0 >= 0.95x), and
        # how far single rounds spread.
        "pooled_cpu_ratio_qos0": pooled_cpu_ratio(rounds, "qos0"),
        "pooled_cpu_ratio_qos1": pooled_cpu_ratio(rounds, "qos1"),
        "cpu_ratio_spread_qos0": spread(rounds, "qos0", "frames_per_cpu_second"),
        "cpu_ratio_spread_qos1": spread(rounds, "qos1", "frames_per_cpu_second"),
        "restarts": restarts,
        "sink_cost": cost,
        # What the MQTT sink adds per frame, as a share of the frame time measured above: the
        # throughput ratio it implies on this machine, free of the round-to-round load noise.
        "implied_ratio_qos0": 1 / (1 + cost["mqtt_extra_us_qos0"] * 1e-6 * med["zmq"]),
        "implied_ratio_qos1": 1 / (1 + cost["mqtt_extra_us_qos1"] * 1e-6 * med["zmq"]),
        "command": "python bench/bench_mqtt.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_fps", "ratio_qos0_vs_zmq", "ratio_qos1_vs_zmq",
                                             "paired_ratio_qos0", "paired_ratio_qos1", "cpu_ratio_qos0", "cpu_ratio_qos1", "pooled_cpu_ratio_qos0",
                                             "pooled_cpu_ratio_qos1", "cpu_ratio_spread_qos0", "sink_cost",
                                             "implied_ratio_qos0", "implied_ratio_qos1")}, indent=2))
    for r in restarts:
        print(f"{r['case']}: missed {r['missed']}, counted {r['counted_total']}, duplicates {r['duplicates']}")


if __name__ == "__main__":
    main()
