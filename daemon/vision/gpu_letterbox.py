"""Letterbox on the GPU: raw RGB uint8 in, float32 NCHW network input out, in one kernel.

It must agree with the CPU letterbox (``daemon.vision.letterbox``: libswscale's ``BILINEAR``
scaler through PyAV, pad 0.5, RGB, /255, CHW) within 1/255 per value. libswscale's "bilinear"
is not a 2-tap bilinear when it shrinks: it is a triangle (tent) filter whose radius grows with
the shrink factor, i.e. it low-passes before it decimates. The kernel implements that filter
exactly (below). Measured on an H100 (bench/gpu_check.py) on real frames: the kernel equals
:func:`letterbox_reference` within 0.0001/255, and PyAV's letterbox within 0.65/255 wherever
libswscale runs its exact path (odd frame heights, the 640x272 demo video, 1277x719, 809x1079,
233x101). On some even sizes FFmpeg 8.1's swscale (PyAV 18.1) departs from its own filter:
up to 5.6/255 on 0.65% of the values of bus.jpg (810x1080), 2.0/255 on 0.02% of zidane.jpg
(1280x720), 1.001/255 at 1920x1080, with cross-talk between channels (an R-only image gains
G and B), which no per-channel filter can reproduce. The filter:

- output pixel ``i`` of ``dst`` samples the source at ``c = (i + 0.5) * s - 0.5``, ``s = src/dst``
  (half-pixel centres);
- weights ``max(0, 1 - |j - c| / r)`` over source pixels ``j``, ``r = max(1, s)``; source indices
  are clamped to the edge; weights normalized to sum 1;
- separable: the same along x and y; each RGB channel on its own.

The tap tables (index + weight per output pixel and tap) are computed once per geometry on the
host (:func:`resize_taps`), so the kernel is a plain gather; :func:`letterbox_reference` applies
the same tables in float64 numpy and is what the tests compare both implementations with.

The YUV path (``letterbox_yuv420_to_f32nchw``) reads the decoder's planes as they come --
yuv420p / yuvj420p (three planes) or nv12 (Y + interleaved UV) -- so the host copies 1.5 bytes
per pixel instead of 3 (RGB) or 12 (float32). It computes what libswscale computes for the CPU
letterbox (``letterbox_av``: ``sws_scale_frame`` with BILINEAR | ACCURATE_RND | FULL_CHR_H_INT):

- Y is resized to ``new_w x new_h`` with the tent filter above;
- the chroma planes (``ceil(w/2) x ceil(h/2)``) are resized with the same filter straight to
  the full output size ``new_w x new_h`` (FULL_CHR_H_INT: no chroma shared by pixel pairs),
  sampled at ``(i + 0.5) * cw / new_w - off``, where ``off`` comes from the frame's
  ``chroma_location`` as swscale reads it (:func:`chroma_offsets`: ``((pos + 128) >> 1) / 256``
  of ``av_chroma_location_enum_to_pos``): H.264/HEVC frames are "left" (x 0.25: chroma co-sited
  with even luma columns; y 0.5: between rows), JPEG and unspecified (frames built from numpy,
  plane tuples) centred (0.5, 0.5). PyAV does not expose ``chroma_location``;
  :func:`chroma_location` reads it from the AVFrame (offset found once by toggling
  ``color_range``/``colorspace`` on a scratch frame; unspecified where that fails);
- the matrix follows the frame's ``colorspace`` (:func:`yuv_matrix`: BT.709, FCC, SMPTE 240M,
  BT.2020, else BT.601) and ``color_range`` (full for JPEG/yuvj420p, else limited:
  ``R = 255/219 (Y-16) + 255/224 * 2(1-Kr) (V-128)`` etc.), in float, clipped to 0..255, /255.

:func:`letterbox_yuv_reference` is its float64 twin. Measured (tests/test_gpu_yuv_cpu.py on the
CPU, bench/gpu_check.py on an H100): the twin equals ``letterbox_av`` within 0.51-0.71/255 on
real decoded frames (demo video 640x272, swscale re-scales 1920x1080, 1280x720, 1277x719,
809x1079, 641x271, 233x101, 416x416, nv12, BT.709/2020-tagged, bus.jpg and zidane.jpg as
yuvj420p), 0 values over 1/255; the kernel equals the twin within 0.0001/255, so the kernel is
0.51-0.71/255 from ``letterbox_av`` on all of them. The residual is swscale rounding its output
to uint8 (0.5) plus its fixed-point filter (14-bit taps); on uniform random noise it reaches
0.99/255.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np

from daemon.vision.letterbox import PAD_VALUE, LetterboxInfo, letterbox_params

__all__ = ["GpuLetterbox", "KERNEL_SOURCE", "YUV_FORMATS", "chroma_location", "chroma_offsets",
           "letterbox_reference", "letterbox_yuv_reference", "resize_taps", "yuv_matrix", "yuv_params",
           "yuv_planes"]

# Decoder pixel formats the YUV kernel reads directly; anything else goes through RGB.
YUV_FORMATS = ("yuv420p", "nv12", "yuvj420p")  # yuvj420p: yuv420p planes, always full range

# Limited ("MPEG") range YUV -> RGB matrices, as libswscale picks them from the frame's
# ``colorspace`` (AVColorSpace; sws_getCoefficients): BT.709, FCC, SMPTE 240M and BT.2020 have
# their own (Kr, Kb); everything else (unspecified, BT.470BG, SMPTE 170M, ...) is BT.601.
_KRKB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_CY = 255.0 / 219.0
_CC = 255.0 / 224.0


def yuv_matrix(colorspace: int = 2, color_range: int = 0) -> dict[str, float]:
    """The coefficients for an AVColorSpace and AVColorRange (2: full/JPEG; anything else is
    limited/MPEG, as swscale reads it): R = y (Y-y0) + rv (V-128),
    G = y (Y-y0) - gu (U-128) - gv (V-128), B = y (Y-y0) + bu (U-128)."""
    kr, kb = _KRKB.get(int(colorspace), (0.299, 0.114))
    kg = 1.0 - kr - kb
    full = int(color_range) == 2
    cy, cc = (1.0, 1.0) if full else (_CY, _CC)
    return {"y0": 0.0 if full else 16.0, "y": cy, "rv": cc * 2 * (1 - kr), "gu": cc * 2 * (1 - kb) * kb / kg,
            "gv": cc * 2 * (1 - kr) * kr / kg, "bu": cc * 2 * (1 - kb)}


BT601 = yuv_matrix(5)

# AVChromaLocation -> (x, y) position of chroma sample 0 in 1/256 luma pixel
# (av_chroma_location_enum_to_pos); unspecified is swscale's default, centred (128, 128).
_CHROMA_POS = {1: (0, 128), 2: (128, 128), 3: (0, 0), 4: (128, 0), 5: (0, 256), 6: (128, 256)}


def chroma_offsets(location: int = 0) -> tuple[float, float]:
    """(x, y) offsets for :func:`resize_taps` of 4:2:0 chroma sited at ``location``
    (AVChromaLocation): swscale's ``(pos + 128) >> 1`` source position, in chroma pixels / 256."""
    px, py = _CHROMA_POS.get(int(location), (128, 128))
    return ((px + 128) >> 1) / 256.0, ((py + 128) >> 1) / 256.0


