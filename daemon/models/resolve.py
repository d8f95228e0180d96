"""The FP32 ONNX file of a model config, exported on first use and cached.

- ``model.onnx`` set: the user's own file is used as is.
- otherwise the Darknet cfg/weights (``model.cfg``/``model.weights``, default: the fetched and
  verified YOLOv3-Tiny) are exported once to ``<cache>/models/<stem>-<hash12>.onnx``, the hash
  taken over cfg and weights, so a changed weights file can never reuse a stale export.

The INT8 variant is built from this file one floor up, in ``daemon/prepare.py``
(:func:`daemon.prepare.prepare_model`): ``models/`` never imports ``quant/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.digest import sha256_file

if TYPE_CHECKING:  # only its type: models/ does not import the config (and all it pulls in)
    from daemon.config import ModelConfig

log = logging.getLogger(__name__)


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

    key = sha256_file(darknet_cfg, weights, *([names] if names else []),
                      Path(dk.__file__), Path(ex.__file__))[:12]
    out = cache / "models" / f"{darknet_cfg.stem}-{key}.onnx"
    if not out.is_file():
        log.info("exporting %s + %s to ONNX: %s", darknet_cfg.name, weights.name, out)
        export_onnx(darknet_cfg, weights, out, names)
    return out
