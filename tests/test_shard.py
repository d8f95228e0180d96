"""Shards: rendezvous hashing on the stream id (daemon/shard.py), the CLI and check-config, and
real daemon processes splitting one stream list (3 instances, then 4) on a real MQTT broker."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.publish.mqtt_config import default_client_id
from daemon.shard import ShardConfig, assignment, owner, parse_shard
from tests.harness import ROOT, free_port
from tests.mqtt_broker import Collector, Mosquitto, have_mosquitto
from tests.support.prometheus import PromAPI, start_prometheus

IDS = [f"cam-{i:04d}" for i in range(2000)]


def test_every_stream_has_one_owner_and_the_shares_are_even() -> None:
    for n in (1, 2, 3, 5, 8):
        table = assignment(IDS, n)
        assert sorted(s for v in table.values() for s in v) == sorted(IDS)
        for i, mine in table.items():
            # 2000 ids: a binomial share has sd ~ sqrt(2000 p (1-p)) <= 23; 5 sd is generous
            # but would catch a hash that favours a shard.
            assert abs(len(mine) - 2000 / n) < 5 * (2000 * (1 / n) * (1 - 1 / n)) ** 0.5 + 1, (n, i, len(mine))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_adding_an_instance_moves_only_what_the_new_shard_takes(n: int) -> None:
    before = {s: owner(s, n) for s in IDS}
    after = {s: owner(s, n + 1) for s in IDS}
    moved = [s for s in IDS if before[s] != after[s]]
    assert all(after[s] == n for s in moved), "a stream moved between old shards"
    expected = 2000 / (n + 1)
    assert abs(len(moved) - expected) < 5 * (2000 * (1 / (n + 1)) * (n / (n + 1))) ** 0.5, len(moved)
    # And back: removing the last instance moves exactly its streams.
    assert [s for s in IDS if after[s] == n] == moved


def test_owner_is_stable_across_processes() -> None:
    """Python's hash() is salted per process; the shard function must not be."""
    code = "from daemon.shard import owner; print([owner(f'cam{i}', 5) for i in range(50)])"
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert outs == {str([owner(f"cam{i}", 5) for i in range(50)]) + "\n"}


def test_parse_and_validate() -> None:
    assert parse_shard("2/3") == ShardConfig(index=2, count=3)
    for bad in ("3/3", "1", "a/3", "-1/3", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def _config(tmp_path: Path, video: Path, name: str = "c.yaml", **extra: Any) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"streams": [{"id": f"cam{i}", "url": str(video)} for i in range(6)], **extra}))
    return p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_check_config_prints_what_a_shard_serves(tmp_path: Path, demo_video: Path) -> None:
    ids = [f"cam{i}" for i in range(6)]
    table = assignment(ids, 3)
    r = _cli("check-config", "-c", str(_config(tmp_path, demo_video)), "--shard", "1/3")
    assert r.returncode == 0, r.stderr
    assert f"shard 1/3 serves {len(table[1])} of 6 streams: {', '.join(table[1])}" in r.stdout
    r = _cli("check-config", "-c", str(_config(tmp_path, demo_video, shard={"index": 0, "count": 3})))
    assert r.returncode == 0, r.stderr
    for i in range(3):
        assert f"shard {i}/3 serves {len(table[i])} of 6 streams" in r.stdout
    r = _cli("check-config", "-c", str(_config(tmp_path, demo_video, shard={"index": 3, "count": 3})))
    assert r.returncode == 2 and "shard.index: 3 must be below shard.count (3)" in r.stderr, r.stderr
    r = _cli("run", "-c", str(_config(tmp_path, demo_video)), "--shard", "5/2")
    assert r.returncode == 2 and "--shard '5/2'" in r.stderr, r.stderr


def _prometheus_sees_one_fleet(tmp_path: Path, ds: list[Any], ids: list[str]) -> None:
    """A real Prometheus scraping the instances: one shard each, every stream on one instance."""
    port = free_port()
    targets = [d.cfg["metrics"]["listen"] for d in ds]
    prom = start_prometheus(tmp_path, "prom", {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "detectd", "static_configs": [{"targets": targets}]}]}, port)
    try:
        api = PromAPI(f"http://127.0.0.1:{port}")
        want = {"shards": 3.0, "streams": float(len(ids)), "mqtt": 3.0}
        got: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and got != want:
            try:
                got = {k: float(r[0]["value"][1]) if (r := api.query(q)) else -1.0 for k, q in (
                    ("shards", 'count(detectd_shard_info{count="3"})'),
                    ("streams", "sum(detectd_shard_streams)"),
                    ("mqtt", "sum(detectd_mqtt_connected)"))}
            except OSError:
                pass
            time.sleep(0.5)
        assert got == want
        per_stream = api.query("count by (stream) (detectd_stream_up)")
        assert {r["metric"]["stream"]: r["value"][1] for r in per_stream} == {s: "1" for s in ids}
    finally:
        prom.terminate()
        prom.wait(10)


