"""Atomic file writes, the one implementation every cache uses (ONNX exports, INT8 models and
calibration tables, TensorRT plans): readers see the old file or the whole new one, never a part.

``stage`` writes ``data`` to a temporary file beside the target (``.NAME.<pid>.<random>.part``,
fsynced, mode 0644; removed again if the write fails); ``write_bytes`` stages and renames over the
target, then fsyncs the directory so the rename itself is durable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def stage(path: Path, data: bytes | bytearray | memoryview) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches are plain readable files
    except BaseException:
        unlink(Path(tmp))
        raise
    return Path(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    path = Path(path)
    tmp = stage(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
