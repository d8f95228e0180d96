"""A real MQTT broker for tests and benchmarks: Debian's ``mosquitto`` on a free loopback port.

:class:`Mosquitto` writes a config file, starts ``mosquitto -c``, and can be stopped, killed
(SIGKILL) and restarted on the same port. Options: a password file (``mosquitto_passwd``), a
TLS listener with a certificate from a throw-away CA (``trustme``), and persistence (so that a
restart keeps retained messages and persistent sessions, as a production broker does).
:class:`Collector` is a paho subscriber that records every message it receives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def have_mosquitto() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One ``mosquitto`` process in ``workdir``; ``port`` (plain) and ``tls_port`` (TLS, optional)."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, tls: bool = False,
                 persistence: bool = False) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1"]
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True,
                               capture_output=True)
            pw.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("localhost", "127.0.0.1")
            self.ca_file = self.dir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.private_key_pem.write_to_path(str(self.dir / "server.key"))
            cert.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
            lines += [f"listener {self.tls_port} 127.0.0.1", f"certfile {self.dir / 'server.pem'}",
                      f"keyfile {self.dir / 'server.key'}"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/",
                      "max_queued_messages 0", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        if os.getuid() == 0:  # mosquitto started as root drops to its own user, which cannot read tmp_path
            lines += ["user root"]
        lines += ["max_inflight_messages 0", "log_type error", "log_type warning", "log_type notice",
                  f"log_dest file {self.log_path}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {err} {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto not listening on {self.port} in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Collector:
    """A paho subscriber that records ``(topic, payload bytes, retain)`` of every message."""

    def __init__(self, port: int, topics: list[str], *, qos: int = 1, client_id: str | None = None,
                 clean_session: bool = True) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=clean_session)
        self.topics = topics
        self.qos = qos

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            for t in self.topics:
                c.subscribe(t, qos=self.qos)
            self.connected.set()

        def on_message(c: Any, u: Any, msg: Any) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        def on_disconnect(*_a: Any) -> None:
            self.connected.clear()

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.on_disconnect = on_disconnect
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("collector: no CONNACK")
        time.sleep(0.2)  # the SUBACK

    def json(self, prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p, _r in self.messages if t.startswith(prefix)]

    def topics_seen(self) -> list[str]:
        with self.lock:
            return [t for t, _p, _r in self.messages]

    def wait_for(self, pred: Any, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
