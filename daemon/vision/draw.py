"""Draw detections on an RGB frame: box outlines, label + score tags, one colour per class.

This one module draws for both the live preview page and ``detectd annotate``, so what a person
sees in the browser is exactly what the annotated file shows. It needs nothing but numpy: the
font is a 5x8 bitmap built into this file (the classic public-domain LCD glyph table), so there
is no font file to ship, find or get wrong on a headless server.

Everything is slice assignment on the caller's array (in place, no per-pixel Python loop); the
only Python loop is over detections, which number in the tens. Drawing a frame with 20 boxes
costs well under a millisecond at 640x360.

:func:`layout` computes where every mark goes without touching pixels. :func:`draw_detections`
draws exactly those rectangles, so tests (and callers who want to know which pixels changed) can
reason about the result without re-deriving the geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PALETTE",
    "Rect",
    "Mark",
    "class_color",
    "default_thickness",
    "default_font_scale",
    "render_text",
    "text_size",
    "layout",
    "draw_detections",
    "draw_text",
    "draw_segment",
    "draw_geometry",
]

# 20 saturated colours, far apart in hue and brightness (tab20-like order, vivid variants), so
# neighbouring class ids differ visibly. A class's colour is PALETTE[class_id % len(PALETTE)].
PALETTE: np.ndarray = np.array(
    [
        (255, 56, 56),  # red
        (0, 194, 255),  # sky blue
        (255, 157, 0),  # orange
        (72, 249, 10),  # green
        (255, 0, 220),  # magenta
        (255, 235, 0),  # yellow
        (0, 90, 255),  # blue
        (0, 255, 170),  # spring green
        (170, 0, 255),  # violet
        (255, 120, 160),  # pink
        (140, 220, 0),  # lime
        (0, 140, 140),  # teal
        (255, 90, 0),  # vermilion
        (120, 120, 255),  # periwinkle
        (200, 150, 0),  # ochre
        (0, 230, 255),  # cyan
        (180, 60, 120),  # plum
        (90, 200, 90),  # moss
        (255, 200, 120),  # apricot
        (60, 60, 200),  # indigo
    ],
    dtype=np.uint8,
)

# 5x8 glyphs for ASCII 0x20..0x7E, column-major, bit 0 = top row (bit 7 = descender row).
_FONT_HEX = (
    "0000000000" "00005f0000" "0007000700" "147f147f14" "242a7f2a12" "2313086462" "3649562050"
    "0008070300" "001c224100" "0041221c00" "2a1c7f1c2a" "08083e0808" "0080703000" "0808080808"
    "0000606000" "2010080402" "3e5149453e" "00427f4000" "7249494946" "2141494d33" "1814127f10"
    "2745454539" "3c4a494931" "4121110907" "3649494936" "464949291e" "0000140000" "0040340000"
    "0008142241" "1414141414" "0041221408" "0201590906" "3e415d594e" "7c1211127c" "7f49494936"
    "3e41414122" "7f4141413e" "7f49494941" "7f09090901" "3e41415173" "7f0808087f" "00417f4100"
    "2040413f01" "7f08142241" "7f40404040" "7f021c027f" "7f0408107f" "3e4141413e" "7f09090906"
    "3e4151215e" "7f09192946" "2649494932" "03017f0103" "3f4040403f" "1f2040201f" "3f4038403f"
    "6314081463" "0304780403" "61594d4543" "007f414141" "0204081020" "004141417f" "0402010204"
    "4040404040" "0003070800" "2054547840" "7f28444438" "3844444428" "384444287f" "3854545418"
    "00087e0902" "18a4a49c78" "7f08040478" "00447d4000" "2040403d00" "7f10284400" "00417f4000"
    "7c04780478" "7c08040478" "3844444438" "fc18242418" "18242418fc" "7c08040408" "4854545424"
    "04043f4424" "3c4040207c" "1c2040201c" "3c4030403c" "4428102844" "4c9090907c" "4464544c44"
    "0008364100" "0000770000" "0041360800" "0201020402"
)
_GLYPH_W, _GLYPH_H, _ADVANCE = 5, 8, 6


def _build_font() -> np.ndarray:
    cols = np.frombuffer(bytes.fromhex(_FONT_HEX), dtype=np.uint8).reshape(-1, _GLYPH_W)
    bits = (cols[:, None, :] >> np.arange(_GLYPH_H, dtype=np.uint8)[None, :, None]) & 1
    font = np.zeros((cols.shape[0], _GLYPH_H, _ADVANCE), dtype=bool)  # 1 px spacing column
    font[:, :, :_GLYPH_W] = bits.astype(bool)
    return font


_FONT = _build_font()  # (95, 8, 6) bool: glyph rows x (5 columns + spacing)
_UNKNOWN = ord("?") - 0x20


@dataclass(frozen=True, slots=True)
class Rect:
    """A pixel rectangle, half-open: rows y0..y1-1, columns x0..x1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


