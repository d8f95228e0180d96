"""NVDEC decoding through PyAV's hardware acceleration, frames kept on the GPU (``decode: cuda``).

``streams[].decode`` (docs/gpu.md):

- ``cpu``: libavcodec on the CPU.
- ``cuda``: NVDEC, through ``av.open(url, hwaccel=HWAccel("cuda", allow_software_fallback=False,
  is_hw_owned=True, options={"primary_ctx": "1"}))``. With the GPU backend (TensorRT) the frames
  stay in device memory (``format.name == "cuda"``, ``sw_format`` nv12) and the letterbox kernel
  reads their planes where the decoder left them (:func:`device_planes`, DLPack); no pixel
  crosses PCIe unless someone asks for one (the preview page while a viewer watches,
  ``annotate``: PyAV downloads the surface then). With a CPU backend the decoder downloads each
  frame (``is_hw_owned=False``), which is slower than decoding on the CPU for H.264 (measured on
  an H200, docs/gpu.md): asked for explicitly, it is done, with a warning.
- ``auto`` (the default): ``cuda`` while the GPU backend is in use (:func:`set_gpu_backend`, set
  by the daemon once the backend is chosen), else ``cpu``.

A stream asked to decode on NVDEC decodes on the CPU instead, with the reason logged once (WARNING
when ``cuda`` was asked for, INFO under ``auto``) and exported as
``detectd_stream_decoder_info{stream, decoder, reason}`` (:data:`REASONS`), when: there is no
usable GPU or cuda-python (``no_gpu``); PyAV's FFmpeg has no CUDA device type (``pyav_no_cuda``);
the CUDA primary context was made active by someone else with flags FFmpeg cannot share
(``context``); the codec has no NVDEC decoder (``codec``) or the size is outside NVDEC's limits
(``size``, :data:`NVDEC_LIMITS`); the decoder's surfaces are not nv12 (``pixel_format``: 10-bit
HEVC gives p010); or opening or decoding on NVDEC failed while the CPU decoder works
(``nvdec_error``).

Synchronization: FFmpeg's NVDEC hwaccel copies each decoded picture into its output frame on the
legacy default stream of the shared primary context (``AVCUDADeviceContext.stream`` is NULL);
:meth:`daemon.backends.cuda.GpuPipeline._wait_for_decoder` orders a slot's stream after it.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["DecodeChoice", "DevicePlanes", "NVDEC_LIMITS", "NvdecFallback", "REASONS", "StreamDecoder",
           "device_planes", "frame_problem", "gpu_backend_active", "hwaccel", "plan", "pyav_cuda_reason",
           "set_gpu_backend", "stream_problem"]

# Values of the ``reason`` label of detectd_stream_decoder_info: a fixed set.
REASONS = ("nvdec", "cpu_requested", "not_gpu_backend", "no_gpu", "pyav_no_cuda", "context", "codec",
           "size", "pixel_format", "nvdec_error")

# NVDEC's limits per codec (FFmpeg codec name -> min width, min height, max width, max height),
# from NVIDIA's Video Codec SDK "NVDEC Video Decoder API Programming Guide", decoder
# capabilities table, for Hopper/Ada/Ampere. FFmpeg's nvdec hwaccel asks the driver
# (cuvidGetDecoderCaps) and fails the decoder outside them; checking first gives a clear reason.
NVDEC_LIMITS: dict[str, tuple[int, int, int, int]] = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "av1": (128, 128, 8192, 8192),
    "vp9": (128, 128, 8192, 8192),
    "vp8": (48, 16, 4096, 4096),
    "mpeg2video": (48, 16, 4080, 4080),
    "mpeg4": (48, 16, 2032, 2032),
    "vc1": (48, 16, 2032, 2032),
    "mjpeg": (64, 64, 32768, 16384),
}

# Decoder packets that may fail before the first NVDEC frame before we call NVDEC the culprit.
MAX_ERRORS_BEFORE_FIRST_FRAME = 3

_KDLCUDA = 2  # DLPack device type of CUDA memory
_KDLUINT = 1  # DLPack dtype code of unsigned integers

_state = threading.Lock()
_gpu_backend = False


def set_gpu_backend(active: bool) -> None:
    """Tell ``decode: auto`` whether the GPU backend is in use (the daemon calls it once the
    backend is created, before streams start)."""
    global _gpu_backend
    with _state:
        _gpu_backend = bool(active)


def gpu_backend_active() -> bool:
    with _state:
        return _gpu_backend


@dataclass(frozen=True)
class DecodeChoice:
    decoder: str  # "nvdec" | "cpu"
    reason: str  # one of REASONS
    detail: str  # for the log line

    @property
    def nvdec(self) -> bool:
        return self.decoder == "nvdec"


class NvdecFallback(Exception):
    """NVDEC cannot decode this stream: decode it on the CPU (``reason`` is one of REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def pyav_cuda_reason() -> str | None:
    """None when PyAV can decode on NVDEC and hand the surfaces over (its FFmpeg has the CUDA
    device type, PyAV has ``HWAccel`` and ``VideoPlane.__dlpack__``), else why not."""
    try:
        import av
        from av.codec.hwaccel import HWAccel, hwdevices_available  # noqa: F401  (PyAV >= 14)
    except ImportError as exc:
        return f"this PyAV has no hardware acceleration (PyAV >= 14 needed: {exc})"
    if "cuda" not in hwdevices_available():
        return f"PyAV {av.__version__}'s FFmpeg was built without the CUDA device type"
    from av.video.plane import VideoPlane

    if not hasattr(VideoPlane, "__dlpack__"):
        return f"PyAV {av.__version__} cannot export frame planes through DLPack (PyAV 18 or newer can)"
    return None


def _gpu_reason() -> tuple[str, str] | None:
    """(reason, detail) when the GPU cannot host NVDEC frames shared with the kernels."""
    from daemon.backends.cuda import cuda_unavailable_reason

    why = cuda_unavailable_reason()
    if why:
        return "no_gpu", why
    try:
        dev = shared_device()
    except Exception as exc:  # noqa: BLE001 - any driver failure: no NVDEC
        return "no_gpu", f"the CUDA device does not open ({exc})"
    if not dev.nvdec_compatible:
        return "context", (f"the CUDA primary context was activated by another library with scheduling "
                           f"flags {dev.context_flags:#x}; FFmpeg shares it only with blocking sync (0x4)")
    return None


_device: Any = None


def shared_device(ordinal: int = 0) -> Any:
    """The process's :class:`~daemon.backends.cuda.CudaDevice` (the primary context NVDEC and
    the kernels share), created on first use -- which sets the context's flags before anyone
    else activates it."""
    global _device
    with _state:
        if _device is None:
            from daemon.backends.cuda import CudaDevice

            _device = CudaDevice(ordinal)
        return _device


def plan(requested: str, gpu_backend: bool | None = None, *,
         gpu_probe: Callable[[], tuple[str, str] | None] = _gpu_reason,
         pyav_probe: Callable[[], str | None] = pyav_cuda_reason) -> DecodeChoice:
    """Where a stream with ``decode: requested`` decodes, before it is opened (see the module
    docstring). Probes are injectable so every branch is tested without a GPU."""
    if requested == "cpu":
        return DecodeChoice("cpu", "cpu_requested", "decode: cpu")
    gpu_backend = gpu_backend_active() if gpu_backend is None else gpu_backend
    if requested == "auto" and not gpu_backend:
        return DecodeChoice("cpu", "not_gpu_backend", "decode: auto and the inference backend runs on the CPU")
    if requested not in ("auto", "cuda"):
        raise ValueError(f"decode must be auto, cpu or cuda, got {requested!r}")
    no_pyav = pyav_probe()
    if no_pyav:
        return DecodeChoice("cpu", "pyav_no_cuda", no_pyav)
    no_gpu = gpu_probe()
    if no_gpu:
        return DecodeChoice("cpu", no_gpu[0], no_gpu[1])
    return DecodeChoice("nvdec", "nvdec", "NVDEC" + ("" if gpu_backend else
                                                       ", frames downloaded for the CPU backend"))


def hwaccel(device: int = 0, hw_owned: bool = True) -> Any:
    """PyAV's ``HWAccel`` for NVDEC: no silent software fallback (a fallback is detectd's,
    logged and exported), frames left on the device when ``hw_owned``, and FFmpeg's CUDA device
    on the primary context (``primary_ctx``), the one detectd's kernels and TensorRT use: a
    device pointer is only valid in the context that allocated it."""
    from av.codec.hwaccel import HWAccel

    return HWAccel(device_type="cuda", device=str(device), allow_software_fallback=False,
                   options={"primary_ctx": "1"}, is_hw_owned=hw_owned)


def stream_problem(codec_name: str, width: int, height: int, has_nvdec: bool) -> NvdecFallback | None:
    """Why NVDEC cannot decode a stream of this codec and coded size, or None."""
    if not has_nvdec or codec_name not in NVDEC_LIMITS:
        return NvdecFallback("codec", f"NVDEC does not decode {codec_name}")
    min_w, min_h, max_w, max_h = NVDEC_LIMITS[codec_name]
    if width and height and not (min_w <= width <= max_w and min_h <= height <= max_h):
        return NvdecFallback("size", f"NVDEC decodes {codec_name} from {min_w}x{min_h} to {max_w}x{max_h}, "
                                     f"the stream is {width}x{height}")
    return None


def codec_has_nvdec(codec: Any) -> bool:
    """Whether FFmpeg's decoder ``codec`` (a PyAV ``Codec``) has a CUDA hardware config."""
    try:
        return any(getattr(c.device_type, "name", str(c.device_type)) == "cuda" for c in codec.hardware_configs)
    except Exception:  # noqa: BLE001 - an old PyAV: let the open decide
        return True


def frame_problem(frame: Any, hw_owned: bool) -> NvdecFallback | None:
    """Why a frame from the NVDEC decoder cannot go on (None: it can)."""
    fmt = frame.format.name
    if hw_owned:
        if fmt != "cuda":
            return NvdecFallback("nvdec_error", f"the decoder returned {fmt} frames, not NVDEC surfaces")
        sw = getattr(frame, "sw_format", None)
        if sw is None or sw.name != "nv12":
            return NvdecFallback("pixel_format", f"NVDEC surfaces are {getattr(sw, 'name', '?')}; the "
                                                 "letterbox kernel reads 8-bit 4:2:0 (nv12)")
    return None


# --- DLPack ------------------------------------------------------------------------------------


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    # dlpack.h, DLTensor: the first member of DLManagedTensor, so a pointer to one is a pointer to both.
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass
class DevicePlanes:
    """One nv12 surface on the device: luma and interleaved chroma (device addresses, row pitches
    in bytes). ``capsules`` own a reference to the surface (``av_frame_ref``); keep them until
    the GPU work that reads the planes has completed."""

    y_ptr: int
    y_pitch: int
    uv_ptr: int
    uv_pitch: int
    width: int
    height: int
    capsules: list[Any] = field(default_factory=list)

    @property
    def nbytes(self) -> int:  # what a copy of the pixels would move; none is made
        return 0


def _plane(capsule: Any, ndim: int, device: int) -> tuple[int, int, tuple[int, ...]]:
    t = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    if t.device.device_type != _KDLCUDA or t.device.device_id != device:
        raise ValueError(f"DLPack plane is on device ({t.device.device_type}, {t.device.device_id}), "
                         f"not CUDA device {device}")
    if (t.dtype.code, t.dtype.bits, t.dtype.lanes) != (_KDLUINT, 8, 1) or t.ndim != ndim:
        raise ValueError(f"DLPack plane is not a {ndim}-D uint8 array")
    shape = tuple(t.shape[i] for i in range(ndim))
    strides = tuple(t.strides[i] for i in range(ndim)) if t.strides else None
    pitch = int(strides[0]) if strides else int(shape[1] * (shape[2] if ndim == 3 else 1))
    if strides and int(strides[-1]) != 1:
        raise ValueError(f"DLPack plane strides {strides} are not row-major")
    return int(t.data) + int(t.byte_offset), pitch, shape


def device_planes(frame: Any, device: int = 0) -> DevicePlanes:
    """The device planes of an NVDEC frame (``format.name == "cuda"``, ``sw_format`` nv12)
    through PyAV's DLPack export (``VideoPlane.__dlpack__``, PyAV 18 and 19): the Y plane is a 2-D
    (h, w) uint8 tensor, the UV plane (h/2, w/2, 2), both with the surface's pitch. No pixel is
    copied. Raises ValueError for anything else (the caller falls back to the CPU)."""
    planes = frame.planes
    caps = [planes[0].__dlpack__(), planes[1].__dlpack__()]
    y_ptr, y_pitch, y_shape = _plane(caps[0], 2, device)
    uv_ptr, uv_pitch, uv_shape = _plane(caps[1], 3, device)
    if (y_shape[0], y_shape[1]) != (frame.height, frame.width) or uv_shape[2] != 2:
        raise ValueError(f"unexpected nv12 plane shapes {y_shape} / {uv_shape} for {frame.width}x{frame.height}")
    return DevicePlanes(y_ptr, y_pitch, uv_ptr, uv_pitch, frame.width, frame.height, caps)


# --- the per-stream hook ---------------------------------------------------------------------


class StreamDecoder:
    """Where one stream decodes, and the fallback to the CPU. Used by
    :class:`daemon.sources.pyav.StreamSource`: ``open_kwargs()`` for ``av.open``,
    ``check_stream``/``check_frame``/``packet_failed`` raise :class:`NvdecFallback`, the source
    then calls :meth:`fall_back` and reopens on the CPU. The choice is exported through
    ``export(decoder, reason)`` (the metrics' ``set_decoder``)."""

    def __init__(self, stream: str, requested: str, export: Callable[[str, str], None] | None = None,
                 choose: Callable[[str], DecodeChoice] = plan) -> None:
        self.stream, self.requested, self._export = stream, requested, export
        self.choice = choose(requested)
        self.hw_owned = gpu_backend_active()
        self.frames = 0  # NVDEC frames decoded in this session
        self._errors = 0
        self._said = False
        if not self.choice.nvdec and requested == "cuda":
            self._say(self.choice)
        elif self.choice.nvdec:
            log.info("stream %s: decoding on NVDEC%s", stream,
                     "" if self.hw_owned else " (frames downloaded: the inference backend runs on the CPU)")
        self.export()

    @property
    def active(self) -> bool:
        return self.choice.nvdec

    def export(self) -> None:
        if self._export is not None:
            self._export(self.choice.decoder, self.choice.reason)

    def open_kwargs(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {"hwaccel": hwaccel(0, self.hw_owned)}

    def new_session(self) -> None:
        self.frames = 0
        self._errors = 0

    def check_stream(self, vstream: Any) -> None:
        if not self.active:
            return
        cc = vstream.codec_context
        problem = stream_problem(cc.name, cc.width, cc.height, codec_has_nvdec(cc.codec))
        if problem is None and not getattr(cc, "is_hwaccel", True):
            problem = NvdecFallback("nvdec_error", "PyAV did not attach the NVDEC decoder to the stream")
        if problem is not None:
            raise problem

    def check_frame(self, vf: Any) -> None:
        if not self.active or self.frames:
            self.frames += self.active
            return
        problem = frame_problem(vf, self.hw_owned)
        if problem is not None:
            raise problem
        self.frames = 1

    def packet_failed(self, exc: BaseException) -> None:
        """A packet the decoder rejected: before NVDEC's first frame, a few in a row mean NVDEC
        (not the stream) is the problem -- the CPU decoder gets the stream."""
        if self.active and not self.frames:
            self._errors += 1
            if self._errors >= MAX_ERRORS_BEFORE_FIRST_FRAME:
                raise NvdecFallback("nvdec_error", f"NVDEC rejected the first {self._errors} packets ({exc})")

    def fall_back(self, problem: NvdecFallback) -> None:
        self.choice = DecodeChoice("cpu", problem.reason, problem.detail)
        self._say(self.choice)
        self.export()

    def _say(self, choice: DecodeChoice) -> None:
        if self._said:
            return
        self._said = True
        level = logging.WARNING if self.requested == "cuda" else logging.INFO
        log.log(level, "stream %s: decoding on the CPU, not NVDEC (%s): %s", self.stream, choice.reason,
                choice.detail)
