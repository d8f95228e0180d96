"""Letterbox, YOLO decode, NMS and box mapping on small cases with known answers."""

from __future__ import annotations

import av
import numpy as np
import pytest

from daemon.frames import Detections
from daemon.vision.letterbox import PAD_VALUE, letterbox_av, letterbox_params, letterbox_rgb
from daemon.vision.yolo import HeadSpec, decode_head, nms_per_class, postprocess, to_source


@pytest.mark.parametrize("w, h", [(640, 272), (640, 360), (321, 203), (203, 401), (1920, 1080), (100, 100)])
def test_letterbox_geometry_keeps_aspect_and_centres(w: int, h: int) -> None:
    i = letterbox_params(w, h, 416, 416)
    assert max(i.new_w, i.new_h) == 416
    assert abs(i.new_w / i.new_h - w / h) < 0.02
    assert i.pad_x == (416 - i.new_w) // 2 and i.pad_y == (416 - i.new_h) // 2


def test_letterbox_pixels_rgb_order_padding_and_range() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[..., 0] = 255  # pure red
    x, info = letterbox_rgb(img, 416, 416)
    assert x.shape == (3, 416, 416) and x.dtype == np.float32
    y0, y1 = info.pad_y, info.pad_y + info.new_h
    inner = x[:, y0 + 2:y1 - 2, 2:-2]
    assert np.allclose(inner[0], 1.0, atol=1 / 255) and np.allclose(inner[1:], 0.0, atol=1 / 255)
    assert np.all(x[:, :y0, :] == PAD_VALUE) and np.all(x[:, y1:, :] == PAD_VALUE)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_letterbox_into_a_reused_buffer_repaints_the_border() -> None:
    buf = np.full((3, 416, 416), 7.0, np.float32)  # garbage from a previous, other-sized frame
    letterbox_rgb(np.full((416, 100, 3), 10, np.uint8), 416, 416, out=buf)
    assert buf.max() <= 1.0
    letterbox_rgb(np.full((100, 416, 3), 10, np.uint8), 416, 416, out=buf)
    assert np.all(buf[:, :150, :] == PAD_VALUE)


def test_letterbox_yuv_frame_matches_rgb_path() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (272, 640, 3), np.uint8)
    vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    a, _ = letterbox_av(vf, 416, 416)
    b, _ = letterbox_rgb(vf.to_ndarray(format="rgb24"), 416, 416)
    assert np.abs(a - b).mean() < 0.02  # same scaler; chroma subsampling differs slightly


def test_to_source_maps_back_and_clips() -> None:
    info = letterbox_params(640, 272, 416, 416)
    # A box covering the whole image region in input pixels maps to the whole frame.
    full = np.array([[info.pad_x, info.pad_y, info.pad_x + info.new_w, info.pad_y + info.new_h]], np.float32)
    assert np.allclose(to_source(full, info), [[0, 0, 640, 272]], atol=1e-3)
    outside = np.array([[-50, -50, 500, 500]], np.float32)
    assert np.allclose(to_source(outside, info), [[0, 0, 640, 272]])


def test_nms_is_per_class_and_keeps_the_best() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    cls = np.array([0, 0, 1, 0], np.int32)
    keep = nms_per_class(boxes, scores, cls, 0.45)
    assert keep.tolist() == [0, 2, 3]  # box 1 suppressed by 0; box 2 is another class
    assert nms_per_class(boxes, scores, cls, 0.99).tolist() == [0, 1, 2, 3]
    assert nms_per_class(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), 0.5).size == 0


def _head_output(cells: dict[tuple[int, int, int], tuple[float, ...]], classes: int = 3, grid: int = 4) -> np.ndarray:
    """Raw logits (A*(5+C), g, g) with everything 'off' except the given anchor/cell entries."""
    out = np.full((2, 5 + classes, grid, grid), -20.0, np.float32)
    out[:, :4] = 0.0
    for (a, gy, gx), vals in cells.items():
        out[a, :len(vals), gy, gx] = vals
    return out.reshape(2 * (5 + classes), grid, grid)


