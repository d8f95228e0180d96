"""A stream's view of itself, as its source reports it (:meth:`StreamSource.status`): what the
preview page's status line and the daemon's periodic status log show, without reading the
Prometheus registry back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.vocab import StreamState

__all__ = ["StreamStatus"]


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream, now.

    ``state``: where its reconnect state machine is (``detectd_stream_state``); ``up``: connected
    and delivering frames (``detectd_stream_up``: false between a connection opening and its
    first frame); ``reconnects``: connection attempts after the first
    (``detectd_stream_reconnects_total``); ``drops``: frames dropped before publishing, every
    reason summed (``detectd_frames_dropped_total``).
    """

    state: StreamState
    up: bool
    reconnects: int
    drops: int

    def shown(self) -> dict[str, Any]:
        """The fields the preview's status line shows (``up`` is implied by the state)."""
        return {"state": self.state.value, "reconnects": self.reconnects, "drops": self.drops}
