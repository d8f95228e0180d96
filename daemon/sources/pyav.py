"""PyAV sources: one decoding thread per stream, for files, RTSP and HTTP.

- Every packet is decoded (dropping packets before decoding breaks P/B frames); freshness is
  enforced on *decoded* frames by the scheduler.
- A packet the decoder rejects is skipped and counted (``frames_dropped_total{reason="corrupt"}``);
  the good frames around it still come through. A demuxer error resumes demuxing after the bad
  data, up to a bound of consecutive errors.
- Files: ``loop`` seeks back to the start; ``realtime`` paces frames at the file's own timestamps.
  Without ``realtime`` a file is decoded as fast as the pipeline takes it, with frame threading.
  A file that cannot be read (missing, not a video, cut before its index) is a permanent
  ``error``: retrying cannot help.
- Live sources: RTSP over TCP with open/read timeouts. When and whether to (re)connect is decided
  by the pure state machine of ``policy.py`` (backoff with full jitter and a cap, long waits after
  an authentication failure, stall detection, reachability probes that end a backoff early when
  the camera comes back); this module only turns its transitions into metrics,
  ``events/<id>/`` messages and log lines, and runs the probes (``probe.py``). ``stall_timeout``
  alone decides when a stream is stalled (``timeouts.py``): a blocking read is bounded by PyAV's
  ``timeout=(open, stall_timeout + 1)``; a stall is noticed on time by
  :meth:`StreamSource.supervise`, called by the daemon's supervisor thread, which asks the
  session to end. Files are judged the same way (a file that stops delivering is ``stalled``),
  except while the realtime pacer waits on purpose or a full queue holds the decoder.
- The stream, its orientation and its input format are chosen as FFmpeg's command-line tool
  would (``open.py``, ``daemon.vision.orient``, docs/sources.md); frames leave in displayed size.
- Every decoded frame passes :class:`~daemon.sources.guard.FrameGuard` before anything else
  touches it: a pixel format or size that native code cannot convert safely fails this stream
  alone (``error`` for a file, retried with backoff for a live source; kind ``unsupported``),
  and frames decoded after a packet loss are marked ``damaged`` or skipped until the next
  keyframe (docs/robustness.md).
- Credentials in URLs never reach logs, events or metric labels (``daemon.redact``); metric labels
  carry the stream id and fixed words only.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable, Protocol

import av

from daemon.config import StreamConfig
from daemon.errors import DetectdError
from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.redact import redact_text, redact_url
from daemon.sources.errors import (SourceError, classify_error, describe_error, is_config_error,
                                   is_invalid_argument)
from daemon.sources.guard import FrameGuard, UnsupportedFrame
from daemon.sources.nvdec import NvdecFallback, StreamDecoder
from daemon.sources.open import no_video_reason, open_options, pick_video_stream
from daemon.sources.pacing import RealtimeClock
from daemon.sources.policy import Action, PolicyConfig, ReconnectPolicy, State, Transition
from daemon.sources.probe import probe_target, tcp_reachable
from daemon.sources.status import StreamStatus
from daemon.sources.timeouts import connect_timeout, read_bound
from daemon.vision.orient import displayed_size, frame_orientation, odd_rotation
from daemon.vocab import DropReason, ErrorKind, EventKind

log = logging.getLogger(__name__)

EventFn = Callable[..., None]
MAX_CONSECUTIVE_DEMUX_ERRORS = 50
MAX_PROBE_TIMEOUT = 1.0  # seconds one reachability probe may take (loopback/LAN: milliseconds)
MAX_LOGGED_DISCONTINUITIES = 10  # per stream; later ones are only counted
RETRYING = (State.BACKOFF, State.STALLED, State.AUTH_FAILED)


class FrameSink(Protocol):
    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool: ...

    def is_full(self, stream: str) -> bool: ...


class PermanentError(DetectdError):
    """A source that cannot work however often it is retried (a missing file, not a video)."""


__all__ = ["StreamSource", "PermanentError", "open_options", "policy_config"]


def policy_config(cfg: StreamConfig) -> PolicyConfig:
    probes = cfg.probe_interval > 0 and not cfg.is_local and probe_target(cfg.url) is not None
    return PolicyConfig(
        base=cfg.backoff_base, cap=max(cfg.backoff_cap, cfg.backoff_base), stable_after=cfg.stable_after,
        auth_backoff=cfg.auth_backoff, stall_timeout=cfg.stall_timeout,
        connect_timeout=connect_timeout(cfg.open_timeout),
        restart_on_eof=not cfg.is_file,
        probe_interval=max(cfg.probe_interval, 0.1) if probes else 0.0,
    )


class StreamSource:
    """One stream: a decoding thread driven by its :class:`ReconnectPolicy`."""

    def __init__(self, cfg: StreamConfig, sink: FrameSink, metrics: Metrics, on_event: EventFn,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.on_event = on_event
        self.clock = clock
        self.stop_event = threading.Event()
        self.policy = ReconnectPolicy(policy_config(cfg))
        self.finished = threading.Event()  # set when the thread has ended for good
        self.retired = False  # removed by a reload: touch no metric or event any more
        self.failed = False  # a permanent error (state "error")
        self.frame_index = 0
        self.safe_url = redact_url(cfg.url)
        self._started_at = clock()
        self._abort = threading.Event()  # the supervisor saw a stall: end the current session
        self._announced_up = False  # an "up" event was sent for the current connection
        self._lock = threading.Lock()  # transitions are applied by two threads
        self._probe_target = probe_target(cfg.url) if not cfg.is_local else None
        self._discontinuities = 0
        self.thread = threading.Thread(target=self._run, name=f"source-{cfg.id}", daemon=True)
        self._decoder: StreamDecoder | None = None  # NVDEC or CPU (sources/nvdec.py), on first open

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.policy.stop(self.clock())
        self.stop_event.set()

    def retire(self) -> None:
        """Stop for good and leave the stream's metrics and events to a successor."""
        self.retired = True
        self.stop()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    @property
    def idle_ok(self) -> bool:
        """No frames expected right now, legitimately: waiting to reconnect, or finished."""
        return self.finished.is_set() or self.failed or self.policy.waiting_to_reconnect or \
            self.policy.state in (State.ENDED, State.STOPPED)

    @property
    def delivering(self) -> bool:
        """Connected and delivering frames (what ``detectd_stream_up`` says): false from a
        connection's opening until its first frame."""
        return not self.failed and self.policy.state is State.UP and self._announced_up

    def status(self) -> StreamStatus:
        """This stream now, for the preview page and the status log (any thread)."""
        return StreamStatus(
            state=State.ERROR if self.failed else self.policy.state, up=self.delivering,
            reconnects=max(0, self.policy.connect_attempts_total - 1),  # as stream_reconnects
            drops=self.metrics.dropped(self.cfg.id))

    # -- supervision (another thread) -------------------------------------------------------
    def supervise(self, now: float) -> None:
        """Called every few hundred ms by the daemon's supervisor thread: exports the seconds
        since the last frame and notices a stall while the source thread is blocked in a read."""
        if self.retired:
            return
        sid = self.cfg.id
        if not self.finished.is_set():
            self.metrics.stream_since_frame.labels(sid).set(round(self._since_frame(now), 3))
        self.metrics.stream_attempts.labels(sid).set(self.policy.attempts)
        self.metrics.stream_backpressure.labels(sid).set(1 if self.policy.backpressure else 0)
        if self.finished.is_set():
            return
        # Files too: a file that stops delivering is stalled like a camera (the pacer's waits
        # and a full queue are holds, see policy.hold).
        d = self.policy.poll(now)
        if d.action is Action.STALL:
            self._abort.set()  # the source thread leaves the session at its next packet/timeout
            self._apply(d.transition)

    # -- events and metrics ------------------------------------------------------------------
    def _event(self, event: EventKind, reason: str | None = None, **extra: Any) -> None:
        if not self.retired:
            # Every event carries the stream's attempts and how long it has gone without a frame.
            extra.setdefault("attempt", self.policy.attempts)
            extra.setdefault("seconds_since_frame", round(self._since_frame(self.clock()), 3))
            self.on_event(self.cfg.id, event, reason, **extra)

    def _since_frame(self, now: float) -> float:
        """Seconds since the last frame, or since the stream started if none came yet (a camera
        down since start must trip the same alert as one that went down later)."""
        since = self.policy.seconds_since_frame(now)
        return since if since is not None else now - self._started_at

    def _apply(self, tr: Transition | None, **extra: Any) -> None:
        """Turn one state change of the policy into metrics, events and a log line."""
        if tr is None or self.retired:
            return
        sid = self.cfg.id
        with self._lock:
            self.metrics.set_state(sid, tr.new.value)
            if tr.new is State.UP and not self._announced_up:
                # Connected is not delivering: stream_up waits for the first frame.
                self.metrics.stream_up.labels(sid).set(0)
            self.metrics.stream_attempts.labels(sid).set(self.policy.attempts)
            if tr.new in RETRYING:
                kind = ErrorKind.STALL if tr.new is State.STALLED else (self.policy.last_error_kind or ErrorKind.NETWORK)
                self.metrics.set_last_error(sid, kind, time.time())
                reason = tr.reason or kind
                if self._announced_up:
                    self._announced_up = False
                    self._event(EventKind.DOWN, reason, state=tr.new.value)
                if tr.new is State.STALLED:
                    self._event(EventKind.STALLED, reason, state=tr.new.value)
                elif tr.new is State.AUTH_FAILED:
                    self._event(EventKind.AUTH_FAILED, reason, state=tr.new.value)
                delay = self.policy.next_delay(self.clock())
                self._event(EventKind.RECONNECTING, reason, state=tr.new.value, attempt=self.policy.attempts,
                            delay=round(delay, 3))
                log.warning("stream %s: %s; %s, reconnecting in %.2fs (attempt %d)", sid, reason,
                            tr.new.value, delay, self.policy.attempts)
            elif tr.new is State.ENDED:
                self._event(EventKind.ENDED, "end of file", state=tr.new.value)
                log.info("stream %s: end of file after %d frames", sid, self.frame_index)

    def _fail(self, reason: str, **extra: Any) -> None:
        """A permanent error: announce it and stop this stream (the others go on)."""
        reason = redact_text(reason)
        self.failed = True
        log.error("stream %s: %s", self.cfg.id, reason)
        if not self.retired:
            self.metrics.set_state(self.cfg.id, State.ERROR)
        self._event(EventKind.ERROR, reason, state=State.ERROR.value, **extra)
        self.policy.stop(self.clock())

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                d = self.policy.poll(self.clock())
                if d.action is Action.CONNECT:
                    self._attempt()
                elif d.action is Action.WAIT:
                    # Wake up at least twice a second: stop() is seen at once (Event), and a
                    # delay shortened by an event is not overslept.
                    self.stop_event.wait(min(max(d.delay, 0.01), 0.5))
                elif d.action is Action.PROBE:
                    self._probe()
                elif d.action is Action.STALL:  # only if the supervisor has not polled yet
                    self._apply(d.transition)
                else:  # END, STOP
                    break
        except Exception:  # a bug here must not die silently: say so, and mark the stream
            log.exception("stream %s: source thread failed", self.cfg.id)
            self.failed = True
            if not self.retired:
                self.metrics.set_state(self.cfg.id, State.ERROR)
        finally:
            if not self.retired and not self.failed and self.policy.state is not State.ENDED:
                self.metrics.set_state(self.cfg.id, State.STOPPED)
            self.finished.set()

    def _probe(self) -> None:
        """One reachability probe while waiting to reconnect (see policy.py). A probe sends no
        request, so never the URL's credentials; its log line names only the stream (a URL
        with raw special characters in its password may even be parsed into a wrong host)."""
        target = self._probe_target
        if target is None:  # cannot happen: the policy probes only when a target exists
            self.policy.on_probe(self.clock(), True)
            return
        host, port = target
        timeout = min(MAX_PROBE_TIMEOUT, self.policy.config.probe_interval)
        ok = tcp_reachable(host, port, timeout, self.stop_event)
        if self.stop_event.is_set():
            return
        early = self.policy.on_probe(self.clock(), ok)
        if not self.retired:
            self.metrics.stream_probes.labels(self.cfg.id, "reachable" if ok else "unreachable").inc()
        if early:
            log.info("stream %s: the camera's port answers again; reconnecting now", self.cfg.id)

    def _attempt(self) -> None:
        now = self.clock()
        first = self.policy.connect_attempts_total == 0
        self._abort.clear()
        self._apply(self.policy.on_connect_attempt(now))
        if not first and not self.retired:
            self.metrics.stream_reconnects.labels(self.cfg.id).inc()
        try:
            outcome = self._session()
        except PermanentError as exc:
            self._fail(str(exc))
            return
        except UnsupportedFrame as exc:
            self._unsupported(exc)
            return
        except Exception as exc:  # FFmpeg, OS and timeout errors
            if self.stop_event.is_set():
                return
            words = describe_error(exc, self.cfg.url, format_forced=self.cfg.format is not None)
            if self.cfg.is_local and not self._abort.is_set():
                # A local file that fails to open or read fails the same way next time (one
                # that stalled is retried, like a camera).
                self._fail(f"cannot read {self.safe_url}: {words}")
                return
            hint = f"check streams[].url, .format and .options of {self.cfg.id!r}"
            if is_config_error(exc) and self.frame_index == 0:
                # An input format, protocol or option FFmpeg does not know: only the config can
                # fix it (check-config could have said so). (Once frames have flowed, the same
                # code is the server's doing.)
                self._fail(f"{words} ({hint})")
                return
            if is_invalid_argument(exc) and self.frame_index == 0:
                # EINVAL may be the URL or an option's value, or what the server answered: a
                # live source is retried with backoff (never dead for good), the reason says
                # where to look.
                words = f"{words} ({hint})"
            kind = ErrorKind.STALL if self._abort.is_set() else classify_error(exc)
            self._apply(self.policy.on_error(self.clock(), kind, words))
            return
        if self.stop_event.is_set():
            return
        if outcome == "end":
            self._apply(self.policy.on_error(self.clock(), ErrorKind.EOF, "end of file"))
        elif outcome == "aborted":
            self._apply(self.policy.on_error(self.clock(), ErrorKind.STALL, "no frame in time"))
        else:  # a live stream's demuxer ended: the server went away
            self._apply(self.policy.on_error(self.clock(), ErrorKind.EOF, "the stream ended"))

    def _unsupported(self, exc: UnsupportedFrame) -> None:
        """A frame no native code may see: a file fails for good, a live source is retried with
        backoff (a camera can be reconfigured); the other streams never notice."""
        if self.retired:
            return
        sid = self.cfg.id
        self.metrics.count_drop(sid, DropReason.UNSUPPORTED_FRAME)
        detail = {"pix_fmt": exc.pix_fmt, "width": exc.width, "height": exc.height}
        if self.cfg.is_file:
            self.metrics.set_last_error(sid, ErrorKind.UNSUPPORTED, time.time())
            self._fail(str(exc), **detail)
        else:
            self._apply(self.policy.on_error(self.clock(), ErrorKind.UNSUPPORTED, str(exc)))

    def _open(self) -> Any:
        url = self.cfg.url[5:] if self.cfg.url.startswith("file:") else self.cfg.url
        # A little over stall_timeout: the supervisor declares the stall first (with a clear
        # reason), and the blocked read ends soon after even if nobody else notices.
        read_timeout = read_bound(self.cfg.stall_timeout, self.cfg.read_timeout)
        if self.cfg.is_local:
            if not os.path.exists(url):
                raise PermanentError(f"file not found: {url}")
            if os.path.isdir(url):
                raise PermanentError(f"is a directory, not a video: {url}")
        if self._decoder is None:
            self._decoder = StreamDecoder(self.cfg.id, self.cfg.decode, self._export_decoder)
        try:
            if self._decoder.active:
                return self._open_nvdec(url, read_timeout)
            return av.open(url, format=self.cfg.format, options=open_options(self.cfg),
                           timeout=(self.cfg.open_timeout, read_timeout))
        except av.error.InvalidDataError as exc:
            if self.cfg.is_local:
                words = describe_error(exc, format_forced=self.cfg.format is not None)
                raise PermanentError(f"not a readable video (cut before its index, or not a video): {url}: {words}") from None
            raise

    def _open_nvdec(self, url: str, read_timeout: float) -> Any:
        """Open with NVDEC; if that fails where a plain open works, NVDEC was the problem."""
        assert self._decoder is not None
        kwargs: dict[str, Any] = dict(format=self.cfg.format, options=open_options(self.cfg),
                      timeout=(self.cfg.open_timeout, read_timeout))
        try:
            return av.open(url, **kwargs, **self._decoder.open_kwargs())
        except Exception as exc:
            container = av.open(url, **kwargs)  # raises the source's own error if it has one
            self._decoder.fall_back(NvdecFallback("nvdec_error", f"opening on NVDEC failed: {exc}"))
            return container

    def _export_decoder(self, decoder: str, reason: str) -> None:
        if not self.retired:
            self.metrics.set_decoder(self.cfg.id, decoder, reason)

    def _session(self) -> str:
        """One open-to-close run (see :meth:`_decode_session`); a stream NVDEC cannot decode
        is reopened at once on the CPU (sources/nvdec.py)."""
        try:
            return self._decode_session()
        except NvdecFallback as exc:
            assert self._decoder is not None
            self._decoder.fall_back(exc)
            return self._decode_session()

    def _decode_session(self) -> str:
        """One open-to-close run: "end" (a file reached its end for good), "aborted" (a stall
        seen by the supervisor), "stopped", or "eof" (a live stream ended)."""
        sid = self.cfg.id
        with self._open() as container:
            # The stream ffmpeg would pick: not cover art, one we can decode, the largest.
            vstream = pick_video_stream(container)
            if vstream is None:
                if self.cfg.is_file:
                    raise PermanentError(f"{self.safe_url}: {no_video_reason(container)}")
                # A camera still booting or on an audio-only profile: retried with backoff.
                raise SourceError(ErrorKind.NETWORK, no_video_reason(container))
            if self.stop_event.is_set():
                return "stopped"
            decoder = self._decoder
            assert decoder is not None
            decoder.new_session()
            decoder.check_stream(vstream)  # raises NvdecFallback: reopened on the CPU
            self._apply(self.policy.on_connected(self.clock()))
            if self.cfg.is_file and not self.cfg.realtime:
                vstream.thread_type = "AUTO"  # frame threads: throughput over latency, files only
            elif self.cfg.damage != "off":
                # Slice threads hide the decoder's concealment flag, which damage detection
                # reads (daemon/sources/damage.py); most cameras send one slice per frame anyway.
                vstream.thread_type = "NONE"
            rate = float(vstream.average_rate) if vstream.average_rate else 25.0
            pacer = self._pacer(rate) if self.cfg.realtime and self.cfg.is_file else None
            guard = FrameGuard(self.cfg, self.metrics, vstream)
            self._announced_up = False
            while True:
                got_any = False
                errors = 0
                demux = container.demux(vstream)
                while True:
                    if self.stop_event.is_set():
                        return "stopped"
                    if self._abort.is_set():
                        return "aborted"
                    try:
                        packet = next(demux)
                    except StopIteration:
                        break
                    except (av.error.InvalidDataError, av.error.UndefinedError) as exc:
                        # Bad bytes: count, and resume demuxing past them.
                        errors += 1
                        self.metrics.count_drop(sid, DropReason.CORRUPT)
                        guard.loss("the demuxer skipped damaged data")
                        if errors > MAX_CONSECUTIVE_DEMUX_ERRORS:
                            if not self.cfg.is_file:
                                raise
                            log.warning("stream %s: giving up on damaged data: %s", sid, describe_error(exc))
                            break
                        demux = container.demux(vstream)
                        continue
                    errors = 0
                    guard.packet(packet)
                    t0 = time.perf_counter()
                    try:
                        frames = packet.decode()
                    except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as exc:
                        self.metrics.count_drop(sid, DropReason.CORRUPT)
                        words = describe_error(exc)
                        guard.loss("the decoder rejected a packet")
                        decoder.packet_failed(exc)  # NVDEC refusing the stream: raises NvdecFallback
                        self._apply(self.policy.on_error(self.clock(), ErrorKind.DECODE, words))
                        log.debug("stream %s: skipped a damaged packet: %s", sid, words)
                        continue
                    dt = time.perf_counter() - t0
                    for vf in frames:
                        decoder.check_frame(vf)  # the first NVDEC frame: surface format
                        damaged, publish = guard.frame(vf)  # raises UnsupportedFrame
                        orient = frame_orientation(vf)  # display matrix, as ffmpeg -autorotate
                        if not self._announced_up:
                            self._announced_up = True
                            self._say_up(vf, orient)
                        if pacer is not None and not self._pace(pacer, vf.time):
                            return "stopped"
                        self._emit(vf, dt / max(1, len(frames)), orient, damaged, publish)
                        got_any = True
                if self.stop_event.is_set():
                    return "stopped"
                if not self.cfg.is_file:
                    return "eof"
                if self.cfg.loop and got_any:
                    container.seek(0)
                    guard.restart()
                    if pacer is not None:
                        pacer.reset()
                    continue
                if not got_any and self.frame_index == 0:
                    raise PermanentError(f"no decodable video frame in {self.safe_url}")
                return "end"

    def _say_up(self, vf: Any, orient: str) -> None:
        sid = self.cfg.id
        w, h = displayed_size(vf.width, vf.height, orient)
        self._event(EventKind.UP, None, state=State.UP.value, width=w, height=h)
        self.metrics.stream_up.labels(sid).set(1)
        turned = f", stored {vf.width}x{vf.height}, turned {orient} for display" if orient else ""
        log.info("stream %s: up (%s, %dx%d%s)", sid, self.safe_url, w, h, turned)
        odd = odd_rotation(vf)
        if odd is not None:
            log.warning("stream %s: display rotation of %.0f degrees is not a multiple of 90; "
                        "analysed as stored", sid, odd)

    def _emit(self, vf: Any, decode_seconds: float, orient: str = "", damaged: bool = False,
              publish: bool = True) -> None:
        """Hand a decoded frame on. ``publish=False`` (a damaged frame under ``damage: skip``,
        already counted as dropped): it still proves the stream alive and takes its index, so
        the gap shows in the next message's ``frame``."""
        now = self.clock()
        sid = self.cfg.id
        self._apply(self.policy.on_frame(now, queue_full=self.sink.is_full(sid)))
        if not publish:
            self.frame_index += 1
            if not self.retired:
                self.metrics.frames_decoded.labels(sid).inc()
            return
        w, h = displayed_size(vf.width, vf.height, orient)
        frame = Frame(stream=sid, index=self.frame_index, width=w, height=h,
                      pts=vf.time, captured_at=time.time(), t_decoded=now, native=vf,
                      decode_seconds=decode_seconds, orient=orient, damaged=damaged)
        self.frame_index += 1
        if self.retired:
            return
        self.metrics.frames_decoded.labels(sid).inc()
        self.metrics.stage["decode"].observe(decode_seconds)
        if self.cfg.is_live:
            self.sink.put(frame, self.stop_event)  # never blocks: a full queue drops the oldest
            return
        # A file that is not realtime waits for room in its queue: a slow pipeline, not a stall.
        self.policy.hold(now, math.inf)
        try:
            self.sink.put(frame, self.stop_event)
        finally:
            self.policy.release(self.clock())

    # -- realtime files ------------------------------------------------------------------------
    def _pacer(self, rate: float) -> RealtimeClock:
        """The stream's realtime clock, kept across reopenings (a loop or a reconnect after a
        stall goes on one period after the last frame)."""
        pacer: RealtimeClock | None = getattr(self, "_realtime_clock", None)
        if pacer is None:
            pacer = self._realtime_clock = RealtimeClock(rate, max_gap=self.cfg.stall_timeout)
        pacer.reset()
        return pacer

    def _pace(self, pacer: RealtimeClock, pts: float | None) -> bool:
        """Wait until the frame with timestamp ``pts`` is due (see pacing.py); False on stop.
        The wait is a hold: the stall clock does not run while the pacer waits on purpose."""
        now = self.clock()
        r = pacer.schedule(now, pts)
        if r.discontinuity is not None:
            self._discontinuities += 1
            if not self.retired:
                self.metrics.stream_discontinuities.labels(self.cfg.id).inc()
            if self._discontinuities <= MAX_LOGGED_DISCONTINUITIES:
                log.warning("stream %s: timestamps jump by %+.3f s at pts %s; resynchronised the "
                            "realtime clock (not waited out)%s", self.cfg.id, r.discontinuity,
                            f"{pts:.3f}" if pts is not None else "?",
                            "; further jumps are only counted"
                            if self._discontinuities == MAX_LOGGED_DISCONTINUITIES else "")
        if r.delay <= 0:
            return not self.stop_event.is_set()
        self.policy.hold(now, r.due)
        return not self.stop_event.wait(r.delay)
