"""The TensorRT engine cache: fingerprinted, validated before use, written atomically.

A serialized TensorRT engine ("plan") only runs on the GPU architecture and the TensorRT version
that built it, and only means what it should for the exact ONNX model, precision, batch range
and preprocessing it was built for. So every plan is stored under a key of all of these, with a
JSON key file beside it; nothing here imports TensorRT, so all of it is tested on a CPU.

Layout (in ``$CACHE_DIRECTORY/engines`` under systemd, else ``<detectd cache>/engines``)::

    yolov3-tiny-int8-b4-3f9a0c1d2e4b5a69.plan   the plan
    yolov3-tiny-int8-b4-3f9a0c1d2e4b5a69.json   its key + the plan's size and SHA-256
    timing-<trt>-<gpu>-sm90.cache               TensorRT's timing cache, per version and GPU

A lookup is a hit only when the key file parses, equals the expected key field by field, and the
plan's size and SHA-256 match the ones recorded. The plan is written first and the key file last
(each as a temporary file, fsynced, then ``os.replace``d), so the key file is the commit marker:
an interrupted build leaves no key file and is a miss. A plan that TensorRT then fails to
deserialize is a miss too (:meth:`EngineCache.load_or_build` deletes it and builds again), so a
stale or corrupt engine is never used silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from daemon.atomic import write_bytes
from daemon.digest import sha256_bytes, sha256_file


log = logging.getLogger(__name__)

__all__ = [
    "KEY_FORMAT",
    "CacheLookup",
    "EngineCache",
    "EngineKey",
    "atomic_write_bytes",
    "default_engine_dir",
    "sha256_bytes",
    "sha256_file",
]

# Bumped whenever the meaning of a key field or the file layout changes: old entries then miss.
KEY_FORMAT = 2  # 2: the build recipe (typing, flags, FP16 transform version) joined the key

T = TypeVar("T")


def default_engine_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where engines live: ``override``, else systemd's ``$CACHE_DIRECTORY`` (the unit's
    ``CacheDirectory=``; the first entry when it lists several, colon-separated), else detectd's
    own cache dir (``$DETECTD_CACHE_DIR``, ``$XDG_CACHE_HOME/detectd``, ``~/.cache/detectd``);
    always the ``engines`` folder inside it."""
    if override:
        return Path(override).expanduser() / "engines"
    systemd = os.environ.get("CACHE_DIRECTORY", "")
    first = systemd.split(":")[0] if systemd else ""
    if first:
        return Path(first) / "engines"
    from daemon.models.assets import cache_dir

    return cache_dir() / "engines"


