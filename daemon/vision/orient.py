"""Display orientation: turn a decoded picture the way FFmpeg's command-line tool shows it.

Phones store video as the sensor saw it and record how to turn it for display in a *display
matrix* (the MP4/MOV ``tkhd`` matrix, FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX`` side data, read
on every decoded frame). ``ffmpeg`` and ``ffplay`` apply it by default (``-autorotate``);
PyAV hands the frame over as stored. :func:`frame_orientation` reads the matrix and names the
operation with the words of FFmpeg's ``transpose`` filter, by the same rule as
``fftools/ffmpeg_filter.c`` (``insert_filter`` for ``theta`` 90/180/270 and the flips), so that
detectd analyses what a video player shows:

============  =====================================================  ====================
orientation   operation on the stored picture                        displayed size
============  =====================================================  ====================
``""``        none                                                   W x H
``clock``     rotate 90 degrees clockwise                            H x W
``cclock``    rotate 90 degrees counter-clockwise                    H x W
``transpose`` mirror over the main diagonal (``cclock_flip``)        H x W
``clock_flip`` rotate clockwise, then flip vertically                H x W
``hflip``     mirror left-right                                      W x H
``vflip``     mirror top-bottom                                      W x H
``rotate180`` rotate 180 degrees (``hflip`` + ``vflip``)              W x H
============  =====================================================  ====================

Rotations that are not a multiple of 90 degrees (FFmpeg's ``rotate`` filter, which pads with
black) are not applied: such a frame is analysed as stored (:func:`frame_orientation` returns
``""`` and :func:`odd_rotation` says which angle was ignored).

Orientation is applied where it is cheap: on the small RGB picture after the scaler
(:func:`letterbox_oriented`: scale to the stored-orientation size, then a numpy view), so it
costs one strided copy of the network input, not a pass over the full-size frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ORIENTATIONS", "SWAPS", "frame_orientation", "odd_rotation", "matrix_orientation",
           "displayed_size", "orient_array", "oriented_rgb", "letterbox_oriented"]

ORIENTATIONS = ("", "clock", "cclock", "transpose", "clock_flip", "hflip", "vflip", "rotate180")
# The orientations that swap width and height.
SWAPS = frozenset({"clock", "cclock", "transpose", "clock_flip"})


def _display_matrix(frame: Any) -> list[int] | None:
    """The 3x3 display matrix of a PyAV frame as 9 int32 (16.16 / 2.30 fixed point), or None."""
    try:
        from av.sidedata.sidedata import Type

        sd = frame.side_data.get(Type.DISPLAYMATRIX)
        if sd is None:
            return None
        m = np.frombuffer(bytes(sd), dtype=np.int32)
        return [int(v) for v in m[:9]] if m.size >= 9 else None
    except Exception:  # no side data API, or a damaged entry: show the frame as stored
        return None


def _theta(m: list[int]) -> float | None:
    """FFmpeg's ``get_rotation``: the clockwise angle in [0, 360) (``-av_display_rotation_get``)."""
    s0 = math.hypot(m[0] / 65536.0, m[3] / 65536.0)
    s1 = math.hypot(m[1] / 65536.0, m[4] / 65536.0)
    if s0 == 0.0 or s1 == 0.0:
        return None
    theta = -round(-math.degrees(math.atan2((m[1] / 65536.0) / s1, (m[0] / 65536.0) / s0)))
    return theta - 360 * math.floor(theta / 360 + 0.9 / 360)


def matrix_orientation(m: list[int]) -> str:
    """The orientation (see the module table) for a display matrix, by ffmpeg's own rule."""
    theta = _theta(m)
    if theta is None:
        return ""
    if abs(theta - 90) < 1.0:
        return "transpose" if m[3] > 0 else "clock"
    if abs(theta - 180) < 1.0:
        h, v = m[0] < 0, m[4] < 0
        return "rotate180" if h and v else "hflip" if h else "vflip" if v else ""
    if abs(theta - 270) < 1.0:
        return "clock_flip" if m[3] < 0 else "cclock"
    if abs(theta) < 1.0 and m[4] < 0:
        return "vflip"
    return ""


def frame_orientation(frame: Any) -> str:
    """How to turn a PyAV ``VideoFrame`` for display: one of :data:`ORIENTATIONS`."""
    m = _display_matrix(frame)
    return matrix_orientation(m) if m is not None else ""


def odd_rotation(frame: Any) -> float | None:
    """The clockwise angle in degrees of a display rotation that is not a multiple of 90 (not
    applied), else None."""
    m = _display_matrix(frame)
    theta = _theta(m) if m is not None else None
    if theta is None or min(abs(theta - a) for a in (0, 90, 180, 270, 360)) < 1.0:
        return None
    return theta


def displayed_size(width: int, height: int, orientation: str) -> tuple[int, int]:
    """(width, height) as displayed, for a picture stored ``width`` x ``height``."""
    return (height, width) if orientation in SWAPS else (width, height)


def orient_array(img: np.ndarray, orientation: str) -> np.ndarray:
    """Turn an (H, W, ...) array for display. Returns a view (no copy); "" returns ``img``."""
    if not orientation:
        return img
    if orientation == "clock":
        return np.rot90(img, -1)
    if orientation == "cclock":
        return np.rot90(img, 1)
    if orientation == "transpose":
        return img.swapaxes(0, 1)
    if orientation == "clock_flip":
        return np.rot90(img, -1)[::-1]
    if orientation == "hflip":
        return img[:, ::-1]
    if orientation == "vflip":
        return img[::-1]
    if orientation == "rotate180":
        return img[::-1, ::-1]
    raise ValueError(f"unknown orientation {orientation!r}; expected one of {ORIENTATIONS}")


def oriented_rgb(native: Any, orientation: str, width: int | None = None, height: int | None = None,
                 **reformat: Any) -> np.ndarray:
    """A PyAV frame as a C-contiguous RGB uint8 (height, width, 3) array *as displayed*.

    ``width``/``height`` are the displayed size wanted (default: the frame's displayed size);
    the scaler works in the stored orientation and numpy turns the (smaller) result."""
    w, h = displayed_size(native.width, native.height, orientation) if width is None or height is None \
        else (width, height)
    sw, sh = displayed_size(w, h, orientation)  # back to the stored orientation
    if (sw, sh) == (native.width, native.height) and not reformat:
        rgb = native.to_ndarray(format="rgb24")
    else:
        rgb = native.reformat(width=sw, height=sh, format="rgb24", **reformat).to_ndarray()
    return np.ascontiguousarray(orient_array(rgb, orientation))


def letterbox_oriented(native: Any, orientation: str, dst_w: int, dst_h: int,
                       out: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
    """:func:`daemon.vision.letterbox.letterbox_av` for a frame shown turned: the letterbox is
    computed on the displayed size, so boxes come back in displayed pixels."""
    from daemon.vision import letterbox as lb

    w, h = displayed_size(native.width, native.height, orientation)
    info = lb.letterbox_params(w, h, dst_w, dst_h)
    sw, sh = displayed_size(info.new_w, info.new_h, orientation)
    rgb = native.reformat(width=sw, height=sh, format="rgb24", interpolation=lb.INTERPOLATION).to_ndarray()
    buf = lb._out(out, dst_w, dst_h)
    lb._fill(buf, info, orient_array(rgb, orientation))
    return buf, info
