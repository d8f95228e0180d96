"""PyAV sources: one decoding thread per stream, for files, RTSP and HTTP.

- Every packet is decoded (dropping packets before decoding breaks P/B frames); freshness is
  enforced on *decoded* frames by the scheduler.
- A packet the decoder rejects is skipped and counted (``frames_dropped_total{reason="corrupt"}``);
  the good frames around it still come through. A demuxer error mid-file resumes demuxing after
  the bad data, up to a bound of consecutive errors.
- Files: ``loop`` seeks back to the start; ``realtime`` paces frames at the file's own timestamps.
  Without ``realtime`` a file is decoded as fast as the pipeline takes it, with frame threading.
- Live sources: RTSP over TCP with open/read timeouts; a lost stream is reopened after a delay
  chosen by the reconnect policy (exponential backoff with full jitter, never giving up, never
  spinning). Credentials in URLs never reach logs or events (``redact``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Protocol

import av

from daemon.config import StreamConfig
from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.sources.backoff import ReconnectPolicy, classify_error, redact

log = logging.getLogger(__name__)

EventFn = Callable[..., None]
MAX_CONSECUTIVE_DEMUX_ERRORS = 50


class FrameSink(Protocol):
    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool: ...


class PermanentError(Exception):
    """A source that cannot work however often it is retried (a missing file, not a video)."""


def open_options(cfg: StreamConfig) -> dict[str, str]:
    url = cfg.url.lower()
    opts: dict[str, str] = {}
    if url.startswith(("rtsp://", "rtsps://")):
        opts = {"rtsp_transport": "tcp", "timeout": str(int(cfg.read_timeout * 1e6))}
    elif url.startswith(("http://", "https://")):
        opts = {"timeout": str(int(cfg.read_timeout * 1e6)), "reconnect": "0"}
    opts.update(cfg.options)
    return opts


class StreamSource:
    def __init__(self, cfg: StreamConfig, sink: FrameSink, metrics: Metrics, on_event: EventFn,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.on_event = on_event
        self.clock = clock
        self.stop_event = threading.Event()
        self.policy = ReconnectPolicy(stall_timeout=cfg.stall_timeout)
        self.finished = threading.Event()  # set when the thread has ended for good
        self.frame_index = 0
        self.safe_url = redact(cfg.url)
        self.thread = threading.Thread(target=self._run, name=f"source-{cfg.id}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _event(self, event: str, reason: str | None = None, **extra: Any) -> None:
        self.on_event(self.cfg.id, event, reason, **extra)

    def _set_state(self, state: str) -> None:
        self.metrics.set_state(self.cfg.id, state)

    def _run(self) -> None:
        sid = self.cfg.id
        try:
            while not self.stop_event.is_set():
                now = self.clock()
                self.policy.on_connect_attempt(now)
                self._set_state("connecting")
                try:
                    ended = self._session()
                except PermanentError as exc:
                    log.error("stream %s: %s", sid, exc)
                    self._set_state("error")
                    self._event("error", str(exc))
                    return
                except Exception as exc:  # FFmpeg, OS and timeout errors: reconnect
                    kind = classify_error(exc)
                    if self.cfg.is_file and kind in ("not_found", "invalid"):
                        reason = redact(f"{type(exc).__name__}: {exc}")
                        log.error("stream %s: cannot read %s: %s", sid, self.safe_url, reason)
                        self._set_state("error")
                        self._event("error", reason)
                        return
                    ended = False
                    self._lost(kind, exc)
                if ended:
                    self._set_state("ended")
                    self._event("ended", "end of file")
                    log.info("stream %s: end of file after %d frames", sid, self.frame_index)
                    return
                if self.stop_event.is_set():
                    break
                delay = self.policy.next_delay(self.clock())
                self.metrics.stream_reconnects.labels(sid).inc()
                self.metrics.stream_attempts.labels(sid).set(self.policy.attempts)
                self._set_state("auth_failed" if self.policy.last_kind == "auth" else "backoff")
                self._event("reconnecting", self.policy.last_error, attempt=self.policy.attempts,
                            delay=round(delay, 3))
                log.info("stream %s: reconnecting in %.2fs (attempt %d)", sid, delay, self.policy.attempts)
                self.stop_event.wait(delay)
        finally:
            if not self.metrics_state_final():
                self._set_state("stopped")
            self.finished.set()

    def metrics_state_final(self) -> bool:
        v = self.metrics.stream_state.labels(self.cfg.id, "ended")._value.get()
        e = self.metrics.stream_state.labels(self.cfg.id, "error")._value.get()
        return bool(v or e)

    def _lost(self, kind: str, exc: BaseException) -> None:
        reason = redact(f"{type(exc).__name__}: {exc}") if str(exc) else kind
        was_up = self.policy.state == "up"
        self.policy.on_error(self.clock(), kind, reason)
        self.metrics.stream_up.labels(self.cfg.id).set(0)
        if was_up:
            self._event("down", reason)
        if kind == "auth":
            self._event("auth_failed", reason)
        log.warning("stream %s: %s (%s)", self.cfg.id, reason, kind)

    def _open(self) -> Any:
        url = self.cfg.url[5:] if self.cfg.url.startswith("file:") else self.cfg.url
        if self.cfg.is_file:
            import os

            if not os.path.exists(url):
                raise PermanentError(f"file not found: {url}")
            if os.path.isdir(url):
                raise PermanentError(f"is a directory, not a video: {url}")
        try:
            return av.open(url, options=open_options(self.cfg),
                           timeout=(self.cfg.open_timeout, self.cfg.read_timeout))
        except av.error.InvalidDataError as exc:
            if self.cfg.is_file:
                raise PermanentError(f"not a readable video (cut before its index, or not a video): {url}: {exc}") from None
            raise

    def _session(self) -> bool:
        """One open-to-close run. True when a file reached its end for good."""
        sid = self.cfg.id
        with self._open() as container:
            if not container.streams.video:
                raise PermanentError(f"{self.safe_url} has no video stream")
            vstream = container.streams.video[0]
            if self.cfg.is_file and not self.cfg.realtime:
                vstream.thread_type = "AUTO"  # frame threads: throughput over latency, files only
            rate = float(vstream.average_rate) if vstream.average_rate else 25.0
            pacer = _Pacer(rate, self.stop_event) if self.cfg.realtime and self.cfg.is_file else None
            first = True
            while True:
                got_any = False
                errors = 0
                demux = container.demux(vstream)
                while True:
                    if self.stop_event.is_set():
                        return False
                    try:
                        packet = next(demux)
                    except StopIteration:
                        break
                    except (av.error.InvalidDataError, av.error.UndefinedError) as exc:
                        if not self.cfg.is_file:
                            raise
                        # Bad bytes in a file: count, and resume demuxing past them.
                        errors += 1
                        self.metrics.frames_dropped.labels(sid, "corrupt").inc()
                        if errors > MAX_CONSECUTIVE_DEMUX_ERRORS:
                            log.warning("stream %s: giving up on damaged data: %s", sid, exc)
                            break
                        demux = container.demux(vstream)
                        continue
                    errors = 0
                    t0 = time.perf_counter()
                    try:
                        frames = packet.decode()
                    except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as exc:
                        self.metrics.frames_dropped.labels(sid, "corrupt").inc()
                        log.debug("stream %s: skipped a damaged packet: %s", sid, exc)
                        continue
                    dt = time.perf_counter() - t0
                    for vf in frames:
                        now = self.clock()
                        if first:
                            first = False
                            self.policy.on_connected(now)
                            self.policy.on_frame(now)
                            self._set_state("up")
                            self.metrics.stream_attempts.labels(sid).set(0)
                            self._event("up", None, width=vf.width, height=vf.height)
                            log.info("stream %s: up (%s, %dx%d)", sid, self.safe_url, vf.width, vf.height)
                        if pacer is not None and not pacer.wait(vf.time):
                            return False
                        self._emit(vf, dt / max(1, len(frames)))
                        got_any = True
                if self.stop_event.is_set():
                    return False
                if not self.cfg.is_file:
                    raise EOFError("the stream ended")
                if self.cfg.loop and got_any:
                    container.seek(0)
                    if pacer is not None:
                        pacer.reset()
                    continue
                if not got_any and self.frame_index == 0:
                    raise PermanentError(f"no decodable video frame in {self.safe_url}")
                return True

    def _emit(self, vf: Any, decode_seconds: float) -> None:
        now = self.clock()
        self.policy.on_frame(now)
        frame = Frame(stream=self.cfg.id, index=self.frame_index, width=vf.width, height=vf.height,
                      pts=vf.time, captured_at=time.time(), t_decoded=now, native=vf,
                      decode_seconds=decode_seconds)
        self.frame_index += 1
        self.metrics.frames_decoded.labels(self.cfg.id).inc()
        self.metrics.stage_seconds.labels("decode").observe(decode_seconds)
        self.sink.put(frame, self.stop_event)


class _Pacer:
    """Release frames at the file's own timestamps, like a camera would."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.period = 1.0 / rate if rate > 0 else 0.04
        self.stop = stop
        self.reset()

    def reset(self) -> None:
        self.t0: float | None = None
        self.pts0 = 0.0
        self.n = 0

    def wait(self, pts: float | None) -> bool:
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.pts0 = now, pts or 0.0
        # Missing or non-increasing timestamps fall back to the nominal frame rate.
        offset = (pts - self.pts0) if pts is not None and pts >= self.pts0 else self.n * self.period
        self.n += 1
        delay = self.t0 + offset - now
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()
