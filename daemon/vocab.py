"""detectd's vocabulary: every fixed set of words that crosses a boundary, defined once.

Each set is a :class:`enum.StrEnum`, so a member *is* its wire string (``StreamState.UP ==
"up"``, ``f"{StreamState.UP}" == "up"``, ``json.dumps`` writes ``"up"``) and code that compares
with plain strings keeps working. Everything else derives from these:

===================  ==========================================================================
set                  derived here
===================  ==========================================================================
:class:`StreamState` ``sources/policy.State`` (the same enum), the ``state`` label of
                     ``detectd_stream_state`` (``metrics.STREAM_STATES``), the ``state`` field
                     of events messages, the preview's state badge
:class:`ErrorKind`   what ``sources/errors.classify_error`` returns, what
                     ``ReconnectPolicy.on_error`` accepts, the ``kind`` label of
                     ``detectd_stream_errors_total`` / ``detectd_stream_last_error_info``
:class:`EventKind`   the ``event`` field of ``events/<stream>/`` messages
                     (``publish/schemas/events.v1.json``), ``publish/client.EVENT_KINDS``
:class:`AnalyticsEvent`  the ``event`` field of ``analytics/<stream>/`` messages
                     (``publish/schemas/analytics.v1.json``)
:class:`Topic`       the first part of every ZeroMQ topic (``<topic>/<stream>/``)
:class:`DropReason`  the ``reason`` label of ``detectd_frames_dropped_total``
:class:`MqttDropReason`  the ``reason`` label of ``detectd_mqtt_messages_dropped_total``
:class:`StopReason`  the ``reason`` of a stream's last ``stopped`` state
===================  ==========================================================================

The JSON schemas are files (they are shipped for subscribers in other languages);
``tests/test_vocab.py`` checks that their enums equal these sets. Adding a member: add it here,
then to the schema file the test names, then document it (README / docs); metrics and the
subscriber client pick it up by themselves.

All members are part of the contract: add freely (within schema v1), never rename or remove.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["StreamState", "ErrorKind", "EventKind", "AnalyticsEvent", "Topic", "DropReason",
           "MqttDropReason", "StopReason"]


class StreamState(StrEnum):
    """Where one stream is (``sources/policy.py`` explains the reconnect state machine)."""

    CONNECTING = "connecting"  # an attempt is due or in progress (the initial state)
    UP = "up"  # connected; frames are expected
    STALLED = "stalled"  # connected but no frame for stall_timeout; reconnect scheduled
    BACKOFF = "backoff"  # a network error or a live stream's end; reconnect scheduled
    AUTH_FAILED = "auth_failed"  # credentials refused; retried after auth_backoff
    ENDED = "ended"  # end of a finite file; terminal
    STOPPED = "stopped"  # stopped (shutdown, removed by a reload); terminal
    # A permanent failure (a missing file, not a video, a crashed source thread): the source's
    # verdict, terminal; the reconnect policy itself never enters it.
    ERROR = "error"


class ErrorKind(StrEnum):
    """Why a connection failed, as the reconnect policy acts on it (``sources/errors.py`` says
    which exception is which kind)."""

    NETWORK = "network"  # refused, reset, unreachable, not found, anything unknown: backoff
    AUTH = "auth"  # credentials refused: the long auth backoff
    EOF = "eof"  # the stream ended: reconnect (live) or ended (file)
    DECODE = "decode"  # bad data: a skipped packet while up, a failed attempt while opening
    STALL = "stall"  # connected, no frame for stall_timeout (the policy's own verdict)
    TIMEOUT = "timeout"  # an open or read timed out: a stall while up, a network error before
    UNSUPPORTED = "unsupported"  # a frame detectd refuses to convert (sources/validate.py)


class EventKind(StrEnum):
    """The ``event`` of an ``events/<stream>/`` message."""

    UP = "up"  # frames flow
    DOWN = "down"  # the connection is lost
    RECONNECTING = "reconnecting"  # a new attempt is scheduled
    ENDED = "ended"  # a finite file reached its end
    ERROR = "error"  # a permanent failure (see reason)
    STALLED = "stalled"  # connected but no frame for stall_timeout
    AUTH_FAILED = "auth_failed"  # credentials refused, retried slowly
    # Not a transition: the stream's current state, sent in answer to a new subscription (see
    # publish/publisher.py); added within v1, consumers ignore kinds they do not know.
    STATE = "state"


class AnalyticsEvent(StrEnum):
    """The ``event`` of an ``analytics/<stream>/`` message (docs/analytics.md)."""

    ZONE_ENTER = "zone_enter"
    ZONE_EXIT = "zone_exit"
    LINE_CROSS = "line_cross"


class Topic(StrEnum):
    """What a message is about: its topic is ``<topic>/<stream>/``."""

    DETECTIONS = "detections"
    EVENTS = "events"
    ANALYTICS = "analytics"


class DropReason(StrEnum):
    """Why a frame (or packet) was dropped before publishing (docs/robustness.md)."""

    STALE = "stale"
    SUPERSEDED = "superseded"
    QUEUE_FULL = "queue_full"
    CORRUPT = "corrupt"
    ZMQ_HWM = "zmq_hwm"
    SHUTDOWN = "shutdown"
    UNSUPPORTED_FRAME = "unsupported_frame"
    DAMAGED = "damaged"


class MqttDropReason(StrEnum):
    """Why an MQTT message did not reach the broker (``daemon/publish/mqtt.py``, docs/mqtt.md)."""

    BUFFER_FULL = "buffer_full"  # the buffer was at mqtt.buffer (broker away or too slow)
    CONNECTION_LOST = "connection_lost"  # QoS 0, handed to the client, unwritten when it dropped
    SHUTDOWN = "shutdown"  # still buffered or unacknowledged when the daemon stopped


class StopReason(StrEnum):
    """The ``reason`` of a stream's last state ``stopped`` (events ``state`` messages)."""

    REMOVED = "removed from the configuration"  # a reload removed it
    MOVED = "moved to another shard"  # a reload changed shard.count: another instance serves it
    SHUTDOWN = "detectd stopped"  # the daemon stops
