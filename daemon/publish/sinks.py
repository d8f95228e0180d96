"""Every sink the config asks for, behind one :class:`~daemon.publish.sink.FanOut`.

The daemon's only wiring (``Daemon.start``): the ZeroMQ publisher joins the daemon's
:class:`FanOut` first, then the others ``build_sinks(cfg, metrics, publisher)`` returns
(``.sinks[1:]``) are added to it; the pipeline publishes through that FanOut and ``/readyz``
reports its ``problem()``. A new transport
(Redis Streams, NATS, Kafka; docs/scaling.md) is one module with a :class:`Sink` class, one
optional config section and one ``if`` here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from daemon.publish.sink import FanOut, Sink

if TYPE_CHECKING:
    from daemon.config import Config

log = logging.getLogger(__name__)


def build_sinks(cfg: "Config", metrics: Any, publisher: Sink) -> FanOut:
    """``publisher`` (ZeroMQ, always first) plus the sinks configured (``mqtt:``).

    Raises what a sink's constructor raises (a missing password file:
    :class:`daemon.publish.mqtt_config.MqttCredentialError`, a ``ValueError`` naming
    ``mqtt.password_file``); an unreachable broker is not an error (the sink reconnects)."""
    sinks: list[Sink] = [publisher]
    mq = getattr(cfg, "mqtt", None)
    if mq is not None:
        from daemon import shard
        from daemon.publish.mqtt import MqttSink
        from daemon.publish.mqtt_config import default_client_id

        sh = shard.current(cfg)
        client_id = mq.client_id or default_client_id(sh.index)
        sinks.append(MqttSink(mq, metrics, client_id=client_id, shard=(sh.index, sh.count)))
        log.info("publishing on MQTT too: %s:%d, topics %s/..., client id %s, QoS %d", mq.host,
                 mq.broker_port, mq.topic_prefix, client_id, mq.qos)
    return FanOut(sinks)