@functools.lru_cache(maxsize=1)
def _avframe_layout() -> tuple[int, int] | None:
    """(offset of ``AVFrame*`` in a PyAV frame object, offset of ``AVFrame.color_range``), found
    on a scratch frame by toggling ``color_range`` and ``colorspace`` (PyAV does not expose
    ``chroma_location``; it follows ``colorspace`` after ``color_primaries`` and ``color_trc``).
    None where the layout is not the expected one (then every frame reads as unspecified)."""
    try:
        import av

        f = av.VideoFrame(18, 14, "yuv420p")
        p = ctypes.c_void_p.from_address(id(f) + 24).value  # PyObject_HEAD, Cython vtable, ptr
        if not p or (ctypes.c_int.from_address(p + 104).value, ctypes.c_int.from_address(p + 108).value) != (18, 14):
            return None
        ints = (ctypes.c_int * 256).from_address(p)
        f.color_range, f.colorspace = 1, 5
        a = list(ints)
        f.color_range, f.colorspace = 2, 1
        b = list(ints)
        diff = [i for i in range(256) if a[i] != b[i]]
        if len(diff) != 2 or diff[1] != diff[0] + 3 or (a[diff[0]], b[diff[0]], a[diff[1]], b[diff[1]]) != (1, 2, 5, 1):
            return None
        return 24, diff[0] * 4
    except Exception:  # noqa: BLE001 - any surprise: unknown layout
        return None


