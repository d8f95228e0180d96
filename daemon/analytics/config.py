"""The ``streams[].analytics`` section: tracker, zones and lines (strict, like the rest of the
config: unknown keys are rejected and every error names its key path).

Only pydantic is imported here, so loading a config never pulls in the tracker library.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.analytics.geometry import line_problems, polygon_problems

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class TrackerConfig(_Strict):
    """ByteTrack (Roboflow ``trackers``) settings. Times are seconds of the stream's own clock
    (frame timestamps), never frame counts, so dropped frames do not shorten or stretch them."""

    # A track that matches no detection for this long is ended (zone exits are then emitted).
    lost_track_seconds: float = Field(default=1.0, gt=0, le=60)
    # Detections at least this confident may start a new track.
    activation_threshold: float = Field(default=0.35, gt=0, le=1)
    # ByteTrack's two-stage split: high-confidence detections match first, the rest may only
    # continue existing tracks.
    high_conf_threshold: float = Field(default=0.5, gt=0, le=1)
    # Minimum IoU between a track's predicted box and a detection to associate them.
    min_iou: float = Field(default=0.1, gt=0, lt=1)
    # Consecutive matched frames before a track gets an id (filters one-frame flickers).
    min_hits: int = Field(default=2, ge=1, le=30)
    # The Kalman state: "xyxy" (box corners, the library's default) or "xcycsr" (centre, area
    # and aspect ratio, as in SORT: a box that shrinks under occlusion moves the centre less).
    motion: Literal["xyxy", "xcycsr"] = "xyxy"
    # Association similarity: IoU of the boxes enlarged by this fraction of their size on each
    # side (buffered IoU, Yang et al. 2023, C-BIoU); 0 = plain IoU. A buffer lets a track that
    # was hidden for a moment match its object again although the boxes no longer overlap.
    buffer_ratio: float = Field(default=0.0, ge=0, le=2)
    # Duplicate boxes are kept out of tracking (their track_id is null): a box of the same
    # label with at least this fraction of its area inside a larger one (YOLO often reports
    # a person twice, whole and torso), and a box of another label with IoU >= 0.9 with a more
    # confident one (bus/train on one vehicle). 0 = off.
    suppress_contained: float = Field(default=0.8, ge=0, le=1)
    # The stream's nominal frame rate: scales the Kalman model's step; real gaps come from the
    # frames' timestamps.
    frame_rate: float = Field(default=25.0, gt=0, le=1000)
    # Line crossings across an identity switch: a new track that appears while a track of the
    # same label is lost (not matched, not yet ended), within one box size of where that one
    # was last seen, continues its line sides (docs/analytics.md "Identity switches").
    stitch: bool = True


def _name(v: str) -> str:
    if not NAME.match(v):
        raise ValueError(f"name {v!r} must match [A-Za-z0-9_.-]+ (it becomes a metric label)")
    return v


class _Shape(_Strict):
    name: str
    points: list[tuple[float, float]]
    # Only tracks of these labels count (empty: every label).
    labels: list[str] = Field(default_factory=list)
    # Consecutive observations on the new side / inside before a crossing / an entry counts
    # (and outside before an exit counts): one noisy box near an edge does not flap.
    min_frames: int = Field(default=2, ge=1, le=100)
    # Which point of a box stands for the object: its bottom centre (where it touches the
    # ground, as DeepStream's and Frigate's zones do) or its centre.
    anchor: Literal["bottom_center", "center"] = "bottom_center"

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return _name(v)


class ZoneConfig(_Shape):
    """A polygon in normalized frame coordinates (>= 3 points, simple, inside [0, 1]^2)."""

    @field_validator("points")
    @classmethod
    def _polygon(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        problems = polygon_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


class LineConfig(_Shape):
    """A directed segment [start, end] in normalized frame coordinates. Crossing it from the
    left of start -> end to its right (as seen on screen) is direction ``in``, the other way
    ``out``; e.g. for [[0, 0.5], [1, 0.5]] moving down the picture is ``in``."""

    # Hysteresis: an anchor closer to the line than this (normalized distance) says nothing
    # about its side, so a box whose bottom edge jitters across the line does not flap.
    margin: float = Field(default=0.01, ge=0, le=0.5)

    @field_validator("points")
    @classmethod
    def _line(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        problems = line_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


class AnalyticsConfig(_Strict):
    """``streams[].analytics``: null/absent = off. Zones and lines need the tracker."""

    tracker: TrackerConfig | None = None
    zones: list[ZoneConfig] = Field(default_factory=list)
    lines: list[LineConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "AnalyticsConfig":
        if (self.zones or self.lines) and self.tracker is None:
            raise ValueError("zones and lines count tracks: add 'tracker: {}' to this analytics section")
        for kind, items in (("zones", self.zones), ("lines", self.lines)):
            seen: set[str] = set()
            for z in items:
                if z.name in seen:
                    raise ValueError(f"{kind}: duplicate name {z.name!r}")
                seen.add(z.name)
        return self


def unknown_labels(cfg: AnalyticsConfig, names: Sequence[str]) -> list[str]:
    """Problems with the ``labels`` filters of ``cfg`` against the model's class names
    ``names`` (e.g. the 80 COCO names of YOLOv3-Tiny): one line per label the model never
    outputs, naming its key relative to the stream (``analytics.lines[0].labels``) and the
    nearest class name when there is one. Such a zone or line can never count; the config
    alone cannot tell (the class names come with the model), so the daemon and ``annotate``
    check when the model is loaded and log each line as a warning. Empty when all are known."""
    known = set(names)
    out: list[str] = []
    for kind, items in (("zones", cfg.zones), ("lines", cfg.lines)):
        for i, z in enumerate(items):
            for lab in z.labels:
                if lab not in known:
                    near = difflib.get_close_matches(lab, list(names), n=1)
                    hint = f" (did you mean {near[0]!r}?)" if near else ""
                    out.append(f"analytics.{kind}[{i}].labels: {lab!r} is not a class of the model{hint}: "
                               f"{kind[:-1]} {z.name!r} can never count it")
    return out
