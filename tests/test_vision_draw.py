"""The shared drawing code: outlines in the class colour exactly on the box edge, tags where the
layout says, and not one other pixel touched."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.frames import Detections
from daemon.vision import draw as D

LABELS = ["person", "bicycle", "car"]


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    # Random content, but never exactly a palette colour at any pixel we check: odd values only.
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 128, size=(h, w, 3), dtype=np.uint8) * 2 + 1
    return img.astype(np.uint8)


def _allowed(shape: tuple[int, ...], marks: list[D.Mark]) -> np.ndarray:
    m = np.zeros(shape[:2], dtype=bool)
    for k in marks:
        o = k.outer
        m[o.y0 : o.y1, o.x0 : o.x1] = True
        t = k.tag
        m[t.y0 : t.y1, t.x0 : t.x1] = True
    for k in marks:  # the inside of each box stays untouched unless another mark covers it
        i = k.inner
        if not i.empty:
            inside = np.zeros_like(m)
            inside[i.y0 : i.y1, i.x0 : i.x1] = True
            others = np.zeros_like(m)
            for j in marks:
                if j is k:
                    continue
                others[j.outer.y0 : j.outer.y1, j.outer.x0 : j.outer.x1] = True
                others[j.tag.y0 : j.tag.y1, j.tag.x0 : j.tag.x1] = True
            m &= ~(inside & ~others)
    return m


@pytest.mark.parametrize(
    "box, thickness",
    [
        ((100.0, 80.0, 220.0, 200.0), 2),
        ((100.4, 80.6, 219.2, 199.9), 3),  # fractional coordinates round outward
        ((0.0, 0.0, 50.0, 40.0), 2),  # touches the top-left corner: tag goes inside
        ((590.0, 300.0, 640.0, 360.0), 2),  # bottom-right corner
        ((-20.0, -10.0, 30.0, 25.0), 2),  # partly outside the frame: clipped
    ],
)
def test_outline_in_class_colour_and_nothing_else_touched(
    box: tuple[float, float, float, float], thickness: int
) -> None:
    img = _noise(360, 640)
    before = img.copy()
    dets = Detections(np.array([box]), np.array([0.87]), np.array([2]))
    marks = D.draw(img, dets, LABELS, thickness=thickness)
    assert len(marks) == 1
    color = np.array(D.class_color(2), dtype=np.uint8)

    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), 640), min(int(np.ceil(box[3])), 360)
    # Every pixel of the outline band that no tag covers has exactly the class colour.
    band = np.zeros((360, 640), dtype=bool)
    band[y0:y1, x0:x1] = True
    band[y0 + thickness : y1 - thickness, x0 + thickness : x1 - thickness] = False
    t = marks[0].tag
    tagmask = np.zeros_like(band)
    tagmask[t.y0 : t.y1, t.x0 : t.x1] = True
    assert (img[band & ~tagmask] == color).all()
    # The tag background is mostly the class colour (text pixels are black or white).
    tag_px = img[tagmask]
    assert len(tag_px) > 0
    assert (tag_px == color).all(axis=1).mean() > 0.5
    assert ((tag_px == 0).all(axis=1) | (tag_px == 255).all(axis=1) | (tag_px == color).all(axis=1)).all()

    # Nothing outside the box outline and the tag changed, inside the box included.
    changed = (img != before).any(axis=2)
    assert not (changed & ~(band | tagmask)).any()
    # And the tag hugs the box: it starts at the box's left edge (or is pushed on screen) and
    # sits either right above the box or just inside its top.
    assert t.y1 == y0 or t.y0 == y0
    assert abs(t.x0 - x0) <= 640 - x0


def test_several_boxes_per_class_colours_and_label_text() -> None:
    img = _noise(272, 640, seed=1)
    before = img.copy()
    boxes = np.array([[10, 40, 100, 200], [150, 60, 300, 250], [400, 30, 620, 260]], np.float32)
    marks = D.draw_detections(img, boxes, [0.9, 0.5, 0.7], [0, 1, 2], LABELS)
    assert {m.text for m in marks} == {"person 0.90", "bicycle 0.50", "car 0.70"}
    changed = (img != before).any(axis=2)
    assert not (changed & ~_allowed(img.shape, marks)).any()
    for (x0, y0, x1, y1), cid in zip(boxes.astype(int).tolist(), [0, 1, 2]):
        c = np.array(D.class_color(cid), np.uint8)
        # the bottom edge is never covered by a tag
        assert (img[y1 - 1, x0:x1] == c).all()
        assert (img[y1 - 2, x0:x1] == c).all()
        assert not (img[y1 - 3, x0 + 3 : x1 - 3] == c).all(axis=1).any()
        assert (img[y0 + 10 : y1, x0] == c).all() and (img[y0 + 10 : y1, x1 - 1] == c).all()


def test_empty_and_degenerate() -> None:
    img = _noise(50, 60)
    before = img.copy()
    assert D.draw(img, Detections.empty(), LABELS) == []
    assert D.draw_detections(img, [[70, 10, 90, 20]], [0.5], [0]) == []  # fully off-frame
    assert (img == before).all()
    # A 1-pixel-wide box is filled, not skipped, and its unknown class id still gets a name.
    D.draw_detections(img, [[5, 5, 6, 30]], [0.5], [99], LABELS, show_labels=False)
    assert (img[5:30, 5] == np.array(D.class_color(99), np.uint8)).all()
    with pytest.raises(ValueError):
        D.draw_detections(np.zeros((4, 4), np.uint8), [], [], [])


def test_font_renders_every_printable_glyph_distinctly() -> None:
    chars = [chr(c) for c in range(0x21, 0x7F)]
    masks = [D.render_text(c) for c in chars]
    assert all(m.shape == (8, 5) and m.any() for m in masks)
    assert len({m.tobytes() for m in masks}) == len(chars)
    assert D.render_text("ab", 2).shape == (16, 22)
    assert D.text_size("ab", 2) == (22, 16)
    assert D.render_text("é").any()  # non-ASCII degrades to '?', never raises


def test_palette_is_fixed_and_distinct() -> None:
    assert len({tuple(c) for c in D.PALETTE.tolist()}) == len(D.PALETTE)
    assert D.class_color(0) == D.class_color(len(D.PALETTE))
