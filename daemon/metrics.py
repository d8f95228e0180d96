"""Every Prometheus metric of detectd, in one place, plus the HTTP listener that serves them.

Conventions: prefix ``detectd_``, base units, counters end in ``_total`` (rates are PromQL's job:
no fps gauges), label values come from the config (stream id) or fixed sets (stage, reason,
state), never from URLs. Histogram buckets are sized for what they measure: a pipeline stage
is sub-millisecond to ~100 ms on a CPU; end-to-end frame latency reaches seconds under load.
Every metric takes a ``registry`` so tests build a fresh one.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from daemon.vocab import DropReason, ErrorKind, StreamState

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "infer", "postprocess", "analytics", "publish")
STAGE_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03,
                 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3,
                   0.35, 0.4, 0.45, 0.5, 0.6, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
# Label sets of the vocabulary (daemon/vocab.py): a new state, error kind or drop reason is
# added there and appears here, initialised at zero, by itself.
STREAM_STATES = tuple(StreamState)
ERROR_KINDS = tuple(ErrorKind)
PROBE_RESULTS = ("reachable", "unreachable")
DROP_REASONS = tuple(DropReason)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # Frames dropped per stream, all reasons (count_drop): the status snapshots' figure.
        self._drops: dict[str, int] = {}
        self._drops_lock = threading.Lock()
        self.frames_decoded = Counter("detectd_frames_decoded_total",
                                      "Frames decoded, per stream.", ["stream"], registry=r)
        self.frames_published = Counter("detectd_frames_published_total",
                                        "Detection messages published, per stream.", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "detectd_frames_dropped_total",
            "Frames or packets dropped before publishing, by reason (stale, superseded, queue_full, "
            "corrupt packets, zmq_hwm, shutdown, unsupported_frame, damaged).", ["stream", "reason"],
            registry=r)
        self.frames_damaged = Counter(
            "detectd_frames_damaged_total",
            "Frames decoded after a packet loss and before the next keyframe (possibly smeared), "
            "published marked or skipped as the stream's damage setting says.", ["stream"],
            registry=r)
        self.stage_seconds = Histogram("detectd_stage_seconds",
                                       "Time spent per frame in each pipeline stage (a batch's "
                                       "infer time is attributed to each of its frames).",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        # Per-frame hot path: the stage children resolved once, not by label lookup per frame.
        self.stage = {s: self.stage_seconds.labels(s) for s in STAGES}
        self.frame_latency = Histogram("detectd_frame_latency_seconds",
                                       "Time from a frame being decoded to its message being published.",
                                       ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.stream_up = Gauge("detectd_stream_up", "1 while the stream is connected and delivering frames.",
                               ["stream"], registry=r)
        self.stream_reconnects = Counter("detectd_stream_reconnects_total",
                                         "Reconnection attempts, per stream.", ["stream"], registry=r)
        self.stream_state = Gauge("detectd_stream_state", "1 for the stream's current state.",
                                  ["stream", "state"], registry=r)
        self.stream_attempts = Gauge("detectd_stream_reconnect_attempts",
                                     "Consecutive failed connection attempts (0 once stable).",
                                     ["stream"], registry=r)
        self.stream_since_frame = Gauge("detectd_stream_seconds_since_frame",
                                        "Seconds since the stream's last decoded frame.", ["stream"], registry=r)
        self.stream_errors = Counter("detectd_stream_errors_total",
                                     "Connection failures per stream, by kind (network, auth, eof, "
                                     "decode, stall, timeout, unsupported).", ["stream", "kind"],
                                     registry=r)
        self.stream_last_error = Gauge("detectd_stream_last_error_info",
                                       "1 for the kind of the stream's last connection failure "
                                       "(the message itself is in the logs and events: it may "
                                       "name hosts).", ["stream", "kind"], registry=r)
        self.stream_last_error_time = Gauge("detectd_stream_last_error_timestamp_seconds",
                                            "Unix time of the stream's last connection failure.",
                                            ["stream"], registry=r)
        self.stream_decoder = Gauge("detectd_stream_decoder_info",
                                    "1 for where the stream decodes (decoder nvdec or cpu) and why "
                                    "(reason: nvdec, cpu_requested, not_gpu_backend, no_gpu, "
                                    "pyav_no_cuda, context, codec, size, pixel_format, nvdec_error; "
                                    "docs/gpu.md).", ["stream", "decoder", "reason"], registry=r)
        self.stream_backpressure = Gauge("detectd_stream_backpressure",
                                         "1 while frames arrive faster than the pipeline takes "
                                         "them (the stream's queue was full at its last frame); "
                                         "not a stall.", ["stream"], registry=r)
        self.stream_probes = Counter("detectd_stream_probes_total",
                                     "Reachability probes (a TCP connect to the source's host:port) "
                                     "made while waiting to reconnect, by result (reachable, "
                                     "unreachable).", ["stream", "result"], registry=r)
        self.stream_discontinuities = Counter("detectd_stream_pts_discontinuities_total",
                                              "Timestamp jumps in a realtime file that the pacer "
                                              "resynchronised on instead of waiting them out.",
                                              ["stream"], registry=r)
        self.config_reloads = Counter("detectd_config_reloads_total",
                                      "SIGHUP config reloads, by result (ok, error).", ["result"],
                                      registry=r)
        self.batch_size = Histogram("detectd_batch_size", "Frames per inference batch.",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r)
        self.detections = Counter("detectd_detections_total", "Detections published, per stream and label.",
                                  ["stream", "label"], registry=r)
        self.events_dropped = Counter("detectd_events_dropped_total",
                                      "Stream events dropped because the event queue was full.", registry=r)
        # Analytics (streams[].analytics, docs/analytics.md): zone and line names come from the
        # config, labels from the model's fixed class list.
        self.line_crossings = Counter("detectd_line_crossings_total",
                                      "Tracked objects that crossed a configured line, by stream, "
                                      "line, direction (in, out) and label (the track's most frequent label over its last second).",
                                      ["stream", "line", "direction", "label"], registry=r)
        self.zone_occupancy = Gauge("detectd_zone_occupancy",
                                    "Tracked objects inside a configured zone now, by stream, zone and label.",
                                    ["stream", "zone", "label"], registry=r)
        self.zone_entries = Counter("detectd_zone_entries_total",
                                    "Tracked objects that entered a configured zone, by stream, zone and label.",
                                    ["stream", "zone", "label"], registry=r)
        self.build_info = Gauge("detectd_build_info", "Version, backend and precision of the running daemon.",
                                ["version", "backend", "precision"], registry=r)
        self.ready = Gauge("detectd_ready", "1 once the model is warm and the publisher bound.", registry=r)
        self.publish_endpoint_ok = Gauge(
            "detectd_publish_endpoint_ok",
            "1 while subscribers can reach the publisher at publish.endpoint; 0 once its ipc:// "
            "socket file was removed or replaced (checked every second).", registry=r)

    def init_stream(self, stream: str) -> None:
        """Create a stream's series at zero so rate() and alerts see them from the first scrape."""
        self.frames_decoded.labels(stream)
        self.frames_published.labels(stream)
        self.frames_damaged.labels(stream)
        self.frame_latency.labels(stream)
        self.stream_up.labels(stream).set(0)
        self.stream_reconnects.labels(stream)
        self.stream_attempts.labels(stream).set(0)
        self.stream_backpressure.labels(stream).set(0)
        for kind in ERROR_KINDS:
            self.stream_errors.labels(stream, kind)
        for result in PROBE_RESULTS:
            self.stream_probes.labels(stream, result)
        self.stream_discontinuities.labels(stream)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(stream, reason)
        self.set_state(stream, StreamState.CONNECTING)

    def remove_stream(self, stream: str) -> None:
        """Forget a stream (removed by a reload): every series labelled ``stream=<id>`` of every
        metric with a ``stream`` label goes, whatever its other labels (detections by label,
        drops by reason, states...), and with it its ``_created``/``_bucket``/``_sum`` samples.
        Sums over streams then count only the streams that exist."""
        with self._drops_lock:
            self._drops.pop(stream, None)
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase):
                try:
                    metric.remove_by_labels({"stream": stream})
                except ValueError:  # a metric without a "stream" label
                    pass

    def count_drop(self, stream: str, reason: DropReason, n: int = 1) -> None:
        """Count ``n`` dropped frames of ``stream``: ``detectd_frames_dropped_total{stream,reason}``
        and the stream's own running total (:meth:`dropped`). Every drop goes through here, so
        the two always agree."""
        self.frames_dropped.labels(stream, reason).inc(n)
        with self._drops_lock:
            self._drops[stream] = self._drops.get(stream, 0) + n

    def dropped(self, stream: str) -> int:
        """Frames of ``stream`` dropped so far, every reason summed (what :meth:`count_drop`
        counted; 0 after :meth:`remove_stream`). A dict lookup, not a walk of the registry: the
        stream's status snapshot (the preview page) reads it on its own thread."""
        return self._drops.get(stream, 0)

    def set_last_error(self, stream: str, kind: ErrorKind | str, at: float) -> None:
        """Count a connection failure and make ``kind`` the stream's last error."""
        self.stream_errors.labels(stream, kind).inc()
        for k in ERROR_KINDS:
            self.stream_last_error.labels(stream, k).set(1 if k == kind else 0)
        self.stream_last_error_time.labels(stream).set(at)

    def set_decoder(self, stream: str, decoder: str, reason: str) -> None:
        """Make (decoder, reason) the stream's one ``detectd_stream_decoder_info`` series."""
        self.stream_decoder.remove_by_labels({"stream": stream})
        self.stream_decoder.labels(stream, decoder, reason).set(1)

    def set_state(self, stream: str, state: StreamState | str) -> None:
        for s in STREAM_STATES:
            self.stream_state.labels(stream, s).set(1 if s == state else 0)
        self.stream_up.labels(stream).set(1 if state == StreamState.UP else 0)


class MetricsServer:
    """``/metrics`` (Prometheus text format), ``/healthz`` (the process answers) and ``/readyz``
    (model loaded and publisher bound: 200, else 503) on one listener. Other components (the
    preview page) may mount handlers under a path prefix with ``mount``."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 ready: Callable[[], dict[str, Any]]) -> None:
        self.registry = registry
        self.ready_fn = ready
        self.mounts: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: object) -> None:  # no access log spam
                pass

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/healthz":
                    self._send(200, "text/plain; charset=utf-8", b"ok\n")
                elif path == "/readyz":
                    checks = server.ready_fn()
                    # bool entries are the checks; other entries (strings) say why one failed
                    ok = all(v for v in checks.values() if isinstance(v, bool))
                    body = json.dumps({"ready": ok, **checks}).encode() + b"\n"
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    for prefix, handler in server.mounts.items():
                        if path.startswith(prefix):
                            handler(self)
                            return
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def mount(self, prefix: str, handler: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.mounts[prefix] = handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
