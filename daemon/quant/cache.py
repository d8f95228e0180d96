"""TensorRT's text calibration cache, plus the key that says when it may be reused.

The table is TensorRT's own format, readable by ``IInt8Calibrator.read_calibration_cache``::

    TRT-<version>-EntropyCalibration2
    images: 3c010204
    conv_0: 3d2a5b8e
    ...

one line per tensor: the name, a colon, and the scale (threshold / 127) as the 8 hex digits of
its big-endian IEEE-754 float32. TensorRT 10 rejects a header whose version is not its own, so
the version number follows the ``tensorrt`` package when it imports and is otherwise
``DEFAULT_TRT_VERSION``; ``retag_header`` rewrites it for another TensorRT.

Beside the table, ``<table>.json`` holds what the table cannot: the cache key (SHA-256 of the
FP32 model, hash of the calibration set, settings) and each tensor's min / max / threshold, so
both the TensorRT and the CPU (uint8 asymmetric) models can be rebuilt without recalibrating.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.quant.histogram import TensorStats

DEFAULT_TRT_VERSION = 100300  # TensorRT 10.3.0: major*10000 + minor*100 + patch
ALGORITHM = "EntropyCalibration2"
_LINE = re.compile(r"^(?P<name>.+):\s*(?P<hex>[0-9a-fA-F]{8})\s*$")


def trt_version_number(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for a version string: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def installed_trt_version() -> int:
    try:
        import tensorrt  # type: ignore[import-not-found]

        return trt_version_number(tensorrt.__version__)
    except Exception:  # not installable here (see DESIGN.md): use the default
        return DEFAULT_TRT_VERSION


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside the target and rename over it: readers see the old file or the new one,
    and an interrupted run leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def format_table(scales: Mapping[str, float], version: int | None = None) -> str:
    v = installed_trt_version() if version is None else version
    lines = [f"TRT-{v}-{ALGORITHM}"]
    for name, scale in scales.items():
        if ":" in name or "\n" in name:
            raise ValueError(f"tensor name {name!r} cannot be written to a TensorRT cache")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) of a TensorRT calibration cache."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache (no TRT-<version>-<algorithm> header)")
    scales: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"line {n}: expected 'tensor: <8 hex digits>', got {line!r}")
        scales[m.group("name")] = hex_to_scale(m.group("hex"))
    return lines[0], scales


def retag_header(text: str, version: int) -> str:
    """The same table under another TensorRT version's header."""
    header, _, rest = text.partition("\n")
    algo = header.split("-", 2)[2] if header.count("-") >= 2 else ALGORITHM
    return f"TRT-{version}-{algo}\n{rest}"


@dataclass(frozen=True)
class CacheContents:
    key: str
    info: dict[str, object]  # model_sha256, set_sha256, settings, frames, ...
    stats: dict[str, TensorStats]


def meta_path(table: Path) -> Path:
    return table.with_name(table.name + ".json")


def write_cache(table: Path, contents: CacheContents, version: int | None = None) -> None:
    """The TensorRT table and its key/statistics sidecar, each written atomically (sidecar
    last: a table without a matching sidecar is never reused)."""
    scales = {n: max(s.threshold, 0.0) / 127.0 or 1.0 for n, s in contents.stats.items()}
    write_atomic(table, format_table(scales, version).encode())
    meta = {
        "key": contents.key,
        **contents.info,
        "tensors": {n: {"min": s.min, "max": s.max, "threshold": s.threshold}
                    for n, s in contents.stats.items()},
    }
    write_atomic(meta_path(table), (json.dumps(meta, indent=1) + "\n").encode())


class CacheMismatch(Exception):
    """The cache exists but may not be used; the message says why."""


def read_cache(table: Path, key: str) -> CacheContents:
    """The cache at `table` if it was made for `key`; FileNotFoundError when absent,
    CacheMismatch (with the reason) when it belongs to another model, set or settings."""
    meta_file = meta_path(table)
    if not table.exists():
        raise FileNotFoundError(table)
    if not meta_file.exists():
        raise CacheMismatch(f"{table} has no {meta_file.name} saying which model and "
                            "calibration set made it")
    meta = json.loads(meta_file.read_text())
    if meta.get("key") != key:
        raise CacheMismatch(_why(meta, key))
    _, scales = parse_table(table.read_text())
    stats: dict[str, TensorStats] = {}
    for name, t in meta["tensors"].items():
        if name not in scales:
            raise CacheMismatch(f"{table} lacks tensor {name!r} that its sidecar lists")
        stats[name] = TensorStats(name, float(t["min"]), float(t["max"]), float(t["threshold"]))
    info = {k: v for k, v in meta.items() if k not in ("key", "tensors")}
    return CacheContents(key=key, info=info, stats=stats)


def _why(meta: Mapping[str, object], key: str) -> str:
    parts = key.split(":")
    wanted = dict(zip(("model_sha256", "set_sha256", "settings_sha256"), parts))
    reasons = []
    for field, label in (("model_sha256", "another model"), ("set_sha256",
                         "another calibration set"), ("settings_sha256", "other settings")):
        if meta.get(field) != wanted.get(field):
            reasons.append(label)
    return "cache made for " + (" and ".join(reasons) or "something else")