def _served(d: Any) -> set[str]:
    """The streams an instance serves, from its /metrics (the series of removed streams go)."""
    return set(re.findall(r'^detectd_stream_up\{stream="([^"]+)"\}', d.scrape(), re.M))


@pytest.mark.skipif(not have_mosquitto(), reason="needs mosquitto (.ci/apt-packages.txt)")
def test_three_instances_serve_every_stream_once_then_four(run_daemon: Any, demo_video: Path,
                                                           tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    col = Collector(broker.port, ["detectd/detections/+", "detectd/availability/+"])
    try:
        ids = [f"cam{i}" for i in range(6)]
        streams = [{"id": s, "url": str(demo_video), "realtime": True, "loop": True} for s in ids]
        mq = {"host": "127.0.0.1", "port": broker.port}
        ds = [run_daemon(streams, wait=False, shard={"index": i, "count": 3}, mqtt=mq,
                         model={"threads": 1}) for i in range(3)]
        for d in ds:
            d.wait_ready(120)
        three = assignment(ids, 3)
        for i, d in enumerate(ds):
            assert _served(d) == set(three[i]), d.log()[-3000:]
            text = d.scrape()
            assert f'detectd_shard_info{{count="3",index="{i}"}} 1.0' in text
            assert f"detectd_shard_streams {float(len(three[i]))}" in text
        # On the broker: every stream's detections, each stream from one instance only (per
        # stream, seq is one contiguous run from 0: two publishers would repeat numbers).
        assert col.wait_for(lambda ms: {t.rsplit("/", 1)[1] for t, _p, _r in ms
                                        if "/detections/" in t} == set(ids), 120), col.topics_seen()
        for d in ds:
            d.collect(0.3)
        by_instance = [{t.split("/")[1] for t, _p in d.messages if t.startswith("detections/")} for d in ds]
        assert [b <= set(three[i]) for i, b in enumerate(by_instance)] == [True] * 3
        avail = {t for t in col.topics_seen() if "/availability/" in t}
        assert len(avail) == 3, avail  # three client ids: detectd-<host>-<i>
        for sid in ids:
            seqs = [p["seq"] for p in col.json(f"detectd/detections/{sid}")]
            assert len(seqs) == len(set(seqs)), f"{sid} published twice"
        if shutil.which("prometheus") is not None:
            _prometheus_sees_one_fleet(tmp_path, ds, ids)

        # 3 -> 4: every instance re-reads count: 4 (SIGHUP), a fourth starts.
        four = assignment(ids, 4)
        moved = {s for s in ids if owner(s, 3) != owner(s, 4)}
        assert moved == set(four[3])
        for i, d in enumerate(ds):
            d.cfg["shard"] = {"index": i, "count": 4}
            d.write_config()
            d.signal(signal.SIGHUP)
        ds.append(run_daemon(streams, wait=False, shard={"index": 3, "count": 4}, mqtt=mq,
                             model={"threads": 1}))
        ds[3].wait_ready(120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [_served(d) for d in ds] != [set(four[i]) for i in range(4)]:
            time.sleep(0.2)
        assert [_served(d) for d in ds] == [set(four[i]) for i in range(4)]
        for i, d in enumerate(ds[:3]):
            log = d.log()
            gone = sorted(set(three[i]) - set(four[i]))
            assert f"reload: streams added none, removed {gone or 'none'}, restarted none" in log, log[-2000:]
        # What a client connecting now learns: every stream's retained state comes from its
        # owner under count 4 (the moved ones from the fourth instance), none says stopped; the
        # client ids (and availability topics) did not change with the count.
        want = {sid: default_client_id(owner(sid, 4)) for sid in ids}

        def latest(ms: list[tuple[str, bytes, bool]]) -> dict[str, tuple[str, str]]:
            last = {t.rsplit("/", 1)[1]: json.loads(p) for t, p, _r in ms}
            return {sid: (p.get("instance", "?"), p["state"]) for sid, p in last.items()}

        late = Collector(broker.port, ["detectd/state/+"])
        try:
            ok = late.wait_for(lambda ms: latest(ms) == {sid: (want[sid], "up") for sid in ids}, 30)
            with late.lock:
                assert ok, latest(list(late.messages))
        finally:
            late.close()
        avail = {t for t in col.topics_seen() if "/availability/" in t}
        assert avail == {f"detectd/availability/{default_client_id(i)}" for i in range(4)}, avail
        # ZeroMQ (one socket per instance) tells a moved stream's subscribers why it stopped there.
        d0 = ds[owner(sorted(moved)[0], 3)]
        d0.collect(0.3)
        last_words = [p for t, p in d0.messages if t == f"events/{sorted(moved)[0]}/" and p.get("state") == "stopped"]
        assert last_words and last_words[-1]["reason"] == "moved to another shard", last_words
    finally:
        col.close()
        broker.stop()
