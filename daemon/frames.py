"""The value types that cross every boundary of the pipeline.

``Frame`` leaves a source, ``Detections`` leaves post-processing, and ``FrameResult`` is what the
publisher serializes. They hold numpy arrays and are validated on construction (the supervision
style): a malformed value fails where it is made, not three threads later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded frame of one stream.

    ``image`` is the decoded picture as an RGB ``uint8`` array of shape (H, W, 3), or ``None``
    when the source handed over a PyAV frame in ``native`` for the preprocessor to convert in one
    pass (scale + colour conversion by libswscale). ``index`` counts decoded frames since the
    stream was (re)opened; ``width``/``height`` are the displayed size (after the stream's display
    rotation, ``orient``, which ``native`` still needs); ``pts`` is in seconds or ``None`` when the container has no timestamp.
    ``captured_at`` is the wall-clock time (unix seconds) at which decoding finished and
    ``t_decoded`` the same instant on the monotonic clock, used for latency and freshness.
    ``damaged`` is true when packets were lost since the last keyframe (the picture may be smeared).
    """

    stream: str
    index: int
    width: int
    height: int
    pts: float | None
    captured_at: float
    t_decoded: float
    image: np.ndarray | None = None
    native: Any = None
    decode_seconds: float = 0.0
    # How ``native`` is turned for display (daemon.vision.orient: "", "clock", "cclock", ...);
    # ``width``/``height`` and ``image`` are always as displayed.
    orient: str = ""
    # Decoded from an incomplete reference chain (packets lost since the last keyframe):
    # see daemon/sources/damage.py and docs/robustness.md.
    damaged: bool = False

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"frame of stream {self.stream!r} has size {self.width}x{self.height}")
        if self.image is not None:
            if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
                raise ValueError(
                    f"frame image must be uint8 HxWx3, got {self.image.dtype} {self.image.shape}"
                )
            if self.image.shape[:2] != (self.height, self.width):
                raise ValueError("frame image shape disagrees with width/height")

    def rgb(self) -> np.ndarray:
        """The frame as an RGB uint8 (H, W, 3) array, converting a native frame if needed."""
        if self.image is None:
            if self.native is None:
                raise ValueError("frame has neither image nor native frame")
            if self.orient:
                from daemon.vision.orient import oriented_rgb

                self.image = oriented_rgb(self.native, self.orient)
            else:
                self.image = self.native.to_ndarray(format="rgb24")
        return self.image


@dataclass(slots=True)
class Detections:
    """Detections of one frame: ``boxes`` (N, 4) float32 x1,y1,x2,y2 in source pixels,
    ``scores`` (N,) float32, ``class_ids`` (N,) int32. ``track_ids`` (N,) int64 on tracked
    streams (``streams[].analytics.tracker``; -1 = not part of a confirmed track), else None."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(
                f"detections disagree in length: {n} boxes, {len(self.scores)} scores, "
                f"{len(self.class_ids)} class ids"
            )
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != n:
                raise ValueError(f"detections disagree in length: {n} boxes, {len(self.track_ids)} track ids")

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.boxes)

    def to_list(self, labels: list[str]) -> list[dict[str, Any]]:
        """The contract's JSON form: ``{label, class_id, score, box}`` per detection, plus
        ``track_id`` (an int, or null while unconfirmed) when the stream is tracked."""
        out = []
        for box, score, cid in zip(self.boxes.tolist(), self.scores.tolist(), self.class_ids.tolist()):
            out.append(
                {
                    "label": labels[cid] if 0 <= cid < len(labels) else str(cid),
                    "class_id": int(cid),
                    "score": round(float(score), 5),
                    "box": [round(float(v), 2) for v in box],
                }
            )
        if self.track_ids is not None:
            for item, tid in zip(out, self.track_ids.tolist()):
                item["track_id"] = tid if tid >= 0 else None
        return out


@dataclass(slots=True)
class FrameResult:
    """A frame's detections plus the per-stage timings measured on the way."""

    frame: Frame
    detections: Detections
    stages: dict[str, float] = field(default_factory=dict)
