"""Damaged video: frames decoded from an incomplete reference chain, made visible.

When packets are lost in the middle of a GOP (a UDP camera, a cut transport stream), the decoder
neither raises nor flags anything: it conceals (repeats or guesses the missing reference) and
every frame until the next keyframe comes out smeared. PyAV does not expose MPEG-TS continuity
counters, and FFmpeg reports the damage only in DEBUG log lines (h264's "Frame num gap"), so
detectd infers it from what every demuxer gives, per packet, in decode order:

- a **timestamp gap**: the packet's ``dts`` (else ``pts``) is more than :data:`GAP_FACTOR` times
  the stream's frame interval after the previous packet's. The interval is the median of the
  last :data:`HISTORY` steps (robust to jitter and to a camera changing its frame rate), or the
  packet's own ``duration`` for the first three steps after opening;
- a packet the demuxer flagged corrupt (``AV_PKT_FLAG_CORRUPT``: e.g. a PES cut short in TS);
- a packet the decoder rejected (``InvalidDataError``) and bytes the demuxer had to skip;
- a frame the decoder flagged corrupt: it concealed an error (``decode_error_flags``) or
  output a frame it could not reconstruct (``AV_FRAME_FLAG_CORRUPT``). FFmpeg's H.264 decoder
  sets this only without slice threads (measured), so detectd decodes live and realtime
  streams without them (files read as fast as possible use frame threads, which keep it).

Any of these starts a **damage episode**: the packet concerned and every packet after it are
damaged until the next keyframe packet, which restarts the reference chain (a gap right before a
keyframe damages nothing). Frames are matched to their packet by ``pts``, so frame threading
and B-frame reordering do not shift the marks. Timestamps that go backwards (a loop, a seek, a
camera's clock reset) restart the baseline and are not damage.

What happens to damaged frames is the stream's ``damage`` setting (docs/robustness.md):
``mark`` (default) publishes them with ``"damaged": true``; ``skip`` drops them
(``frames_dropped_total{reason="damaged"}``); both count them in
``detectd_frames_damaged_total{stream}``; ``off`` disables the detection.

This module imports nothing from the media stack: it takes plain numbers, and is tested without
a decoder.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

__all__ = ["GAP_FACTOR", "HISTORY", "DamageTracker", "Episode"]

# A step of more than 1.5 frame intervals means at least one frame's packets are missing: with
# 1.5 a single lost frame (a step of 2) is caught and ordinary timestamp jitter (RTP clocks,
# rounding in 90 kHz units) is not.
GAP_FACTOR = 1.5
HISTORY = 16
MAX_PENDING = 512  # damaged pts awaiting their frame; bounded for decoders that drop frames
PENDING_SECONDS = 10.0
# A demuxer flags the packet it is emitting when it notices the loss, which can be up to a few
# packets *before* the one whose data went missing (PES reassembly and the parser buffer; see
# docs/robustness.md for the measurement). So a keyframe this close after a corrupt flag may be
# the damaged packet itself and does not end the episode.
CORRUPT_HOLD_PACKETS = CORRUPT_HOLD_PACKETS_DEFAULT = 3


@dataclass(frozen=True, slots=True)
class Episode:
    """Why damage started: ``reason`` in words, ``at`` the stream time in seconds (or None)."""

    reason: str
    at: float | None


@dataclass
class DamageTracker:
    """Per-stream damage state. Call :meth:`on_packet` for every packet in demux order,
    :meth:`on_loss` when the demuxer or decoder rejected data, then :meth:`on_frame` for every
    decoded frame; it answers whether that frame is damaged.

    ``time_base`` is the stream's (seconds per timestamp unit). Times are in timestamp units
    unless a name says seconds.
    """

    time_base: float
    damaged: bool = False  # inside an episode: packets are damaged until the next keyframe
    episodes: int = 0
    last_episode: Episode | None = None
    _last_ts: int | None = None
    _steps: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))
    _pending: set[int] = field(default_factory=set)  # pts of damaged packets, awaiting frames
    _new_episode: Episode | None = None
    _hold: int = 0  # packets left during which a keyframe does not end the episode
    _decoder_damaged: bool = False  # the decoder flagged a frame; until it outputs a keyframe

    def restart(self) -> None:
        """A seek or reopen: forget the timestamp baseline (the decoder starts at a keyframe)."""
        self._last_ts = None
        self._pending.clear()
        self.damaged = False
        self._hold = 0
        self._decoder_damaged = False

    def interval(self, duration: int | None = None) -> float | None:
        """The frame interval in timestamp units, or None while unknown: the median of the
        recent steps once there are 3, else the packet's own duration. Never the nominal rate
        alone: cameras and containers often state one they do not keep (a 25 fps header on a
        10 fps night-mode stream would mark every frame)."""
        if len(self._steps) >= 3:
            return float(median(self._steps))
        if duration:
            return float(duration)
        return None

    def _start(self, reason: str, ts: int | None) -> None:
        if not self.damaged:
            self.damaged = True
            self.episodes += 1
            at = ts * self.time_base if ts is not None else None
            self.last_episode = self._new_episode = Episode(reason, at)

    def take_new_episode(self) -> Episode | None:
        """The episode started since the last call, if any (to log and announce it once)."""
        ep, self._new_episode = self._new_episode, None
        return ep

    def on_packet(self, pts: int | None, dts: int | None, duration: int | None,
                  keyframe: bool, corrupt: bool) -> bool:
        """One demuxed packet; returns whether it is damaged."""
        ts = dts if dts is not None else pts
        if self._hold:
            self._hold -= 1
        elif keyframe:
            self.damaged = False  # a keyframe decodes on its own: the chain is whole again
            if pts is not None and self._pending and self.time_base > 0:
                # Frames of damaged packets come out within a few frames or never (rejected by
                # the decoder): forget those more than PENDING_SECONDS old.
                horizon = pts - PENDING_SECONDS / self.time_base
                self._pending = {p for p in self._pending if p >= horizon}
        if ts is not None:
            last, self._last_ts = self._last_ts, ts
            if last is not None:
                step = ts - last
                if step < 0:
                    self._steps.clear()  # backwards: a loop or a clock reset, not a loss
                elif step > 0:
                    expected = self.interval(duration)
                    if expected is not None and step > GAP_FACTOR * expected and not keyframe:
                        lost = round(step / expected) - 1
                        self._start(f"timestamps jump by {step * self.time_base:.3f} s "
                                    f"(about {lost} frame{'s' if lost != 1 else ''} missing)", ts)
                    self._steps.append(step)
        if corrupt:  # a damaged keyframe damages its whole GOP
            self._start("the demuxer flagged a packet corrupt", ts)
            self._hold = CORRUPT_HOLD_PACKETS
        if self.damaged and pts is not None and len(self._pending) < MAX_PENDING:
            self._pending.add(pts)
        return self.damaged

    def on_loss(self, reason: str) -> None:
        """Data the demuxer skipped or a packet the decoder rejected: the frames that follow
        reference a picture that never came."""
        self._start(reason, self._last_ts)

    def on_frame(self, pts: int | None, corrupt: bool = False, keyframe: bool = False) -> bool:
        """One decoded frame, in output order; returns whether it is damaged.

        ``corrupt`` is the decoder's own flag (``AV_FRAME_FLAG_CORRUPT`` or concealment in
        ``decode_error_flags``, PyAV's ``frame.is_corrupt``): the decoder saw the damage itself,
        so every frame it outputs after this one is damaged until it outputs a keyframe. This
        follows the decoder's output, not the demuxer, because frames come out several packets
        after their packet went in (frame threads, reordering)."""
        if keyframe:
            self._decoder_damaged = False
        if corrupt:
            self._start("the decoder concealed an error", pts)
            self._decoder_damaged = True
        marked = pts is not None and pts in self._pending
        if marked:
            self._pending.discard(pts)  # type: ignore[arg-type]
        return marked or self._decoder_damaged or (pts is None and self.damaged)