def chroma_location(frame: Any) -> int:
    """The AVChromaLocation of a PyAV frame (0, unspecified, for plane tuples or where it
    cannot be read). H.264/HEVC decoders set 1 (left: co-sited with even luma columns, between
    rows); JPEG 2 (centre). ``letterbox_av`` (sws_scale_frame) filters chroma from there."""
    import av

    # Raw memory is read below: only from a real PyAV frame (a look-alike object would crash).
    layout = _avframe_layout() if isinstance(frame, av.VideoFrame) else None
    if layout is None:
        return 0
    p = ctypes.c_void_p.from_address(id(frame) + layout[0]).value
    if not p or ctypes.c_int.from_address(p + 104).value != frame.width:
        return 0
    return int(ctypes.c_int.from_address(p + layout[1] + 16).value)


@functools.lru_cache(maxsize=128)
def resize_taps(src: int, dst: int, offset: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(indices int32 (dst, K), weights float32 (dst, K)) of libswscale's bilinear filter;
    output pixel i samples source position ``(i + 0.5) * src / dst - offset`` (0.5: pixel
    centres; chroma planes use :func:`chroma_offsets`)."""
    if src < 1 or dst < 1:
        raise ValueError(f"cannot resize {src} -> {dst}")
    s = src / dst
    r = max(1.0, s)
    centers = (np.arange(dst, dtype=np.float64) + 0.5) * s - offset
    k = int(np.ceil(2 * r)) + 1
    j = np.floor(centers - r).astype(np.int64)[:, None] + 1 + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(j - centers[:, None]) / r)
    w /= w.sum(axis=1, keepdims=True)
    idx = np.clip(j, 0, src - 1).astype(np.int32)
    idx.flags.writeable = False
    w32 = w.astype(np.float32)
    w32.flags.writeable = False
    return idx, w32


def letterbox_reference(image: np.ndarray, dst_w: int, dst_h: int,
                        info: LetterboxInfo | None = None) -> tuple[np.ndarray, LetterboxInfo]:
    """The GPU kernel's arithmetic in float64 numpy: (3, dst_h, dst_w) float32 + geometry."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    info = info or letterbox_params(w, h, dst_w, dst_h)
    xi, xw = resize_taps(w, info.new_w)
    yi, yw = resize_taps(h, info.new_h)
    src = image.astype(np.float64)
    tmp = np.zeros((h, info.new_w, 3))
    for t in range(xi.shape[1]):
        tmp += src[:, xi[:, t], :] * xw[:, t, None].astype(np.float64)
    res = np.zeros((info.new_h, info.new_w, 3))
    for t in range(yi.shape[1]):
        res += tmp[yi[:, t], :, :] * yw[:, t, None, None].astype(np.float64)
    out = np.full((3, dst_h, dst_w), PAD_VALUE, np.float32)
    out[:, info.pad_y:info.pad_y + info.new_h, info.pad_x:info.pad_x + info.new_w] = (
        res.transpose(2, 0, 1) / 255.0)
    return out, info


def yuv_planes(frame: Any) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """(format, Y (h, w), U or UV, V or None) uint8 views of a PyAV yuv420p/nv12 frame's planes
    (line padding cut off; odd sizes have ``ceil(w/2) x ceil(h/2)`` chroma), or of a
    ``(y, u, v)`` tuple of 2-D arrays (yuv420p)."""
    if isinstance(frame, tuple):
        y, u, v = (np.asarray(a) for a in frame)
        cw, ch = (y.shape[1] + 1) // 2, (y.shape[0] + 1) // 2
        for a, shape in ((y, y.shape), (u, (ch, cw)), (v, (ch, cw))):
            if a.dtype != np.uint8 or a.ndim != 2 or a.shape != shape:
                raise ValueError(f"(y, u, v) planes must be uint8 (h, w), (ceil(h/2), ceil(w/2)) x2; "
                                 f"got {[(p.dtype, p.shape) for p in (y, u, v)]}")
        return "yuv420p", y, u, v
    fmt = frame.format.name
    if fmt not in YUV_FORMATS:
        raise ValueError(f"not a {'/'.join(YUV_FORMATS)} frame: {fmt}")
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2

    def plane(i: int, rows: int, cols: int) -> np.ndarray:
        p = frame.planes[i]
        return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:rows, :cols]

    if fmt == "nv12":
        return fmt, plane(0, h, w), plane(1, ch, 2 * cw), None
    return "yuv420p", plane(0, h, w), plane(1, ch, cw), plane(2, ch, cw)


