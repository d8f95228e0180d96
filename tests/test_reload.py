"""``plan_reload``: what a SIGHUP does, as a pure function of the running and the new config
(daemon/reload.py). The daemon-level reload (real process, real SIGHUP) is in
tests/test_reliability.py."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import Config, parse_config
from daemon.reload import RESTART_SECTIONS, plan_reload

ZONE = {"name": "door", "points": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.5], [0.1, 0.5]]}


def cfg(*streams: dict[str, Any], **sections: Any) -> Config:
    return parse_config({"streams": list(streams), **sections})


def s(sid: str, **opts: Any) -> dict[str, Any]:
    return {"id": sid, "url": f"rtsp://cam.example/{sid}", **opts}


def test_same_config_changes_nothing() -> None:
    old = cfg(s("a"), s("b"))
    plan = plan_reload(old, cfg(s("a"), s("b")))
    assert (plan.added, plan.removed, plan.restarted, plan.retuned) == ([], [], [], [])
    assert plan.unchanged == ["a", "b"] and plan.restart_needed == []
    assert plan.config == old


def test_streams_added_removed_and_restarted_in_config_order() -> None:
    old = cfg(s("a"), s("b"), s("c"))
    new = cfg(s("d"), s("c", max_age_ms=250), s("a"), s("e"))
    plan = plan_reload(old, new)
    assert plan.added == ["d", "e"]
    assert plan.removed == ["b"]
    assert plan.restarted == ["c"]  # an option changed: the source is reopened
    assert plan.unchanged == ["a"] and plan.retuned == []
    assert plan.config == new


@pytest.mark.parametrize("change", [{"url": "rtsp://cam.example/other"}, {"queue_size": 5},
                                    {"options": {"rtsp_transport": "udp"}}, {"damage": "skip"}])
def test_any_stream_option_restarts_that_stream_only(change: dict[str, Any]) -> None:
    plan = plan_reload(cfg(s("a"), s("b")), cfg(s("a", **change), s("b")))
    assert plan.restarted == ["a"] and plan.unchanged == ["b"]


def test_analytics_alone_is_applied_in_place() -> None:
    old = cfg(s("a", analytics={"tracker": {}}), s("b"))
    new = cfg(s("a", analytics={"tracker": {}, "zones": [ZONE]}), s("b"))
    plan = plan_reload(old, new)
    assert plan.retuned == ["a"] and plan.restarted == [] and plan.unchanged == ["b"]
    assert plan.config.streams[0].analytics == new.streams[0].analytics


def test_analytics_and_an_option_restart_the_stream() -> None:
    plan = plan_reload(cfg(s("a")), cfg(s("a", loop=True, analytics={"tracker": {}})))
    assert plan.restarted == ["a"] and plan.retuned == []


@pytest.mark.parametrize("section,value", [("model", {"conf_threshold": 0.5}),
                                           ("publish", {"endpoint": "tcp://127.0.0.1:5999"}),
                                           ("metrics", {"listen": "127.0.0.1:9999"}),
                                           ("preview", {"enabled": True})])
def test_sections_that_need_a_restart_keep_their_running_values(section: str, value: dict[str, Any]) -> None:
    assert section in RESTART_SECTIONS
    old = cfg(s("a"))
    new = cfg(s("a"), s("b"), **{section: value})
    plan = plan_reload(old, new)
    assert plan.restart_needed == [section]
    assert getattr(plan.config, section) == getattr(old, section)
    assert plan.added == ["b"]  # the rest of the file is applied


def test_logging_and_shutdown_apply_at_once() -> None:
    new = cfg(s("a"), logging={"level": "debug", "status_interval": 0}, shutdown={"drain_timeout": 2})
    plan = plan_reload(cfg(s("a")), new)
    assert plan.restart_needed == [] and plan.config == new


def test_inputs_are_not_changed() -> None:
    old, new = cfg(s("a")), cfg(s("b"), model={"max_batch": 4})
    before = (old.model_dump(), new.model_dump())
    plan_reload(old, new)
    assert (old.model_dump(), new.model_dump()) == before


def test_a_changed_shard_count_moves_streams_apart_from_removing_them() -> None:
    """Streams another shard owns after the change are ``moved`` (their last word is not
    "removed"; on MQTT the new owner writes their retained state); a stream gone from the file
    is removed only."""
    from daemon.shard import owner

    ids = [f"cam{i}" for i in range(12)]
    mine_before = {i for i in ids if owner(i, 3) == 1}
    moving = {i for i in mine_before if owner(i, 4) != 1}
    dropped = sorted(mine_before - moving)[0]  # one of shard 1's streams leaves the file
    assert moving and dropped  # the example shows both cases (rendezvous hashing, fixed ids)
    old = cfg(*(s(i) for i in ids), shard={"index": 1, "count": 3})
    new = cfg(*(s(i) for i in ids if i != dropped), shard={"index": 1, "count": 4})
    plan = plan_reload(old, new)
    assert set(plan.removed) == moving | {dropped}
    assert set(plan.moved) == moving
    assert plan.added == []  # going 3 -> 4, streams only move to the new shard
