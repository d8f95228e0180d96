"""The ZeroMQ side as its consumers use it, against real daemons on loopback.

- the typed client decodes real detections and events messages, and both match the shipped JSON
  Schemas; a subscription to ``cam1`` never receives ``cam10``;
- ``detectd subscribe`` prints JSON lines;
- seq gaps and publisher restarts are told apart (real PUB socket, payloads from the daemon's own
  encoder), and one Subscriber survives a real ``detectd run`` stopped and restarted on the same
  endpoint, counting the restart;
- CURVE: a listed client receives every message, an unlisted one and a plain one receive nothing;
- ``detectd proxy`` fans two real daemons in to one endpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import zmq

from daemon.frames import Detections
from daemon.publish import schema
from daemon.vocab import Topic
from daemon.publish.client import (
    DecodeError,
    DetectionMessage,
    EventMessage,
    Gap,
    SeqTracker,
    Subscriber,
    decode,
    topic_prefixes,
)
from tests.harness import DaemonProcess, demo_stream, detectd_command, free_port, ops_daemon, wait_for
from tests.support.messages import VALIDATORS, frame_result, validate

pytestmark = pytest.mark.slow


def collect(sub: Subscriber, seconds: float, until: Any = None) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw = sub.recv_raw(0.2)
        if raw is not None:
            out.append(raw)
            if until is not None and until(out):
                break
    return out


def contiguous(msgs: list[Any]) -> dict[tuple[str, str], list[int]]:
    seqs: dict[tuple[str, str], list[int]] = {}
    for m in msgs:
        seqs.setdefault((m.kind, m.stream), []).append(m.seq)
    for key, s in seqs.items():
        assert s == list(range(s[0], s[0] + len(s))), f"{key}: seq not contiguous: {s}"
    return seqs


# ----------------------------------------------------------------------- one daemon, many streams


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, list[tuple[bytes, bytes]]]]:
    """A real daemon with a looping stream, a ``cam10`` next to ``cam1``, a file that ends and an
    RTSP source that refuses connections (credentials in its URL); everything it publishes in its
    first seconds, captured by a subscriber connected before the daemon bound its socket."""
    tmp = tmp_path_factory.mktemp("zmq")
    closed = free_port()
    d = ops_daemon(
        tmp,
        [
            demo_stream("cam1"),
            demo_stream("cam10"),
            demo_stream("short", loop=False),
            {"id": "broken", "url": f"rtsp://admin:hunter2@127.0.0.1:{closed}/live"},
        ],
    )
    with Subscriber(d.endpoint) as sub:
        with d:

            def enough(raw: list[tuple[bytes, bytes]]) -> bool:
                topics = [t for t, _ in raw]
                # "short" plays its 10 s once, then ends: wait for that event, not just its "up".
                ended = any(t == b"events/short/" and json.loads(p).get("event") == "ended" for t, p in raw)
                broken = [p for t, p in raw if t == b"events/broken/" and json.loads(p)["event"] != "state"]
                return ended and len(broken) >= 2 and sum(
                    t == b"detections/cam1/" for t in topics) >= 10

            raw = collect(sub, 60, enough)
            yield d, raw


def test_real_messages_match_the_json_schemas(captured: tuple[DaemonProcess, list[tuple[bytes, bytes]]]) -> None:
    d, raw = captured
    kinds = {t.split(b"/")[0] for t, _ in raw}
    assert kinds == {b"detections", b"events"}, d.log()
    for topic, payload in raw:
        validate(topic, payload)
    # The schemas are not vacuous: a broken message fails them.
    body = json.loads(next(p for t, p in raw if t.startswith(b"detections/")))
    body["detections"] = [{"label": "car", "class_id": 2, "score": 1.5, "box": [0, 0, 1]}]
    assert len(list(VALIDATORS["detections"].iter_errors(body))) == 2


def test_client_decodes_real_messages(captured: tuple[DaemonProcess, list[tuple[bytes, bytes]]]) -> None:
    d, raw = captured
    msgs = [decode(t, p) for t, p in raw]
    dets = [m for m in msgs if isinstance(m, DetectionMessage)]
    events = [m for m in msgs if isinstance(m, EventMessage)]
    assert {m.stream for m in dets} >= {"cam1", "cam10"}
    with_objects = [m for m in dets if len(m.detections)]
    assert with_objects, "the demo video shows cars and people"
    for m in with_objects:
        assert isinstance(m.detections, Detections)
        assert m.detections.boxes.shape == (len(m.labels), 4)
        assert (m.width, m.height) == (640, 272)
        assert np.all(m.detections.boxes[:, 2] <= m.width) and np.all(m.detections.boxes[:, 3] <= m.height)
        assert m.model.backend in ("onnxruntime", "openvino") and 0 <= m.latency < 30  # auto: a CPU engine
        assert m.to_dict()["detections"][0]["label"] == m.labels[0]
    # Any single frame may show only an odd object (a "cell phone" false positive); over all of
    # cam1's frames, the street's cars and people appear.
    cam1_labels = {label for m in dets if m.stream == "cam1" for label in m.labels}
    assert {"car", "person"} <= cam1_labels, cam1_labels
    assert {(e.stream, e.event) for e in events} >= {("short", "ended"), ("broken", "reconnecting")}
    contiguous(msgs)  # one subscriber, loopback, connected from the start: nothing lost
    for e in events:
        assert "hunter2" not in json.dumps(e.to_dict()), "credentials must be redacted from events"


def test_stream_filter_is_exact(captured: tuple[DaemonProcess, list[tuple[bytes, bytes]]]) -> None:
    d, _ = captured
    with Subscriber(d.endpoint, streams=["cam1"], kinds=["detections"]) as sub:
        raw = collect(sub, 20, lambda r: len(r) >= 8)
    assert len(raw) >= 8, d.log()
    assert {t for t, _ in raw} == {b"detections/cam1/"}  # never cam10
    assert topic_prefixes(["cam1"]) == [b"detections/cam1/", b"events/cam1/", b"analytics/cam1/"]


def test_subscribe_command_prints_json_lines(captured: tuple[DaemonProcess, list[tuple[bytes, bytes]]]) -> None:
    d, _ = captured
    proc = subprocess.run(
        [*detectd_command(), "subscribe", "--endpoint", d.endpoint, "--stream", "cam10", "--count", "5",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5
    bodies = [json.loads(line) for line in lines]
    assert {b["stream"] for b in bodies} == {"cam10"}
    for b in bodies:
        errors = list(VALIDATORS["detections" if "detections" in b else "events"].iter_errors(b))
        assert not errors


def test_subscribe_to_a_stream_nobody_publishes_says_which_streams_there_are(
        captured: tuple[DaemonProcess, list[tuple[bytes, bytes]]]) -> None:
    """A mistyped --stream used to print nothing, forever: after HINT_AFTER_S one stderr line
    names the endpoint and the streams it does publish; stdout stays clean, and it keeps
    waiting (here until --timeout)."""
    from daemon.commands.subscribe import HINT_AFTER_S

    d, _ = captured
    proc = subprocess.run(
        [*detectd_command(), "subscribe", "--endpoint", d.endpoint, "--stream", "nosuch",
         "--timeout", str(HINT_AFTER_S + 4)],
        capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 1 and proc.stdout == "", proc
    hint = [ln for ln in proc.stderr.splitlines() if "no message yet" in ln]
    assert len(hint) == 1, proc.stderr
    assert hint[0].startswith(f"detectd subscribe: no message yet for stream 'nosuch' on "
                              f"{d.endpoint} after {HINT_AFTER_S:.0f} s; streams seen: "), hint
    assert {"cam1", "cam10"} <= set(hint[0].split("streams seen: ")[1].split(", ")), hint


def test_subscribe_command_times_out_with_status_1() -> None:
    proc = subprocess.run(
        [*detectd_command(), "subscribe", "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no message for 0.5 s" in proc.stderr


# ----------------------------------------------------------------------------------- seq and decode


def test_gaps_and_restarts_over_a_real_socket() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    gaps: list[Gap] = []
    labels = ["person", "bicycle", "car"]
    model = {"name": "yolov3-tiny", "precision": "fp32", "backend": "onnxruntime"}
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", on_gap=gaps.append) as sub:
            # Slow joiner: repeat a probe until the subscription has reached the publisher.
            probe = schema.encode(schema.detections_payload(frame_result("probe", 0), 0, labels, model))
            assert wait_for(lambda: pub.send_multipart([b"detections/probe/", probe]) or sub.recv(0.1), 10)
            for seq in (0, 1, 2, 5, 6, 0, 1):  # 3 and 4 lost; then the publisher restarted
                payload = schema.detections_payload(frame_result("cam1", seq), seq, labels, model)
                pub.send_multipart([schema.topic(Topic.DETECTIONS, "cam1"), schema.encode(payload)])
            pub.send_multipart([b"detections/cam1/", b"{not json"])
            pub.send_multipart([b"events/cam1/", schema.encode(schema.event_payload("cam1", 0, "up"))])
            got = []
            while (m := sub.recv(2)) is not None:
                if m.stream == "cam1":
                    got.append(m)
                if isinstance(m, EventMessage):
                    break
    finally:
        pub.close(0)
        ctx.term()
    assert [m.seq for m in got] == [0, 1, 2, 5, 6, 0, 1, 0]
    assert gaps == [Gap("detections", "cam1", 2, 5)] and gaps[0].missed == 2
    assert sub.missed == {("detections", "cam1"): 2}
    assert sub.seq.restarts == {("detections", "cam1"): 1}
    assert sub.malformed == 1
    assert got[0].labels == ("car",) and got[0].detections.boxes.tolist() == [[1, 2, 30, 40]]


def test_subscriber_survives_a_daemon_restart(tmp_path: Path) -> None:
    """A real ``detectd run`` is stopped (SIGTERM) and started again on the same endpoint: the one
    Subscriber, never recreated, reconnects on its own, receives again, and counts the restart
    (seq back near 0) instead of reporting a gap."""
    d = ops_daemon(tmp_path, [demo_stream("cam1")])
    gaps: list[Gap] = []
    with Subscriber(d.endpoint, streams=["cam1"], kinds=["detections"], on_gap=gaps.append) as sub:

        def receive(n: int, seconds: float) -> list[DetectionMessage]:
            got: list[DetectionMessage] = []
            deadline = time.monotonic() + seconds
            while len(got) < n and time.monotonic() < deadline:
                m = sub.recv(0.5)
                if isinstance(m, DetectionMessage):
                    got.append(m)
            return got

        with d:
            # Enough frames that the restarted daemon's seq is certainly lower than the last one.
            before = receive(30, 60)
            assert len(before) == 30, d.log()
        assert d.proc is not None and d.proc.returncode == 0, d.log()
        # What was queued before the stop (the drain publishes frames in flight), then silence.
        while (m := sub.recv(1.0)) is not None:
            assert isinstance(m, DetectionMessage)
            before.append(m)
        assert sub.seq.restarts == {}
        with d:  # same config, same publish port
            after = receive(10, 60)
            assert len(after) == 10, d.log()
    assert after[0].seq < before[-1].seq
    assert sub.seq.restarts == {("detections", "cam1"): 1}
    assert gaps == [] and sub.missed == {}
    contiguous(before)
    contiguous(after)


@pytest.mark.parametrize(
    ("steps", "missed"),
    [
        ([0, 1, 2, 3], 0),
        ([7, 8, 9], 0),  # joined mid-stream: not a gap
        ([0, 2], 1),
        ([0, 1, 10, 11, 15], 11),
        ([5, 6, 0, 1], 0),  # restart
        ([3, 3], 0),  # duplicate (two daemons publishing one stream id): counted as restart
    ],
)
def test_seq_tracker(steps: list[int], missed: int) -> None:
    t = SeqTracker()
    for s in steps:
        t.check("detections", "cam1", s)
    assert t.missed.get(("detections", "cam1"), 0) == missed


GOOD = {"v": 1, "stream": "cam1", "seq": 0, "frame": 0, "pts": None, "captured_at": 1.0, "published_at": 1.5,
        "width": 640, "height": 272, "model": {"name": "m", "precision": "fp32", "backend": "onnxruntime"},
        "detections": []}


@pytest.mark.parametrize(
    ("topic", "change", "error"),
    [
        ("detections/cam1", {}, "expected 'detections/<stream>/'"),
        ("frames/cam1/", {}, "expected 'detections/<stream>/'"),
        ("detections/cam2/", {}, "disagrees with the topic"),
        ("detections/cam1/", {"seq": -1}, "'seq' must be >= 0"),
        ("detections/cam1/", {"seq": True}, "'seq' must be int"),
        ("detections/cam1/", {"width": None}, "'width' must be int"),
        ("detections/cam1/", {"model": {"name": "m"}}, "model: missing field 'precision'"),
        ("detections/cam1/", {"detections": [{"label": "car", "class_id": 2, "score": 0.5, "box": [1, 2]}]},
         "detections[0]: box must be 4 numbers"),
        ("detections/cam1/", {"captured_at": float("nan")}, "'captured_at' must be finite"),
    ],
)
def test_decode_rejects(topic: str, change: dict[str, Any], error: str) -> None:
    with pytest.raises(DecodeError, match=None) as info:
        decode(topic, {**GOOD, **change})
    assert error in str(info.value)


def test_decode_keeps_unknown_fields() -> None:
    m = decode("detections/cam1/", {**GOOD, "gpu": 0})
    assert isinstance(m, DetectionMessage) and m.extra == {"gpu": 0} and m.to_dict()["gpu"] == 0
    e = decode(b"events/cam1/", json.dumps({"v": 1, "stream": "cam1", "seq": 3, "event": "reconnecting",
                                            "reason": "refused", "at": 2.0, "attempt": 4}).encode())
    assert isinstance(e, EventMessage) and e.extra == {"attempt": 4} and e.reason == "refused"


# ------------------------------------------------------------------------------------------ CURVE


def keygen(directory: Path, name: str) -> None:
    proc = subprocess.run([*detectd_command(), "keygen", str(directory), "--name", name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (directory / f"{name}.key_secret").stat().st_mode & 0o077 == 0


def test_curve_listed_client_receives_everything_unlisted_nothing(tmp_path: Path) -> None:
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "alice", "mallory"):
        keygen(keys, name)
    # Only alice's public key is authorized.
    (authorized / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    again = subprocess.run([*detectd_command(), "keygen", str(keys), "--name", "server"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrite a key silently

    d = ops_daemon(tmp_path, [demo_stream("cam1")], publish={
        "curve": {"server_secret_key": str(keys / "server.key_secret"), "authorized_keys_dir": str(authorized)}})
    server_key = str(keys / "server.key")
    with (
        Subscriber(d.endpoint, curve=(server_key, str(keys / "alice.key_secret"))) as alice,
        Subscriber(d.endpoint, curve=(server_key, str(keys / "mallory.key_secret"))) as mallory,
        Subscriber(d.endpoint) as plain,
        d,
    ):
        got = collect(alice, 60, lambda r: sum(t.startswith(b"detections/") for t, _ in r) >= 15)
        assert sum(t.startswith(b"detections/") for t, _ in got) >= 15, d.log()
        # Everything from the moment the handshake completed: no seq missing.
        contiguous([decode(t, p) for t, p in got])
        assert mallory.recv_raw(1.0) is None and plain.recv_raw(0.1) is None
        cli = subprocess.run(
            [*detectd_command(), "subscribe", "--endpoint", d.endpoint, "--count", "3", "--timeout", "30",
             "--server-key", server_key, "--client-key", str(keys / "alice.key_secret")],
            capture_output=True, text=True, timeout=90,
        )
        assert cli.returncode == 0 and len(cli.stdout.splitlines()) == 3, cli.stderr
        assert mallory.recv_raw(0.1) is None and plain.recv_raw(0.1) is None
        assert mallory.received == 0 and plain.received == 0
        # The refused client is in the daemon's log: address, its public key, why; said once
        # although it retried the handshake every 100 ms; no secret key in any line.
        log = d.log()
        mallory_public = _key_field(keys / "mallory.key", "public-key")
        refused = [ln for ln in log.splitlines() if "CURVE: refused a subscriber" in ln]
        assert len(refused) == 1, refused
        assert " WARNING " in refused[0] and "from 127.0.0.1 (CURVE, client public key " \
            f"{mallory_public}): its public key is not in publish.curve.authorized_keys_dir" in refused[0]
        assert _key_field(keys / "alice.key", "public-key") not in "".join(refused)
        for name in ("server", "alice", "mallory"):
            assert _key_field(keys / f"{name}.key_secret", "secret-key") not in log
    # A public key given as --client-key: a clear line naming the file, no traceback.
    cli = subprocess.run([*detectd_command(), "subscribe", "--endpoint", d.endpoint, "--timeout", "1",
                          "--server-key", server_key, "--client-key", str(keys / "alice.key")],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2, cli
    assert f"--client-key: {keys / 'alice.key'}: holds no secret key" in cli.stderr, cli.stderr
    assert f"its pair is {keys / 'alice.key_secret'}" in cli.stderr and "Traceback" not in cli.stderr


def _key_field(path: Path, field: str) -> str:
    """A key of a ZeroMQ certificate file (``public-key = "..."``), as its Z85 text."""
    for line in path.read_text().splitlines():
        name, _, value = line.strip().partition("=")
        if name.strip() == field:
            return value.strip().strip('"')
    raise AssertionError(f"no {field} in {path}")


def test_subscribe_defaults_to_the_daemons_default_endpoint() -> None:
    """No --endpoint: `detectd subscribe` connects where a default config publishes."""
    from daemon.config import PublishConfig

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    try:
        pub.bind(PublishConfig().endpoint)
    except zmq.ZMQError as exc:  # someone's daemon runs with the default config here
        pub.close(0)
        ctx.term()
        pytest.skip(f"{PublishConfig().endpoint} is busy: {exc}")
    cli = subprocess.Popen([*detectd_command(), "subscribe", "--count", "1", "--timeout", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        payload = schema.encode(schema.event_payload("cam1", 0, "up"))
        deadline = time.monotonic() + 30
        while cli.poll() is None and time.monotonic() < deadline:  # slow joiner: repeat
            pub.send_multipart([b"events/cam1/", payload])
            time.sleep(0.1)
        out, err = cli.communicate(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
        pub.close(0)
        ctx.term()
    assert cli.returncode == 0, err
    assert json.loads(out.splitlines()[0])["event"] == "up"


# ------------------------------------------------------------------------------------------ proxy


def test_proxy_fans_in_two_daemons(tmp_path: Path) -> None:
    backend = f"tcp://127.0.0.1:{free_port()}"
    a = ops_daemon(tmp_path, [demo_stream("camA")], name="a")
    b = ops_daemon(tmp_path, [demo_stream("camB")], name="b")
    with a, b:
        proxy = subprocess.Popen(
            [*detectd_command(), "proxy", "--frontend", a.endpoint, "--frontend", b.endpoint, "--backend", backend],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            with Subscriber(backend) as both, Subscriber(backend, streams=["camB"]) as only_b:
                raw = collect(both, 60, lambda r: {t for t, _ in r} >= {b"detections/camA/", b"detections/camB/"}
                              and len(r) >= 12)
                assert {t for t, _ in raw} >= {b"detections/camA/", b"detections/camB/"}, a.log() + b.log()
                for t, p in raw:
                    validate(t, p)
                contiguous([decode(t, p) for t, p in raw])
                raw_b = collect(only_b, 30, lambda r: sum(t == b"detections/camB/" for t, _ in r) >= 5)
                # camB only: its detections, and its events (at least the state answering the
                # subscription, forwarded through the proxy).
                assert sum(t == b"detections/camB/" for t, _ in raw_b) >= 5
                assert {t for t, _ in raw_b} == {b"detections/camB/", b"events/camB/"}, raw_b
        finally:
            proxy.send_signal(signal.SIGTERM)
            out, _ = proxy.communicate(timeout=20)
        assert proxy.returncode == 0, out


def test_curve_key_paths_expand_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd's LoadCredential= hands the secret over in $CREDENTIALS_DIRECTORY.
    from daemon.publish.curve import CurveError, configure_client, configure_server, generate_keypair

    generate_keypair(tmp_path, "server")
    generate_keypair(tmp_path, "alice")
    (tmp_path / "authorized").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    server = configure_server(pub, "$CREDENTIALS_DIRECTORY/server.key_secret", "${CREDENTIALS_DIRECTORY}/authorized")
    try:
        assert pub.curve_server and server.allowed_keys() == 0
        configure_client(sub, "$CREDENTIALS_DIRECTORY/server.key", "$CREDENTIALS_DIRECTORY/alice.key_secret")
        with pytest.raises(CurveError, match="holds no secret key"):
            configure_client(sub, "$CREDENTIALS_DIRECTORY/server.key", "$CREDENTIALS_DIRECTORY/alice.key")
        with pytest.raises(CurveError, match="does not exist"):
            configure_server(pub, "$CREDENTIALS_DIRECTORY/server.key_secret", "$CREDENTIALS_DIRECTORY/nope")
    finally:
        server.stop()
        pub.close(0)
        sub.close(0)
        ctx.term()


def _check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    full_env.update(env or {})
    return subprocess.run([*detectd_command(), "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=full_env)


def test_check_config_validates_the_curve_key_files(tmp_path: Path) -> None:
    import yaml

    from daemon.publish.curve import generate_keypair

    creds, authorized = tmp_path / "creds", tmp_path / "authorized"
    generate_keypair(creds, "server")
    generate_keypair(tmp_path / "clients", "alice")
    authorized.mkdir()
    (authorized / "alice.key").write_bytes((tmp_path / "clients" / "alice.key").read_bytes())

    def config(secret: str, directory: str) -> Path:
        path = tmp_path / "detectd.yaml"
        path.write_text(yaml.safe_dump({
            "streams": [{"id": "cam1", "url": "rtsp://127.0.0.1:8554/cam1"}],
            "publish": {"endpoint": "tcp://0.0.0.0:5560",
                        "curve": {"server_secret_key": secret, "authorized_keys_dir": directory}},
        }))
        return path

    # As systemd runs ExecStartPre with LoadCredential=: $CREDENTIALS_DIRECTORY set.
    good = config("$CREDENTIALS_DIRECTORY/server.key_secret", str(authorized))
    ok = _check_config(good, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.returncode == 0, ok.stderr
    # The variable unset (check-config run by hand outside the unit): named, not a traceback.
    unset = _check_config(good)
    assert unset.returncode == 2
    assert unset.stderr.startswith("publish.curve.server_secret_key: ")
    assert "$CREDENTIALS_DIRECTORY is not set" in unset.stderr
    # The public half where the secret is expected; a directory that does not exist.
    wrong = _check_config(config(str(creds / "server.key"), str(tmp_path / "nope")))
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == [
        f"publish.curve.server_secret_key: {creds / 'server.key'}: holds no secret key (a public key "
        f"file?): give the NAME.key_secret file that `detectd keygen` writes; its pair is "
        f"{creds / 'server.key_secret'}",
        f"publish.curve.authorized_keys_dir: {tmp_path / 'nope'}: directory does not exist",
    ]
    # A damaged key among the authorized ones would make the daemon refuse the whole directory.
    (authorized / "bob.key").write_text('metadata\ncurve\n    public-key = "tooshort"\n')
    (creds / "server.key_secret").write_text("not a certificate\n")
    broken = _check_config(config(str(creds / "server.key_secret"), str(authorized)))
    assert broken.returncode == 2
    lines = broken.stderr.splitlines()
    assert lines[0].startswith("publish.curve.server_secret_key: ") and "cannot read a CURVE key pair" in lines[0]
    assert lines[1] == (f"publish.curve.authorized_keys_dir: {authorized / 'bob.key'}: "
                        "public-key is not a 40-character Z85 CURVE key")


def test_curve_server_reload_admits_a_key_added_later(tmp_path: Path) -> None:
    """``CurveServer.reload()`` (what SIGHUP calls once the daemon wires it): a client whose key is
    added to the directory afterwards gets in, over real sockets, without recreating the server."""
    from daemon.publish.curve import CurveError, configure_client, configure_server, generate_keypair

    generate_keypair(tmp_path, "server")
    generate_keypair(tmp_path, "alice")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    server = configure_server(pub, tmp_path / "server.key_secret", authorized)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    subs: list[zmq.Socket[bytes]] = []

    def client() -> zmq.Socket[bytes]:
        s = ctx.socket(zmq.SUB)
        configure_client(s, tmp_path / "server.key", tmp_path / "alice.key_secret")
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.setsockopt(zmq.RCVTIMEO, 100)
        s.connect(f"tcp://127.0.0.1:{port}")
        subs.append(s)
        return s

    def receives(s: zmq.Socket[bytes], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pub.send_multipart([b"detections/cam1/", b"{}"])
            try:
                s.recv_multipart()
                return True
            except zmq.Again:
                pass
        return False

    try:
        assert not receives(client(), 2.0)  # not listed yet
        (authorized / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
        server.reload()
        assert server.allowed_keys() == 1
        assert receives(client(), 10.0)  # a new connection after the reload is admitted
        # A damaged key file: named, and the keys loaded before stay in force.
        (authorized / "bob.key").write_text('metadata\ncurve\n    public-key = "tooshort"\n')
        with pytest.raises(CurveError, match="bob.key: public-key is not a 40-character Z85"):
            server.reload()
        assert receives(client(), 10.0)
    finally:
        for s in subs:
            s.close(0)
        server.stop()
        pub.close(0)
        ctx.term()
