"""Test videos whose tracks, line crossings and zone dwell times are known by construction.

Real objects cut from the package photos (the persons of ``bus.jpg`` and ``zidane.jpg``, the bus
of ``bus.jpg``; see DESIGN.md "Where the real assets come from") are moved across a static
background along known straight paths at known frames, encoded with PyAV (H.264), and the real
model detects them. The paths give the truth:

- the true box of every object in every frame (the pasted cut-out, clipped to the frame), with
  the fraction of it left visible by the objects drawn over it (occlusion);
- every line crossing: the first frame whose anchor (bottom centre) lies on the other side of a
  line, where the step from the previous frame crosses the line's segment, with its direction;
- every zone stay: first frame inside, first frame outside, hence the dwell time.

Scenes are plain data (:class:`Scene`), so new ones are a few lines; :func:`render` writes the
video. Objects are drawn in list order, later ones in front.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from daemon.analytics.geometry import point_in_polygon, segments_intersect, side

# Cut-outs: (photo, x1, y1, x2, y2 in the photo's pixels, COCO label). The boxes are the real
# model's own detections of these objects in the photos (conf 0.97, 0.92, 0.60), so the cut-out
# is the object's extent.
CUTOUTS: dict[str, tuple[str, tuple[int, int, int, int], str]] = {
    "walker": ("bus.jpg", (46, 407, 210, 893), "person"),
    "coach": ("zidane.jpg", (727, 29, 1154, 720), "person"),
    "bus": ("bus.jpg", (0, 234, 810, 736), "bus"),
}


@dataclass(frozen=True)
class Mover:
    """One object: cut-out ``kind`` scaled to ``size`` (w, h) px, its bottom centre moving in a
    straight line from ``start`` to ``end`` (pixels) between frames ``f0`` and ``f1``
    (inclusive; absent outside them). ``end_size``: the size at ``f1`` when the object
    approaches or recedes (linear in between, rounded to whole pixels)."""

    name: str
    kind: str
    size: tuple[int, int]
    start: tuple[float, float]
    end: tuple[float, float]
    f0: int
    f1: int
    end_size: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return CUTOUTS[self.kind][2]

    def anchor(self, f: int) -> tuple[float, float] | None:
        if not self.f0 <= f <= self.f1:
            return None
        a = (f - self.f0) / max(self.f1 - self.f0, 1)
        return (self.start[0] + a * (self.end[0] - self.start[0]), self.start[1] + a * (self.end[1] - self.start[1]))

    def size_at(self, f: int) -> tuple[int, int]:
        if self.end_size is None:
            return self.size
        a = min(max((f - self.f0) / max(self.f1 - self.f0, 1), 0.0), 1.0)
        return (int(round(self.size[0] + a * (self.end_size[0] - self.size[0]))),
                int(round(self.size[1] + a * (self.end_size[1] - self.size[1]))))

    def box(self, f: int) -> tuple[float, float, float, float] | None:
        p = self.anchor(f)
        if p is None:
            return None
        w, h = self.size_at(f)
        return (p[0] - w / 2, p[1] - h, p[0] + w / 2, p[1])


@dataclass(frozen=True)
class Scene:
    name: str
    width: int
    height: int
    fps: int
    frames: int
    movers: tuple[Mover, ...]
    # streams[].analytics for this scene (normalized geometry), as a config mapping.
    analytics: dict[str, Any] = field(default_factory=dict)


def crossing_scene() -> Scene:
    """Two persons walking towards each other on one pavement (the front one hides the other as
    they pass), a third walking down the picture, and a bus driving through behind them."""
    w, h = 640, 360
    return Scene(
        "crossing", w, h, 25, 250,
        (
            Mover("bus", "bus", (300, 186), (820.0, 358.0), (-180.0, 358.0), 120, 249),
            Mover("p1", "walker", (66, 196), (40.0, 215.0), (600.0, 215.0), 0, 150),
            Mover("p2", "coach", (120, 194), (600.0, 235.0), (40.0, 235.0), 15, 165),
            Mover("p3", "walker", (58, 172), (560.0, 170.0), (560.0, 356.0), 10, 110),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "mid", "points": [[0.5, 0.25], [0.5, 0.75]], "labels": ["person"]},
                {"name": "left", "points": [[0.15, 0.25], [0.15, 0.75]], "labels": ["person"]},
                {"name": "down", "points": [[0.78, 0.78], [0.98, 0.78]], "labels": ["person"]},
                {"name": "busline", "points": [[0.35, 0.85], [0.35, 1.0]], "labels": ["bus"]},
            ],
            "zones": [
                {"name": "centre", "points": [[0.35, 0.45], [0.65, 0.45], [0.65, 0.68], [0.35, 0.68]],
                 "labels": ["person"]},
                {"name": "corner", "points": [[0.8, 0.55], [0.98, 0.55], [0.98, 0.75], [0.8, 0.75]],
                 "labels": ["person"]},
                {"name": "west", "points": [[0.02, 0.45], [0.25, 0.45], [0.25, 0.7], [0.02, 0.7]]},
                {"name": "road", "points": [[0.0, 0.85], [1.0, 0.85], [1.0, 1.0], [0.0, 1.0]],
                 "labels": ["bus"]},
            ],
        },
    )


def passing_scene() -> Scene:
    """A second, different layout: a person walks diagonally across two lines while another
    walks the opposite way behind it, then a bus passes left to right."""
    w, h = 640, 360
    return Scene(
        "passing", w, h, 25, 220,
        (
            Mover("q1", "coach", (116, 188), (600.0, 215.0), (60.0, 215.0), 0, 130),
            Mover("q2", "walker", (64, 190), (80.0, 262.0), (560.0, 205.0), 20, 160),
            Mover("bus", "bus", (280, 174), (-160.0, 358.0), (800.0, 358.0), 110, 219),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "a", "points": [[0.3, 0.2], [0.3, 0.8]], "labels": ["person"]},
                {"name": "b", "points": [[0.7, 0.8], [0.7, 0.2]], "labels": ["person"]},
                {"name": "c", "points": [[0.55, 0.85], [0.55, 1.0]], "labels": ["bus"]},
                {"name": "d", "points": [[0.16, 0.2], [0.16, 0.8]], "labels": ["person"]},
            ],
            "zones": [
                {"name": "mid", "points": [[0.4, 0.4], [0.6, 0.4], [0.6, 0.8], [0.4, 0.8]], "labels": ["person"]},
            ],
        },
    )


def short_scene() -> Scene:
    """For the daemon tests (a few seconds of a busy CPU): two persons cross a line in opposite
    directions, at different heights; they pass each other (the front one hiding the other) away
    from the line."""
    w, h = 640, 360
    return Scene(
        "short", w, h, 25, 90,
        (
            Mover("r1", "walker", (64, 190), (60.0, 215.0), (600.0, 215.0), 0, 89),
            Mover("r2", "coach", (116, 188), (590.0, 260.0), (50.0, 260.0), 20, 89),
        ),
        {
            "tracker": {},
            "lines": [{"name": "gate", "points": [[0.3, 0.2], [0.3, 0.9]], "labels": ["person"]}],
            "zones": [{"name": "right", "points": [[0.6, 0.3], [0.98, 0.3], [0.98, 0.9], [0.6, 0.9]],
                       "labels": ["person"]}],
        },
    )


def occluded_scene() -> Scene:
    """Held out while the counting was changed (docs/analytics.md): a person walks left behind a
    bus driving right and crosses a line while the bus hides all but its head; another person
    walks up the picture across a horizontal line in front of everything; a third walks down
    past that line's right end (no crossing: walking around a line's end). Person lines end
    above y 0.82: the persons photographed in front of the bus (not in the truth) ride along
    with it with their feet at y 0.88-0.91."""
    w, h = 640, 360
    return Scene(
        "occluded", w, h, 25, 230,
        (
            Mover("hidden", "walker", (62, 184), (600.0, 280.0), (40.0, 280.0), 0, 150),
            Mover("bus", "bus", (320, 200), (-200.0, 358.0), (840.0, 358.0), 30, 229),
            Mover("climber", "coach", (100, 160), (480.0, 340.0), (420.0, 190.0), 40, 140),
            Mover("skirter", "walker", (50, 150), (600.0, 200.0), (600.0, 350.0), 150, 220),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "west", "points": [[0.3, 0.2], [0.3, 0.82]], "labels": ["person"]},
                {"name": "step", "points": [[0.55, 0.75], [0.85, 0.75]], "labels": ["person"]},
                {"name": "buses", "points": [[0.5, 0.8], [0.5, 1.0]], "labels": ["bus"]},
            ],
            "zones": [
                {"name": "yard", "points": [[0.6, 0.5], [0.9, 0.5], [0.9, 0.95], [0.6, 0.95]], "labels": ["person"]},
            ],
        },
    )


def fast_scene() -> Scene:
    """Held out while the counting was changed: faster movers (8-19 px per frame, so 30-75 px
    between frames at every 4th frame), one person overtaking another in front of it, a
    diagonal line, a bus driving fast the other way in front of a third person."""
    w, h = 640, 360
    return Scene(
        "fast", w, h, 25, 200,
        (
            Mover("a", "walker", (60, 180), (-20.0, 250.0), (660.0, 250.0), 0, 80),
            Mover("b", "coach", (110, 180), (-60.0, 262.0), (700.0, 262.0), 10, 70),
            Mover("c", "walker", (60, 176), (660.0, 230.0), (-30.0, 230.0), 100, 199),
            Mover("bus", "bus", (300, 180), (900.0, 358.0), (-260.0, 358.0), 90, 150),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "v1", "points": [[0.35, 0.3], [0.35, 0.8]], "labels": ["person"]},
                {"name": "v2", "points": [[0.75, 0.25], [0.63, 0.8]], "labels": ["person"]},
                {"name": "gate", "points": [[0.5, 0.8], [0.5, 1.0]], "labels": ["bus"]},
            ],
        },
    )


def approach_scene() -> Scene:
    """Held out while the counting was last changed (docs/analytics.md): a person walks towards
    the camera (growing from 120 to 270 px high) across one horizontal line, another walks away
    (shrinking from 260 to 130 px) across another while a bus drives past in front of its legs,
    and the bus crosses a third line."""
    w, h = 640, 360
    return Scene(
        "approach", w, h, 25, 170,
        (
            Mover("towards", "walker", (40, 120), (200.0, 150.0), (260.0, 350.0), 0, 120, end_size=(90, 270)),
            Mover("away", "coach", (90, 260), (500.0, 340.0), (450.0, 170.0), 20, 140, end_size=(45, 130)),
            Mover("bus", "bus", (300, 170), (900.0, 358.0), (-200.0, 358.0), 60, 160),
        ),
        {
            "tracker": {},
            "lines": [
                {"name": "near", "points": [[0.1, 0.7], [0.6, 0.7]], "labels": ["person"]},
                {"name": "far", "points": [[0.6, 0.65], [0.95, 0.65]], "labels": ["person"]},
                {"name": "kerb", "points": [[0.4, 0.8], [0.4, 1.0]], "labels": ["bus"]},
            ],
        },
    )


SCENES = {"crossing": crossing_scene, "passing": passing_scene, "occluded": occluded_scene, "fast": fast_scene,
          "approach": approach_scene}
# Which changes of the counting each scene was held out for: built after them, before any run,
# and run once as their check. Later changes were derived from (or checked on) these scenes, so
# the figures of the current code are no held-out figures (docs/analytics.md, "Scenes"):
# occluded and fast led to the whole-box gate, fast and approach to the second session's
# linking changes, overtake (bench/bench_analytics.py) to the recent label, and occluded ruled
# out a time-out for a linked track's wait (the shape rule was kept instead). crossing and
# passing were built with the first counting code and never held out.
HELD_OUT: dict[str, tuple[str, ...]] = {
    "occluded": ("stitch",),
    "fast": ("stitch",),
    "approach": ("whole-box gate",),
    "overtake": ("velocity linking", "re-linking", "linked-track height check"),
}


# ------------------------------------------------------------------------------------ rendering


def _photo(name: str) -> np.ndarray:
    from daemon.models import assets

    path = assets.fetch_photos(progress=False)[name]
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return vf.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def background(w: int, h: int) -> np.ndarray:
    """A static, object-free backdrop: a grey-blue wall over a darker pavement, with a fixed
    grain so the encoder has texture to code (seeded: every run renders the same pixels)."""
    rng = np.random.default_rng(7)
    y = np.linspace(0, 1, h)[:, None]
    wall = np.array([150, 160, 170], np.float32) * (1 - 0.2 * y)
    ground = np.array([95, 95, 90], np.float32)
    img = np.where((y > 0.45)[..., None], ground, wall[:, None, :] * np.ones((1, w, 1), np.float32))
    img = img + rng.normal(0, 6, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def render(scene: Scene, out: Path) -> Path:
    """Write ``scene`` to ``out`` (H.264 in MP4, yuv420p, constant frame rate; pts = frame / fps)."""
    cut: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    photos: dict[str, np.ndarray] = {}

    def patch_of(m: Mover, size: tuple[int, int]) -> np.ndarray:
        if (m.kind, size) not in cut:
            photo, (x1, y1, x2, y2), _ = CUTOUTS[m.kind]
            if photo not in photos:
                photos[photo] = _photo(photo)
            cut[(m.kind, size)] = _resize(photos[photo][y1:y2, x1:x2], *size)
        return cut[(m.kind, size)]
    bg = background(scene.width, scene.height)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=scene.fps)
        st.width, st.height, st.pix_fmt = scene.width, scene.height, "yuv420p"
        st.options = {"crf": "18", "preset": "veryfast", "g": str(scene.fps)}
        for f in range(scene.frames):
            img = bg.copy()
            for m in scene.movers:
                b = m.box(f)
                if b is None:
                    continue
                patch = patch_of(m, m.size_at(f))
                x0, y0 = int(round(b[0])), int(round(b[1]))
                ph, pw = patch.shape[:2]
                sx0, sy0 = max(0, -x0), max(0, -y0)
                dx0, dy0 = max(0, x0), max(0, y0)
                dx1, dy1 = min(scene.width, x0 + pw), min(scene.height, y0 + ph)
                if dx1 > dx0 and dy1 > dy0:
                    img[dy0:dy1, dx0:dx1] = patch[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = f
            vf.time_base = Fraction(1, scene.fps)
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------- truth


def true_boxes(scene: Scene, f: int, min_visible: float = 0.25) -> list[tuple[str, str, tuple[float, ...], float]]:
    """(mover name, label, clipped box, visible fraction) of every object in frame ``f`` whose
    visible fraction (inside the frame and not covered by objects drawn after it) is at least
    ``min_visible``. Visibility is counted on a pixel mask of the frame."""
    out: list[tuple[str, str, tuple[float, ...], float]] = []
    boxes = [(m, m.box(f)) for m in scene.movers]
    for i, (m, b) in enumerate(boxes):
        if b is None:
            continue
        x1, y1, x2, y2 = b
        area = (x2 - x1) * (y2 - y1)
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, scene.width), min(y2, scene.height)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        mask = np.ones((int(round(cy2)) - int(round(cy1)), int(round(cx2)) - int(round(cx1))), bool)
        for _, ob in boxes[i + 1:]:
            if ob is None:
                continue
            ox1, oy1 = int(round(max(ob[0], cx1) - cx1)), int(round(max(ob[1], cy1) - cy1))
            ox2, oy2 = int(round(min(ob[2], cx2) - cx1)), int(round(min(ob[3], cy2) - cy1))
            if ox2 > ox1 and oy2 > oy1:
                mask[max(oy1, 0):oy2, max(ox1, 0):ox2] = False
        vis = float(mask.sum()) / area
        if vis >= min_visible:
            out.append((m.name, m.label, (cx1, cy1, cx2, cy2), vis))
    return out


def true_crossings(scene: Scene, frames: list[int] | None = None) -> list[dict[str, Any]]:
    """Every (line, mover, direction, frame) where a mover's bottom centre, seen at the frames
    in ``frames`` (default all), moves across a line whose labels admit it. Direction as in
    daemon.analytics.lines: ``in`` = to the right of start -> end on screen."""
    w, h = scene.width, scene.height
    seen = frames if frames is not None else list(range(scene.frames))
    out = []
    for ln in scene.analytics.get("lines", []):
        a, b = tuple(ln["points"][0]), tuple(ln["points"][1])
        for m in scene.movers:
            if ln.get("labels") and m.label not in ln["labels"]:
                continue
            prev = None
            for f in seen:
                p = m.anchor(f)
                if p is None:
                    continue
                q = (p[0] / w, min(p[1], h) / h)
                s1 = side(a, b, q)  # type: ignore[arg-type]
                if s1 == 0:
                    continue  # exactly on the line: decided by the next point off it
                if prev is not None:
                    s0 = side(a, b, prev)  # type: ignore[arg-type]
                    if s0 != s1 and segments_intersect(prev, q, a, b):  # type: ignore[arg-type]
                        out.append({"line": ln["name"], "mover": m.name, "label": m.label,
                                    "direction": "in" if s1 > 0 else "out", "frame": f})
                prev = q
    return out


def true_zone_stays(scene: Scene) -> list[dict[str, Any]]:
    """Every stay of a mover's bottom centre in a zone: first frame inside, first frame outside
    (or one past its last frame), dwell seconds = their difference / fps."""
    w, h = scene.width, scene.height
    out = []
    for z in scene.analytics.get("zones", []):
        poly = [tuple(p) for p in z["points"]]
        for m in scene.movers:
            if z.get("labels") and m.label not in z["labels"]:
                continue
            inside_since = None
            for f in range(m.f0, m.f1 + 2):
                p = m.anchor(f)
                inside = p is not None and point_in_polygon((p[0] / w, min(p[1], h) / h), poly)  # type: ignore[arg-type]
                if inside and inside_since is None:
                    inside_since = f
                elif not inside and inside_since is not None:
                    out.append({"zone": z["name"], "mover": m.name, "label": m.label, "enter": inside_since,
                                "exit": f, "dwell_seconds": (f - inside_since) / scene.fps})
                    inside_since = None
    return out
