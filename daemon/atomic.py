"""Atomic file writes, the one implementation every cache and output uses (ONNX exports, INT8
models and calibration tables, TensorRT plans, downloaded assets, rendered footage): readers see
the old file or the whole new one, never a part.

* :func:`replacing` hands out a temporary path beside the target (``.NAME.<pid>.<random>.part``
  plus a suffix of the caller's choice, so a writer that picks its format from the extension,
  such as an FFmpeg muxer, still can); when the ``with`` block ends cleanly the file is fsynced,
  made mode 0644 and renamed over the target, and the directory is fsynced so the rename itself
  is durable; when it raises (a failed write, a hash mismatch, Ctrl-C) the file is removed and
  the target untouched.
* :func:`write_bytes` is that for bytes in memory.
* :func:`stage` writes bytes to such a temporary file and returns it without renaming, for
  callers that commit several files as one set (``quant/cache.commit_set``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "stage", "unlink", "write_bytes"]


def unlink(p: Path) -> None:
    try:
        p.unlink()
    except FileNotFoundError:
        pass


def _temp_beside(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part" + suffix,
                               dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # a file system without directory fsync: the rename is still atomic
        pass


def stage(path: Path, data: bytes | bytearray | memoryview) -> Path:
    """``data`` in a new temporary file beside ``path`` (fsynced, mode 0644); its path. Removed
    again if the write fails."""
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches are plain readable files
    except BaseException:
        unlink(tmp)
        raise
    return tmp


@contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """``with replacing(target) as tmp:`` write ``tmp`` by any means; on a clean exit it
    replaces ``target`` (see the module doc). ``suffix`` ends the temporary name (``".mp4"``)."""
    target = Path(path)
    tmp = _temp_beside(target, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # whoever wrote it may not have fsynced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        unlink(tmp)
    _fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Replace the file at ``path`` by ``data``, atomically (see the module doc)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
