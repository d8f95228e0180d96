"""What a decoding thread checks between the decoder and the rest of the process.

:class:`FrameGuard` is one stream's guard: it refuses frames that native code cannot convert
safely (:mod:`daemon.sources.validate`, raising :class:`UnsupportedFrame` before anything touches
the pixels), follows packet loss (:mod:`daemon.sources.damage`) and turns damage into the
stream's policy (``mark``/``skip``/``off``), a counter and a rate-limited log line.
docs/robustness.md explains both choices.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from daemon.config import StreamConfig
from daemon.metrics import Metrics
from daemon.vocab import DropReason
from daemon.sources.damage import DamageTracker
from daemon.sources.validate import UnsupportedFrame, check_frame

__all__ = ["FrameGuard", "UnsupportedFrame"]

log = logging.getLogger("daemon.sources")

LOG_EVERY_S = 60.0  # a lossy camera loses packets every GOP: one warning a minute, with a count


class FrameGuard:
    """One stream's checks, for one open container. ``stream`` is the PyAV video stream."""

    def __init__(self, cfg: StreamConfig, metrics: Metrics, stream: Any,
                 clock: Any = time.monotonic) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock
        tb = float(stream.time_base) if stream.time_base else 0.0
        self.tracker = DamageTracker(tb) if cfg.damage != "off" else None
        self._checked: tuple[str, int, int] | None = None  # format/size last found safe
        self._logged_at: float | None = None
        self._unlogged = 0

    def restart(self) -> None:
        """After a seek (a looped file): the timestamps start over."""
        if self.tracker is not None:
            self.tracker.restart()

    def packet(self, packet: Any) -> None:
        if self.tracker is not None:
            self.tracker.on_packet(packet.pts, packet.dts, packet.duration, packet.is_keyframe,
                                   packet.is_corrupt)

    def loss(self, reason: str) -> None:
        """The demuxer skipped bytes or the decoder rejected a packet."""
        if self.tracker is not None:
            self.tracker.on_loss(reason)

    def frame(self, vf: Any) -> tuple[bool, bool]:
        """Check one decoded frame: ``(damaged, publish)``. Raises :class:`UnsupportedFrame`
        (naming pixel format and size) for a frame no native code may see."""
        key = (vf.format.name, vf.width, vf.height)
        if key != self._checked:  # a stream keeps its format and size: check on change only
            check_frame(vf)
            self._checked = key
        if self.tracker is None:
            return False, True
        damaged = self.tracker.on_frame(vf.pts, vf.is_corrupt, vf.key_frame)
        episode = self.tracker.take_new_episode()
        if episode is not None:
            self._log_episode(episode.reason, episode.at)
        if not damaged:
            return False, True
        sid = self.cfg.id
        self.metrics.frames_damaged.labels(sid).inc()
        if self.cfg.damage == "skip":
            self.metrics.count_drop(sid, DropReason.DAMAGED)
            return True, False
        return True, True

    def _log_episode(self, reason: str, at: float | None) -> None:
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
        where = f" at {at:.3f} s" if at is not None else ""
        action = "skipped" if self.cfg.damage == "skip" else "marked damaged"
        log.warning("stream %s: packets lost%s: %s; frames %s until the next keyframe%s",
                    self.cfg.id, where, reason, action, more)
        self._logged_at, self._unlogged = now, 0
