"""SIGHUP: re-read the config and apply what can change while running.

:func:`plan_reload` is pure (two configs in, a :class:`ReloadPlan` out; tested with values in
tests/test_reload.py). The daemon (``app.py``) reads the file with :func:`read_config`, plans,
and applies the plan with :func:`apply_plan`:

- streams added, removed, or restarted (any option changed: the source is reopened, other
  streams are not touched);
- a stream whose ``analytics`` alone changed keeps running and keeps its tracks (zones and lines
  applied in place);
- ``logging`` and ``shutdown`` take effect at once;
- ``model``, ``publish``, ``metrics`` and ``preview`` need a restart (the model is loaded and
  warm, the sockets bound): logged, and the running values are kept.

An invalid file changes nothing. A new config section that can change in place needs nothing
here; one that cannot goes into :data:`RESTART_SECTIONS`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from daemon import shard
from daemon.config import Config, ConfigError, StreamConfig, check_config, load_config
from daemon.vocab import StopReason

if TYPE_CHECKING:
    from daemon.metrics import Metrics

log = logging.getLogger("detectd")

# Sections a reload cannot change in place: the model is loaded and warm, the sockets bound.
RESTART_SECTIONS = ("model", "publish", "metrics", "preview", "mqtt")

__all__ = ["RESTART_SECTIONS", "ReloadPlan", "apply_plan", "plan_reload", "read_config"]


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does. ``config`` is the config to run from now on: the new one, with the
    ``restart_needed`` sections kept as they run. Stream lists are in config order."""

    config: Config
    added: list[str]
    removed: list[str]
    restarted: list[str]  # options changed: the source is reopened
    retuned: list[str]  # only analytics changed: applied in place, tracks kept
    unchanged: list[str]
    restart_needed: list[str]  # RESTART_SECTIONS that changed (not applied)
    # Of ``removed``: still in the config, another shard serves them now (shard.count changed).
    # Their last state is not "removed"; on MQTT the new owner writes the retained state.
    moved: list[str] = field(default_factory=list)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare the running config with the newly read one (both validated), for the streams
    this instance's shard owns. Pure (the ``--shard`` CLI override is read, not changed)."""
    keep = [k for k in RESTART_SECTIONS if getattr(new, k) != getattr(old, k)]
    if keep:
        new = new.model_copy(update={k: getattr(old, k) for k in keep})
    # Only this instance's shard (daemon/shard.py): a changed shard.count moves just the streams
    # whose owner changed; the others are "unchanged" here.
    was = {s.id: s for s in shard.owned_streams(old)}
    want = {s.id: s for s in shard.owned_streams(new)}
    removed = [sid for sid in was if sid not in want]
    added = [sid for sid in want if sid not in was]
    restarted = [sid for sid in want if sid in was
                 and want[sid].model_copy(update={"analytics": was[sid].analytics}) != was[sid]]
    retuned = [sid for sid in want if sid in was and sid not in restarted and want[sid] != was[sid]]
    unchanged = [sid for sid in want if sid in was and want[sid] == was[sid]]
    in_config = {s.id for s in new.streams}
    moved = [sid for sid in removed if sid in in_config]
    return ReloadPlan(new, added, removed, restarted, retuned, unchanged, keep, moved)


def read_config(path: str | os.PathLike[str]) -> Config:
    """Load, prepare (``demo://`` to the cached video, as at start, so an unchanged stream
    compares equal) and check the file as ``check-config`` would. Raises :class:`ConfigError`."""
    from daemon.prepare import resolve_demo_urls

    new = resolve_demo_urls(load_config(path))
    problems = check_config(new)  # what check-config rejects, a reload rejects too
    if problems:
        raise ConfigError(problems)
    return new


class StreamHost(Protocol):
    """What :func:`apply_plan` needs from the daemon."""

    cfg: Config
    metrics: "Metrics"

    def add_stream(self, s: StreamConfig) -> None: ...

    def remove_stream(self, sid: str, *, forget_metrics: bool = True,
                      reason: str = StopReason.REMOVED) -> None: ...

    def set_analytics(self, s: StreamConfig) -> None: ...


def apply_plan(host: StreamHost, plan: ReloadPlan) -> None:
    """Carry out ``plan`` on the running daemon and log what was done."""
    if plan.restart_needed:
        keep = ", ".join(plan.restart_needed)
        log.warning("reload: %s changed: that needs a restart (systemctl restart detectd); "
                    "running on with the old %s settings", keep, keep)
    want = {s.id: s for s in shard.owned_streams(plan.config, host.metrics)}
    for sid in plan.removed:
        host.remove_stream(sid, reason=StopReason.MOVED if sid in plan.moved else StopReason.REMOVED)
    for sid in plan.restarted:
        host.remove_stream(sid, forget_metrics=False)
    host.cfg = plan.config
    for sid in plan.restarted + plan.added:
        host.add_stream(want[sid])
    for sid in plan.retuned:
        host.set_analytics(want[sid])
    logging.getLogger().setLevel(plan.config.logging.level.upper())
    log.info("reload: streams added %s, removed %s, restarted %s, %d unchanged",
             plan.added or "none", plan.removed or "none", plan.restarted or "none", len(plan.unchanged))
    if plan.moved:
        log.info("reload: of the removed, moved to another shard %s (its new owner reports them)", plan.moved)
    if plan.retuned:
        log.info("reload: analytics changed %s (zones and lines applied in place, tracks kept)", plan.retuned)
