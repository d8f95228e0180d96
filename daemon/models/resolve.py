"""Which ONNX file the daemon runs, built on first use and cached.

- ``model.onnx`` set: the user's own file is used as is.
- otherwise the Darknet cfg/weights (``model.cfg``/``model.weights``, default: the fetched and
  verified YOLOv3-Tiny) are exported once to ``<cache>/models/<stem>-<hash12>.onnx``, the hash
  taken over cfg and weights, so a changed weights file can never reuse a stale export.
- ``model.precision: int8``: the INT8 variant of that FP32 model (``daemon.quant``), built on the
  first run when missing and cached beside it under a key of model + calibration set + settings.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from daemon.config import ModelConfig

log = logging.getLogger(__name__)


def _hash_files(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def fp32_model(cfg: ModelConfig, progress: bool = True) -> Path:
    if cfg.onnx:
        return Path(cfg.onnx)
    from daemon.models import assets
    from daemon.models.export import export_onnx

    cache = assets.cache_dir(cfg.cache_dir)
    if cfg.cfg and cfg.weights:
        darknet_cfg, weights = Path(cfg.cfg), Path(cfg.weights)
        names = Path(cfg.names) if cfg.names else None
    else:
        a = assets.fetch_model(cache, progress=progress)
        darknet_cfg, weights = a.cfg, a.weights
        names = Path(cfg.names) if cfg.names else a.names
    # The exporter's own source is part of the key: a fixed exporter never reuses a stale export.
    import daemon.models.darknet as dk
    import daemon.models.export as ex

    key = _hash_files(darknet_cfg, weights, *([names] if names else []),
                      Path(dk.__file__), Path(ex.__file__))[:12]
    out = cache / "models" / f"{darknet_cfg.stem}-{key}.onnx"
    if not out.is_file():
        log.info("exporting %s + %s to ONNX: %s", darknet_cfg.name, weights.name, out)
        export_onnx(darknet_cfg, weights, out, names)
    return out


def resolve_model(cfg: ModelConfig, target: str = "cpu", progress: bool = True,
                  cancel: Any = None) -> Path:
    """The ONNX file to run for this config (``target``: ``cpu`` or ``tensorrt`` Q/DQ flavour)."""
    path = fp32_model(cfg, progress)
    if cfg.precision == "int8":
        from daemon.quant.ensure import ensure_int8_model

        from daemon.models import assets

        # Always in detectd's own cache (writable under systemd's CacheDirectory), never beside
        # a user's model file, which may sit on a read-only path.
        int8_dir = assets.cache_dir(cfg.cache_dir) / "models"
        int8_dir.mkdir(parents=True, exist_ok=True)
        return Path(ensure_int8_model(path, cfg.calibration, target=target, cache_dir=int8_dir,
                                      cancel=cancel))
    return path
