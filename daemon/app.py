"""The daemon: sources -> scheduler -> (batch) -> backend -> post-processing -> publisher.

One thread per stream decodes (``sources/``); this module's loop, on the main thread, takes fair
batches from the scheduler, letterboxes them straight into a preallocated batch buffer, runs the
backend, decodes boxes, publishes one message per frame and records every stage's time. Only
that loop touches the ZeroMQ socket. Signal handlers only set flags (uvicorn's lesson); the loop
acts on them: SIGTERM/SIGINT drain and stop, SIGHUP reloads the config (streams added, removed
or changed without touching the others), a second SIGINT exits at once.

One more thread, the supervisor, polls every stream's reconnect policy a few times a second: it
notices a stall while a source thread is blocked in a read, and exports the seconds since each
stream's last frame. systemd's watchdog is fed from the main loop, and only while frames flow or
every stream is legitimately waiting to reconnect.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import numpy as np

from daemon import __version__
from daemon.analytics.state import StreamAnalytics
from daemon.backends import Backend, choose_backend, create_backend, int8_variant
from daemon.backends.base import warmup
from daemon.config import check_config, Config, ConfigError, StreamConfig, load_config
from daemon.frames import FrameResult
from daemon.metrics import Metrics, MetricsServer
from daemon.models.info import ModelInfo
from daemon.models.resolve import resolve_model
from daemon.prepare import resolve_demo_urls
from daemon.publish.publisher import Publisher
from daemon.scheduler import Scheduler
from daemon.sources.pyav import StreamSource
from daemon.vision.letterbox import letterbox_frame, letterbox_params
from daemon.vision.yolo import postprocess

log = logging.getLogger("detectd")

SUPERVISE_INTERVAL = 0.25  # seconds between the supervisor's polls of every stream
# Sections a reload cannot change in place: the model is loaded and warm, the sockets bound.
RESTART_SECTIONS = ("model", "publish", "metrics", "preview")


@dataclass
class _Window:
    """Recent figures for the status line (bounded: never grows)."""

    frames: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    labels: Counter[str] = field(default_factory=Counter)
    since: float = field(default_factory=time.monotonic)


class Daemon:
    def __init__(self, cfg: Config, *, backend: Backend | None = None, info: ModelInfo | None = None,
                 metrics: Metrics | None = None, config_path: str | os.PathLike[str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.reload_requested = threading.Event()
        self.retired: list[StreamSource] = []  # removed by a reload, threads still finishing
        self.frames_total = 0  # frames processed (published or not), for the watchdog
        self._wd_frames = 0
        self._supervisor: threading.Thread | None = None
        # Held by the supervisor while it polls the streams, and by remove_stream: a removed
        # stream's gauges are never written again after its series are gone.
        self._supervise_lock = threading.Lock()
        self._forget: set[StreamSource] = set()  # retired streams whose series go for good
        self.metrics = metrics or Metrics()
        self.stop_requested = threading.Event()
        self.sources: dict[str, StreamSource] = {}
        self.backend = backend
        self.info = info
        self.publisher: Publisher | None = None
        self.http: MetricsServer | None = None
        self.scheduler = Scheduler(self.metrics, cfg.model.max_batch, cfg.model.max_wait_ms / 1000)
        self.window = _Window()
        self.ready = False
        self.hooks: list[Callable[[FrameResult, list[str]], None]] = []  # e.g. the preview page
        self.notifier: Any = None
        self.preview: Any = None  # PreviewHub when preview.enabled
        self.preview_server: Any = None  # bound before the model loads, served after
        self.preview_hub: Any = None
        self.preview_app: Any = None
        self.pending: list[tuple[Any, list[Any], list[Any]]] = []  # GPU tickets in flight
        self.exit_code = 0
        self.analytics: dict[str, StreamAnalytics] = {}  # streams with analytics.tracker

    # -- start-up ------------------------------------------------------------------------
    def load_model(self) -> None:
        if self.backend is not None and self.info is not None:
            return
        name, _why = choose_backend(self.cfg.model.backend)  # logs the choice and why, once
        # The stop event reaches first-start calibration and engine builds: SIGTERM abandons
        # them cleanly (nothing half-written is cached) instead of waiting for SIGKILL.
        path = resolve_model(self.cfg.model, target=int8_variant(name), cancel=self.stop_requested)
        self.info = ModelInfo.from_onnx(path)
        self.backend = create_backend(name, path, self.info, self.cfg.model, cancel=self.stop_requested)
        t0 = time.perf_counter()
        warmup(self.backend, self.info.width, self.info.height)
        log.info("model %s (%s, %s) loaded and warm in %.2fs: input %dx%d, %d classes",
                 path.name, self.backend.name, self.backend.precision, time.perf_counter() - t0,
                 self.info.width, self.info.height, len(self.info.labels))
        from daemon.models.assets import verified_files

        verified = verified_files()
        if verified:  # one line, not one per file and use (those are DEBUG)
            log.info("assets verified (SHA-256) in the cache: %s", ", ".join(p.name for p in verified))

    def start(self) -> None:
        # Sockets first, model second: a subscriber already waiting for the endpoint (a consumer
        # started alongside, a test) connects while the model loads and misses no first message.
        # READY=1 and /readyz still wait for the warm model.
        p = self.cfg.publish
        self.publisher = Publisher(p.endpoint, self.metrics, sndhwm=p.sndhwm, skip_empty=p.skip_empty,
                                   curve=p.curve)
        log.info("publishing on %s", self.publisher.endpoint)
        host, _, port = self.cfg.metrics.listen.rpartition(":")
        try:
            self.http = MetricsServer(host, int(port), self.metrics.registry, self.readiness)
        except OSError as exc:
            raise OSError(f"metrics.listen: cannot listen on {self.cfg.metrics.listen}: {exc}") from exc
        self.http.start()
        log.info("metrics on http://%s:%d/metrics", host, self.http.port)
        self.bind_preview()  # every listening socket is bound before the (slow) model load
        self.load_model()
        assert self.backend is not None and self.info is not None
        self.model_desc = {"name": self.info.path.stem, "precision": self.backend.precision,
                           "backend": self.backend.name}
        self.metrics.build_info.labels(__version__, self.backend.name, self.backend.precision).set(1)
        w, h = self.info.width, self.info.height
        self.batch_buf = np.empty((self.cfg.model.max_batch, 3, h, w), np.float32)
        self.start_preview()
        for s in self.cfg.streams:
            self.add_stream(s)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        self.ready = True
        self.metrics.ready.set(1)
        if self.notifier is not None:
            self.notifier.ready()

    def bind_preview(self) -> None:
        """Bind the preview's own port (preview.enabled with preview.listen) before the model
        loads: a busy port is an error at once (OSError naming the key), not after a minute of
        calibration. Nothing is served until :meth:`start_preview`."""
        pc = self.cfg.preview
        if not pc.enabled:
            return
        from daemon.preview import PreviewHub, PreviewServer, registry_status

        self.preview_hub = PreviewHub(max_streams=64)
        self.preview_hub.status_source = registry_status(self.metrics.registry)
        if pc.listen is not None:
            host, _, port = pc.listen.rpartition(":")
            try:
                self.preview_server = PreviewServer(self.preview_hub, host, int(port), fps=pc.fps)
            except OSError as exc:
                raise OSError(f"preview.listen: cannot listen on {pc.listen}: {exc}") from exc

    def start_preview(self) -> None:
        """The live preview page (preview.enabled): a one-frame slot per stream filled by
        ``offer`` (O(1), never encodes); JPEGs are made on the viewer's thread only while someone
        watches, so a slow browser never slows the pipeline."""
        pc = self.cfg.preview
        if not pc.enabled:
            return
        from daemon.preview import PreviewApp, request_handler

        assert self.backend is not None
        hub = self.preview_hub
        hub.info = {"model": self.model_desc["name"], "backend": self.backend.name,
                    "precision": self.backend.precision, "version": __version__}
        if pc.listen is None:
            assert self.http is not None
            self.preview_app = PreviewApp(hub, fps=pc.fps)
            self.http.mount("/preview", request_handler(self.preview_app, "/preview"))
            log.info("preview page on http://%s/preview/", self.cfg.metrics.listen)
        else:
            self.preview_server.start()  # bound by bind_preview
        self.preview = hub
        self.hooks.append(hub.offer)

    def readiness(self) -> dict[str, Any]:
        """``/readyz`` checks (bools) plus, when the publisher lost its endpoint, the reason."""
        lost = self.publisher.endpoint_problem() if self.publisher is not None else None
        checks: dict[str, Any] = {"model_loaded": self.backend is not None and self.ready,
                                  "publisher_bound": self.publisher is not None and lost is None}
        if lost is not None:
            checks["publisher_problem"] = lost
        return checks

    def add_stream(self, s: StreamConfig) -> None:
        assert self.publisher is not None
        self.metrics.init_stream(s.id)
        self.publisher.add_stream(s.id)  # a late subscriber can learn its state
        self.scheduler.add_stream(s.id, size=s.queue_size, live=s.is_live, max_age=s.max_age_ms / 1000)
        if self.preview is not None:
            self.preview.add_stream(s.id)
        self.set_analytics(s)
        src = StreamSource(s, self.scheduler, self.metrics, self.publisher.post_event)
        self.sources[s.id] = src
        src.start()

    def set_analytics(self, s: StreamConfig) -> None:
        """Create, reconfigure (a reload: tracks kept) or end a stream's tracker/zones/lines."""
        a = self.analytics.get(s.id)
        if s.analytics is None or s.analytics.tracker is None:
            if a is not None:
                self._publish_analytics(s.id, self.analytics.pop(s.id).close())
        elif a is None:
            assert self.info is not None
            self.analytics[s.id] = StreamAnalytics(s.id, s.analytics, self.info.labels, self.metrics)
        else:
            a.reconfigure(s.analytics)
        if self.preview is not None:
            an = s.analytics
            self.preview.set_geometry(s.id, an.zones if an else [], an.lines if an else [])

    def _end_finished_analytics(self) -> None:
        """A finite stream that has ended (and whose frames are all processed) ends its tracks:
        the zone exits of whoever was still inside are published (reason ``ended``)."""
        for sid in [sid for sid, src in self.sources.items() if sid in self.analytics and src.finished.is_set()]:
            self._publish_analytics(sid, self.analytics[sid].end_tracks())

    def _publish_analytics(self, sid: str, events: list[dict[str, Any]]) -> None:
        assert self.publisher is not None
        for ev in events:
            self.publisher.publish_analytics(sid, ev)

    def remove_stream(self, sid: str, *, forget_metrics: bool = True) -> None:
        """Stop a stream without waiting for its thread (a read may block for read_timeout):
        the thread is retired, touches no metric or event any more, and ends on its own.
        ``forget_metrics``: every series of the stream goes from /metrics, now and again once
        its thread has ended (a write racing the retirement cannot bring one back)."""
        self.flush_pending()  # GPU batches in flight publish (and count) before the removal
        with self._supervise_lock:  # the supervisor writes per-stream gauges
            src = self.sources.pop(sid, None)
            a = self.analytics.pop(sid, None)
            if a is not None:
                self._publish_analytics(sid, a.close())
            if src is not None:
                src.retire()
                self.retired.append(src)
                if forget_metrics:
                    self._forget.add(src)
            dropped = self.scheduler.remove_stream(sid)
            if self.publisher is not None:  # removed for good: subscribers hear it is stopped
                self.publisher.remove_stream(sid, "removed from the configuration" if forget_metrics else None)
            if forget_metrics:
                self.metrics.remove_stream(sid)
            elif dropped:
                self.metrics.frames_dropped.labels(sid, "shutdown").inc(dropped)

    def _sweep_retired(self) -> None:
        """Retired threads that have ended: forget their stream's series once more (unless the
        stream is back under the same id), and stop tracking them."""
        for src in [s for s in self.retired if s.finished.is_set()]:
            self.retired.remove(src)
            if src in self._forget and src.cfg.id not in self.sources:
                self.metrics.remove_stream(src.cfg.id)
            self._forget.discard(src)

    def _supervise(self) -> None:
        while not self.stop_requested.wait(SUPERVISE_INTERVAL):
            now = time.monotonic()
            with self._supervise_lock:
                for src in list(self.sources.values()):
                    try:
                        src.supervise(now)
                    except Exception:  # never let one stream's surprise stop the supervision of all
                        log.exception("stream %s: supervision failed", src.cfg.id)
                self._sweep_retired()

    # -- reload (SIGHUP) -------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config file and apply what can change in place: streams added, removed
        or changed (restarted), logging and shutdown settings. An invalid file changes nothing.
        Model, publish, metrics and preview changes need a restart: logged, not applied."""
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
            new = load_config(self.config_path)
            resolve_demo_urls(new)  # as at start: the same path, so the stream is unchanged
            problems = check_config(new)  # what check-config rejects, a reload rejects too
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            log.error("reload: %s rejected, the running config is kept: %s", self.config_path,
                      "; ".join(exc.problems))
            return False
        except Exception as exc:  # never let a reload take the daemon down
            log.error("reload: %s rejected, the running config is kept: %s", self.config_path, exc)
            return False
        keep = [k for k in RESTART_SECTIONS if getattr(new, k) != getattr(self.cfg, k)]
        if keep:
            log.warning("reload: %s changed: that needs a restart (systemctl restart detectd); "
                        "running on with the old %s settings", ", ".join(keep), ", ".join(keep))
            new = new.model_copy(update={k: getattr(self.cfg, k) for k in keep})
        old = {s.id: s for s in self.cfg.streams}
        want = {s.id: s for s in new.streams}
        removed = [sid for sid in old if sid not in want]
        added = [sid for sid in want if sid not in old]
        # A change of analytics alone (zones, lines) is applied in place: tracks survive.
        changed = [sid for sid in want if sid in old
                   and want[sid].model_copy(update={"analytics": old[sid].analytics}) != old[sid]]
        retuned = [sid for sid in want if sid in old and sid not in changed and want[sid] != old[sid]]
        for sid in removed:
            self.remove_stream(sid)
        for sid in changed:
            self.remove_stream(sid, forget_metrics=False)
        self.cfg = new
        for sid in changed + added:
            self.add_stream(want[sid])
        for sid in retuned:
            self.set_analytics(want[sid])
        logging.getLogger().setLevel(new.logging.level.upper())
        log.info("reload: streams added %s, removed %s, restarted %s, %d unchanged",
                 added or "none", removed or "none", changed or "none",
                 len(want) - len(added) - len(changed) - len(retuned))
        if retuned:
            log.info("reload: analytics changed %s (zones and lines applied in place, tracks kept)", retuned)
        return True

    # -- the loop ------------------------------------------------------------------------
    def process(self, batch: list[Any]) -> None:
        if hasattr(self.backend, "submit_yuv") and hasattr(self.backend, "collect"):
            self.process_pipelined(batch)
            return
        if hasattr(self.backend, "input_slot") and hasattr(self.backend, "collect"):
            self.process_async(batch)
            return
        assert self.backend is not None and self.info is not None and self.publisher is not None
        m = self.metrics.stage
        infos, kept = [], []
        for frame in batch:
            t0 = time.perf_counter()
            try:
                infos.append(letterbox_frame(frame, self.info.width, self.info.height,
                                             out=self.batch_buf[len(kept)])[1])
            except (ValueError, av.FFmpegError, OSError) as exc:
                # Sources refuse what would abort (daemon/sources/validate.py); a converter's
                # Python-level error still costs one frame of one stream, never the loop.
                self.metrics.frames_dropped.labels(frame.stream, "unsupported_frame").inc()
                log.error("stream %s: frame %d not converted: %s", frame.stream, frame.index, exc)
                continue
            kept.append(frame)
            if self.preview is None or not self.preview.watching:
                frame.native = None  # release the decoder's buffer early (kept while watched)
            m["preprocess"].observe(time.perf_counter() - t0)
        batch, n = kept, len(kept)
        if not n:
            return
        buf = self.batch_buf[:n]
        t0 = time.perf_counter()
        outputs = self.backend.infer(buf)
        t_infer = time.perf_counter() - t0
        self.metrics.batch_size.observe(n)
        t0 = time.perf_counter()
        dets = postprocess(outputs, infos, self.info.heads, self.cfg.model.conf_threshold,
                           self.cfg.model.nms_threshold)
        t_post = (time.perf_counter() - t0) / n
        self.publish_batch(batch, dets, t_infer, t_post)

    # GPU backends (TensorRT): frames go to the device as decoded (YUV planes, 1.5 B/px) and are
    # letterboxed there; one batch stays in flight, so slot k+1 copies and computes while slot
    # k's output is decoded and published here.
    def process_pipelined(self, batch: list[Any]) -> None:
        assert self.backend is not None and self.info is not None
        t0 = time.perf_counter()
        infos = [letterbox_params(f.width, f.height, self.info.width, self.info.height) for f in batch]
        # A frame turned for display (phone video) is converted and turned on the CPU (RGB, 3 B/px
        # over the bus): the YUV kernel reads planes as stored (docs/sources.md, "Orientation").
        ticket = self.backend.submit_yuv([f.rgb() if f.orient else f.native for f in batch], infos,  # type: ignore[attr-defined]
                                         tags=[(f.stream, f.index) for f in batch])
        t_submit = time.perf_counter()
        for f in batch:
            self.metrics.stage["preprocess"].observe((t_submit - t0) / len(batch))
            if self.preview is None or not self.preview.watching:
                f.native = None  # copied to pinned memory by submit
        self.pending.append((ticket, batch, infos, t_submit))
        while len(self.pending) > 1:
            self.collect_one()

    # CPU backends with asynchronous requests (OpenVINO): frames are letterboxed straight into
    # the next request's own input buffer, up to `in_flight` requests run while this thread
    # decodes boxes and publishes the older ones (OpenVINO releases the GIL while it computes).
    def process_async(self, batch: list[Any]) -> None:
        assert self.backend is not None and self.info is not None
        backend: Any = self.backend
        while len(self.pending) >= backend.in_flight:
            self.collect_one()
        buf = backend.input_slot(len(batch))
        infos = []
        m = self.metrics.stage["preprocess"]
        for i, frame in enumerate(batch):
            t0 = time.perf_counter()
            infos.append(letterbox_frame(frame, self.info.width, self.info.height, out=buf[i])[1])
            if self.preview is None or not self.preview.watching:
                frame.native = None
            m.observe(time.perf_counter() - t0)
        ticket = backend.submit(len(batch))
        self.pending.append((ticket, batch, infos, time.perf_counter()))
        while len(self.pending) > backend.in_flight - 1:
            self.collect_one()

    def collect_one(self) -> None:
        assert self.backend is not None and self.info is not None
        ticket, batch, infos, t_submit = self.pending.pop(0)
        outputs = self.backend.collect(ticket)  # type: ignore[attr-defined]
        t_infer = time.perf_counter() - t_submit
        self.metrics.batch_size.observe(len(batch))
        t0 = time.perf_counter()
        dets = postprocess(outputs, infos, self.info.heads, self.cfg.model.conf_threshold,
                           self.cfg.model.nms_threshold)
        self.publish_batch(batch, dets, t_infer, (time.perf_counter() - t0) / len(batch))

    def flush_pending(self) -> None:
        while self.pending:
            self.collect_one()

    def publish_batch(self, batch: list[Any], dets: list[Any], t_infer: float, t_post: float) -> None:
        assert self.info is not None and self.publisher is not None
        m = self.metrics.stage
        labels = self.info.labels
        for frame, d in zip(batch, dets):
            m["infer"].observe(t_infer)
            m["postprocess"].observe(t_post)
            analytics = self.analytics.get(frame.stream)
            events: list[dict[str, Any]] = []
            if analytics is not None:  # tracks, zones, lines: sets d.track_ids
                t0 = time.perf_counter()
                events = analytics.update(frame, d)
                m["analytics"].observe(time.perf_counter() - t0)
            result = FrameResult(frame, d, {"infer": t_infer, "postprocess": t_post})
            t0 = time.perf_counter()
            published = self.publisher.publish_result(result, labels, self.model_desc)
            self._publish_analytics(frame.stream, events)
            m["publish"].observe(time.perf_counter() - t0)
            latency = time.monotonic() - frame.t_decoded
            if published:
                self.metrics.frame_latency.labels(frame.stream).observe(latency)
                for cid in d.class_ids.tolist():
                    name = labels[cid] if 0 <= cid < len(labels) else str(cid)
                    self.metrics.detections.labels(frame.stream, name).inc()
                    self.window.labels[name] += 1
            self.window.frames += 1
            self.window.latencies.append(latency)
            for hook in self.hooks:
                hook(result, labels)
        self.frames_total += len(batch)

    def all_sources_finished(self) -> bool:
        return all(s.finished.is_set() for s in self.sources.values())

    def status_line(self) -> None:
        w = self.window
        dt = time.monotonic() - w.since
        lat = np.asarray(w.latencies) * 1000 if w.latencies else np.zeros(1)
        top = ", ".join(f"{k} {v}" for k, v in w.labels.most_common(6)) or "none"
        up = sum(1 for s in self.sources.values() if self.metrics.stream_up.labels(s.cfg.id)._value.get())
        log.info("status: %.1f frames/s (%d frames in %.1f s), latency p50 %.0f ms p99 %.0f ms, "
                 "streams up %d/%d, detections: %s", w.frames / dt if dt > 0 else 0.0, w.frames, dt,
                 np.percentile(lat, 50), np.percentile(lat, 99), up, len(self.sources), top)
        self.window = _Window()

    def run_loop(self) -> None:
        assert self.publisher is not None
        # The first window starts with the pipeline: model loading and calibration are not time
        # in which frames could have flowed, so they must not dilute the first rate.
        self.window = _Window()
        next_status = time.monotonic() + (self.cfg.logging.status_interval or float("inf"))
        wd_interval = self.notifier.watchdog_interval() if self.notifier is not None else None
        next_wd = time.monotonic()
        drain_deadline: float | None = None
        drain_started = 0.0
        drained = 0
        while True:
            if self.stop_requested.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + self.cfg.shutdown.drain_timeout
                drain_started = time.monotonic()
                drained = self.frames_total
                self.ready = False  # /readyz says 503 while draining: take no new work here
                self.metrics.ready.set(0)
                log.info("stopping: draining %d queued frames (deadline %.1fs)",
                         self.scheduler.pending(), self.cfg.shutdown.drain_timeout)
                if self.notifier is not None:
                    self.notifier.stopping()
                for src in self.sources.values():
                    src.stop()
            elif self.reload_requested.is_set() and drain_deadline is None:
                self.reload_requested.clear()
                self.reload()
            # With results in flight, only take frames already waiting: when none is, publish the
            # oldest result now (a wait of at most one inference) rather than leave it until more
            # frames arrive; a live stream's result would otherwise wait in_flight-1 frame periods.
            batch = self.scheduler.next_batch(timeout=0.0 if self.pending else 0.1)
            if batch:
                self.process(batch)
            elif self.pending:
                self.collect_one()  # idle: nothing to overlap with, publish now
            elif self.analytics:
                self._end_finished_analytics()
            self.publisher.flush_events()
            now = time.monotonic()
            if wd_interval is not None and now >= next_wd and drain_deadline is None and self.watchdog_ok():
                self.notifier.watchdog()
                next_wd = now + wd_interval
            if now >= next_status:
                self.status_line()
                interval = self.cfg.logging.status_interval
                next_status = now + interval if interval else float("inf")
            if drain_deadline is not None:
                # Done when nothing is queued or in flight and the sources have ended, or have
                # had a moment to hand over their last frame: a source blocked in a network
                # read must not hold the exit to the full deadline.
                settled = self.all_sources_finished() or now - drain_started > 0.5
                if self.scheduler.pending() == 0 and not self.pending and settled:
                    log.info("drained: %d frames in flight published", self.frames_total - drained)
                    break
                if now >= drain_deadline:
                    left = self.scheduler.pending()
                    log.warning("drain deadline reached: %d frames published, %d not published",
                                self.frames_total - drained, left)
                    break
            elif (not batch and not self.pending and self.sources and self.all_sources_finished()
                  and self.scheduler.pending() == 0):
                failed = [sid for sid, s in self.sources.items() if s.failed]
                if len(failed) == len(self.sources):
                    # Nothing ever worked: under systemd that is a failure, not a clean stop.
                    log.error("every stream failed (%s): exiting with status 1", ", ".join(failed))
                    self.exit_code = 1
                else:
                    log.info("every source has ended: exiting")
                break

    def watchdog_ok(self) -> bool:
        """Feed systemd's watchdog only while frames were processed since the last feed, or
        every stream is legitimately idle (waiting to reconnect, or finished): an alive but
        stuck daemon (a hung backend, a stream up but silent past its stall detection) gets
        restarted by systemd."""
        moved = self.frames_total != self._wd_frames
        self._wd_frames = self.frames_total
        return moved or all(s.idle_ok for s in self.sources.values())

    def shutdown(self) -> None:
        self.stop_requested.set()  # also ends the supervisor
        if self.notifier is not None:
            self.notifier.stopping()
        for src in self.sources.values():
            src.stop()
        deadline = time.monotonic() + 1.0  # threads blocked in a read are daemon threads
        for src in [*self.sources.values(), *self.retired]:
            src.join(max(0.0, deadline - time.monotonic()))
        self.scheduler.close()
        if self.preview_server is not None:
            self.preview_server.close()
        if self.preview_app is not None:
            self.preview_app.stop.set()  # ends open MJPEG responses on the metrics listener
        if self.publisher is not None:
            for sid, a in self.analytics.items():  # zone exits of whoever is still inside
                self._publish_analytics(sid, a.end_tracks())
            self.publisher.close()
        if self.http is not None:
            self.http.stop()
        if self.backend is not None:
            self.backend.close()

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        def on_stop(signum: int, _frame: Any) -> None:
            if self.stop_requested.is_set() and signum == signal.SIGINT:
                # A second Ctrl-C: the user means it.
                os.write(2, b"detectd: forced exit\n")
                os._exit(130)
            self.stop_requested.set()

        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, lambda _s, _f: self.reload_requested.set())


def run(cfg: Config, config_path: str | os.PathLike[str] | None = None) -> int:
    d = Daemon(cfg, config_path=config_path)
    d.install_signals()
    try:
        from daemon.systemd import Notifier

        d.notifier = Notifier()
    except ImportError:
        pass
    try:
        d.start()
        d.run_loop()
    except Exception as exc:
        # SIGTERM during first-start calibration or an engine build: a clean, requested stop.
        if d.stop_requested.is_set() and type(exc).__name__ in ("CalibrationCancelled", "BuildCancelled"):
            log.info("stopped while preparing the model: %s (nothing was cached)", exc)
            return 0
        from daemon.quant.errors import CalibrationError

        if isinstance(exc, CalibrationError):  # AgreementTooLow, an unusable calibration source
            log.error("%s", exc)
            return 1
        raise
    finally:
        d.shutdown()
    log.info("stopped")
    return d.exit_code
