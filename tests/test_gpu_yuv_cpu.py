"""The YUV letterbox's CPU side: plane extraction from real PyAV frames (yuv420p, nv12, odd
sizes) and its float64 twin (what the GPU kernel is checked against on the GPU, and which
bench/gpu_check.py compares with the daemon's CPU letterbox ``letterbox_av``)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from daemon.vision.gpu_letterbox import chroma_offsets, letterbox_yuv_reference, yuv_params, yuv_planes
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
    # A plane tuple carries no siting: it is read as unspecified (centred), like a frame built
    # from numpy; the decoded frame and its nv12 copy are sited left.
    raw = av.VideoFrame(w, h, "yuv420p")
    for i, p in enumerate((y, u, v)):
        np.frombuffer(raw.planes[i], np.uint8).reshape(-1, raw.planes[i].line_size)[:p.shape[0], :p.shape[1]] = p
    d, _ = letterbox_yuv_reference(raw, 416, 416)
    assert info == letterbox_params(w, h, 416, 416)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, d)


def test_flat_colours_are_exact_bt601_limited() -> None:
    # One colour, no filtering: the conversion alone. BT.601 limited: Y=16..235 -> 0..255.
    for yv, uv, vv, rgb in [(16, 128, 128, (0, 0, 0)), (235, 128, 128, (255, 255, 255)),
                            (126, 128, 128, ((126 - 16) * 255 / 219,) * 3)]:
        y = np.full((20, 30), yv, np.uint8)
        u = np.full((10, 15), uv, np.uint8)
        out, info = letterbox_yuv_reference((y, u, u.copy() * 0 + vv), 60, 40)
        np.testing.assert_allclose(out[:, info.pad_y + 2, info.pad_x + 2] * 255, rgb, atol=0.02)


SIZES = [(640, 272), (1920, 1080), (1280, 720), (1277, 719), (809, 1079), (641, 271), (233, 101), (417, 233)]


def _vs_cpu(f: av.VideoFrame) -> np.ndarray:
    ref, _ = letterbox_yuv_reference(f, 416, 416)
    cpu, _ = letterbox_av(f, 416, 416)
    return np.abs(ref.astype(np.float64) - cpu) * 255


@pytest.mark.parametrize("w,h", SIZES)
def test_twin_equals_the_cpu_letterbox_within_1_255(w: int, h: int) -> None:
    """The gate's arithmetic on the CPU: the twin (what the kernel computes) equals
    ``letterbox_av`` (libswscale, BILINEAR|ACCURATE_RND|FULL_CHR_H_INT) within 1/255 on the
    demo video's decoded frame and on swscale re-scales of it (odd widths included). Measured
    max 0.52-0.67/255: swscale rounds to uint8, the twin does not."""
    d = _vs_cpu(_frame(w, h))
    assert d.max() <= 1.0, f"max {d.max():.3f}/255, {100 * (d > 1).mean():.3f}% over 1/255"


def test_twin_follows_the_frames_siting_matrix_and_range() -> None:
    """H.264 frames are sited left (co-sited horizontally, between rows vertically); a frame
    made from numpy is unspecified (swscale: centred); the matrix follows ``colorspace``
    (BT.709 here), the offsets ``color_range``; nv12 and JPEG's yuvj420p (full range) too."""
    f = _frame(1277, 719)
    assert yuv_params(f)[0] == 1  # AVCHROMA_LOC_LEFT, read from the AVFrame
    frames = [f, f.reformat(format="nv12")]
    g = _frame(640, 272)
    _, y, u, v = yuv_planes(g)
    raw = av.VideoFrame.from_ndarray(np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(-1, 640),
                                     format="yuv420p")
    assert yuv_params(raw) == (0, 2, 1)  # unspecified siting and matrix, limited range
    frames.append(raw)
    bt709 = f.reformat(width=1280, height=720, format="yuv420p")
    bt709.colorspace = 1
    frames.append(bt709)
    full = f.reformat(format="yuv420p", dst_color_range=2)
    assert yuv_params(full)[2] == 2
    frames.append(full)
    from daemon.models.assets import cache_dir

    jpg = cache_dir() / "media" / "bus.jpg"
    if jpg.is_file():
        with av.open(str(jpg)) as c:
            frames.append(next(c.decode(video=0)))
        assert frames[-1].format.name == "yuvj420p" and yuv_params(frames[-1])[2] == 2
    for fr in frames:
        d = _vs_cpu(fr)
        assert d.max() <= 1.0, f"{fr.format.name} {fr.width}x{fr.height} {yuv_params(fr)}: max {d.max():.3f}/255"


def test_chroma_offsets_are_swscales_positions() -> None:
    # (pos + 128) >> 1 of av_chroma_location_enum_to_pos, /256: centre 0.5, left 0.25, top 0.25.
    assert chroma_offsets(0) == chroma_offsets(2) == (0.5, 0.5)
    assert chroma_offsets(1) == (0.25, 0.5) and chroma_offsets(3) == (0.25, 0.25)
    assert chroma_offsets(6) == (0.5, 0.75)


def test_other_formats_are_refused_by_the_plane_reader() -> None:
    f = av.VideoFrame.from_ndarray(np.zeros((4, 6, 3), np.uint8), format="rgb24")
    with pytest.raises(ValueError, match="not a yuv420p/nv12/yuvj420p frame"):
        yuv_planes(f)
    with pytest.raises(ValueError, match="planes must be uint8"):
        yuv_planes((np.zeros((4, 6), np.uint8), np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8)))


