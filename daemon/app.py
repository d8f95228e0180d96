"""The daemon's wiring and lifecycle: sockets -> model -> streams -> the loop -> stop.

Where the work is done (a map for newcomers):

- ``sources/streams.py``: one decoding thread per stream (``sources/pyav.py``), retired threads,
  the supervisor that notices stalls;
- ``scheduler.py``: bounded per-stream queues and fair batches (drops counted);
- ``detector.py``: the model, opened once (backend choice, preparation, warm-up) and run;
- ``pipeline.py``: the per-frame loop on the main thread -- batch -> detector -> analytics ->
  sinks (``publish/sink.py``: ZeroMQ first) and result hooks (the preview) -- and the drain;
- ``reload.py``: SIGHUP, planned as a pure function of the old and the new config.

This module starts those in order (every socket bound before the slow model load, READY only
once the model is warm), answers ``/readyz``, turns signals into flags (uvicorn's lesson:
handlers only set flags; SIGTERM/SIGINT drain and stop, SIGHUP reloads, a second SIGINT exits at
once) and tears everything down.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from daemon import __version__, shard
from daemon.backends import Backend
from daemon.config import Config, ConfigError, StreamConfig
from daemon.detector import Detector
from daemon.errors import Cancelled, ExitCode
from daemon.metrics import Metrics, MetricsServer
from daemon.models.info import ModelInfo
from daemon.pipeline import Pipeline
from daemon.publish.publisher import Publisher
from daemon.publish.sink import FanOut
from daemon.publish.sinks import build_sinks
from daemon.reload import apply_plan, plan_reload, read_config
from daemon.scheduler import Scheduler
from daemon.sources import nvdec
from daemon.sources.streams import Streams
from daemon.stream_manager import StreamManager
from daemon.vocab import StopReason

log = logging.getLogger("detectd")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Daemon:
    """``backend``/``info``: an already loaded model (tests); otherwise :meth:`start` opens the
    configured one."""

    def __init__(self, cfg: Config, *, backend: Backend | None = None, info: ModelInfo | None = None,
                 metrics: Metrics | None = None, config_path: str | os.PathLike[str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.scheduler = Scheduler(self.metrics, cfg.model.max_batch, cfg.model.max_wait_ms / 1000)
        self.detector = Detector(backend, info, cfg.model) if backend is not None and info is not None else None
        self.publisher: Publisher | None = None
        self.sink = FanOut([])
        self.streams = Streams(self.scheduler, self.metrics, self.sink.post_event, self.stop_requested)
        self.pipeline: Pipeline | None = None
        self.stream_manager: StreamManager | None = None
        self.http: MetricsServer | None = None
        self.notifier: Any = None  # daemon.systemd.Notifier under systemd
        self.preview_service: Any = None  # daemon.preview.service, when preview.enabled
        self.preview: Any = None  # its PreviewHub once serving
        self.ready = False
        self.exit_code = 0

    # -- start-up ------------------------------------------------------------------------------
    def start(self) -> None:
        # Sockets first, model second: a subscriber already waiting for the endpoint (a consumer
        # started alongside, a test) connects while the model loads and misses no first message.
        # READY=1 and /readyz still wait for the warm model.
        p = self.cfg.publish
        self.publisher = Publisher(p.endpoint, self.metrics, sndhwm=p.sndhwm, skip_empty=p.skip_empty,
                                   curve=p.curve)
        # ZeroMQ first, then the transports the config asks for (mqtt:); one FanOut feeds them.
        # The publisher joins before the others are built, so a sink that fails to start still
        # leaves it closed properly by shutdown().
        self.sink.sinks.append(self.publisher)
        self.sink.sinks.extend(build_sinks(self.cfg, self.metrics, self.publisher).sinks[1:])
        log.info("publishing on %s", self.publisher.endpoint)
        host, _, port = self.cfg.metrics.listen.rpartition(":")
        try:
            self.http = MetricsServer(host, int(port), self.metrics.registry, self.readiness)
        except OSError as exc:
            raise OSError(f"metrics.listen: cannot listen on {self.cfg.metrics.listen}: {exc}") from exc
        self.http.start()
        log.info("metrics on http://%s:%d/metrics", host, self.http.port)
        self.bind_preview()  # every listening socket is bound before the (slow) model load
        if self.detector is None:
            # The stop event reaches first-start calibration and engine builds: SIGTERM abandons
            # them cleanly (nothing half-written is cached) instead of waiting for SIGKILL.
            self.detector = Detector.open(self.cfg.model, cancel=self.stop_requested)
        nvdec.set_gpu_backend(self.detector.device_frames)  # decode: auto -> NVDEC (docs/gpu.md)
        b = self.detector.backend
        model_desc = {"name": self.detector.info.path.stem, "precision": b.precision, "backend": b.name}
        self.metrics.build_info.labels(__version__, b.name, b.precision).set(1)
        self.pipeline = Pipeline(self.scheduler, self.detector, self.sink, self.metrics, self.streams, model_desc)
        self.start_preview()
        self.stream_manager = StreamManager(self.metrics, self.sink, self.scheduler, self.streams,
                                            self.pipeline, self.preview)
        for s in shard.owned_streams(self.cfg, self.metrics):  # this instance's shard only
            self.add_stream(s)
        self.streams.start_supervisor()
        self.ready = True
        self.metrics.ready.set(1)
        if self.notifier is not None:
            self.notifier.ready()

    def bind_preview(self) -> None:
        """The preview's own port (``preview.listen``) is bound before the model loads: a busy
        port fails the start at once (OSError naming the key). Nothing is served yet."""
        if self.cfg.preview.enabled:
            from daemon.preview.service import PreviewService

            self.preview_service = PreviewService(self.cfg.preview, self.streams.status)

    def start_preview(self) -> None:
        if self.preview_service is not None:
            assert self.pipeline is not None and self.http is not None
            self.preview = self.preview_service.attach(self.pipeline, self.http, self.cfg.metrics.listen)

    def readiness(self) -> dict[str, Any]:
        """``/readyz`` checks (bools) plus the reasons: the ZeroMQ endpoint lost
        (``publisher_problem``), a sink that cannot deliver now (``sinks_problem``, e.g. the MQTT
        broker away). ``sinks_ok`` is False only for a sink required for readiness (the MQTT sink
        with ``mqtt.required_for_ready: true``): a broker outage must not make every instance
        unready (docs/mqtt.md)."""
        lost = self.publisher.endpoint_problem() if self.publisher is not None else None
        sink_problem = self.sink.problem()
        checks: dict[str, Any] = {"model_loaded": self.detector is not None and self.ready,
                                  "publisher_bound": self.publisher is not None and lost is None,
                                  "sinks_ok": self.sink.problem(required_only=True) is None}
        if lost is not None:
            checks["publisher_problem"] = lost
        if sink_problem is not None:
            checks["sinks_problem"] = sink_problem
        return checks

    # -- streams (start-up and reload: daemon/stream_manager.py) --------------------------------
    def add_stream(self, s: StreamConfig) -> None:
        assert self.stream_manager is not None
        self.stream_manager.add(s)

    def set_analytics(self, s: StreamConfig) -> None:
        assert self.stream_manager is not None
        self.stream_manager.set_analytics(s)

    def remove_stream(self, sid: str, *, forget_metrics: bool = True,
                      reason: str = StopReason.REMOVED) -> None:
        """``reason``: the last state's (``StopReason.MOVED``: another shard serves it now, and
        MQTT keeps the retained state for the new owner)."""
        assert self.stream_manager is not None
        self.stream_manager.remove(sid, forget_metrics=forget_metrics, reason=reason)

    def reload(self) -> bool:
        """SIGHUP: re-read the config file and apply what can change in place (``reload.py``).
        An invalid file changes nothing; the daemon never goes down over a reload."""
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            ok = self._reload()
            if self.publisher is not None and self.publisher.authenticator is not None:
                try:  # publish.curve: re-read the authorized client keys (new connections)
                    self.publisher.authenticator.reload()
                except Exception as exc:  # a damaged key file: the keys already loaded stay
                    log.error("reload: publish.curve.authorized_keys_dir not re-read, the loaded "
                              "keys are kept: %s", exc)
                    ok = False
        finally:
            if self.notifier is not None:
                self.notifier.ready()
        self.metrics.config_reloads.labels("ok" if ok else "error").inc()
        return ok

    def _reload(self) -> bool:
        if self.config_path is None:
            log.warning("reload: no config file to re-read (started without --config)")
            return False
        try:
            new = read_config(self.config_path)
        except Exception as exc:  # ConfigError, or anything else: never take the daemon down
            why = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            log.error("reload: %s rejected, the running config is kept: %s", self.config_path, why)
            return False
        apply_plan(self, plan_reload(self.cfg, new))
        return True

    # -- running and stopping -----------------------------------------------------------------
    def run_loop(self) -> int:
        assert self.pipeline is not None
        self.exit_code = self.pipeline.run(self)
        return self.exit_code

    def begin_drain(self) -> None:
        """A stop was requested: take no new work (``/readyz`` 503), tell systemd, stop sources."""
        self.ready = False
        self.metrics.ready.set(0)
        if self.notifier is not None:
            self.notifier.stopping()
        self.streams.stop_all()

    def shutdown(self) -> None:
        self.stop_requested.set()  # also ends the supervisor
        if self.notifier is not None:
            self.notifier.stopping()
        self.streams.stop_all()
        self.streams.join_all(1.0)  # threads blocked in a read are daemon threads
        self.scheduler.close()
        if self.preview_service is not None:
            self.preview_service.close()
        if self.publisher is not None and self.pipeline is not None:
            self.pipeline.end_all_tracks()  # zone exits of whoever is still inside
        self.sink.close()
        if self.http is not None:
            self.http.stop()
        if self.detector is not None:
            self.detector.close()

    # -- signals -------------------------------------------------------------------------------
    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Only sets flags; the loop acts on them. A second SIGINT: the user means it."""
        if signum == signal.SIGHUP:
            self.reload_requested.set()
            return
        if self.stop_requested.is_set() and signum == signal.SIGINT:
            os.write(2, b"detectd: forced exit\n")
            os._exit(130)
        self.stop_requested.set()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Route SIGINT, SIGTERM and SIGHUP to :meth:`handle_signal` inside the block and restore
        the previous handlers on leaving it (uvicorn's ``capture_signals``), so the daemon can run
        inside another program or test. Outside the main thread (where Python cannot install
        handlers) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_signal) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(cfg: Config, config_path: str | os.PathLike[str] | None = None) -> int:
    d = Daemon(cfg, config_path=config_path)
    try:
        from daemon.systemd import Notifier

        d.notifier = Notifier()
    except ImportError:
        pass
    with d.capture_signals():
        try:
            d.start()
            d.run_loop()
        except Cancelled as exc:
            # SIGTERM during first-start calibration or an engine build: a clean, requested stop.
            if not d.stop_requested.is_set():
                raise
            log.info("stopped while preparing the model: %s (nothing was cached)", exc)
            return ExitCode.OK
        finally:
            d.shutdown()
    log.info("stopped")
    return d.exit_code
