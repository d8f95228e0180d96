"""Shared fixtures: real assets, free ports, a real daemon process, a real ZeroMQ subscriber."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent

try:  # the RTSP server fixtures, when present
    from tests.rtsp_fixtures import *  # noqa: F401,F403
except ImportError:
    pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--media", default=None,
                     help="folder with the media files (bikes.mp4, bus.jpg, ...) for GPU tests; "
                          "default: the cache's media folder ($DETECTD_CACHE_DIR/media)")


@pytest.fixture(scope="session")
def gpu_media(request: pytest.FixtureRequest) -> Path:
    """Where GPU tests find real media: ``--media`` or ``$DETECTD_CACHE_DIR/media`` (cache_dir)."""
    from daemon.models.assets import cache_dir

    opt = request.config.getoption("--media")
    return Path(opt) if opt else cache_dir() / "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_assets() -> Any:
    from daemon.models import assets

    return assets.fetch_model(progress=False)


@pytest.fixture(scope="session")
def demo_video() -> Path:
    from daemon.models import assets

    return assets.fetch_demo_video(progress=False)


@pytest.fixture(scope="session")
def fp32_onnx(model_assets: Any) -> Path:
    from daemon.config import ModelConfig
    from daemon.models.resolve import fp32_model

    return fp32_model(ModelConfig(), progress=False)


def write_config(path: Path, streams: list[dict[str, Any]], **sections: Any) -> tuple[Path, dict[str, Any]]:
    cfg: dict[str, Any] = {
        "streams": streams,
        "model": {"backend": "onnxruntime", "threads": 2},
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"status_interval": 1},
    }
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


class DaemonProc:
    """A real ``detectd run`` process with a SUB socket connected before it starts."""

    def __init__(self, config_path: Path, cfg: dict[str, Any], subscribe: bytes = b"") -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, subscribe)
        self.sub.connect(cfg["publish"]["endpoint"])
        self.metrics_url = f"http://{cfg['metrics']['listen']}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.stderr_path = config_path.with_suffix(".log")
        self.stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(config_path)],
                                     cwd=ROOT, stdout=self.stderr, stderr=subprocess.STDOUT, env=env)
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.metrics_url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log()}")

    def collect(self, seconds: float) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                while True:
                    try:
                        topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.messages.append((topic.decode(), json.loads(body)))
        return self.messages

    def collect_until_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect(0.2)
            if self.proc.poll() is not None:
                self.collect(0.5)
                return self.proc.returncode
        raise AssertionError(f"daemon did not exit in {timeout}s:\n{self.log()}")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        self.stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        self.sub.close(0)
        self.ctx.term()


@pytest.fixture
def run_daemon(tmp_path: Path, fp32_onnx: Path) -> Iterator[Any]:
    procs: list[DaemonProc] = []

    def start(streams: list[dict[str, Any]], subscribe: bytes = b"", wait: bool = True,
              **sections: Any) -> DaemonProc:
        path, cfg = write_config(tmp_path / f"detectd-{len(procs)}.yaml", streams, **sections)
        d = DaemonProc(path, cfg, subscribe)
        procs.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in procs:
        d.close()
