"""Letterbox preprocessing: aspect ratio preserved, grey padding, RGB, 0..1, CHW float32.

The pixels are touched twice in all: libswscale (through PyAV's ``reformat``) scales *and*
converts the decoder's YUV to RGB in one pass, and one numpy ufunc call converts uint8 HWC to
float32 CHW, scales by 1/255 and writes straight into the padded network input (which may be a
slice of a batch buffer, so batching costs no extra copy). Only the border strips are painted
grey, never the whole buffer.

Padding is 0.5, Darknet's own ``letterbox_image`` grey, so detections match Darknet/OpenCV.

An INT8 model whose first operation quantizes the 0..1 image to uint8 with scale 1/255 can take
the 8-bit pixels themselves (``daemon/backends/ov_graph.py``): pass a uint8 (3, H, W) buffer and
the letterbox writes the pixels unconverted (a quarter of the bytes of float32, no multiply),
padding with ``PAD_UINT8`` = 127, which is what that quantization makes of 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

PAD_VALUE = 0.5
# QuantizeLinear(0.5, scale float32(1/255), zero point 0): 0.5 / 0.003921569 = 127.49999 -> 127.
PAD_UINT8 = 127
# Bilinear scaling; ACCURATE_RND + FULL_CHR_H_INT make libswscale's YUV->RGB exact BT.601 (within
# 0.5 of a level; without them its fixed-point tables sit 0..2.75 levels low) and interpolate chroma
# at full horizontal resolution. Same cost as plain BILINEAR here, and the GPU kernel
# (vision/gpu_letterbox.py) computes the same arithmetic, so both paths agree.
INTERPOLATION = (Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT)


@dataclass(frozen=True, slots=True)
class LetterboxInfo:
    """How a source frame was placed in the network input, to map boxes back."""

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        return self.new_w / self.src_w

    @property
    def scale_y(self) -> float:
        return self.new_h / self.src_h


def letterbox_params(src_w: int, src_h: int, dst_w: int, dst_h: int) -> LetterboxInfo:
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"cannot letterbox a {src_w}x{src_h} frame")
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w = max(1, min(dst_w, int(round(src_w * scale))))
    new_h = max(1, min(dst_h, int(round(src_h * scale))))
    return LetterboxInfo(
        src_w, src_h, dst_w, dst_h, new_w, new_h, (dst_w - new_w) // 2, (dst_h - new_h) // 2
    )


def _pad(out: np.ndarray, info: LetterboxInfo) -> tuple[int, int, int, int]:
    """Paint the border strips around the image region (only them: the region is overwritten
    next); returns the region (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = info.pad_x, info.pad_y, info.pad_x + info.new_w, info.pad_y + info.new_h
    pad = PAD_UINT8 if out.dtype == np.uint8 else PAD_VALUE
    out[:, :y0, :] = pad
    out[:, y1:, :] = pad
    out[:, y0:y1, :x0] = pad
    out[:, y0:y1, x1:] = pad
    return x0, y0, x1, y1


def _fill(out: np.ndarray, info: LetterboxInfo, rgb: np.ndarray) -> None:
    """Pad around the image region and write the (new_h, new_w, 3) RGB pixels, in one pass each."""
    x0, y0, x1, y1 = _pad(out, info)
    if out.dtype == np.uint8:
        out[:, y0:y1, x0:x1] = rgb.transpose(2, 0, 1)
    else:
        np.multiply(rgb.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out[:, y0:y1, x0:x1],
                    casting="unsafe")


def _fill_planes(out: np.ndarray, info: LetterboxInfo, planes: tuple[np.ndarray, ...]) -> None:
    """As `_fill`, from three (new_h, new_w) uint8 planes R, G, B: contiguous rows into each
    channel, no interleaved->planar transpose."""
    x0, y0, x1, y1 = _pad(out, info)
    for c, plane in enumerate(planes):
        if out.dtype == np.uint8:
            out[c, y0:y1, x0:x1] = plane
        else:
            np.multiply(plane, np.float32(1.0 / 255.0), out=out[c, y0:y1, x0:x1], casting="unsafe")


def _out(out: np.ndarray | None, dst_w: int, dst_h: int) -> np.ndarray:
    if out is None:
        return np.empty((3, dst_h, dst_w), np.float32)
    if out.shape != (3, dst_h, dst_w) or out.dtype not in (np.float32, np.uint8):
        raise ValueError(f"letterbox output buffer must be float32 or uint8 (3,{dst_h},{dst_w}), "
                         f"got {out.dtype} {out.shape}")
    return out


# ``VideoFrame.reformat`` builds a fresh SwsContext (filter tables, ACCURATE_RND's dither
# tables) for every frame: 2.4 ms of a 3 ms letterbox at 640x272 -> 416x177, measured. A
# VideoReformatter kept per thread and per geometry reuses its context (0.64 ms, same pixels).
_REFORMATTERS = threading.local()
_MAX_REFORMATTERS = 64  # geometries kept per thread (streams of different sizes); then reset


def _reformatter(key: tuple[Any, ...]) -> VideoReformatter:
    cache: dict[tuple[Any, ...], VideoReformatter] | None = getattr(_REFORMATTERS, "cache", None)
    if cache is None or len(cache) >= _MAX_REFORMATTERS and key not in cache:
        cache = _REFORMATTERS.cache = {}
    r = cache.get(key)
    if r is None:
        r = cache[key] = VideoReformatter()
    return r


def letterbox_av(frame: Any, dst_w: int, dst_h: int, out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox a PyAV ``VideoFrame`` (any pixel format): scale + RGB in one swscale pass."""
    info = letterbox_params(frame.width, frame.height, dst_w, dst_h)
    r = _reformatter((frame.format.name, frame.width, frame.height, info.new_w, info.new_h,
                      getattr(frame, "colorspace", None), getattr(frame, "color_range", None)))
    buf = _out(out, dst_w, dst_h)
    if info.new_w <= frame.width and info.new_h <= frame.height:
        # Planar GBR out of swscale: the same pixels as rgb24 bit for bit when scaling down
        # (tests/test_vision.py, every decoder format), at a third of its cost (0.22 vs 0.66 ms
        # CPU for 640x272 -> 416x177: swscale's packed 24-bit writer is the slow part), and
        # planes are what the CHW input wants. Scaling up, the two writers round 0.04% of the
        # values one level apart, so small sources keep the packed path (and their pixels).
        g = r.reformat(frame, width=info.new_w, height=info.new_h, format="gbrp",
                       interpolation=INTERPOLATION)
        gp, bp, rp = (np.frombuffer(memoryview(pl), np.uint8, count=pl.line_size * info.new_h)
                      .reshape(info.new_h, pl.line_size)[:, :info.new_w] for pl in g.planes)
        _fill_planes(buf, info, (rp, gp, bp))
    else:
        rgb = r.reformat(frame, width=info.new_w, height=info.new_h, format="rgb24",
                         interpolation=INTERPOLATION).to_ndarray()
        _fill(buf, info, rgb)
    return buf, info


def letterbox_rgb(image: np.ndarray, dst_w: int, dst_h: int, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox an RGB uint8 (H, W, 3) array, with the same scaler as the video path."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return letterbox_av(frame, dst_w, dst_h, out)


def letterbox_frame(frame: Any, dst_w: int, dst_h: int, out: np.ndarray | None = None
                    ) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox a :class:`daemon.frames.Frame` (native PyAV frame preferred, else its RGB)."""
    if getattr(frame, "native", None) is not None:
        if getattr(frame, "orient", ""):  # turned for display on the small scaled picture
            from daemon.vision.orient import letterbox_oriented

            return letterbox_oriented(frame.native, frame.orient, dst_w, dst_h, out)
        return letterbox_av(frame.native, dst_w, dst_h, out)
    return letterbox_rgb(frame.rgb(), dst_w, dst_h, out)