def _resize2d(a: np.ndarray, new_w: int, new_h: int, ox: float = 0.5, oy: float = 0.5) -> np.ndarray:
    h, w = a.shape
    xi, xw = resize_taps(w, new_w, ox)
    yi, yw = resize_taps(h, new_h, oy)
    t = (a.astype(np.float64)[:, xi] * xw.astype(np.float64)).sum(-1)
    return (t[yi, :] * yw.astype(np.float64)[:, :, None]).sum(1)


def yuv_params(frame: Any) -> tuple[int, int, int]:
    """(AVChromaLocation, AVColorSpace, AVColorRange) of a frame as ``letterbox_av`` reads
    them; a plane tuple is all unspecified: centred chroma, BT.601, limited range."""
    if isinstance(frame, tuple):
        return 0, 2, 0
    full = frame.format.name == "yuvj420p" or int(getattr(frame, "color_range", 0) or 0) == 2
    return chroma_location(frame), int(getattr(frame, "colorspace", 2) or 2), 2 if full else 1


def letterbox_yuv_reference(frame: Any, dst_w: int, dst_h: int,
                            info: LetterboxInfo | None = None) -> tuple[np.ndarray, LetterboxInfo]:
    """The YUV kernel's arithmetic in float64 numpy, for a PyAV yuv420p/nv12 frame or (y, u, v)."""
    fmt, y, u, v = yuv_planes(frame)
    if fmt == "nv12":
        u, v = u[:, 0::2], u[:, 1::2]
    assert v is not None
    h, w = y.shape
    info = info or letterbox_params(w, h, dst_w, dst_h)
    loc, space, rng = yuv_params(frame)
    ox, oy = chroma_offsets(loc)
    m = yuv_matrix(space, rng)
    yy = (_resize2d(y, info.new_w, info.new_h) - m["y0"]) * m["y"]
    uu = _resize2d(u, info.new_w, info.new_h, ox, oy) - 128.0
    vv = _resize2d(v, info.new_w, info.new_h, ox, oy) - 128.0
    rgb = np.stack([yy + m["rv"] * vv, yy - m["gu"] * uu - m["gv"] * vv, yy + m["bu"] * uu])
    out = np.full((3, dst_h, dst_w), PAD_VALUE, np.float32)
    out[:, info.pad_y:info.pad_y + info.new_h, info.pad_x:info.pad_x + info.new_w] = (
        np.clip(rgb, 0.0, 255.0) / 255.0)
    return out, info


