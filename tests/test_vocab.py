"""daemon/vocab.py is the one definition of the contract's words: the JSON Schemas shipped for
subscribers, the metrics' label sets, the policy, the error classification and the subscriber
client all say the same."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon import metrics
from daemon.publish import client, schema
from daemon.sources import errors, policy
from daemon.vocab import AnalyticsEvent, DropReason, ErrorKind, EventKind, StreamState, Topic


def load_schema(kind: str) -> dict[str, Any]:
    text = resources.files("daemon.publish").joinpath(f"schemas/{kind}.v1.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def test_schema_enums_are_the_vocabulary() -> None:
    events = load_schema("events")["properties"]
    assert events["event"]["enum"] == [k.value for k in EventKind]
    # The state field is not an enum (a transition without one repeats the event's name), but its
    # description lists the states: the same list, in the same order.
    listed = re.search(r"\(([a-z_, ]+)\)$", events["state"]["description"])
    assert listed is not None and listed.group(1).split(", ") == [s.value for s in StreamState]
    analytics = load_schema("analytics")["properties"]
    assert analytics["event"]["enum"] == [k.value for k in AnalyticsEvent]


def test_schema_version_has_one_source() -> None:
    assert client.SCHEMA_VERSION is schema.SCHEMA_VERSION
    for kind in ("detections", "events", "analytics"):
        assert load_schema(kind)["properties"]["v"]["const"] == schema.SCHEMA_VERSION


def test_client_and_schema_mean_the_same_by_their_names() -> None:
    assert client.EVENT_KINDS == client.EVENTS == schema.EVENT_KINDS == set(EventKind)
    assert client.TRANSITIONS == set(EventKind) - {"state"}
    assert client.KINDS == ("detections", "events", "analytics") == tuple(Topic)
    assert not hasattr(schema, "EVENTS")  # "events" the topic is Topic.EVENTS


def test_metric_label_sets_are_the_vocabulary() -> None:
    m = metrics.Metrics(CollectorRegistry())
    m.init_stream("cam")
    r = m.registry
    for state in StreamState:  # every state's series exists from the start, 1 for the current one
        want = 1.0 if state is StreamState.CONNECTING else 0.0
        assert r.get_sample_value("detectd_stream_state", {"stream": "cam", "state": state}) == want
    for kind in ErrorKind:
        assert r.get_sample_value("detectd_stream_errors_total", {"stream": "cam", "kind": kind}) == 0
    for reason in DropReason:
        assert r.get_sample_value("detectd_frames_dropped_total",
                                  {"stream": "cam", "reason": reason}) == 0
    m.set_state("cam", StreamState.ERROR)
    assert r.get_sample_value("detectd_stream_state", {"stream": "cam", "state": "error"}) == 1
    assert r.get_sample_value("detectd_stream_state", {"stream": "cam", "state": "connecting"}) == 0


def test_policy_and_classifier_speak_the_vocabulary() -> None:
    assert policy.State is StreamState
    assert policy.ERROR_KINDS == set(ErrorKind)
    assert errors.classify_error(ConnectionRefusedError(111, "Connection refused")) is ErrorKind.NETWORK
    assert errors.classify_error(TimeoutError()) is ErrorKind.TIMEOUT
    assert errors.SourceError("auth", "no").kind is ErrorKind.AUTH
    p = policy.ReconnectPolicy()
    p.on_connect_attempt(0.0)
    p.on_error(0.0, "auth", "401")  # the wire string is accepted and normalised
    assert p.last_error_kind is ErrorKind.AUTH and p.state is StreamState.AUTH_FAILED
    with pytest.raises(ValueError, match="unknown error kind 'nope'"):
        p.on_error(1.0, "nope")


def test_members_are_their_wire_strings() -> None:
    assert json.dumps({"s": StreamState.AUTH_FAILED, "e": EventKind.STATE}) == \
        '{"s": "auth_failed", "e": "state"}'
    assert f"{ErrorKind.EOF}/{Topic.EVENTS}" == "eof/events"
    assert schema.topic(Topic.EVENTS, "cam1") == b"events/cam1/"
