"""Helpers of the operations tests: free ports, demo configs, a real `detectd run` process.

(Named ``test_ops_*`` to sit with the operations tests; it defines no test itself.)

The daemon is started exactly as an operator would start it -- ``detectd run --config FILE`` --
on the demo video with ``loop: true`` and ``realtime: true`` (paced like a camera), one ONNX
Runtime thread so that several daemons fit on a small machine, and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def detectd_command() -> list[str]:
    """``detectd`` from this checkout, whatever the working directory: the environment's console
    script imports the package its editable install points to, which is another checkout when
    one virtualenv serves several (then the tests would run someone else's code)."""
    boot = (f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); "
            "runpy.run_module('daemon', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_stream(stream_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": stream_id, "url": "demo://bikes.mp4", "loop": True, "realtime": True, **extra}


@dataclass
class Daemon:
    """A running ``detectd run`` with its own config, publish endpoint and metrics port."""

    tmp: Path
    streams: list[dict[str, Any]]
    name: str = "detectd"
    publish_extra: dict[str, Any] = field(default_factory=dict)
    pub_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.pub_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.name}.log"

    def write_config(self) -> Path:
        cfg = {
            "streams": self.streams,
            "model": {"threads": 1},
            "publish": {"endpoint": self.endpoint, **self.publish_extra},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"level": "info", "status_interval": 0},
        }
        path = self.tmp / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start(self, ready_timeout: float = 180.0) -> "Daemon":
        config = self.write_config()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*detectd_command(), "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {ready_timeout:.0f}s:\n{self.log()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url + "/readyz", timeout=2) as r:
                return bool(r.status == 200 and json.load(r).get("ready"))
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def metric_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
