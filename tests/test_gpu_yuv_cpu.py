"""The YUV letterbox's CPU side: plane extraction from real PyAV frames (yuv420p, nv12, odd
sizes) and its float64 twin (what the GPU kernel is checked against on the GPU, and which
bench/gpu_check.py compares with the daemon's CPU letterbox ``letterbox_av``)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from daemon.vision.gpu_letterbox import letterbox_yuv_reference, yuv_planes
from daemon.vision.letterbox import letterbox_av, letterbox_params


def _frame(w: int, h: int) -> av.VideoFrame:
    from daemon.models.assets import cache_dir

    p = cache_dir() / "media" / "bikes.mp4"
    if not p.is_file():
        pytest.skip("bikes.mp4 not in the cache (run `detectd fetch-model`)")
    with av.open(str(p)) as c:
        f = next(c.decode(video=0))
    return f if (f.width, f.height) == (w, h) else f.reformat(width=w, height=h, format="yuv420p")


@pytest.mark.parametrize("w,h", [(640, 272), (1277, 719), (233, 101), (1920, 1080)])
def test_planes_of_odd_and_even_frames(w: int, h: int) -> None:
    f = _frame(w, h)
    fmt, y, u, v = yuv_planes(f)
    assert fmt == "yuv420p" and y.shape == (h, w)
    assert u.shape == v.shape == ((h + 1) // 2, (w + 1) // 2)  # type: ignore[union-attr]
    assert y.nbytes + u.nbytes + v.nbytes <= 1.5 * w * h + w + h + 1  # type: ignore[union-attr]


@pytest.mark.parametrize("w,h", [(640, 272), (1277, 719)])
def test_nv12_and_plane_tuple_give_the_same_result(w: int, h: int) -> None:
    f = _frame(w, h)
    a, info = letterbox_yuv_reference(f, 416, 416)
    b, _ = letterbox_yuv_reference(f.reformat(format="nv12"), 416, 416)
    _, y, u, v = yuv_planes(f)
    c, _ = letterbox_yuv_reference((y.copy(), u.copy(), v.copy()), 416, 416)
    assert info == letterbox_params(w, h, 416, 416)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_flat_colours_are_exact_bt601_limited() -> None:
    # One colour, no filtering: the conversion alone. BT.601 limited: Y=16..235 -> 0..255.
    for yv, uv, vv, rgb in [(16, 128, 128, (0, 0, 0)), (235, 128, 128, (255, 255, 255)),
                            (126, 128, 128, ((126 - 16) * 255 / 219,) * 3)]:
        y = np.full((20, 30), yv, np.uint8)
        u = np.full((10, 15), uv, np.uint8)
        out, info = letterbox_yuv_reference((y, u, u.copy() * 0 + vv), 60, 40)
        np.testing.assert_allclose(out[:, info.pad_y + 2, info.pad_x + 2] * 255, rgb, atol=0.02)


def test_close_to_the_cpu_letterbox_on_real_frames() -> None:
    """Not within 1/255: libswscale's fixed-point YUV->RGB is 0..2.75 LSB below exact BT.601
    even on flat colours (see gpu_letterbox's docstring). The structure (plane scaling, chroma
    siting, matrix) must still match: mean offset under 2.5/255, 99th percentile under 4/255."""
    f = _frame(640, 272)
    ref, info = letterbox_yuv_reference(f, 416, 416)
    cpu, _ = letterbox_av(f, 416, 416)
    d = (ref - cpu)[:, info.pad_y:info.pad_y + info.new_h, info.pad_x:info.pad_x + info.new_w] * 255
    assert abs(d.mean()) < 2.5 and np.percentile(np.abs(d), 99) < 4.0


def test_other_formats_are_refused_by_the_plane_reader() -> None:
    f = av.VideoFrame.from_ndarray(np.zeros((4, 6, 3), np.uint8), format="rgb24")
    with pytest.raises(ValueError, match="not a yuv420p/nv12 frame"):
        yuv_planes(f)
    with pytest.raises(ValueError, match="planes must be uint8"):
        yuv_planes((np.zeros((4, 6), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8)))


