"""Which decoded frames may reach native code (libswscale, the JPEG encoder, the GPU upload).

A frame is checked once, right after the decoder hands it over and before anything else touches
its pixels: :func:`frame_problem` returns ``None`` for a frame every later stage converts safely,
or a sentence naming the rule broken; :func:`check_frame` raises :class:`UnsupportedFrame`
naming the pixel format and the size as well. The source then fails that stream alone (see
docs/robustness.md); nothing in the process aborts.

The rule comes from measurement, not from one bad file: ``bench/explore_pixfmts.py`` built a
frame in every software pixel format FFmpeg knows (251) at 17 sizes from 1x1 to 4000x3 (and a
few up to 16384 on a side), round-tripped it through a decoder, and ran the three conversions
detectd makes (letterbox scale + RGB, full-size RGB, preview scale) in a child process,
recording aborts. With FFmpeg 8.1 (PyAV 18) the result was (``bench/results/pixfmt_safety.json``):

- every ``bayer_*`` format aborts libswscale (SIGABRT from an ``av_assert0`` in the Bayer
  demosaicer, which reads 2x2 cells) when the height is odd, at any width (1x1, 17x9, 16x9,
  4000x3, 16384x3); with an even height it converts. detectd requires an even width *and*
  height: a 2x2 mosaic cell is what the format means, and no camera sends half a cell;
- ``bgr4`` and ``rgb4`` (4-bit packed bitstreams) are refused by libswscale with an error;
- every other software format converted at every size, 1x1 included.

Hardware surfaces (``cuda``, ``vaapi``, ...) have no CPU pixels and are not on the list; a format
FFmpeg adds later is refused until the exploration has been run on it (an allow-list, not a
deny-list). Sizes are bounded at :data:`MAX_SIDE` per side (16384, the largest measured) and
:data:`MAX_PIXELS` in all (a memory bound: one RGB copy of the largest frame is 192 MiB).
"""

from __future__ import annotations

from typing import Any

from daemon.errors import DetectdError

__all__ = ["MAX_PIXELS", "MAX_SIDE", "MOSAIC_FORMATS", "SAFE_FORMATS", "UnsupportedFrame",
           "check_frame", "frame_problem"]

MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192

# Converted safely at every measured size (bench/explore_pixfmts.py, FFmpeg 8.1).
SAFE_FORMATS: frozenset[str] = frozenset("""
    0bgr 0rgb abgr argb ayuv ayuv64be ayuv64le bgr0 bgr24 bgr444be bgr444le bgr48be bgr48le
    bgr4_byte bgr555be bgr555le bgr565be bgr565le bgr8 bgra bgra64be bgra64le gbrap
    gbrap10be gbrap10le gbrap12be gbrap12le gbrap14be gbrap14le gbrap16be gbrap16le
    gbrap32be gbrap32le gbrapf16be gbrapf16le gbrapf32be gbrapf32le gbrp gbrp10be gbrp10le
    gbrp10msbbe gbrp10msble gbrp12be gbrp12le gbrp12msbbe gbrp12msble gbrp14be gbrp14le
    gbrp16be gbrp16le gbrp9be gbrp9le gbrpf16be gbrpf16le gbrpf32be gbrpf32le gray gray10be
    gray10le gray12be gray12le gray14be gray14le gray16be gray16le gray32be gray32le gray9be
    gray9le grayf16be grayf16le grayf32be grayf32le monob monow nv12 nv16 nv20be nv20le nv21
    nv24 nv42 p010be p010le p012be p012le p016be p016le p210be p210le p212be p212le p216be
    p216le p410be p410le p412be p412le p416be p416le pal8 rgb0 rgb24 rgb444be rgb444le
    rgb48be rgb48le rgb4_byte rgb555be rgb555le rgb565be rgb565le rgb8 rgb96be rgb96le rgba
    rgba128be rgba128le rgba64be rgba64le rgbaf16be rgbaf16le rgbaf32be rgbaf32le rgbf16be
    rgbf16le rgbf32be rgbf32le uyva uyvy422 uyyvyy411 v30xbe v30xle vuya vuyx vyu444
    x2bgr10be x2bgr10le x2rgb10be x2rgb10le xv30be xv30le xv36be xv36le xv48be xv48le
    xyz12be xyz12le y210be y210le y212be y212le y216be y216le ya16be ya16le ya8 yaf16be
    yaf16le yaf32be yaf32le yuv410p yuv411p yuv420p yuv420p10be yuv420p10le yuv420p12be
    yuv420p12le yuv420p14be yuv420p14le yuv420p16be yuv420p16le yuv420p9be yuv420p9le
    yuv422p yuv422p10be yuv422p10le yuv422p12be yuv422p12le yuv422p14be yuv422p14le
    yuv422p16be yuv422p16le yuv422p9be yuv422p9le yuv440p yuv440p10be yuv440p10le
    yuv440p12be yuv440p12le yuv444p yuv444p10be yuv444p10le yuv444p10msbbe yuv444p10msble
    yuv444p12be yuv444p12le yuv444p12msbbe yuv444p12msble yuv444p14be yuv444p14le
    yuv444p16be yuv444p16le yuv444p9be yuv444p9le yuva420p yuva420p10be yuva420p10le
    yuva420p16be yuva420p16le yuva420p9be yuva420p9le yuva422p yuva422p10be yuva422p10le
    yuva422p12be yuva422p12le yuva422p16be yuva422p16le yuva422p9be yuva422p9le yuva444p
    yuva444p10be yuva444p10le yuva444p12be yuva444p12le yuva444p16be yuva444p16le
    yuva444p9be yuva444p9le yuvj411p yuvj420p yuvj422p yuvj440p yuvj444p yuyv422 yvyu422
""".split())

