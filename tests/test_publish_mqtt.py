"""The MQTT sink against a real broker (Debian's mosquitto) and real daemon processes.

Topics and payloads (the ZeroMQ schema v1, checked against the JSON schemas), the retained state
and availability a late client gets, the last will after SIGKILL, a broker restart under load
(reconnect without a daemon restart; every message the subscriber misses is counted), wrong
credentials (a clear error naming the keys, never the password), TLS with a throw-away CA.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from tests.harness import ROOT, DaemonProcess, detectd_command
from tests.mqtt_broker import Collector, Mosquitto, have_mosquitto

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="needs mosquitto (.ci/apt-packages.txt)")

SCHEMAS = Path(__file__).resolve().parent.parent / "daemon" / "publish" / "schemas"


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Any]:
    started: list[Mosquitto] = []

    def start(**kw: Any) -> Mosquitto:
        b = Mosquitto(tmp_path / f"broker{len(started)}", **kw).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def collectors() -> Iterator[Any]:
    made: list[Collector] = []

    def make(port: int, topics: list[str], **kw: Any) -> Collector:
        c = Collector(port, topics, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def stream(sid: str, video: Path) -> dict[str, Any]:
    return {"id": sid, "url": str(video), "realtime": True, "loop": True}


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in a Prometheus text scrape."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def readyz(d: Any) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(d.metrics_url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait(pred: Any, timeout: float, what: str, d: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}" + (f"\n{d.log()[-4000:]}" if d else ""))


def test_topics_payloads_and_retained_state(run_daemon: Any, demo_video: Path, brokers: Any,
                                            collectors: Any) -> None:
    b = brokers()
    col = collectors(b.port, ["dtest/#"])
    d = run_daemon([stream("cam1", demo_video), stream("cam2", demo_video)],
                   mqtt={"host": "127.0.0.1", "port": b.port, "topic_prefix": "dtest",
                         "client_id": "det-a"})
    wait(lambda: len(col.json("dtest/detections/cam2")) >= 3 and len(col.json("dtest/detections/cam1")) >= 3,
         60, "detections of both streams on MQTT", d)
    d.collect(0.5)
    det_schema = json.loads((SCHEMAS / "detections.v1.json").read_text())
    ev_schema = json.loads((SCHEMAS / "events.v1.json").read_text())
    for sid in ("cam1", "cam2"):
        dets = col.json(f"dtest/detections/{sid}")
        for p in dets:
            jsonschema.validate(p, det_schema)
            assert p["stream"] == sid
        seqs = [p["seq"] for p in dets]
        assert seqs == list(range(len(seqs))), "per-stream seq from 0, no gap"
    # The same message, field for field, as on ZeroMQ (one schema for both transports).
    zmq_det = next(p for t, p in d.messages if t == "detections/cam1/")
    assert set(zmq_det) == set(col.json("dtest/detections/cam1")[0])
    events = col.json("dtest/events/cam1")
    assert any(e["event"] == "up" for e in events), events
    for e in events + col.json("dtest/state/"):
        jsonschema.validate(e, ev_schema)
    # Per-message topics are never retained; state and availability are.
    with col.lock:
        flags = {(t.split("/")[1], r) for t, _p, r in col.messages}
    assert ("detections", True) not in flags and ("events", True) not in flags

    late = collectors(b.port, ["dtest/#"])
    assert late.wait_for(lambda ms: {t for t, _p, r in ms if r} >= {
        "dtest/state/cam1", "dtest/state/cam2", "dtest/availability/det-a"}, 10)
    with late.lock:
        retained = {t: json.loads(p) if t.split("/")[1] == "state" else p.decode()
                    for t, p, r in late.messages if r}
    assert set(retained) == {"dtest/state/cam1", "dtest/state/cam2", "dtest/availability/det-a"}
    assert retained["dtest/availability/det-a"] == "online"
    assert retained["dtest/state/cam1"]["state"] == "up" and retained["dtest/state/cam1"]["event"] == "state"
    # Who sent it: the instance (its client id) and its shard (additive schema v1 fields).
    assert retained["dtest/state/cam1"]["instance"] == "det-a"
    assert retained["dtest/state/cam1"]["shard"] == {"index": 0, "count": 1}

    # A clean stop: every retained state says stopped, availability offline.
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    after = collectors(b.port, ["dtest/state/+", "dtest/availability/+"])
    assert after.wait_for(lambda ms: len(ms) >= 3, 10)
    with after.lock:
        final = {t: p for t, p, _r in after.messages}
    assert final["dtest/availability/det-a"] == b"offline"
    assert json.loads(final["dtest/state/cam1"])["state"] == "stopped"
    assert json.loads(final["dtest/state/cam1"])["reason"] == "detectd stopped"


def _retained_state(port: int, collectors: Any, sid: str) -> Any:
    """What a client that connects now gets on ``detectd/state/<sid>`` (the retained value)."""
    late = collectors(port, [f"detectd/state/{sid}"])
    assert late.wait_for(lambda ms: any(r for _t, _p, r in ms), 10), "no retained state"
    with late.lock:
        return json.loads(next(p for _t, p, r in late.messages if r))


def test_a_stream_taken_over_keeps_its_new_owners_state(run_daemon: Any, demo_video: Path, brokers: Any,
                                                        collectors: Any) -> None:
    """The Kubernetes order of a rescale: the new owner of a stream starts first, the old one
    stops after (its pod rolls). The old one's goodbye must not leave ``stopped`` on the
    stream's retained state; a ``stopped`` from another instance that arrives late anyway (its
    goodbye crossed the new owner's ``up``) makes the owner publish its state again."""
    b = brokers()
    old = run_daemon([stream("cam1", demo_video)],
                     mqtt={"host": "127.0.0.1", "port": b.port, "client_id": "det-old"})
    col = collectors(b.port, ["detectd/state/cam1"])
    assert col.wait_for(lambda ms: any(json.loads(p).get("instance") == "det-old" and
                                       json.loads(p)["state"] == "up" for _t, p, _r in ms), 60)
    new = run_daemon([stream("cam1", demo_video)],
                     mqtt={"host": "127.0.0.1", "port": b.port, "client_id": "det-new"})
    assert col.wait_for(lambda ms: any(json.loads(p).get("instance") == "det-new" and
                                       json.loads(p)["state"] == "up" for _t, p, _r in ms), 60), new.log()
    old.signal(signal.SIGTERM)
    assert old.proc.wait(30) == 0
    time.sleep(0.5)  # a late goodbye, if any, and the owner's answer to it
    st = _retained_state(b.port, collectors, "cam1")
    assert (st["instance"], st["state"]) == ("det-new", "up"), st
    avail = collectors(b.port, ["detectd/availability/+"])
    assert avail.wait_for(lambda ms: {(t, p) for t, p, _r in ms} >= {
        ("detectd/availability/det-old", b"offline"), ("detectd/availability/det-new", b"online")}, 10)

    # Another instance's stopped lands after the owner's up (a goodbye that crossed it): the
    # owner sees it on its state subscription and writes its own state again.
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    stale = {**st, "instance": "det-gone", "state": "stopped", "reason": "detectd stopped"}
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="stale-goodbye")
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    c.publish("detectd/state/cam1", json.dumps(stale), qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = _retained_state(b.port, collectors, "cam1")
        if st["instance"] == "det-new":
            break
        time.sleep(0.2)
    assert (st["instance"], st["state"]) == ("det-new", "up"), st
    new.signal(signal.SIGTERM)  # the owner's own goodbye still says stopped
    assert new.proc.wait(30) == 0
    st = _retained_state(b.port, collectors, "cam1")
    assert (st["instance"], st["state"], st["reason"]) == ("det-new", "stopped", "detectd stopped"), st


def test_sigkill_shows_offline_through_the_last_will(run_daemon: Any, demo_video: Path, brokers: Any,
                                                     collectors: Any) -> None:
    b = brokers()
    d = run_daemon([stream("cam1", demo_video)],
                   mqtt={"host": "127.0.0.1", "port": b.port, "client_id": "det-k", "keepalive": 5})
    col = collectors(b.port, ["detectd/availability/det-k"])
    assert col.wait_for(lambda ms: ms and ms[-1][1] == b"online", 10)
    d.proc.kill()
    d.proc.wait(10)
    # The broker sees the socket close without DISCONNECT and publishes the will at once
    # (within 1.5 keepalives had the host vanished instead).
    assert col.wait_for(lambda ms: ms[-1][1] == b"offline", 10), col.messages
    late = collectors(b.port, ["detectd/availability/+"])
    assert late.wait_for(lambda ms: ms and ms[-1][1:] == (b"offline", True), 5), "retained will"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_broker_restart_reconnects_and_counts_every_loss(run_daemon: Any, demo_video: Path, brokers: Any,
                                                         collectors: Any, stop: str) -> None:
    """QoS 1 and a small buffer, so the outage overflows it: the subscriber (a persistent session
    on a persisting broker) misses exactly the messages the daemon counts as dropped."""
    b = brokers(persistence=True)
    col = collectors(b.port, ["detectd/detections/cam1"], qos=1, client_id="watcher", clean_session=False)
    d = run_daemon([stream("cam1", demo_video)],
                   mqtt={"host": "127.0.0.1", "port": b.port, "qos": 1, "buffer": 5,
                         "reconnect_min": 0.2, "reconnect_max": 1.0})
    pid = d.proc.pid
    wait(lambda: len(col.json("detectd/detections/cam1")) >= 5, 60, "first detections", d)
    if stop == "SIGTERM":
        b.stop()
    else:
        time.sleep(1.2)  # past mosquitto's autosave_interval: the session is on disk
        b.kill()
    # Not required for readiness (the default): reported, the instance stays ready.
    wait(lambda: "mqtt: not connected" in readyz(d)[1].get("sinks_problem", ""), 10,
         "/readyz names the broker outage", d)
    status, body = readyz(d)
    assert status == 200 and body["sinks_ok"] is True, body
    assert metric(d.scrape(), "detectd_mqtt_connected") == 0
    wait(lambda: metric(d.scrape(), "detectd_mqtt_messages_dropped_total") > 0, 30,
         "the buffer overflows during the outage", d)
    b.start()
    wait(lambda: "sinks_problem" not in readyz(d)[1], 30, "/readyz clear after the reconnect", d)
    assert d.proc.pid == pid and d.proc.poll() is None, "no restart"
    text = d.scrape()
    assert metric(text, "detectd_mqtt_connected") == 1
    assert metric(text, 'detectd_mqtt_connection_attempts_total{result="ok"}') >= 2
    # Once reconnected nothing more is dropped: compare when the subscriber has caught up.
    dropped = metric(text, "detectd_mqtt_messages_dropped_total")
    before = max(p["seq"] for p in col.json("detectd/detections/cam1"))
    wait(lambda: max(p["seq"] for p in col.json("detectd/detections/cam1")) >= before + 10, 60,
         "new messages after the reconnect", d)
    time.sleep(3)  # the broker's queue for the watcher and paho's resends drain
    seqs = {p["seq"] for p in col.json("detectd/detections/cam1")}
    top = max(seqs)
    missed = top + 1 - len(seqs)
    text = d.scrape()
    assert metric(text, "detectd_mqtt_messages_dropped_total") == dropped, "no drop after the reconnect"
    assert metric(text, 'detectd_mqtt_messages_dropped_total{reason="buffer_full"}') == dropped
    if stop == "SIGTERM":
        assert missed == dropped, f"subscriber missed {missed}, daemon counted {dropped}"
    else:
        # A broker killed outright may lose what it acknowledged but had not saved (mosquitto
        # saves once a second): beyond the daemon's view, so at least the counted ones are missed.
        assert missed >= dropped, f"subscriber missed {missed}, daemon counted {dropped}"
    assert top > 0


def test_wrong_credentials_name_the_key_never_the_password(run_daemon: Any, demo_video: Path, brokers: Any,
                                                           collectors: Any, tmp_path: Path) -> None:
    secret = "s3cr3t-Pa55word"
    b = brokers(users={"detectd": secret})
    bad = tmp_path / "creds"
    bad.mkdir()
    (bad / "mqtt-password").write_text("Wr0ng-Pa55word\n")
    d = run_daemon([stream("cam1", demo_video)], wait=False,
                   mqtt={"host": "127.0.0.1", "port": b.port, "username": "detectd",
                         "password_file": str(bad / "mqtt-password"), "required_for_ready": True})
    wait(lambda: "refused the credentials" in d.log(), 60, "credentials error logged", d)
    log = d.log()
    line = next(x for x in log.splitlines() if "refused the credentials" in x)
    assert "mqtt.username 'detectd'" in line and "mqtt.password_file" in line, line
    assert "Wr0ng-Pa55word" not in log
    assert d.proc.poll() is None, "the daemon keeps running (and retrying)"
    status, body = readyz(d)  # mqtt.required_for_ready: true: the broker's refusal fails /readyz
    assert status == 503 and body["sinks_ok"] is False and "credentials" in body["sinks_problem"], body
    assert "Wr0ng" not in json.dumps(body)
    assert metric(d.scrape(), 'detectd_mqtt_connection_attempts_total{result="auth"}') >= 1


def test_credentials_from_the_credentials_directory(tmp_path: Path, demo_video: Path, brokers: Any,
                                                    fp32_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CREDENTIALS_DIRECTORY/mqtt-password`` as systemd and the Kubernetes manifests set it; a
    missing file is an exit 2 (a config problem, ``UsageError``) naming mqtt.password_file, from
    ``detectd run`` and ``detectd check-config`` alike."""
    secret = "An0ther-s3cret"
    b = brokers(users={"detectd": secret})
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # inherited by both daemon processes
    d = DaemonProcess(tmp_path, [stream("cam1", demo_video)], name="d",
                      mqtt={"host": "127.0.0.1", "port": b.port, "username": "detectd",
                            "password_file": "$CREDENTIALS_DIRECTORY/mqtt-password",
                            "required_for_ready": True})
    r = subprocess.run([*detectd_command(), "run", "--config", str(d.config_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"mqtt.password_file: file not found: {creds}/mqtt-password" in r.stderr, r.stderr
    c = subprocess.run([*detectd_command(), "check-config", "--config", str(d.config_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 2, c.stderr
    assert f"mqtt.password_file: file not found: {creds}/mqtt-password" in c.stderr, c.stderr
    (creds / "mqtt-password").write_text(secret + "\n")
    with d:  # ready (/readyz 200) needs the broker's CONNACK: the password was accepted
        assert metric(d.scrape(), "detectd_mqtt_connected") == 1
        assert secret not in d.log()


def test_tls_with_the_brokers_ca(run_daemon: Any, demo_video: Path, brokers: Any, collectors: Any) -> None:
    b = brokers(tls=True)
    col = collectors(b.port, ["detectd/detections/+"])  # the plain listener sees the same topics
    d = run_daemon([stream("cam1", demo_video)],
                   mqtt={"host": "localhost", "port": b.tls_port, "tls": {"ca_file": str(b.ca_file)}})
    assert col.wait_for(lambda ms: len(ms) >= 3, 60), d.log()
    # Without that CA (system CAs): the certificate is refused, the daemon says so and stays up.
    d2 = run_daemon([stream("cam2", demo_video)], wait=False,
                    mqtt={"host": "localhost", "port": b.tls_port, "tls": {}})
    wait(lambda: "certificate verify failed" in d2.log(), 60, "TLS verification error logged", d2)
    assert d2.proc.poll() is None
    # Not required for readiness (the default): reported, and ready once the model is loaded.
    wait(lambda: readyz(d2)[0] == 200, 60, "d2 ready although its broker is unreachable", d2)
    status, body = readyz(d2)
    assert status == 200 and "certificate verify failed" in body["sinks_problem"], body


@pytest.mark.parametrize("mqtt, message", [
    ({"host": "b", "password": "hunter2-secret"}, "mqtt.password: a password is never read from the config in clear"),
    ({"host": "b", "topic_prefix": "a/+/b"}, "mqtt.topic_prefix: 'a/+/b': a topic prefix has no wildcards"),
    ({"host": "b", "topic_prefix": "a/"}, "mqtt.topic_prefix: 'a/'"),
    ({"host": "b", "topic_prefix": "$SYS"}, "mqtt.topic_prefix: '$SYS'"),
    ({"host": "b", "password_file": "/x"}, "mqtt.username: needed with mqtt.password_file"),
    ({"host": "b", "tls": {"cert_file": "/c"}}, "mqtt.tls: cert_file and key_file must be given together"),
    ({"host": "b", "qos": 2}, "mqtt.qos: "),
    ({"host": "b", "buffer": 0}, "mqtt.buffer: "),
    ({"host": "b", "reconnect_min": 5, "reconnect_max": 1}, "mqtt.reconnect_max: (1.0) must be >="),
    ({"port": 1883}, "mqtt.host: "),
])
def test_config_errors_name_the_key(mqtt: dict[str, Any], message: str) -> None:
    from daemon.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"streams": [{"id": "a", "url": "rtsp://cam/x"}], "mqtt": mqtt})
    text = "\n".join(err.value.problems)
    assert message in text, text
    assert "hunter2-secret" not in text


def test_password_file_is_redacted_everywhere(tmp_path: Path) -> None:
    from daemon.publish.mqtt_config import MqttConfig, check_files, read_password
    from daemon.redact import redact_text

    f = tmp_path / "pw"
    f.write_text("Zq9-very-private\nsecond line ignored\n")
    cfg = MqttConfig(host="b", username="u", password_file=str(f))
    assert read_password(cfg) == "Zq9-very-private"
    assert "Zq9" not in redact_text("connect failed: password Zq9-very-private refused")
    assert check_files(cfg) == []
    f.write_text("")
    assert check_files(cfg) == [f"mqtt.password_file: {f} is empty"]
    missing = MqttConfig(host="b", username="u", password_file="$NO_SUCH_VAR_X/pw")
    assert check_files(missing) == ["mqtt.password_file: $NO_SUCH_VAR_X is not set (systemd sets "
                                    "$CREDENTIALS_DIRECTORY for a unit with LoadCredential=; elsewhere "
                                    "set the variable or give the file's path)"]
