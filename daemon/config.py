"""Typed, strict configuration.

Unknown keys are rejected (``extra="forbid"``) and every error names its key path, e.g.
``streams[1].id: duplicate stream id 'cam1'`` or, for YAML syntax errors, the file and line.
``check_config`` also checks what the types cannot: that a file source exists and a model file
named in the config is there.

Pure: parsing and checking read the config file and look at the files it names, nothing else.
No network (``demo://`` is fetched at start by ``daemon/prepare.py``), and a validated config is
never changed in place: what derives from it is a new value (``model_copy``).

**A new config key** is a field here (or in ``analytics/config.py``) with its default and a
comment, documented in README/docs; reload decides per section (``daemon/reload.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from daemon.analytics.config import AnalyticsConfig
from daemon.errors import UsageError
from daemon.publish.mqtt_config import MqttConfig
from daemon.shard import ShardConfig
from daemon.quant.settings import CalibrationSettings
from daemon.yamlconf import load_yaml
from daemon.sources.timeouts import timeout_problems

STREAM_ID = re.compile(r"^[A-Za-z0-9_-]+$")
DEMO_SCHEME = "demo://"
DEMO_VIDEOS = ("", "bikes.mp4")  # demo:// names; fetched at start (daemon.prepare), never here
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
URL_SCHEMES = ("file", "demo", "rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# An http(s) URL whose path ends in one of these is a finite file, unless `live` says otherwise.
FILE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".m2ts", ".mpg",
                   ".mpeg", ".flv", ".h264", ".h265", ".hevc", ".y4m")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StreamConfig(Strict):
    id: str
    url: str
    # `url` as the config wrote it, before a relative path was made absolute (for hints only)
    _written_url: str | None = PrivateAttr(default=None)
    # Files: start over at the end instead of ending the stream.
    loop: bool = False
    # Files: pace at the file's own frame rate, like a camera. Live sources are always real time.
    realtime: bool = False
    # Live/realtime sources: decoded frames older than this are dropped before inference.
    max_age_ms: float = Field(default=500.0, gt=0)
    # The one judge of "no frames for too long" (see docs/reconnect.md): connected but no frame
    # for this long -> ``stalled``, the connection is dropped and reopened with backoff. Applies
    # to files too (time the source spends waiting for data; a realtime file's pacing and a full
    # queue do not count). Each blocking read is bounded by stall_timeout + 1 s (PyAV's read
    # timeout and FFmpeg's RTSP/HTTP socket ``timeout`` option follow from it).
    stall_timeout: float = Field(default=10.0, gt=0)
    # Seconds for av.open() (connect, RTSP handshake) and again for stream probing.
    open_timeout: float = Field(default=10.0, gt=0)
    # Kept for old configs: the read bound follows stall_timeout. If given, it must be >=
    # stall_timeout (a smaller value would let a read give up before the stream is stalled).
    read_timeout: float | None = Field(default=None, gt=0)
    # While waiting to reconnect: a TCP connect to the camera's host:port every this many
    # seconds; when it succeeds after failing, the next open happens at once. 0 = off.
    probe_interval: float = Field(default=1.0, ge=0)
    # Reconnect backoff (live sources): the n-th consecutive failure waits
    # uniform(0, min(backoff_cap, backoff_base * 2**n)) seconds ("full jitter"), never less than
    # 0.1 s. ``attempts`` go back to 0 once the stream has delivered frames for ``stable_after``
    # seconds after connecting, so a server that accepts and drops at once keeps backing off.
    backoff_base: float = Field(default=0.5, gt=0)
    backoff_cap: float = Field(default=30.0, gt=0)
    stable_after: float = Field(default=10.0, ge=0)
    # After the server refused the credentials (401/403): wait this long (plus up to 10%)
    # before the next attempt, whatever the attempt count; retried forever (passwords get fixed).
    auth_backoff: float = Field(default=60.0, gt=0)
    # Decoded frames waiting for inference, per stream. Full -> oldest dropped (live) or the
    # decoder waits (files with realtime: false, which never drop).
    queue_size: int = Field(default=2, ge=1, le=256)
    # Extra FFmpeg/PyAV demuxer options (strings), merged over the defaults.
    options: dict[str, str] = Field(default_factory=dict)
    # FFmpeg's input format (``ffmpeg -f``), e.g. ``mjpeg``; null = probed from the data.
    # See docs/sources.md.
    format: str | None = None
    # Where to decode (docs/gpu.md): "cuda" = NVDEC, frames kept on the GPU; "auto" = NVDEC
    # while the GPU backend (TensorRT) is in use, else the CPU.
    decode: Literal["auto", "cpu", "cuda"] = "auto"
    # null = decided from the URL (see is_file); true: a live source (stale frames dropped, end
    # of stream = reconnect); false: a finite file served over the network (loop/realtime apply).
    live: bool | None = None
    # Frames decoded after a packet loss, until the next keyframe (docs/robustness.md): "mark"
    # publishes them with "damaged": true, "skip" drops them (counted), "off" does not look.
    damage: Literal["mark", "skip", "off"] = "mark"
    # Tracking, zones and line crossings (docs/analytics.md); null = off.
    analytics: AnalyticsConfig | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STREAM_ID.match(v):
            raise ValueError(f"stream id {v!r} must match [A-Za-z0-9_-]+")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("url is empty")
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", v)
        if m and m.group(1).lower() not in URL_SCHEMES:
            raise ValueError(f"unsupported URL scheme {m.group(1)}:// (use a file path, "
                             + ", ".join(f"{s}://" for s in URL_SCHEMES if s != "file") + ")")
        if v.startswith(DEMO_SCHEME) and v[len(DEMO_SCHEME):] not in DEMO_VIDEOS:
            raise ValueError(f"unknown demo video {v!r} (use {DEMO_SCHEME}bikes.mp4)")
        from daemon.sources import urls

        urls.register_url(v)  # before any message about it can be printed
        problems = urls.url_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        from daemon.sources import urls

        return urls.check_input_format(v)

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, str]) -> dict[str, str]:
        from daemon.sources import urls

        return urls.check_options(v)

    @model_validator(mode="after")
    def _backoff(self) -> "StreamConfig":
        if self.backoff_cap < self.backoff_base:
            raise ValueError(f"backoff_cap ({self.backoff_cap}) must be >= backoff_base ({self.backoff_base})")
        return self

    @model_validator(mode="after")
    def _timeouts(self) -> "StreamConfig":
        # stall_timeout alone decides when a stream is stalled: no other timeout may end a read
        # of a slow source sooner (see docs/reconnect.md).
        problems = timeout_problems(self.stall_timeout, self.read_timeout, self.options, self.url)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_local(self) -> bool:
        """A path on this machine (or file:, demo:)."""
        return not self.url.lower().startswith(LIVE_SCHEMES)

    @property
    def is_file(self) -> bool:
        """Finite and seekable: ``loop`` and ``realtime`` apply, the end of file ends the stream.
        Local paths always; http(s) URLs of a media file (by extension) unless ``live: true``;
        any URL with ``live: false``."""
        if self.live is not None:
            return not self.live
        if self.is_local:
            return True
        url = self.url.lower()
        path = url.split("?", 1)[0].split("#", 1)[0]
        return url.startswith(("http://", "https://")) and path.endswith(FILE_EXTENSIONS)

    @property
    def is_live(self) -> bool:
        """Frames arrive on their own clock: drop stale ones rather than fall behind."""
        return (not self.is_file) or self.realtime


# model.calibration: defined once, with the calibration code that reads it.
CalibrationConfig = CalibrationSettings


class ModelConfig(Strict):
    # auto: TensorRT on a GPU, else OpenVINO where it imports, else ONNX Runtime.
    backend: Literal["auto", "onnxruntime", "openvino", "tensorrt"] = "auto"
    precision: Literal["fp32", "int8", "fp16"] = "fp32"
    conf_threshold: float = Field(default=0.25, gt=0, lt=1)
    nms_threshold: float = Field(default=0.45, gt=0, le=1)
    # Your own ONNX model (with detectd metadata, or YOLOv3-Tiny COCO heads assumed); when
    # null, the Darknet files below (default: the fetched YOLOv3-Tiny) are exported on first run.
    onnx: str | None = None
    cfg: str | None = None
    weights: str | None = None
    names: str | None = None
    # Intra-op threads of ONNX Runtime / OpenVINO's INFERENCE_NUM_THREADS; 0 = one per core.
    threads: int = Field(default=0, ge=0, le=256)
    # OpenVINO's PERFORMANCE_HINT; throughput measured 1.12x latency with 8 streams on 2 cores
    # (docs/openvino.md).
    performance_hint: Literal["latency", "throughput"] = "throughput"
    # OpenVINO infer requests in flight; 0 = twice OpenVINO's optimum for the hint, at least 2.
    infer_requests: int = Field(default=0, ge=0, le=64)
    max_batch: int = Field(default=1, ge=1, le=64)
    # How long the scheduler waits for a batch to fill once it has one frame.
    max_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    # Where models, INT8 variants and engines are cached; default: detectd's cache dir.
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _darknet_pair(self) -> "ModelConfig":
        if (self.cfg is None) != (self.weights is None):
            raise ValueError("model.cfg and model.weights must be given together")
        return self


class CurveConfig(Strict):
    server_secret_key: str
    authorized_keys_dir: str


class PublishConfig(Strict):
    endpoint: str = "tcp://127.0.0.1:5560"
    skip_empty: bool = False
    # ZeroMQ send high-water mark: a slow subscriber loses messages (counted), the daemon
    # never blocks.
    sndhwm: int = Field(default=10000, ge=1)
    curve: CurveConfig | None = None

    @field_validator("endpoint")
    @classmethod
    def _ep(cls, v: str) -> str:
        if not re.match(r"^(tcp|ipc|inproc)://.+", v):
            raise ValueError(f"endpoint {v!r} must look like tcp://host:port or ipc://path")
        return v


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{v!r} must be host:port")
    if not 0 <= int(port) <= 65535:  # 0 stays valid: the OS picks a free port (tests use it)
        raise ValueError(f"{v!r}: port {port} is out of range 1..65535 (0: any free port)")
    return v


class MetricsConfig(Strict):
    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v)


class PreviewConfig(Strict):
    enabled: bool = False
    # null = served on the metrics listener under /preview/
    listen: str | None = "127.0.0.1:8081"
    fps: float = Field(default=5.0, gt=0, le=30)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v)


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # Seconds between status lines (frames/s, latency, detections by label); 0 = off.
    status_interval: float = Field(default=5.0, ge=0)


class ShutdownConfig(Strict):
    # SIGTERM: finish and publish the frames in flight within this many seconds.
    drain_timeout: float = Field(default=5.0, gt=0)


class Config(Strict):
    streams: list[StreamConfig] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    preview: PreviewConfig = Field(default_factory=PreviewConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    # Also publish on an MQTT broker (docs/mqtt.md); null = ZeroMQ only.
    mqtt: MqttConfig | None = None
    # This instance serves the streams rendezvous hashing gives shard `index` of `count`
    # (docs/scaling.md); `detectd run --shard I/N` overrides it.
    shard: ShardConfig = Field(default_factory=ShardConfig)

    @model_validator(mode="after")
    def _unique_ids(self) -> "Config":
        seen: set[str] = set()
        for i, s in enumerate(self.streams):
            if s.id in seen:
                raise ValueError(f"@streams[{i}].id: duplicate stream id {s.id!r}")
            seen.add(s.id)
        return self


class ConfigError(UsageError):
    """Invalid configuration: ``problems`` is a list of ``key.path: message`` lines (exit 2)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        msg = str(e.get("msg", "invalid"))
        loc = _loc(tuple(e.get("loc", ())))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if msg.startswith("@"):  # a model validator that names its own key path
            path, _, msg = msg[1:].partition(": ")
            loc = path
        elif e.get("type") == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(tuple(e.get("loc", ())))
        problems.append(f"{loc}: {msg}")
    return problems


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (``X``, ``X | None``, ``list[X]``), if any."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """``"; did you mean 'loop'?"`` for an unknown key close to a field of the section it is in
    (difflib's ratio >= 0.6, its default), else ``""``. ``loc`` is pydantic's error location."""
    import difflib

    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue  # a list index: the element has the list's model
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    if model is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _missing_stream_file(i: int, stream_id: Any, url: str, path: Path | str) -> str:
    """The problem line for a stream file that is not there; a URL missing its ``://``
    (``htp//host/x.mp4``, ``rtsp:/cam``) reads as a relative file name, so it gets a hint."""
    line = f"streams[{i}].url: stream {stream_id!r}: file not found: {path}"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*//|^(rtsps?|https?|rtmp|srt|udp|tcp):(?!//)", url):
        line += " (a URL needs scheme://host/..., e.g. rtsp://, http://)"
    return line


def parse_config(data: Any, base_dir: Path | None = None) -> Config:
    if data is None:
        raise ConfigError(["(top level): the config is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        # Report every problem at once: the files the valid parts name are checked too.
        raise ConfigError(format_validation_error(err) + _raw_file_problems(data, base_dir)) from None
    return cfg if base_dir is None else _resolve_paths(cfg, base_dir)


def _raw_file_problems(data: dict[str, Any], base: Path | None) -> list[str]:
    """Missing local stream files, from a config that failed validation elsewhere."""
    problems = []
    streams = data.get("streams")
    for i, s in enumerate(streams if isinstance(streams, list) else []):
        url = s.get("url") if isinstance(s, dict) else None
        if not isinstance(url, str) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) or not url.strip():
            continue
        p = Path(os.path.expanduser(url[5:] if url.startswith("file:") else url))
        if base is not None and not p.is_absolute():
            p = base / p
        if not p.is_file():
            problems.append(_missing_stream_file(i, s.get("id"), url, p))
    return problems


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Relative file paths in a config are relative to the config file, not the cwd. Returns a
    new config (validated models are never changed in place)."""

    def fix(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(os.path.expanduser(p))
        return str(q if q.is_absolute() else (base / q))

    # demo:// stays as written: validation never fetches; daemon.prepare resolves it at start.
    streams = [s.model_copy(update={"url": fix(s.url) or s.url})
               if s.is_local and not s.url.startswith(("file:", DEMO_SCHEME)) else s for s in cfg.streams]
    for resolved, written in zip(streams, cfg.streams):
        if resolved is not written:
            resolved._written_url = written.url
    m = cfg.model
    model = m.model_copy(update={"onnx": fix(m.onnx), "cfg": fix(m.cfg), "weights": fix(m.weights),
                                 "names": fix(m.names), "cache_dir": fix(m.cache_dir) if m.cache_dir else m.cache_dir})
    return cfg.model_copy(update={"streams": streams, "model": model})


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read config file: {exc}"]) from None
    try:
        data, duplicates = load_yaml(text)  # yaml.safe_load, but duplicate keys are reported
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"{p}: YAML syntax error at {where}: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: YAML error: {exc}"]) from None
    if not duplicates:
        return parse_config(data, p.resolve().parent)
    problems = [f"{p}: {d}" for d in duplicates]
    try:  # the rest of the file is checked too: every problem in one run
        parse_config(data, p.resolve().parent)
    except ConfigError as exc:
        problems += exc.problems
    raise ConfigError(problems)


def check_config(cfg: Config) -> list[str]:
    """Problems the types cannot see: missing files. Empty list when everything is there."""
    problems = []
    for i, s in enumerate(cfg.streams):
        if s.is_local and not s.url.startswith(DEMO_SCHEME):  # demo: daemon.prepare
            path = s.url[5:] if s.url.startswith("file:") else s.url
            if not Path(path).is_file():
                problems.append(_missing_stream_file(i, s.id, s._written_url or s.url, path))
    tracked = [i for i, s in enumerate(cfg.streams) if s.analytics is not None and s.analytics.tracker is not None]
    if tracked:
        import importlib.util

        if importlib.util.find_spec("trackers") is None:
            problems.append(f"streams[{tracked[0]}].analytics.tracker: needs the 'trackers' package "
                            "(pip install 'detectd[analytics]', docs/analytics.md)")
    for key in ("onnx", "cfg", "weights", "names"):
        v = getattr(cfg.model, key)
        if v is not None and not Path(v).is_file():
            problems.append(f"model.{key}: file not found: {v}")
    return problems