@dataclass(frozen=True, slots=True)
class Mark:
    """Where one detection is drawn: the box's outer and inner edges and its label tag."""

    color: tuple[int, int, int]
    outer: Rect  # the outline occupies outer minus inner
    inner: Rect
    tag: Rect  # filled label background (may be empty when the frame is too small)
    text: str
    text_origin: tuple[int, int]  # (x, y) of the text's top-left pixel
    scale: int


def class_color(class_id: int) -> tuple[int, int, int]:
    """The fixed palette colour of a class id (RGB)."""
    r, g, b = PALETTE[int(class_id) % len(PALETTE)]
    return int(r), int(g), int(b)


def default_thickness(width: int, height: int) -> int:
    """2 px up to 720p-ish frames, 3 px beyond, so outlines stay visible after scaling down."""
    return 2 if max(width, height) <= 1280 else 3


def default_font_scale(width: int, height: int) -> int:
    """Integer upscale of the 8 px font: 1 for small frames, 2 from ~VGA width, 3 for 4K."""
    m = max(width, height)
    return 1 if m < 600 else 2 if m < 2000 else 3


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` rendered by :func:`render_text`."""
    return max(len(text) * _ADVANCE - 1, 0) * scale, _GLYPH_H * scale


def render_text(text: str, scale: int = 1) -> np.ndarray:
    """A boolean (H, W) mask of ``text`` in the built-in font, nearest-neighbour upscaled."""
    if not text:
        return np.zeros((_GLYPH_H * scale, 0), dtype=bool)
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int64) - 0x20
    codes[(codes < 0) | (codes >= len(_FONT))] = _UNKNOWN
    glyphs = _FONT[codes]  # (n, 8, 6)
    mask = glyphs.transpose(1, 0, 2).reshape(_GLYPH_H, -1)[:, :-1]  # drop trailing spacing
    if scale > 1:
        mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    return mask


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = bg
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _clip(r: Rect, w: int, h: int) -> Rect:
    return Rect(max(r.x0, 0), max(r.y0, 0), min(r.x1, w), min(r.y1, h))


def format_label(label: str, score: float, track_id: int | None = None) -> str:
    """``person 0.91``, or ``#7 person 0.91`` for a detection of track 7."""
    return f"#{track_id} {label} {score:.2f}" if track_id is not None and track_id >= 0 else f"{label} {score:.2f}"


def layout(
    shape: tuple[int, ...],
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    labels: Sequence[str] = (),
    *,
    thickness: int | None = None,
    font_scale: int | None = None,
    show_labels: bool = True,
    track_ids: np.ndarray | None = None,
) -> list[Mark]:
    """Where each detection's outline and tag go on an image of ``shape`` (H, W, ...).
    ``track_ids`` (N,) ints, -1 = untracked: tracked detections' tags start with ``#id``.

    Boxes are x1, y1, x2, y2 in pixels (as published); the outline is drawn *inside* the box,
    rounded to whole pixels, so it never covers pixels outside the reported box. The tag sits
    above the box's top-left corner, or just inside the box when there is no room above.
    """
    h, w = int(shape[0]), int(shape[1])
    t = thickness if thickness is not None else default_thickness(w, h)
    s = font_scale if font_scale is not None else default_font_scale(w, h)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return []
    # Round outward-exclusive: x2/y2 are the right/bottom edge, so the last covered column is
    # ceil(x2)-1. Clip to the frame; a box that degenerates after clipping is skipped.
    ib = np.empty((len(boxes), 4), dtype=np.int64)
    ib[:, 0:2] = np.floor(boxes[:, 0:2])
    ib[:, 2:4] = np.ceil(boxes[:, 2:4])
    ib[:, 0::2] = ib[:, 0::2].clip(0, w)
    ib[:, 1::2] = ib[:, 1::2].clip(0, h)
    scores_l = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    cids = np.asarray(class_ids, dtype=np.int64).reshape(-1).tolist()
    tids = [-1] * len(cids) if track_ids is None else np.asarray(track_ids, np.int64).reshape(-1).tolist()
    pad = s  # tag padding around the text
    marks = []
    for (x0, y0, x1, y1), score, cid, tid in zip(ib.tolist(), scores_l, cids, tids):
        if x1 <= x0 or y1 <= y0:
            continue
        outer = Rect(x0, y0, x1, y1)
        inner = Rect(x0 + t, y0 + t, x1 - t, y1 - t)
        color = class_color(cid)
        text = ""
        tag = Rect(0, 0, 0, 0)
        origin = (0, 0)
        if show_labels:
            name = labels[cid] if 0 <= cid < len(labels) else str(cid)
            text = format_label(name, score, tid)
            tw, th = text_size(text, s)
            tag_h = th + 2 * pad
            tag_w = tw + 2 * pad
            ty0 = y0 - tag_h if y0 - tag_h >= 0 else y0  # above the box, else inside its top
            tx0 = min(x0, max(w - tag_w, 0))  # keep it on screen at the right edge
            tag = _clip(Rect(tx0, ty0, tx0 + tag_w, ty0 + tag_h), w, h)
            origin = (tx0 + pad, ty0 + pad)
        marks.append(Mark(color, outer, inner, tag, text, origin, s))
    return marks


def draw_text(
    image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: int = 1
) -> None:
    """Blit ``text`` with its top-left pixel at (x, y), clipped to the image, in place."""
    mask = render_text(text, scale)
    h, w = image.shape[:2]
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1]
    region[mask[y0 - y : y1 - y, x0 - x : x1 - x]] = color


def draw_marks(image: np.ndarray, marks: Sequence[Mark]) -> None:
    """Draw precomputed :class:`Mark` s in place (outlines first, then tags on top)."""
    for m in marks:
        o, i, c = m.outer, m.inner, m.color
        if i.empty:  # box thinner than two outlines: fill it
            image[o.y0 : o.y1, o.x0 : o.x1] = c
            continue
        image[o.y0 : i.y0, o.x0 : o.x1] = c  # top band
        image[i.y1 : o.y1, o.x0 : o.x1] = c  # bottom band
        image[i.y0 : i.y1, o.x0 : i.x0] = c  # left band
        image[i.y0 : i.y1, i.x1 : o.x1] = c  # right band
    for m in marks:
        if m.tag.empty:
            continue
        t = m.tag
        image[t.y0 : t.y1, t.x0 : t.x1] = m.color
        draw_text(image, m.text, m.text_origin[0], m.text_origin[1], _text_color(m.color), m.scale)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    labels: Sequence[str] = (),
    *,
    thickness: int | None = None,
    font_scale: int | None = None,
    show_labels: bool = True,
    track_ids: np.ndarray | None = None,
) -> list[Mark]:
    """Draw boxes, labels and scores (and ``#track id`` when given) on ``image`` (RGB uint8
    (H, W, 3)) in place.

    Lower scores are drawn first so the most confident detection's tag ends up on top.
    Returns the marks drawn (see :func:`layout`).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    order = np.argsort(scores, kind="stable")
    marks = layout(
        image.shape,
        np.asarray(boxes).reshape(-1, 4)[order],
        scores[order],
        np.asarray(class_ids).reshape(-1)[order],
        labels,
        thickness=thickness,
        font_scale=font_scale,
        show_labels=show_labels,
        track_ids=None if track_ids is None else np.asarray(track_ids).reshape(-1)[order],
    )
    draw_marks(image, marks)
    return marks


def draw(image: np.ndarray, detections: object, labels: Sequence[str] = (), **kw: object) -> list[Mark]:
    """Draw a :class:`daemon.frames.Detections` (anything with boxes/scores/class_ids)."""
    return draw_detections(
        image,
        detections.boxes,  # type: ignore[attr-defined]
        detections.scores,  # type: ignore[attr-defined]
        detections.class_ids,  # type: ignore[attr-defined]
        labels,
        track_ids=getattr(detections, "track_ids", None),
        **kw,  # type: ignore[arg-type]
    )


ZONE_COLOR = (255, 200, 0)  # amber: zones
LINE_COLOR = (0, 255, 255)  # cyan: lines (the "in" arrow too)


def draw_segment(image: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                 color: tuple[int, int, int], thickness: int = 2) -> None:
    """A straight segment between pixel points p0 and p1 (x, y), ``thickness`` px square pen,
    clipped to the image, in place: one sample per pixel step along the longer axis."""
    h, w = image.shape[:2]
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    xs = np.rint(np.linspace(p0[0], p1[0], n)).astype(np.int64)
    ys = np.rint(np.linspace(p0[1], p1[1], n)).astype(np.int64)
    lo = -(thickness // 2)
    for dy in range(lo, lo + thickness):
        for dx in range(lo, lo + thickness):
            x, y = xs + dx, ys + dy
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            image[y[ok], x[ok]] = color


def _tag(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: int) -> None:
    h, w = image.shape[:2]
    tw, th = text_size(text, scale)
    x = min(max(x, 0), max(w - tw - 2 * scale, 0))
    y = min(max(y, 0), max(h - th - 2 * scale, 0))
    image[y : y + th + 2 * scale, x : x + tw + 2 * scale] = color
    draw_text(image, text, x + scale, y + scale, _text_color(color), scale)


def draw_geometry(image: np.ndarray, zones: Sequence[object] = (), lines: Sequence[object] = (),
                  *, thickness: int | None = None, font_scale: int | None = None) -> None:
    """Draw configured zones (closed polygon outlines, amber, named at their first point) and
    directed lines (cyan, named at their start, with an arrow from the middle towards the side
    whose crossing counts as ``in``) on ``image`` in place. ``zones``/``lines`` are anything with
    ``name`` and ``points`` in normalized [0, 1] coordinates (the config's ZoneConfig /
    LineConfig), scaled here to the image, so the same config draws right at any size."""
    h, w = image.shape[:2]
    t = thickness if thickness is not None else default_thickness(w, h)
    s = font_scale if font_scale is not None else default_font_scale(w, h)
    for z in zones:
        pts = [(x * (w - 1), y * (h - 1)) for x, y in z.points]  # type: ignore[attr-defined]
        for i, p in enumerate(pts):
            draw_segment(image, p, pts[(i + 1) % len(pts)], ZONE_COLOR, t)
        _tag(image, z.name, int(pts[0][0]), int(pts[0][1]), ZONE_COLOR, s)  # type: ignore[attr-defined]
    for ln in lines:
        (ax, ay), (bx, by) = [(x * (w - 1), y * (h - 1)) for x, y in ln.points]  # type: ignore[attr-defined]
        draw_segment(image, (ax, ay), (bx, by), LINE_COLOR, t)
        # The "in" side is to the right of start -> end on screen (y down): normal (-dy, dx).
        dx, dy = bx - ax, by - ay
        norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
        nx, ny = -dy / norm, dx / norm
        size = max(8.0, 0.04 * max(w, h))
        mx, my = (ax + bx) / 2, (ay + by) / 2
        tx, ty = mx + nx * size, my + ny * size
        draw_segment(image, (mx, my), (tx, ty), LINE_COLOR, t)
        for sgn in (1, -1):  # the arrow head
            hx = tx - nx * size * 0.4 + sgn * (-ny) * size * 0.3
            hy = ty - ny * size * 0.4 + sgn * nx * size * 0.3
            draw_segment(image, (tx, ty), (hx, hy), LINE_COLOR, t)
        _tag(image, f"{ln.name} in", int(tx), int(ty), LINE_COLOR, s)  # type: ignore[attr-defined]
