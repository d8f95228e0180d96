"""Streams split across instances without coordination: rendezvous (highest random weight) hashing.

Every instance reads the same stream list and keeps the streams it *owns*: stream ``s`` belongs
to the shard ``i`` (``0 <= i < count``) with the highest weight ``w(i, s)``, a 64-bit number from
SHA-256 of ``"<i>\\0<s>"`` (Thaler and Ravishankar, "Using name-based mappings to increase hit
rates", 1998). No instance talks to another, and going from ``N`` to ``N+1`` instances moves only
the streams the new shard wins, about ``1/(N+1)`` of them; every other stream stays where it was
(a stream owned by ``i`` keeps ``w(i, s)`` as the highest of the old shards). SHA-256 rather than
Python's ``hash``: that one is salted per process, so two instances would disagree.

The shard comes from ``shard: {index, count}`` in the config, or ``detectd run --shard I/N``,
which wins for the life of the process (reloads included; :func:`set_override`). A Kubernetes
StatefulSet passes its pod ordinal as ``I`` (deploy/kubernetes/, docs/scaling.md).

Metrics (registered on the daemon's registry by :func:`owned_streams` when given ``metrics``):
``detectd_shard_info{index,count}`` 1 and ``detectd_shard_streams`` (streams owned now).
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.metrics import Metrics

__all__ = ["ShardConfig", "parse_shard", "weight", "owner", "owned_streams", "set_override",
           "current", "assignment"]


class ShardConfig(BaseModel):
    """``shard:``: this instance is shard ``index`` of ``count`` (``0 <= index < count``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    index: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=1, le=10000)

    @model_validator(mode="after")
    def _index_below_count(self) -> "ShardConfig":
        if self.index >= self.count:
            raise ValueError(f"@shard.index: {self.index} must be below shard.count ({self.count}); "
                             "shards are numbered 0 .. count-1")
        return self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardConfig:
    """``"I/N"`` (``--shard``) -> :class:`ShardConfig`; ``ValueError`` naming the problem."""
    index, sep, count = text.strip().partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/3")
    try:
        return ShardConfig(index=int(index), count=int(count))
    except Exception as exc:  # pydantic's message, without its URL noise
        raise ValueError(f"--shard {text!r}: index must be 0..count-1 and count >= 1") from exc


def shard_arg(text: str) -> ShardConfig:
    """argparse ``type=`` for ``--shard I/N``."""
    import argparse

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def weight(index: int, stream: str) -> int:
    """Rendezvous weight of shard ``index`` for ``stream``: an unsigned 64-bit integer."""
    digest = hashlib.sha256(f"{index}\0{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(stream: str, count: int) -> int:
    """The shard (``0 .. count-1``) that serves ``stream`` among ``count`` shards."""
    return max(range(count), key=lambda i: weight(i, stream))


def assignment(streams: Iterable[str], count: int) -> dict[int, list[str]]:
    """Every shard's streams (``{index: [stream ids in the given order]}``, all indices present)."""
    out: dict[int, list[str]] = {i: [] for i in range(count)}
    for s in streams:
        out[owner(s, count)].append(s)
    return out


_override: ShardConfig | None = None


def set_override(shard: ShardConfig | None) -> None:
    """``--shard`` given on the command line: it wins over ``shard:`` of every (re)loaded config."""
    global _override
    _override = shard


def current(cfg: "Config") -> ShardConfig:
    """This instance's shard: the ``--shard`` override, else the config's ``shard:``."""
    return _override if _override is not None else cfg.shard


T = TypeVar("T")


# Metrics -> (detectd_shard_info, detectd_shard_streams), registered once per registry; typed,
# and gone with the Metrics.
_GAUGES: "weakref.WeakKeyDictionary[Metrics, tuple[Gauge, Gauge]]" = weakref.WeakKeyDictionary()


def _export(metrics: "Metrics", shard: ShardConfig, n: int) -> None:
    gauges = _GAUGES.get(metrics)
    if gauges is None:
        registry: CollectorRegistry = metrics.registry
        gauges = _GAUGES[metrics] = (
            Gauge("detectd_shard_info", "1 for this instance's shard: index of count (rendezvous "
                  "hashing on the stream id, docs/scaling.md).", ["index", "count"], registry=registry),
            Gauge("detectd_shard_streams", "Streams of the config that this shard serves.",
                  registry=registry))
    info, streams = gauges
    info.clear()
    info.labels(str(shard.index), str(shard.count)).set(1)
    streams.set(n)


def owned_streams(cfg: "Config", metrics: "Metrics | None" = None) -> list[Any]:
    """The config's streams that this instance serves (all of them with ``count: 1``), in config
    order. With ``metrics`` (a :class:`daemon.metrics.Metrics`), the shard gauges are updated."""
    shard = current(cfg)
    mine = select(cfg.streams, shard, key=lambda s: s.id)
    if metrics is not None:
        _export(metrics, shard, len(mine))
    return mine


def select(items: Sequence[T], shard: ShardConfig, key: Any) -> list[T]:
    """The ``items`` (identified by ``key(item)``) owned by ``shard``."""
    if shard.count == 1:
        return list(items)
    return [x for x in items if owner(key(x), shard.count) == shard.index]


def shard_report(cfg: "Config", every: bool = False) -> str:
    """What ``check-config`` prints: ``shard I/N serves K of M streams: a, b`` (this instance's
    shard, see :func:`current`), or one such line per shard with ``every``."""
    me = current(cfg)
    ids = [s.id for s in cfg.streams]
    table = assignment(ids, me.count)
    shards = range(me.count) if every else [me.index]
    return "\n".join(f"shard {i}/{me.count} serves {len(table[i])} of {len(ids)} streams: "
                     + (", ".join(table[i]) or "(none)") for i in shards)
