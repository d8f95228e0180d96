"""The ``mqtt:`` config section (docs/mqtt.md): types and checks only, no network, no paho import.

The password is never a config value: ``password_file`` names a file, usually
``$CREDENTIALS_DIRECTORY/mqtt-password`` (systemd's ``LoadCredential=``, or a Kubernetes Secret
mounted there). A ``password:`` key is refused with a message that says so (and never echoes it).
Paths go through ``os.path.expandvars`` and ``~`` expansion, as ``publish.curve`` paths do.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.errors import UsageError

__all__ = ["MqttConfig", "MqttTlsConfig", "MqttCredentialError", "read_password", "check_files",
           "expand_path", "default_client_id"]

# MQTT topic names: no wildcards (+ #), no NUL (MQTT 3.1.1, 4.7.3); "$" topics belong to brokers.
_TOPIC_PART = re.compile(r"^[^+#\x00/$][^+#\x00]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class MqttTlsConfig(_Strict):
    # CA bundle that signs the broker's certificate; null = the system's trusted CAs.
    ca_file: str | None = None
    # Client certificate and its key (brokers with require_certificate); both or neither.
    cert_file: str | None = None
    key_file: str | None = None
    # Skip the host name check of the broker's certificate (still verified against the CA).
    # Only for brokers addressed by an IP or a name their certificate does not carry.
    insecure: bool = False

    @model_validator(mode="after")
    def _pair(self) -> "MqttTlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("@mqtt.tls: cert_file and key_file must be given together")
        return self


class MqttConfig(_Strict):
    """``mqtt:``: publish detections, events, analytics and state to an MQTT broker too."""

    host: str
    # null: 8883 with tls, else 1883 (IANA).
    port: int | None = Field(default=None, ge=1, le=65535)
    # Unique per broker; null: detectd-<hostname>-<shard index> (not the count: stable on rescale).
    client_id: str | None = None
    # Topics: <prefix>/detections/<stream>, events/<stream>, analytics/<stream>,
    # state/<stream> (retained), availability/<client_id> (retained, last will).
    topic_prefix: str = "detectd"
    # QoS of detections and analytics (0: at most once, cheapest; 1: at least once, acknowledged).
    # Events, state and availability always use QoS 1.
    qos: Literal[0, 1] = 0
    keepalive: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    # File holding the password (one line; a trailing newline is ignored).
    password_file: str | None = None
    tls: MqttTlsConfig | None = None
    # Messages held while the broker is away or slow (oldest dropped first, counted as
    # detectd_mqtt_messages_dropped_total{reason="buffer_full"}).
    buffer: int = Field(default=10000, ge=1, le=10_000_000)
    # Messages handed to the client library and not yet written (QoS 0) / acknowledged (QoS 1).
    inflight: int = Field(default=1000, ge=1, le=65000)
    # Reconnect backoff: attempt n waits uniform(0, min(reconnect_max, reconnect_min * 2**n)) s,
    # at least 0.1 s ("full jitter"), reset by an accepted connection.
    reconnect_min: float = Field(default=0.5, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)
    # Frames without detections are not sent on MQTT (state and events still are).
    skip_empty: bool = False
    # true: /readyz fails (503) while the broker cannot be reached. Default false: the outage is
    # reported in /readyz's sinks_problem and detectd_mqtt_connected, the instance stays ready
    # (ZeroMQ consumers and Kubernetes Services are not affected by a broker outage).
    required_for_ready: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_clear_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("@mqtt.password: a password is never read from the config in clear; "
                             "write it to a file only detectd can read and set mqtt.password_file "
                             "(e.g. $CREDENTIALS_DIRECTORY/mqtt-password, docs/mqtt.md)")
        return data

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        parts = v.split("/")
        if not v or not all(_TOPIC_PART.match(p) for p in parts):
            raise ValueError(f"{v!r}: a topic prefix has no wildcards (+ #), no empty level "
                             "(leading, trailing or double /) and does not start with $")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        if v is not None and not (0 < len(v.encode()) <= 65535):
            raise ValueError("client_id must be 1..65535 bytes")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "MqttConfig":
        if self.password_file is not None and self.username is None:
            raise ValueError("@mqtt.username: needed with mqtt.password_file")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"@mqtt.reconnect_max: ({self.reconnect_max}) must be >= "
                             f"mqtt.reconnect_min ({self.reconnect_min})")
        return self

    @property
    def broker_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls is not None else 1883)


class MqttCredentialError(UsageError, OSError):
    """A credential or certificate file is missing or unreadable; the message names the key.

    A :class:`daemon.errors.UsageError` (exit 2: the config names a file that cannot be used);
    still an ``OSError`` for callers that catch file errors."""


def expand_path(value: str) -> Path:
    """``$VAR`` and ``~`` expanded, as for ``publish.curve``."""
    return Path(os.path.expandvars(value)).expanduser()


def _file_problem(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    p = expand_path(value)
    if "$" in str(p):
        var = str(p)[str(p).index("$"):].split("/", 1)[0]
        return (f"{key}: {var} is not set (systemd sets $CREDENTIALS_DIRECTORY for a unit with "
                "LoadCredential=; elsewhere set the variable or give the file's path)")
    if not p.is_file():
        return f"{key}: file not found: {p}"
    if not os.access(p, os.R_OK):
        return f"{key}: file not readable by this user: {p}"
    return None


def check_files(cfg: MqttConfig | None) -> list[str]:
    """What ``check-config`` reports: one ``mqtt.<key>: problem`` line per unusable file."""
    if cfg is None:
        return []
    keys = [("mqtt.password_file", cfg.password_file)]
    if cfg.tls is not None:
        keys += [("mqtt.tls.ca_file", cfg.tls.ca_file), ("mqtt.tls.cert_file", cfg.tls.cert_file),
                 ("mqtt.tls.key_file", cfg.tls.key_file)]
    problems = [p for k, v in keys if (p := _file_problem(k, v)) is not None]
    if cfg.password_file is not None and not problems:
        try:
            read_password(cfg)
        except MqttCredentialError as exc:
            problems.append(str(exc))
    return problems


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from ``mqtt.password_file`` (first line, newline stripped), or None.

    Raises :class:`MqttCredentialError` naming ``mqtt.password_file`` and the path, never the
    content. The password is registered with :func:`daemon.redact.register_secrets` so that no
    log line can print it."""
    if cfg.password_file is None:
        return None
    problem = _file_problem("mqtt.password_file", cfg.password_file)
    if problem is not None:
        raise MqttCredentialError(problem)
    p = expand_path(cfg.password_file)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MqttCredentialError(f"mqtt.password_file: cannot read {p}: {type(exc).__name__}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise MqttCredentialError(f"mqtt.password_file: {p} is empty")
    from daemon.redact import register_secrets

    register_secrets([password], any_length=[f"{cfg.username}:{password}"])
    return password


def default_client_id(index: int = 0) -> str:
    """``detectd-<hostname>-<index>`` (``index``: the shard index, 0 unsharded). Independent of
    the shard count, so a rescale keeps every instance's client id and availability topic (a
    StatefulSet pod keeps its name and its ordinal; two instances on one host differ by index)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "host"
    return f"detectd-{host}-{index}"