def test_decode_head_darknet_semantics() -> None:
    head = HeadSpec("h", np.array([[32.0, 64.0], [10.0, 10.0]], np.float32), 3)
    # anchor 0 at cell (row 1, col 2): tx=ty=0 -> centre of the cell; tw=th=0 -> anchor size.
    out = _head_output({(0, 1, 2): (0.0, 0.0, 0.0, 0.0, 5.0, -5.0, 5.0, -5.0)})
    boxes, scores, cids = decode_head(out, head, 128, 128, 0.25)
    assert cids.tolist() == [1]
    obj = 1 / (1 + np.exp(-5.0))
    assert scores[0] == pytest.approx(obj * obj, rel=1e-5)
    cx, cy = (2 + 0.5) * 32, (1 + 0.5) * 32
    assert boxes[0] == pytest.approx([cx - 16, cy - 32, cx + 16, cy + 32], abs=1e-3)


def test_decode_multi_label_and_threshold() -> None:
    head = HeadSpec("h", np.array([[32.0, 32.0], [10.0, 10.0]], np.float32), 3)
    out = _head_output({(1, 0, 0): (0, 0, 0, 0, 6.0, 6.0, 6.0, -6.0)})
    _, scores, cids = decode_head(out, head, 128, 128, 0.25)
    assert sorted(cids.tolist()) == [0, 1]  # Darknet: one box may carry several labels
    assert decode_head(out, head, 128, 128, 0.999)[0].shape == (0, 4)


def test_postprocess_batch_gives_one_detections_per_image() -> None:
    head = HeadSpec("h", np.array([[32.0, 32.0], [10.0, 10.0]], np.float32), 3)
    a = _head_output({(0, 1, 1): (0, 0, 0, 0, 6.0, 6.0, -6.0, -6.0)})
    b = _head_output({})
    infos = [letterbox_params(128, 128, 128, 128)] * 2
    dets = postprocess([np.stack([a, b])], infos, [head], 0.25, 0.45)
    assert [len(d) for d in dets] == [1, 0]
    assert isinstance(dets[1], Detections)
    with pytest.raises(ValueError, match="outputs"):
        postprocess([np.stack([a, b])] * 2, infos, [head], 0.25, 0.45)


def test_kept_scaler_gives_the_pixels_of_a_fresh_one(demo_video) -> None:
    """letterbox_av reuses one swscale context per thread and geometry (a fresh one per frame
    cost most of the letterbox): frames of two sizes, interleaved as two streams would be,
    come out exactly as from a scaler made for each frame."""
    from daemon.vision.letterbox import INTERPOLATION, _fill

    frames = []
    with av.open(str(demo_video)) as c:
        for i, vf in enumerate(c.decode(video=0)):
            frames.append(vf)
            frames.append(vf.reformat(width=320, height=240))  # another stream's geometry
            if i == 5:
                break
    for vf in frames:
        got, info = letterbox_av(vf, 416, 416)
        rgb = vf.reformat(width=info.new_w, height=info.new_h, format="rgb24",
                          interpolation=INTERPOLATION).to_ndarray()
        want = np.empty_like(got)
        _fill(want, info, rgb)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "nv12", "yuv422p", "yuv444p",
                                     "yuv420p10le", "rgb24", "bgr24", "gray"])
@pytest.mark.parametrize("size", [None, (1280, 720), (853, 481), (416, 300)])
def test_planar_letterbox_gives_the_pixels_of_packed_rgb(demo_video, pix_fmt: str,
                                                         size: tuple[int, int] | None) -> None:
    """letterbox_av asks swscale for planar GBR (a third of packed rgb24's cost, and the planes
    the CHW input wants): for every decoder format a source may hand over, the pixels are the
    ones packed rgb24 gives, in the float and in the uint8 buffer."""
    from daemon.vision.letterbox import INTERPOLATION, _fill

    with av.open(str(demo_video)) as c:
        vf = next(c.decode(video=0))
        vf = vf.reformat(format=pix_fmt, **({"width": size[0], "height": size[1]} if size else {}))
    for dtype in (np.float32, np.uint8):
        got, info = letterbox_av(vf, 416, 416, out=np.empty((3, 416, 416), dtype))
        rgb = vf.reformat(width=info.new_w, height=info.new_h, format="rgb24",
                          interpolation=INTERPOLATION).to_ndarray()
        want = np.empty_like(got)
        _fill(want, info, rgb)
        assert np.array_equal(got, want), (pix_fmt, dtype)