# Bayer mosaics: safe only with an even width and height (odd heights abort libswscale).
MOSAIC_FORMATS: frozenset[str] = frozenset(
    f"bayer_{order}{depth}" for order in ("bggr", "gbrg", "grbg", "rggb")
    for depth in ("8", "16le", "16be")
)


class UnsupportedFrame(DetectdError, ValueError):
    """A decoded frame that detectd refuses to hand to native code. ``str(exc)`` names the pixel
    format, the size and the rule; the attributes carry them for events and logs."""

    def __init__(self, pix_fmt: str, width: int, height: int, why: str) -> None:
        super().__init__(f"unsupported frame: pixel format {pix_fmt} at {width}x{height}: {why}")
        self.pix_fmt, self.width, self.height, self.why = pix_fmt, width, height, why


def frame_problem(pix_fmt: str, width: int, height: int) -> str | None:
    """Why a frame of this pixel format (FFmpeg's name) and size (pixels) is unsafe, or ``None``."""
    if width < 1 or height < 1:
        return "a frame needs at least 1x1 pixels"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"larger than {MAX_SIDE} pixels on a side"
    if width * height > MAX_PIXELS:
        return f"more than {MAX_PIXELS} pixels in all"
    if pix_fmt in MOSAIC_FORMATS:
        if width % 2 or height % 2:
            return ("a Bayer mosaic needs an even width and height "
                    "(odd sizes abort FFmpeg's image scaler)")
        return None
    if pix_fmt not in SAFE_FORMATS:
        return "not a pixel format detectd converts safely (the list: docs/robustness.md)"
    return None


def check_frame(frame: Any) -> None:
    """Raise :class:`UnsupportedFrame` unless a PyAV ``VideoFrame`` may reach native code."""
    fmt = getattr(frame, "format", None)
    pix_fmt = getattr(fmt, "name", None) or "unknown"
    if pix_fmt == "cuda" and getattr(frame, "sw_format", None) is not None:
        pix_fmt = frame.sw_format.name  # an NVDEC surface (sources/nvdec.py): judged by its layout
    width, height = int(frame.width), int(frame.height)
    why = frame_problem(pix_fmt, width, height)
    if why is not None:
        raise UnsupportedFrame(pix_fmt, width, height, why)
