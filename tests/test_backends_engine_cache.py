"""The TensorRT engine cache, on the CPU: key, validation, invalidation, atomic writes.

No TensorRT here: ``build`` and ``deserialize`` are plain functions standing in for
``build_serialized_network`` and ``deserialize_cuda_engine`` (named as stand-ins below).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from daemon.backends.engine_cache import (
    EngineCache,
    EngineKey,
    atomic_write_bytes,
    default_engine_dir,
    sha256_bytes,
)

SHA = "ab" * 32


def key(**over: object) -> EngineKey:
    base = dict(onnx_sha256=SHA, tensorrt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", precision="int8", max_batch=4,
                preprocess={"width": 416, "height": 416, "pad": 0.5, "scaler": "swscale-bilinear"},
                model_name="yolov3-tiny",
                build={"strongly_typed": True, "flags": [], "onnx_transform": None,
                       "fp16_transform_version": None})
    base.update(over)
    return EngineKey(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "cd" * 32),
    ("tensorrt_version", "11.0.0"),
    ("gpu_name", "NVIDIA L4"),
    ("compute_capability", "8.9"),
    ("precision", "fp16"),
    ("max_batch", 8),
    ("preprocess", {"width": 608, "height": 608, "pad": 0.5, "scaler": "swscale-bilinear"}),
    ("build", {"strongly_typed": False, "flags": ["FP16", "INT8"], "onnx_transform": None,
               "fp16_transform_version": None}),
    ("build", {"strongly_typed": True, "flags": [], "onnx_transform": "fp16", "fp16_transform_version": 3}),
    ("key_format", 1),
])
def test_every_field_changes_the_key(field: str, value: object) -> None:
    a, b = key(), key(**{field: value})
    assert a != b
    assert a.digest() != b.digest()
    assert a.stem != b.stem


def test_key_is_stable_and_canonical() -> None:
    a = key(preprocess={"height": 416, "width": 416, "pad": 0.5, "scaler": "swscale-bilinear"})
    assert a.digest() == key().digest()
    assert EngineKey.from_dict(json.loads(a.canonical())) == a
    assert a.stem.startswith("yolov3-tiny-int8-b4-")


@pytest.mark.parametrize("bad", [
    {"onnx_sha256": "xyz"}, {"precision": "int4"}, {"max_batch": 0}, {"gpu_name": ""},
])
def test_key_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        key(**bad)


def test_store_then_lookup_hits(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    plan = os.urandom(4096)
    path = cache.store(key(), plan)
    assert path.read_bytes() == plan
    meta = json.loads(cache.key_path(key()).read_text())
    assert meta["plan_sha256"] == sha256_bytes(plan) and meta["plan_size"] == 4096
    found = cache.lookup(key())
    assert found.hit and found.plan == plan


def test_miss_when_nothing_cached(tmp_path: Path) -> None:
    found = EngineCache(tmp_path).lookup(key())
    assert not found.hit and "no cached engine" in found.reason


def test_other_key_misses(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(key(), b"plan")
    assert not cache.lookup(key(tensorrt_version="10.14.1")).hit
    assert not cache.lookup(key(compute_capability="8.6")).hit


def test_truncated_plan_is_a_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(key(), b"x" * 1000)
    cache.plan_path(key()).write_bytes(b"x" * 500)
    found = cache.lookup(key())
    assert not found.hit and "corrupt" in found.reason


def test_flipped_byte_is_a_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(key(), b"x" * 1000)
    cache.plan_path(key()).write_bytes(b"x" * 999 + b"y")
    assert not cache.lookup(key()).hit


def test_key_file_for_another_key_is_a_miss(tmp_path: Path) -> None:
    # A key file renamed or copied by hand must not vouch for a plan built for another key.
    cache = EngineCache(tmp_path)
    cache.store(key(max_batch=8), b"plan8")
    os.replace(cache.key_path(key(max_batch=8)), cache.key_path(key()))
    os.replace(cache.plan_path(key(max_batch=8)), cache.plan_path(key()))
    found = cache.lookup(key())
    assert not found.hit and "max_batch" in found.reason


@pytest.mark.parametrize("text", ["", "{", "[]", '{"key": {}}', '{"key": {"bogus": 1}}'])
def test_garbage_key_file_is_a_miss(tmp_path: Path, text: str) -> None:
    cache = EngineCache(tmp_path)
    cache.store(key(), b"plan")
    cache.key_path(key()).write_text(text)
    found = cache.lookup(key())
    assert not found.hit and "key file" in found.reason


def test_plan_without_key_file_is_a_miss(tmp_path: Path) -> None:
    # What an interrupted store leaves: the plan renamed in, the key file (commit marker) not.
    cache = EngineCache(tmp_path)
    cache.plan_path(key()).parent.mkdir(parents=True, exist_ok=True)
    cache.plan_path(key()).write_bytes(b"plan")
    assert not cache.lookup(key()).hit


class StandInTensorRT:
    """Stand-in for TensorRT's build and deserialize (TensorRT cannot run here)."""

    def __init__(self) -> None:
        self.builds = 0
        self.reject: set[bytes] = set()

    def build(self) -> bytes:
        self.builds += 1
        return b"PLAN-%d" % self.builds

    def deserialize(self, plan: bytes) -> str | None:
        return None if plan in self.reject else "engine:" + plan.decode()


