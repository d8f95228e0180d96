"""daemon/stream_manager.py in a real daemon (in this process): a stream removed for good leaves
every part that knew it -- its /metrics series and its preview tile -- while a restarted one
(a reload that changed its options) keeps its tile."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from daemon.backends.onnxruntime import OnnxRuntimeBackend
from daemon.config import parse_config
from daemon.models.info import ModelInfo
from tests.harness import free_port


def _tiles(port: int) -> list[str]:
    st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10).read())
    return [s["id"] for s in st["streams"]]


def _series_of(metrics_port: int, sid: str) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(1 for line in text.splitlines() if f'stream="{sid}"' in line)


def test_removal_takes_the_stream_off_metrics_and_the_preview(fp32_onnx: Path, demo_clip: Path) -> None:
    from daemon.app import Daemon

    preview_port, metrics_port = free_port(), free_port()
    cfg: dict[str, Any] = {
        "streams": [{"id": sid, "url": str(demo_clip)} for sid in ("a", "b", "c")],
        "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"}, "logging": {"status_interval": 0},
        "preview": {"enabled": True, "listen": f"127.0.0.1:{preview_port}"},
    }
    info = ModelInfo.from_onnx(fp32_onnx)
    backend = OnnxRuntimeBackend(fp32_onnx, info.input_name, info.output_names, threads=1, max_batch=4)
    d = Daemon(parse_config(cfg), backend=backend, info=info)
    try:
        d.start()
        assert _tiles(preview_port) == ["a", "b", "c"] and _series_of(metrics_port, "a") > 0
        d.remove_stream("a")  # what a reload does with a stream gone from the config
        assert _tiles(preview_port) == ["b", "c"]
        assert _series_of(metrics_port, "a") == 0 and _series_of(metrics_port, "b") > 0
        d.remove_stream("b", forget_metrics=False)  # a restart: the tile stays for the new source
        assert _tiles(preview_port) == ["b", "c"]
    finally:
        d.shutdown()
