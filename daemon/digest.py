"""SHA-256 of files and bytes, the one implementation (asset verification, model and engine
cache keys, calibration set identity).

Hex digests, lowercase, as ``sha256sum`` prints them.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_bytes", "sha256_file"]

_BLOCK = 1 << 20  # read 1 MiB at a time: a 66 MB weights file never sits in memory whole


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(*paths: str | os.PathLike[str]) -> str:
    """SHA-256 of the contents of ``paths`` read one after the other (one path: the file's own
    digest, what ``sha256sum`` prints; several: the digest of their concatenation, e.g. a
    Darknet cfg and its weights as one model source). Raises ``OSError`` when a file cannot be
    read."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
    return h.hexdigest()
