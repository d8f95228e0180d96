"""Whether a track's box shows the whole object, judged by its height against the track's own
recent heights: the bottom-centre anchor is the object's feet only when it does.

A detector that loses part of an object (the lower body hidden behind someone in front, a
torso reported instead of the whole person) or merges it with what is behind it (a person with
the bus behind) changes the box's height by a large fraction within a frame, while a moving
object's own height changes slowly (perspective). Such an observation says nothing about the
side of a line. The reference is the median height of the track's last ``WINDOW`` accepted
observations; a box whose height differs from it by more than ``TOLERANCE`` (relative) is not
accepted. When ``RESET_AFTER`` observations in a row are rejected but agree with each other,
the reference was the odd one (a track that began on partial boxes): it is replaced, and the
caller forgets the track's line sides, so no crossing is counted between the two kinds of box.
The shape (height / width) of the accepted boxes is kept too: a box cut off by something in front
loses height but keeps its width, while the same object farther away, or a smaller one, keeps
its shape (see :meth:`reference_aspect`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median

__all__ = ["RESET_AFTER", "ShapeGate", "TOLERANCE"]

WINDOW = 5
TOLERANCE = 0.3
RESET_AFTER = 3


Box = tuple[float, float | None]  # (height pixels, height / width or None: width not known)


@dataclass(slots=True)
class _Heights:
    accepted: deque[Box] = field(default_factory=lambda: deque(maxlen=WINDOW))
    rejected: list[Box] = field(default_factory=list)


def _height(boxes: Iterable[Box]) -> float:
    return median(h for h, _ in boxes)


class ShapeGate:
    """Per-track height references of one stream."""

    def __init__(self) -> None:
        self.tracks: dict[int, _Heights] = {}

    def check(self, track_id: int, height: float, width: float | None = None) -> tuple[bool, bool]:
        """(accepted, reset) for a box of ``height`` (and ``width``, None: not known) pixels of
        ``track_id``. ``reset``: the reference was replaced; the caller forgets what the old
        boxes said."""
        st = self.tracks.setdefault(track_id, _Heights())
        box = (height, height / width if width else None)
        if not st.accepted:
            st.accepted.append(box)
            return True, False
        ref = _height(st.accepted)
        if abs(height - ref) <= TOLERANCE * ref:
            st.accepted.append(box)
            st.rejected.clear()
            return True, False
        st.rejected.append(box)
        if len(st.rejected) >= RESET_AFTER:
            m = _height(st.rejected)
            if all(abs(h - m) <= TOLERANCE * m for h, _ in st.rejected):
                st.accepted = deque(st.rejected[-WINDOW:], maxlen=WINDOW)
                st.rejected.clear()
                return True, True
            st.rejected = st.rejected[1:]
        return False, False

    def reference(self, track_id: int) -> float | None:
        """The track's whole-object height (pixels): the median of its last accepted heights."""
        st = self.tracks.get(track_id)
        return _height(st.accepted) if st is not None and st.accepted else None

    def reference_aspect(self, track_id: int) -> float | None:
        """The track's whole-object shape: the median height / width of its last accepted boxes
        (dimensionless), None when no width was given."""
        st = self.tracks.get(track_id)
        aspects = [a for _, a in st.accepted if a is not None] if st is not None else []
        return median(aspects) if aspects else None

    def restart(self, track_id: int, height: float, width: float | None = None) -> None:
        """``height`` (and ``width``) pixels are known to be the whole object's: they become the
        only reference, whatever the track's earlier (partial) boxes said."""
        st = _Heights()
        st.accepted.append((height, height / width if width else None))
        self.tracks[track_id] = st

    def end(self, track_id: int) -> None:
        self.tracks.pop(track_id, None)