def test_load_or_build_builds_once_then_hits(tmp_path: Path) -> None:
    cache, trt = EngineCache(tmp_path), StandInTensorRT()
    first = cache.load_or_build(key(), trt.build, trt.deserialize)
    second = cache.load_or_build(key(), trt.build, trt.deserialize)
    assert first.built and not second.built
    assert trt.builds == 1 and second.engine == "engine:PLAN-1"


def test_failed_deserialization_rebuilds(tmp_path: Path) -> None:
    cache, trt = EngineCache(tmp_path), StandInTensorRT()
    cache.load_or_build(key(), trt.build, trt.deserialize)
    trt.reject.add(b"PLAN-1")  # e.g. a plan from another TensorRT build with the same version
    again = cache.load_or_build(key(), trt.build, trt.deserialize)
    assert again.built and "failed to deserialize" in again.reason
    assert again.engine == "engine:PLAN-2" and trt.builds == 2
    assert cache.lookup(key()).plan == b"PLAN-2"


def test_deserialize_exception_rebuilds(tmp_path: Path) -> None:
    cache, trt = EngineCache(tmp_path), StandInTensorRT()
    cache.load_or_build(key(), trt.build, trt.deserialize)

    def boom(plan: bytes) -> str:
        if plan == b"PLAN-1":
            raise RuntimeError("Serialization assertion failed: magic tag mismatch")
        return "ok"

    assert cache.load_or_build(key(), trt.build, boom).built


def test_corrupt_entry_rebuilt_not_used(tmp_path: Path) -> None:
    cache, trt = EngineCache(tmp_path), StandInTensorRT()
    cache.load_or_build(key(), trt.build, trt.deserialize)
    cache.plan_path(key()).write_bytes(b"PLAN-X")
    loaded = cache.load_or_build(key(), trt.build, trt.deserialize)
    assert loaded.built and loaded.engine == "engine:PLAN-2"


def test_fresh_plan_that_does_not_deserialize_is_an_error(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    with pytest.raises(RuntimeError, match="freshly built"):
        cache.load_or_build(key(), lambda: b"bad", lambda plan: None)


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def fail() -> bytes:
        raise RuntimeError("parser error")

    with pytest.raises(RuntimeError):
        cache.load_or_build(key(), fail, lambda p: p)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.plan"
    atomic_write_bytes(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.plan"]  # no temporary left behind


def test_timing_cache_path_per_version_and_gpu(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path(key())
    assert a == cache.timing_cache_path(key(precision="fp16", max_batch=1))
    assert a != cache.timing_cache_path(key(tensorrt_version="11.0.0"))
    assert a.name == "timing-10-13-0-nvidia-h100-80gb-hbm3-sm90.cache"


def test_default_dir_prefers_systemd_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/sd:/var/cache/other")
    monkeypatch.setenv("DETECTD_CACHE_DIR", str(tmp_path / "own"))
    assert default_engine_dir() == tmp_path / "sd" / "engines"
    monkeypatch.delenv("CACHE_DIRECTORY")
    assert default_engine_dir() == tmp_path / "own" / "engines"
    assert default_engine_dir(tmp_path / "x") == tmp_path / "x" / "engines"


def test_key_file_of_the_previous_format_is_a_miss(tmp_path: Path) -> None:
    # A key file written before the recipe joined the key (format 1, no "build") must not hit.
    cache = EngineCache(tmp_path)
    cache.store(key(), b"plan")
    meta = json.loads(cache.key_path(key()).read_text())
    del meta["key"]["build"]
    meta["key"]["key_format"] = 1
    cache.key_path(key()).write_text(json.dumps(meta))
    found = cache.lookup(key())
    assert not found.hit and "build" in found.reason and "key_format" in found.reason


def test_key_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        key().precision = "fp32"  # type: ignore[misc]
