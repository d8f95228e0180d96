"""TensorRT's text calibration cache, plus the key that says when it may be reused.

The table is TensorRT's own format, readable by ``IInt8Calibrator.read_calibration_cache``::

    TRT-<version>-<algorithm>
    images: 3c010204
    conv_0: 3d2a5b8e
    ...

one line per tensor: the name, ": ", and the scale (threshold / 127) as the 8 hex digits of its
big-endian IEEE-754 float32. A tensor name may itself contain ':' (a line is split on its last
': '); it may not contain a line break. TensorRT 10 rejects a header whose version is not its
own, so the version number follows the ``tensorrt`` package when it imports and is otherwise
``DEFAULT_TRT_VERSION``; ``retag_header`` rewrites it for another TensorRT.

The algorithm names how the thresholds were chosen, as TensorRT's implicit path checks it against
the calibrator class that reads the table: ``EntropyCalibration2`` (IInt8EntropyCalibrator2)
only for ``--method entropy``; the other methods (percentile, mse, max) write
``MinMaxCalibration`` (IInt8MinMaxCalibrator), whose table holds plain per-tensor ranges, which is
what those thresholds are.

Beside the table, ``<table>.json`` holds what the table cannot: the cache key (SHA-256 of the
FP32 model, hash of the calibration set, settings) and each tensor's min / max / threshold, so
both the TensorRT and the CPU (uint8 asymmetric) models can be rebuilt without recalibrating.
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.atomic import stage, unlink
from daemon.errors import DetectdError

from daemon.quant.histogram import TensorStats

DEFAULT_TRT_VERSION = 100300  # TensorRT 10.3.0: major*10000 + minor*100 + patch
# calibration method -> the TensorRT calibrator (CalibrationAlgoType) name in the header
ALGORITHMS = {"entropy": "EntropyCalibration2", "percentile": "MinMaxCalibration",
              "mse": "MinMaxCalibration", "max": "MinMaxCalibration"}
ALGORITHM = ALGORITHMS["entropy"]
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


class CacheFormatError(DetectdError, ValueError):
    """A tensor name or a table that TensorRT's cache format cannot hold or does not parse."""


def algorithm_for(method: str) -> str:
    try:
        return ALGORITHMS[method]
    except KeyError:
        raise CacheFormatError(f"no TensorRT calibrator for method {method!r}") from None


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
    commit_set({path: data})


_stage = stage
_unlink = unlink


def commit_set(files: Mapping[Path, bytes]) -> None:
    """Write several files as one set: every file is staged to a temporary file first, then all
    are renamed into place, in the given order. If anything fails or is interrupted (Ctrl-C)
    before the last rename, the files already renamed are taken back and the previous versions
    restored, so a reader finds the whole old set or the whole new one, never a mix."""
    staged: dict[Path, Path] = {}
    backups: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for path, data in files.items():
            staged[path] = _stage(Path(path), data)
        for path in files:
            path = Path(path)
            if path.exists():
                backup = _stage(path, b"")  # a unique name beside it
                os.replace(path, backup)
                backups[path] = backup
            os.replace(staged[path], path)
            del staged[path]
            placed.append(path)
    except BaseException:
        for path in reversed(placed):
            _unlink(path)
        for path, backup in backups.items():
            os.replace(backup, path)
        backups.clear()
        raise
    finally:
        for tmp in list(staged.values()) + list(backups.values()):
            _unlink(tmp)


