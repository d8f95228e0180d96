"""daemon/atomic.py and daemon/digest.py: the one atomic writer and the one file hash."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from daemon.atomic import replacing, write_bytes
from daemon.digest import sha256_file


def test_replacing_swaps_in_the_whole_file_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "clip.mp4"
    with replacing(target, ".mp4") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".part.mp4")  # a muxer's suffix
        assert not target.exists()
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError, match="hash mismatch"):
        with replacing(target) as tmp:
            tmp.write_bytes(b"second, half written")
            raise RuntimeError("hash mismatch")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["clip.mp4"]  # no temporary left


def test_write_bytes_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_bytes(target, b"old")
    write_bytes(target, memoryview(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_sha256_file_of_one_and_of_several(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20))  # several read blocks
    b.write_bytes(b"tail")
    assert sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert sha256_file(a, b) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")
