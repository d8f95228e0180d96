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
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from daemon.vision.letterbox import PAD_VALUE, LetterboxInfo, letterbox_params

__all__ = ["GpuLetterbox", "KERNEL_SOURCE", "letterbox_reference", "resize_taps"]


@functools.lru_cache(maxsize=64)
def resize_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices int32 (dst, K), weights float32 (dst, K)) of libswscale's bilinear filter."""
    if src < 1 or dst < 1:
        raise ValueError(f"cannot resize {src} -> {dst}")
    s = src / dst
    r = max(1.0, s)
    centers = (np.arange(dst, dtype=np.float64) + 0.5) * s - 0.5
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
"""

_KERNEL = "letterbox_u8rgb_to_f32nchw"


class GpuLetterbox:
    """The compiled kernel plus device copies of the tap tables, one set per geometry."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.kernel = device.compile(KERNEL_SOURCE, [_KERNEL], "gpu_letterbox.cu")[_KERNEL]
        self._tables: dict[tuple[int, int], tuple[int, int, int]] = {}

    def _table(self, src: int, dst: int) -> tuple[int, int, int]:
        """(index ptr, weight ptr, taps) on the device for one axis; uploaded synchronously once
        per geometry (a handful per stream, so no eviction)."""
        key = (src, dst)
        if key not in self._tables:
            idx, w = resize_taps(src, dst)
            d = self.device
            ip, wp = d.alloc(idx.nbytes), d.alloc(w.nbytes)
            from daemon.backends.cuda import check

            check(d.driver.cuMemcpyHtoD(ip, np.ascontiguousarray(idx).ctypes.data, idx.nbytes), "cuMemcpyHtoD")
            check(d.driver.cuMemcpyHtoD(wp, np.ascontiguousarray(w).ctypes.data, w.nbytes), "cuMemcpyHtoD")
            self._tables[key] = (ip, wp, idx.shape[1])
        return self._tables[key]

    def enqueue(self, src_dev: int, src_w: int, src_h: int, src_pitch: int, out_dev: int,
                dst_w: int, dst_h: int, info: LetterboxInfo, stream: Any) -> None:
        """Letterbox one frame already on the device into ``out_dev`` (float32 3 x dst_h x dst_w)."""
        if (info.src_w, info.src_h, info.dst_w, info.dst_h) != (src_w, src_h, dst_w, dst_h):
            raise ValueError(f"LetterboxInfo {info} does not describe a {src_w}x{src_h} -> "
                             f"{dst_w}x{dst_h} letterbox")
        xi, xw, kx = self._table(src_w, info.new_w)
        yi, yw, ky = self._table(src_h, info.new_h)
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

    def close(self) -> None:
        for ip, wp, _ in self._tables.values():
            self.device.free(ip)
            self.device.free(wp)
        self._tables.clear()