# The plan and its key file are written with the project's one atomic writer.
atomic_write_bytes = write_bytes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. Two keys are equal exactly when a plan built for one may
    serve the other."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # "int8" | "fp16" | "fp32"
    max_batch: int
    # Input geometry and how frames are turned into it (layout, colour order, scale, pad, scaler).
    preprocess: Mapping[str, Any] = field(default_factory=dict)
    model_name: str = "model"
    # How the plan was built: strongly typed or not, builder flags, ONNX transform and its version.
    build: Mapping[str, Any] = field(default_factory=dict)
    key_format: int = KEY_FORMAT

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be 64 lowercase hex digits, got {self.onnx_sha256!r}")
        if self.precision not in ("int8", "fp16", "fp32"):
            raise ValueError(f"precision must be int8, fp16 or fp32, got {self.precision!r}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        for name in ("tensorrt_version", "gpu_name", "compute_capability"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = dict(self.preprocess)
        d["build"] = dict(self.build)
        return d

    def canonical(self) -> str:
        """The key as canonical JSON: sorted keys, no whitespace; the digest is taken over it."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    @property
    def stem(self) -> str:
        return f"{_slug(self.model_name)}-{self.precision}-b{self.max_batch}-{self.digest()}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineKey":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown key fields: {sorted(unknown)}")
        return cls(**{k: d[k] for k in known if k in d})


@dataclass(frozen=True)
class CacheLookup:
    plan: bytes | None
    reason: str  # why it is a hit or a miss, for the log
    plan_path: Path

    @property
    def hit(self) -> bool:
        return self.plan is not None


@dataclass(frozen=True)
class Loaded(Generic[T]):
    engine: T
    plan_path: Path
    built: bool  # True when this call built the plan (a miss), False on a cache hit
    reason: str


class EngineCache:
    """A folder of plans, each beside its key file. Safe for several processes: writes are
    atomic renames, and two builders of one key simply write the same entry twice."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def plan_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem}.plan"

    def key_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """TensorRT's timing cache holds kernel timings, valid per TensorRT version and GPU
        (not per model), so one file serves every model and precision on this machine."""
        cc = key.compute_capability.replace(".", "")
        name = f"timing-{_slug(key.tensorrt_version)}-{_slug(key.gpu_name)}-sm{cc}.cache"
        return self.directory / name

    def lookup(self, key: EngineKey) -> CacheLookup:
        """The plan for ``key`` if a valid one is cached; never raises for a bad entry."""
        plan_path, key_path = self.plan_path(key), self.key_path(key)
        if not key_path.is_file():
            return CacheLookup(None, "no cached engine for this key", plan_path)
        try:
            meta = json.loads(key_path.read_text())
            stored = EngineKey.from_dict(meta["key"])
            size, digest = int(meta["plan_size"]), str(meta["plan_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return CacheLookup(None, f"unreadable key file {key_path.name}: {exc}", plan_path)
        if stored != key:
            diff = sorted(k for k, v in key.to_dict().items() if stored.to_dict().get(k) != v)
            return CacheLookup(None, f"key file differs from the wanted key in {diff}", plan_path)
        try:
            plan = plan_path.read_bytes()
        except OSError as exc:
            return CacheLookup(None, f"plan missing or unreadable: {exc}", plan_path)
        if len(plan) != size or sha256_bytes(plan) != digest:
            return CacheLookup(None, "plan does not match the size/SHA-256 in its key file "
                               "(corrupt or partially written)", plan_path)
        return CacheLookup(plan, "cached engine matches its key", plan_path)

    def store(self, key: EngineKey, plan: bytes | bytearray | memoryview) -> Path:
        """Write the plan, then its key file (the commit marker), each atomically."""
        plan = bytes(plan)
        plan_path, key_path = self.plan_path(key), self.key_path(key)
        # Drop an old key file first: between the two renames below the entry is then a miss,
        # never an old key vouching for a new plan.
        try:
            key_path.unlink()
        except FileNotFoundError:
            pass
        atomic_write_bytes(plan_path, plan)
        meta = {"key": key.to_dict(), "plan_size": len(plan), "plan_sha256": sha256_bytes(plan),
                "plan_file": plan_path.name}
        atomic_write_bytes(key_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        return plan_path

    def invalidate(self, key: EngineKey, reason: str) -> None:
        log.warning("discarding cached engine %s: %s", self.plan_path(key).name, reason)
        for p in (self.key_path(key), self.plan_path(key)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def load_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], T | None],
    ) -> Loaded[T]:
        """Deserialize the cached plan, or build, store and deserialize a new one.

        ``deserialize`` returns None or raises when the plan is unusable (TensorRT's
        ``deserialize_cuda_engine`` returns None): that counts as a miss, the entry is deleted
        and the plan rebuilt once. A freshly built plan that fails to deserialize is an error.
        """
        found = self.lookup(key)
        if found.hit:
            assert found.plan is not None
            try:
                engine = deserialize(found.plan)
            except Exception as exc:  # TensorRT raises assorted types; all mean "unusable"
                engine, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = "deserialization returned nothing"
            if engine is not None:
                log.info("engine cache hit: %s", found.plan_path)
                return Loaded(engine, found.plan_path, False, found.reason)
            self.invalidate(key, f"cached plan failed to deserialize ({why})")
            reason = f"cached plan failed to deserialize ({why}); rebuilt"
        else:
            if found.reason != "no cached engine for this key":
                self.invalidate(key, found.reason)
            reason = found.reason
        log.info("engine cache miss (%s): building %s", reason, found.plan_path.name)
        plan = build()
        path = self.store(key, plan)
        engine = deserialize(plan)
        if engine is None:
            raise RuntimeError(f"a freshly built engine failed to deserialize: {path}")
        return Loaded(engine, path, True, reason)