KERNEL_SOURCE = r"""
// One thread per output pixel of one image: gather the tent-filter taps from the raw uint8 RGB
// frame (interleaved, row pitch in bytes), scale to 0..1, write the three planes of the padded
// NCHW network input. Pixels outside the image region get the pad value.
extern "C" __global__ void letterbox_u8rgb_to_f32nchw(
    const unsigned char* __restrict__ src, int src_pitch,
    const int* __restrict__ xidx, const float* __restrict__ xw, int kx,
    const int* __restrict__ yidx, const float* __restrict__ yw, int ky,
    float* __restrict__ out, int dst_w, int dst_h,
    int new_w, int new_h, int pad_x, int pad_y, float pad_value)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    const size_t plane = (size_t)dst_w * dst_h;
    const size_t o = (size_t)y * dst_w + x;
    const int ix = x - pad_x, iy = y - pad_y;
    if (ix < 0 || iy < 0 || ix >= new_w || iy >= new_h) {
        out[o] = pad_value; out[o + plane] = pad_value; out[o + 2 * plane] = pad_value;
        return;
    }
    float r = 0.f, g = 0.f, b = 0.f;
    for (int j = 0; j < ky; ++j) {
        const float wy = yw[iy * ky + j];
        if (wy == 0.f) continue;
        const unsigned char* row = src + (size_t)yidx[iy * ky + j] * src_pitch;
        float rr = 0.f, gg = 0.f, bb = 0.f;
        for (int i = 0; i < kx; ++i) {
            const float wx = xw[ix * kx + i];
            const unsigned char* p = row + 3 * xidx[ix * kx + i];
            rr += wx * p[0]; gg += wx * p[1]; bb += wx * p[2];
        }
        r += wy * rr; g += wy * gg; b += wy * bb;
    }
    const float k = 1.0f / 255.0f;
    out[o] = r * k; out[o + plane] = g * k; out[o + 2 * plane] = b * k;
}

// The decoder's planes in: Y (pitch y_pitch), chroma planes u and v (pitch c_pitch; c_step 1 for
// yuv420p, 2 for nv12 where v = u + 1). Y is resized with the luma taps (src -> new), chroma with
// the chroma taps (ceil(src/2) x ceil(src_h/2) -> new_w x new_h: full resolution, sited as the
// frame says); then the limited-range matrix k_*, clipped, /255 (see the module docstring).
extern "C" __global__ void letterbox_yuv420_to_f32nchw(
    const unsigned char* __restrict__ yp, int y_pitch,
    const unsigned char* __restrict__ up, const unsigned char* __restrict__ vp, int c_pitch, int c_step,
    const int* __restrict__ xidx, const float* __restrict__ xw, int kx,
    const int* __restrict__ yidx, const float* __restrict__ yw, int ky,
    const int* __restrict__ cxidx, const float* __restrict__ cxw, int ckx,
    const int* __restrict__ cyidx, const float* __restrict__ cyw, int cky,
    float* __restrict__ out, int dst_w, int dst_h,
    int new_w, int new_h, int pad_x, int pad_y, float pad_value,
    float y0, float k_y, float k_rv, float k_gu, float k_gv, float k_bu)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    const size_t plane = (size_t)dst_w * dst_h;
    const size_t o = (size_t)y * dst_w + x;
    const int ix = x - pad_x, iy = y - pad_y;
    if (ix < 0 || iy < 0 || ix >= new_w || iy >= new_h) {
        out[o] = pad_value; out[o + plane] = pad_value; out[o + 2 * plane] = pad_value;
        return;
    }
    float lum = 0.f;
    for (int j = 0; j < ky; ++j) {
        const float wy = yw[iy * ky + j];
        if (wy == 0.f) continue;
        const unsigned char* row = yp + (size_t)yidx[iy * ky + j] * y_pitch;
        float acc = 0.f;
        for (int i = 0; i < kx; ++i) acc += xw[ix * kx + i] * row[xidx[ix * kx + i]];
        lum += wy * acc;
    }
    float cu = 0.f, cv = 0.f;
    for (int j = 0; j < cky; ++j) {
        const float wy = cyw[iy * cky + j];
        if (wy == 0.f) continue;
        const size_t row = (size_t)cyidx[iy * cky + j] * c_pitch;
        float au = 0.f, av = 0.f;
        for (int i = 0; i < ckx; ++i) {
            const float wx = cxw[ix * ckx + i];
            const size_t p = row + (size_t)cxidx[ix * ckx + i] * c_step;
            au += wx * up[p]; av += wx * vp[p];
        }
        cu += wy * au; cv += wy * av;
    }
    const float yy = (lum - y0) * k_y, uu = cu - 128.f, vv = cv - 128.f;
    const float k = 1.0f / 255.0f;
    out[o] = fminf(fmaxf(yy + k_rv * vv, 0.f), 255.f) * k;
    out[o + plane] = fminf(fmaxf(yy - k_gu * uu - k_gv * vv, 0.f), 255.f) * k;
    out[o + 2 * plane] = fminf(fmaxf(yy + k_bu * uu, 0.f), 255.f) * k;
}
"""