def clean_stale_parts(paths: "Iterable[Path]", max_age_s: float = 3600.0) -> list[Path]:
    """Remove temporary files that a killed run (SIGKILL, power loss) left beside `paths`:
    those of a process that no longer exists, or, without a pid in the name, older than
    `max_age_s`. A live writer's files are left alone."""
    removed = []
    for path in paths:
        path = Path(path)
        if not path.parent.is_dir():
            continue
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
            pid_text = tmp.name[len(path.name) + 2:].split(".", 1)[0]
            if pid_text.isdigit():
                stale = int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
            else:
                try:
                    stale = time.time() - tmp.stat().st_mtime > max_age_s
                except FileNotFoundError:
                    continue
            if stale:
                _unlink(tmp)
                removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_tensor_name(name: str) -> None:
    """Raise CacheFormatError for a name that cannot be written as one line of the table."""
    if not name or any(c in name for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        raise CacheFormatError(f"tensor name {name!r} cannot be written to a TensorRT "
                               "calibration cache (empty or contains a line break)")
    if name != name.strip():
        raise CacheFormatError(f"tensor name {name!r} cannot be written to a TensorRT "
                               "calibration cache (leading or trailing white space)")


def format_table(scales: Mapping[str, float], version: int | None = None,
                 algorithm: str = ALGORITHM) -> str:
    v = installed_trt_version() if version is None else version
    lines = [f"TRT-{v}-{algorithm}"]
    for name, scale in scales.items():
        check_tensor_name(name)
        if not (scale > 0.0 and scale < float("inf")):
            raise CacheFormatError(f"tensor {name!r}: scale {scale!r} is not a positive number")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def parse_table(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) of a TensorRT calibration cache; each line is split on its
    last ': ', so tensor names may contain ':'."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise CacheFormatError(
            "not a TensorRT calibration cache (no TRT-<version>-<algorithm> header)")
    scales: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        value = value.strip()
        if not sep or not name or not _HEX.match(value):
            raise CacheFormatError(f"line {n}: expected 'tensor: <8 hex digits>', got {line!r}")
        scales[name] = hex_to_scale(value)
    return lines[0], scales


def header_algorithm(header: str) -> str:
    return header.split("-", 2)[2] if header.count("-") >= 2 else ""


def retag_header(text: str, version: int) -> str:
    """The same table under another TensorRT version's header."""
    header, _, rest = text.partition("\n")
    algo = header_algorithm(header) or ALGORITHM
    return f"TRT-{version}-{algo}\n{rest}"


@dataclass(frozen=True)
class CacheContents:
    key: str
    info: dict[str, object]  # model_sha256, set_sha256, settings, frames, ...
    stats: dict[str, TensorStats]


def meta_path(table: Path) -> Path:
    return table.with_name(table.name + ".json")


def cache_files(table: Path, contents: CacheContents, version: int | None = None,
                method: str = "entropy") -> dict[Path, bytes]:
    """{path: bytes} of the TensorRT table and its key/statistics sidecar, built and checked in
    memory (CacheFormatError before anything is written). The header names the calibrator
    that matches `method` (ALGORITHMS); the sidecar records the method and that header."""
    scales = {n: max(s.threshold, 0.0) / 127.0 or 1.0 for n, s in contents.stats.items()}
    text = format_table(scales, version, algorithm_for(method))
    meta = {
        "key": contents.key,
        **contents.info,
        "method": method,
        "trt_header": text.split("\n", 1)[0],
        "tensors": {n: {"min": s.min, "max": s.max, "threshold": s.threshold}
                    for n, s in contents.stats.items()},
    }
    # sidecar last: a table without a matching sidecar is never reused
    return {Path(table): text.encode(),
            meta_path(Path(table)): (json.dumps(meta, indent=1) + "\n").encode()}


def write_cache(table: Path, contents: CacheContents, version: int | None = None,
                method: str = "entropy") -> None:
    """The TensorRT table and its sidecar, written as one set (see commit_set)."""
    commit_set(cache_files(table, contents, version, method))


class CacheMismatch(DetectdError):
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
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CacheMismatch(f"{meta_file} is unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise CacheMismatch(f"{meta_file} is not a JSON object")
    if meta.get("key") != key:
        raise CacheMismatch(_why(meta, key))
    try:
        _, scales = parse_table(table.read_text())
    except (OSError, UnicodeDecodeError, CacheFormatError) as e:
        raise CacheMismatch(f"{table} is unreadable ({e})") from None
    stats: dict[str, TensorStats] = {}
    try:
        for name, t in meta["tensors"].items():
            if name not in scales:
                raise CacheMismatch(f"{table} lacks tensor {name!r} that its sidecar lists")
            stats[name] = TensorStats(name, float(t["min"]), float(t["max"]),
                                      float(t["threshold"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CacheMismatch(f"{meta_file} is malformed ({type(e).__name__}: {e})") from None
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
