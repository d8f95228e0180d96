"""A real Prometheus (Debian's package ``prometheus``) for tests: start one on loopback with a
given config, and query it through its HTTP API (tests/test_deploy_prometheus_live.py,
tests/test_shard.py)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml


class PromAPI:
    """Prometheus' HTTP API at ``base`` (``http://127.0.0.1:PORT``); every call asserts
    ``status == "success"`` and returns ``data``."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=15) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result vector."""
        return list(self.get("/api/v1/query", query=expr)["result"])

    def query_range(self, expr: str, seconds: int = 30) -> list[dict[str, Any]]:
        """The last ``seconds`` at a 1 s step: the result matrix."""
        end = time.time()
        data = self.get("/api/v1/query_range", query=expr, start=end - seconds, end=end, step="1s")
        return list(data["result"])


def start_prometheus(tmp: Path, name: str, cfg: dict[str, Any], port: int) -> subprocess.Popen[bytes]:
    """Write ``cfg`` to ``tmp/NAME.yml`` and start ``prometheus`` on 127.0.0.1:``port`` with its
    data in ``tmp/NAME-data`` and its output in ``tmp/NAME.log``; the caller terminates it."""
    (tmp / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    with open(tmp / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            ["prometheus", f"--config.file={tmp / f'{name}.yml'}", f"--storage.tsdb.path={tmp / name}-data",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