_KERNEL = "letterbox_u8rgb_to_f32nchw"
_KERNEL_YUV = "letterbox_yuv420_to_f32nchw"


class GpuLetterbox:
    """The compiled kernel plus device copies of the tap tables, one set per geometry."""

    def __init__(self, device: Any) -> None:
        self.device = device
        kernels = device.compile(KERNEL_SOURCE, [_KERNEL, _KERNEL_YUV], "gpu_letterbox.cu")
        self.kernel, self.kernel_yuv = kernels[_KERNEL], kernels[_KERNEL_YUV]
        self._tables: dict[tuple[int, int, float], tuple[int, int, int]] = {}
        self._host_tables: list[np.ndarray] = []  # the upload sources, alive as long as the tables
        self._lock = threading.Lock()  # submissions may come from several threads

    def _table(self, src: int, dst: int, stream: Any, offset: float = 0.5) -> tuple[int, int, int]:
        """(index ptr, weight ptr, taps) on the device for one axis, uploaded once per geometry
        (a handful per stream, so no eviction).

        The upload is queued on ``stream`` (the slot's non-blocking stream, so it is ordered
        before this slot's kernel) and then that stream is synchronized: another slot's stream
        may launch a kernel reading the same table right after, and a synchronous
        ``cuMemcpyHtoD`` from pageable memory would not be ordered against non-blocking
        streams (it may return before the DMA lands). Once per geometry, so the wait is rare."""
        key = (src, dst, offset)
        with self._lock:
            return self._tables.get(key) or self._upload(key, stream)

    def _upload(self, key: tuple[int, int, float], stream: Any) -> tuple[int, int, int]:
        idx, w = (np.ascontiguousarray(a) for a in resize_taps(*key))
        d = self.device
        ip, wp = d.alloc(idx.nbytes), d.alloc(w.nbytes)
        d.h2d(ip, idx.ctypes.data, idx.nbytes, stream)
        d.h2d(wp, w.ctypes.data, w.nbytes, stream)
        d.sync_stream(stream)
        self._host_tables += [idx, w]
        self._tables[key] = (ip, wp, idx.shape[1])
        return self._tables[key]

    def enqueue(self, src_dev: int, src_w: int, src_h: int, src_pitch: int, out_dev: int,
                dst_w: int, dst_h: int, info: LetterboxInfo, stream: Any) -> None:
        """Letterbox one frame already on the device into ``out_dev`` (float32 3 x dst_h x dst_w)."""
        if (info.src_w, info.src_h, info.dst_w, info.dst_h) != (src_w, src_h, dst_w, dst_h):
            raise ValueError(f"LetterboxInfo {info} does not describe a {src_w}x{src_h} -> "
                             f"{dst_w}x{dst_h} letterbox")
        xi, xw, kx = self._table(src_w, info.new_w, stream)
        yi, yw, ky = self._table(src_h, info.new_h, stream)
        c = ctypes
        block = (32, 8, 1)
        grid = ((dst_w + block[0] - 1) // block[0], (dst_h + block[1] - 1) // block[1], 1)
        self.device.launch(self.kernel, grid, block, stream, [
            c.c_void_p(src_dev), c.c_int(src_pitch),
            c.c_void_p(xi), c.c_void_p(xw), c.c_int(kx),
            c.c_void_p(yi), c.c_void_p(yw), c.c_int(ky),
            c.c_void_p(out_dev), c.c_int(dst_w), c.c_int(dst_h),
            c.c_int(info.new_w), c.c_int(info.new_h), c.c_int(info.pad_x), c.c_int(info.pad_y),
            c.c_float(PAD_VALUE),
        ])

    def enqueue_yuv(self, y_dev: int, y_pitch: int, u_dev: int, v_dev: int, c_pitch: int, c_step: int,
                    src_w: int, src_h: int, out_dev: int, dst_w: int, dst_h: int, info: LetterboxInfo,
                    stream: Any, location: int = 0, colorspace: int = 2, color_range: int = 0) -> None:
        """Letterbox one yuv420p (``c_step`` 1) or nv12 (``c_step`` 2, ``v_dev = u_dev + 1``)
        frame already on the device into ``out_dev`` (float32 3 x dst_h x dst_w); ``location``
        (AVChromaLocation), ``colorspace`` (AVColorSpace) and ``color_range`` (AVColorRange) as
        :func:`yuv_params` reads them."""
        if (info.src_w, info.src_h, info.dst_w, info.dst_h) != (src_w, src_h, dst_w, dst_h):
            raise ValueError(f"LetterboxInfo {info} does not describe a {src_w}x{src_h} -> "
                             f"{dst_w}x{dst_h} letterbox")
        xi, xw, kx = self._table(src_w, info.new_w, stream)
        yi, yw, ky = self._table(src_h, info.new_h, stream)
        ox, oy = chroma_offsets(location)
        m = yuv_matrix(colorspace, color_range)
        cxi, cxw, ckx = self._table((src_w + 1) // 2, info.new_w, stream, ox)
        cyi, cyw, cky = self._table((src_h + 1) // 2, info.new_h, stream, oy)
        c = ctypes
        block = (32, 8, 1)
        grid = ((dst_w + block[0] - 1) // block[0], (dst_h + block[1] - 1) // block[1], 1)
        self.device.launch(self.kernel_yuv, grid, block, stream, [
            c.c_void_p(y_dev), c.c_int(y_pitch), c.c_void_p(u_dev), c.c_void_p(v_dev),
            c.c_int(c_pitch), c.c_int(c_step),
            c.c_void_p(xi), c.c_void_p(xw), c.c_int(kx), c.c_void_p(yi), c.c_void_p(yw), c.c_int(ky),
            c.c_void_p(cxi), c.c_void_p(cxw), c.c_int(ckx), c.c_void_p(cyi), c.c_void_p(cyw), c.c_int(cky),
            c.c_void_p(out_dev), c.c_int(dst_w), c.c_int(dst_h),
            c.c_int(info.new_w), c.c_int(info.new_h), c.c_int(info.pad_x), c.c_int(info.pad_y),
            c.c_float(PAD_VALUE), c.c_float(m["y0"]), c.c_float(m["y"]), c.c_float(m["rv"]), c.c_float(m["gu"]),
            c.c_float(m["gv"]), c.c_float(m["bu"]),
        ])

    def close(self) -> None:
        self._host_tables.clear()
        for ip, wp, _ in self._tables.values():
            self.device.free(ip)
            self.device.free(wp)
        self._tables.clear()
