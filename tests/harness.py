"""The one harness for a real ``detectd run`` process, used by the tests and by bench/.

A :class:`DaemonProcess` is started exactly as an operator would start it -- ``detectd run
--config FILE`` -- from this checkout, with its own publish endpoint and metrics port on
loopback, its output in a log file next to its config, and is stopped with SIGTERM. Optionally
it owns a ZeroMQ SUB socket connected *before* the process starts (a subscriber that joins
late misses the first messages: ZeroMQ PUB/SUB does not replay), whose messages
:meth:`DaemonProcess.collect` gathers.

Two sets of config defaults, kept as they were when each harness was separate:

- :data:`TEST_DEFAULTS` (the ``run_daemon`` fixture, bench/): ONNX Runtime, 2 threads, a status
  line every second -- deterministic backend choice for tests that compare detections.
- :data:`OPS_DEFAULTS` (the operations tests): the backend ``auto`` picks, one thread so that
  several daemons fit on a small machine, no status line.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent

TEST_DEFAULTS: dict[str, Any] = {"model": {"backend": "onnxruntime", "threads": 2},
                                 "logging": {"status_interval": 1}}
OPS_DEFAULTS: dict[str, Any] = {"model": {"threads": 1},
                                "logging": {"level": "info", "status_interval": 0}}

# The service-manager variables pytest itself may have inherited (when the suite runs inside a
# systemd unit): a daemon under test must not notify or log to *that* manager. A value a test
# sets on purpose (the sd_notify tests point NOTIFY_SOCKET at their own socket) is passed on.
_INHERITED_SERVICE_ENV = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detectd_command() -> list[str]:
    """``detectd`` from this checkout, whatever the working directory: the environment's console
    script imports the package its editable install points to, which is another checkout when
    one virtualenv serves several (then the tests would run someone else's code)."""
    boot = (f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); "
            "runpy.run_module('daemon', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot]


def demo_stream(stream_id: str, **extra: Any) -> dict[str, Any]:
    """The bundled demo video, looped and paced like a camera."""
    return {"id": stream_id, "url": "demo://bikes.mp4", "loop": True, "realtime": True, **extra}


def daemon_config(streams: list[dict[str, Any]], defaults: Mapping[str, Any] = TEST_DEFAULTS,
                  **sections: Any) -> dict[str, Any]:
    """A config dict: ``streams``, a free loopback publish endpoint and metrics port, then
    ``defaults`` and ``sections`` merged section by section (a key of ``sections`` wins)."""
    cfg: dict[str, Any] = {
        "streams": streams,
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
    for source in (copy.deepcopy(dict(defaults)), sections):
        for k, v in source.items():
            cfg.setdefault(k, {}).update(v)
    return cfg


def write_config(path: Path, streams: list[dict[str, Any]], **sections: Any) -> tuple[Path, dict[str, Any]]:
    """Write :func:`daemon_config` (test defaults) as YAML to ``path``; returns (path, cfg)."""
    cfg = daemon_config(streams, **sections)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last value as bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class DaemonProcess:
    """A real ``detectd run`` process with its own config file, endpoint and metrics port.

    ``DaemonProcess(workdir, streams, name=..., defaults=..., subscribe=..., **sections)`` writes
    ``workdir/NAME.yaml`` (see :func:`daemon_config`) and starts nothing; :meth:`start` starts
    the process (its output goes to ``workdir/NAME.log``) and waits until ``/readyz`` answers
    200, raising :class:`RuntimeError` (``exited with N``) if it exits first and
    :class:`TimeoutError` if it is not ready in time. ``subscribe`` (a topic prefix, ``b""``
    for all) connects a SUB socket at construction, before the process exists, so no message
    is missed. Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(self, workdir: Path, streams: list[dict[str, Any]], *, name: str = "detectd",
                 defaults: Mapping[str, Any] = TEST_DEFAULTS, subscribe: bytes | None = None,
                 **sections: Any) -> None:
        self.name = name
        self.cfg = daemon_config(streams, defaults, **sections)
        self.config_path = workdir / f"{name}.yaml"
        self.write_config()
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.sub: zmq.Socket[bytes] | None = None
        if subscribe is not None:
            self.ctx = zmq.Context()
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.RCVHWM, 0)  # keep everything: the tests count messages
            self.sub.setsockopt(zmq.SUBSCRIBE, subscribe)
            self.sub.connect(self.endpoint)

    def write_config(self) -> Path:
        """Write :attr:`cfg` to :attr:`config_path` (again, after a test changed it: a SIGHUP
        then makes the running daemon read it)."""
        self.config_path.write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        return self.config_path

    # -- where it listens ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return str(self.cfg["publish"]["endpoint"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg['metrics']['listen']}"

    @property
    def metrics_port(self) -> int:
        return int(self.cfg["metrics"]["listen"].rsplit(":", 1)[1])

    # -- life cycle ------------------------------------------------------------------------
    def launch(self) -> "DaemonProcess":
        """Start the process without waiting for readiness."""
        env = {k: v for k, v in os.environ.items()
               if not (k in _INHERITED_SERVICE_ENV and v == _INHERITED_SERVICE_ENV[k])}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*detectd_command(), "run", "--config", str(self.config_path)],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def start(self, ready_timeout: float = 180.0) -> "DaemonProcess":
        """Start the process and wait until it is ready (see the class docstring)."""
        self.launch()
        try:
            self.wait_ready(ready_timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Return when ``/readyz`` answers 200; RuntimeError if the process exits first,
        TimeoutError after ``timeout`` seconds. Collects subscribed messages meanwhile."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.ready():
                return
            self._pause(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log()[-4000:]}")

    def ready(self) -> bool:
        """``/readyz`` answers 200 (model loaded, publisher bound) right now."""
        try:
            with urllib.request.urlopen(self.metrics_url + "/readyz", timeout=2) as r:
                return bool(r.status == 200 and json.load(r).get("ready"))
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL); the exit status (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process and close the SUB socket."""
        self.stop()
        if self.sub is not None and self.ctx is not None:
            self.sub.close(0)
            self.ctx.term()
            self.sub = self.ctx = None

    def __enter__(self) -> "DaemonProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it says ----------------------------------------------------------------------
    def collect(self, seconds: float) -> list[tuple[str, dict[str, Any]]]:
        """Receive for ``seconds`` into :attr:`messages` as (topic, decoded JSON); all so far."""
        assert self.sub is not None, "constructed without subscribe="
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
        """Collect until the process exits; its exit status. AssertionError after ``timeout``."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect(0.2)
            if self.proc.poll() is not None:
                self.collect(0.5)
                return self.proc.returncode
        raise AssertionError(f"{self.name} did not exit in {timeout}s:\n{self.log()}")

    def wait_until(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        """Collect until ``pred()`` holds; AssertionError naming ``what``, the events seen and
        the log's tail after ``timeout`` seconds or when the process exits first."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect(0.3)
            if pred():
                return
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"timed out waiting for {what}; events: "
                             f"{[(t, m.get('event')) for t, m in self.messages if t.startswith('events')]}\n"
                             f"{self.log()[-4000:]}")

    def scrape(self) -> str:
        """``/metrics`` as Prometheus text."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=10) as r:
            return str(r.read().decode())

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """The process's resident set size (Linux /proc), 0 when unknown."""
        assert self.proc is not None, "not started"
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _pause(self, seconds: float) -> None:
        if self.sub is not None:
            self.collect(seconds)
        else:
            time.sleep(seconds)


def ops_daemon(workdir: Path, streams: list[dict[str, Any]], name: str = "detectd",
               **sections: Any) -> DaemonProcess:
    """A :class:`DaemonProcess` with :data:`OPS_DEFAULTS` (the operations tests' setup)."""
    return DaemonProcess(workdir, streams, name=name, defaults=OPS_DEFAULTS, **sections)
