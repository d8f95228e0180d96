"""The CUDA side of the GPU backend, on cuda-python's ``cuda.bindings`` (driver API + NVRTC).

- :func:`check` turns cuda-python's ``(err, *values)`` results into values or a raised
  :class:`CudaError`; every driver and NVRTC call goes through it.
- :class:`SlotRing` is the bookkeeping of in-flight slots (which frames are in which slot, in
  which order), pure Python, so that a result can never be attributed to the wrong frame; it is
  tested on the CPU.
- :class:`GpuPipeline` owns N >= 2 slots, each with its own CUDA stream, pinned host staging
  for the raw uint8 frames (the decoder's yuv420p/nv12 planes, 1.5 bytes per pixel, through
  :meth:`GpuPipeline.submit_yuv`; or RGB24), device buffers for the network input and outputs, pinned host output
  buffers and a completion event. A submission copies the raw frames (one byte per channel) to the
  device, letterboxes them there with the NVRTC-compiled kernel of ``daemon.vision.gpu_letterbox``
  straight into the network input, runs the slot's executor (a TensorRT execution context, or a
  named stand-in in the GPU check), copies the outputs back and records the event -- all
  asynchronous on the slot's stream, so while the CPU post-processes slot k, slot k+1 copies and
  computes.

``cuda.bindings`` is imported lazily: importing this module never needs a GPU.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from daemon.errors import DetectdError

__all__ = [
    "CudaError",
    "CudaDevice",
    "GpuPipeline",
    "SlotBusy",
    "SlotRing",
    "StaleTicket",
    "Ticket",
    "check",
    "cuda_unavailable_reason",
]


class CudaError(DetectdError, RuntimeError):
    """A CUDA driver, runtime or NVRTC call failed; the message names the call and the error."""


def _driver() -> Any:
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        from cuda import cuda as driver  # type: ignore[no-redef]  # older cuda-python
    return driver


def _nvrtc() -> Any:
    """NVRTC's bindings. They import without the NVRTC library itself (a separate wheel,
    ``nvidia-cuda-nvrtc``): :func:`nvrtc_unavailable_reason` calls into it to find out."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        from cuda import nvrtc  # type: ignore[no-redef]
    return nvrtc


def _bindings() -> tuple[Any, Any]:
    return _driver(), _nvrtc()


def _error_text(err: Any) -> str:
    name = getattr(err, "name", None) or str(err)
    try:
        if type(err).__name__ == "CUresult":
            _, text = _driver().cuGetErrorString(err)
        elif type(err).__name__ == "nvrtcResult":
            _, text = _nvrtc().nvrtcGetErrorString(err)
        else:
            text = None
        if text:
            return f"{name}: {text.decode() if isinstance(text, bytes) else text}"
    except Exception:
        pass
    return name


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unwrap a cuda-python result ``(err, *values)``: raise :class:`CudaError` unless ``err``
    is success (0), else return nothing, the single value, or the tuple of values."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaError(f"{what} failed: {_error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _handle(obj: Any) -> int:
    """The raw address of a cuda-python handle (CUstream, CUdeviceptr, ...), as TensorRT wants."""
    try:
        return int(obj)
    except TypeError:
        return int(obj.getPtr())


def cuda_unavailable_reason() -> str | None:
    """None when cuda-python imports and a CUDA device answers, else why not (for logs/skips)."""
    try:
        driver = _driver()
    except ImportError as exc:
        return f"cuda-python is not installed ({exc})"
    try:
        check(driver.cuInit(0), "cuInit")
        if check(driver.cuDeviceGetCount(), "cuDeviceGetCount") < 1:
            return "no CUDA device"
    except Exception as exc:  # no driver library, no device node, ...
        return f"no usable CUDA driver/device ({exc})"
    return None


def cuda_major(version: int) -> int:
    """The major of a CUDA version as the driver and NVRTC report it (12080 -> 12)."""
    return int(version) // 1000


def nvrtc_unavailable_reason(nvrtc: Any = None, driver: Any = None) -> str | None:
    """None when NVRTC (the runtime compiler the letterbox kernel needs) loads and matches the
    CUDA major of cuda-python, else why not. ``nvrtcVersion`` is the first call that needs the
    NVRTC library itself: the Python module imports without it (a host with only the driver).
    ``nvrtc``/``driver``: the bindings to probe (default: cuda-python's), injectable for tests."""
    try:
        nvrtc = nvrtc if nvrtc is not None else _nvrtc()
    except ImportError as exc:
        return f"cuda-python's NVRTC bindings do not import ({exc})"
    try:
        major, _minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except Exception as exc:  # RuntimeError "Failed to dlopen libnvrtc", CudaError, OSError
        return (f"NVRTC is not installed or does not load ({type(exc).__name__}: {exc}); "
                "`pip install 'detectd[gpu]'` installs the nvidia-cuda-nvrtc wheel of cuda-python's CUDA major")
    try:
        driver = driver if driver is not None else _driver()
        bindings_major = cuda_major(check(driver.cuDriverGetVersion(), "cuDriverGetVersion"))
    except Exception:
        return None  # no driver answer: cuda_unavailable_reason says so
    if int(major) > bindings_major:
        return (f"NVRTC {major}.x is newer than the driver's CUDA {bindings_major}.x: its kernels would "
                f"not load; install the NVRTC of CUDA {bindings_major} (pin the CUDA major of "
                "cuda-python, NVRTC and TensorRT together)")
    return None


# --------------------------------------------------------------------------------------------
# Slot bookkeeping (pure Python)
# --------------------------------------------------------------------------------------------


class SlotBusy(RuntimeError):
    """Every slot is in flight: collect one first."""


class StaleTicket(RuntimeError):
    """A ticket whose slot was already collected (and maybe reused): its results are gone."""


@dataclass(frozen=True)
class Ticket:
    slot: int
    generation: int  # the slot's use count when submitted: a reused slot never matches
    seq: int  # submission order, for FIFO collection
    tags: tuple[Hashable, ...]  # the frames in this slot, in batch order


class SlotRing:
    """Which frames are in which in-flight slot. ``acquire`` hands out a free slot for a batch of
    frame tags; ``release`` checks that the ticket is the one in flight in its slot and returns
    its tags, so results read from that slot's buffers go to exactly those frames."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("need at least one slot")
        self.n = n
        self._free: deque[int] = deque(range(n))
        self._generation = [0] * n
        self._in_flight: dict[int, Ticket] = {}
        self._seq = 0
        self._cond = threading.Condition()

    def acquire(self, tags: Sequence[Hashable], timeout: float | None = 0.0) -> Ticket:
        """A ticket for a free slot; waits up to ``timeout`` seconds (None: forever) for one."""
        with self._cond:
            if not self._free and timeout != 0.0:
                self._cond.wait_for(lambda: bool(self._free), timeout)
            if not self._free:
                raise SlotBusy(f"all {self.n} slots are in flight")
            slot = self._free.popleft()
            self._generation[slot] += 1
            t = Ticket(slot, self._generation[slot], self._seq, tuple(tags))
            self._seq += 1
            self._in_flight[slot] = t
            return t

    def release(self, ticket: Ticket) -> tuple[Hashable, ...]:
        with self._cond:
            current = self._in_flight.get(ticket.slot)
            if current != ticket:
                raise StaleTicket(f"slot {ticket.slot} no longer holds submission {ticket.seq}")
            del self._in_flight[ticket.slot]
            self._free.append(ticket.slot)
            self._cond.notify()
            return ticket.tags

    def holds(self, ticket: Ticket) -> bool:
        with self._cond:
            return self._in_flight.get(ticket.slot) == ticket

    def oldest(self) -> Ticket | None:
        with self._cond:
            return min(self._in_flight.values(), key=lambda t: t.seq, default=None)

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._in_flight)


# --------------------------------------------------------------------------------------------
# Device, memory, kernels
# --------------------------------------------------------------------------------------------


# FFmpeg's CUDA device context (hwcontext_cuda.c, ``cuda_context_init``) retains the primary
# context only with exactly these scheduling flags, and refuses ("Primary context already active
# with incompatible flags") when it is already active with others. Blocking sync is also what
# detectd wants: a thread waiting for the GPU sleeps instead of spinning a core.
CU_CTX_SCHED_BLOCKING_SYNC = 0x04


class CudaDevice:
    """The device's primary context (the one the CUDA runtime, and so TensorRT, uses, and the
    one PyAV's NVDEC decoder shares: ``primary_ctx=1``), made current on every thread that calls
    in. Before the context is first activated its flags are set to blocking sync
    (``cuDevicePrimaryCtxSetFlags``), which FFmpeg requires of a primary context it shares;
    ``nvdec_compatible`` says whether that held (False when another library activated the
    context first with other flags: then NVDEC cannot share it and decoding stays on the CPU)."""

    def __init__(self, ordinal: int = 0) -> None:
        self.driver = _driver()
        self.nvrtc: Any = None  # loaded on the first compile (NVRTC is a separate library)
        d = self.driver
        check(d.cuInit(0), "cuInit")
        self.device = check(d.cuDeviceGet(ordinal), "cuDeviceGet")
        flags, active = check(d.cuDevicePrimaryCtxGetState(self.device), "cuDevicePrimaryCtxGetState")
        if not active and int(flags) != CU_CTX_SCHED_BLOCKING_SYNC:
            check(d.cuDevicePrimaryCtxSetFlags(self.device, CU_CTX_SCHED_BLOCKING_SYNC),
                  "cuDevicePrimaryCtxSetFlags")
            flags = CU_CTX_SCHED_BLOCKING_SYNC
        self.context_flags = int(flags)
        self.nvdec_compatible = self.context_flags == CU_CTX_SCHED_BLOCKING_SYNC
        self.ordinal = ordinal
        self.context = check(d.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self.make_current()
        raw = check(d.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        self.name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
        attr = d.CUdevice_attribute
        self.cc = (
            check(d.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device)),
            check(d.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device)),
        )
        self._released = False

    @property
    def compute_capability(self) -> str:
        return f"{self.cc[0]}.{self.cc[1]}"

    def close(self) -> None:
        """Release the primary context retained in ``__init__`` (``cuDevicePrimaryCtxRelease``),
        once; call it after everything allocated in the context is freed. The context itself
        lives on while another user (PyAV's NVDEC decoder, another ``CudaDevice``) retains it."""
        if self._released:
            return
        self._released = True
        check(self.driver.cuDevicePrimaryCtxRelease(self.device), "cuDevicePrimaryCtxRelease")

    def make_current(self) -> None:
        check(self.driver.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        return _handle(check(self.driver.cuMemAlloc(max(1, nbytes)), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        check(self.driver.cuMemFree(ptr), "cuMemFree")

    def alloc_pinned(self, nbytes: int) -> int:
        return _handle(check(self.driver.cuMemAllocHost(max(1, nbytes)), "cuMemAllocHost"))

    def free_pinned(self, ptr: int) -> None:
        check(self.driver.cuMemFreeHost(ptr), "cuMemFreeHost")

    def stream(self) -> Any:
        flags = self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        return check(self.driver.cuStreamCreate(flags), "cuStreamCreate")

    def event(self, timing: bool = False, blocking: bool = False) -> Any:
        """A CUDA event. ``blocking``: ``CU_EVENT_BLOCKING_SYNC``, so ``cuEventSynchronize``
        sleeps on an OS primitive until the GPU signals it, whatever the context's flags (a
        default event makes the waiting thread spin a core)."""
        f = self.driver.CUevent_flags
        flags = int(f.CU_EVENT_DEFAULT if timing else f.CU_EVENT_DISABLE_TIMING)
        if blocking:
            flags |= int(f.CU_EVENT_BLOCKING_SYNC)
        return check(self.driver.cuEventCreate(flags), "cuEventCreate")

    def query(self, event: Any) -> bool:
        """Whether everything before ``event`` has completed (``cuEventQuery``; never waits)."""
        err = self.driver.cuEventQuery(event)
        err = err[0] if isinstance(err, tuple) else err
        if int(err) == int(self.driver.CUresult.CUDA_ERROR_NOT_READY):
            return False
        check((err,), "cuEventQuery")
        return True

    def stream_wait(self, stream: Any, event: Any) -> None:
        """Make ``stream`` wait (on the GPU; the CPU does not block) for ``event``."""
        check(self.driver.cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent")

    @property
    def legacy_stream(self) -> Any:
        """The legacy default stream (``CU_STREAM_LEGACY``): where FFmpeg's NVDEC hwaccel copies
        decoded surfaces into its frames, since PyAV leaves ``AVCUDADeviceContext.stream`` NULL."""
        return self.driver.CUstream(_handle(getattr(self.driver, "CU_STREAM_LEGACY", 1)))

    def compile(self, source: str, names: Sequence[str], program: str = "detectd.cu") -> dict[str, Any]:
        """Compile CUDA C++ with NVRTC for this device and return its kernels by name. Raises
        :class:`CudaError` naming NVRTC when it is missing (:func:`nvrtc_unavailable_reason`)."""
        if self.nvrtc is None:
            why = nvrtc_unavailable_reason()
            if why:
                raise CudaError(f"cannot compile {program}: {why}")
            self.nvrtc = _nvrtc()
        nvrtc, d = self.nvrtc, self.driver
        self.make_current()  # the module loads into the context current on this thread
        prog = check(nvrtc.nvrtcCreateProgram(source.encode(), program.encode(), 0, [], []),
                     "nvrtcCreateProgram")
        try:
            opts = [f"--gpu-architecture=sm_{self.cc[0]}{self.cc[1]}".encode(), b"--std=c++17",
                    b"-default-device"]
            err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
            if int(err) != 0:
                size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
                log = b" " * size
                check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
                raise CudaError(f"NVRTC could not compile {program}: {_error_text(err)}\n"
                                f"{log.decode(errors='replace')}")
            size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            cubin = b" " * size
            check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        module = check(d.cuModuleLoadData(cubin), "cuModuleLoadData")
        return {n: check(d.cuModuleGetFunction(module, n.encode()), f"cuModuleGetFunction({n})")
                for n in names}

    def launch(self, kernel: Any, grid: tuple[int, int, int], block: tuple[int, int, int],
               stream: Any, args: Sequence[Any]) -> None:
        """Launch with ctypes-typed arguments (c_void_p for device pointers)."""
        holders = [a if isinstance(a, ctypes._SimpleCData) else ctypes.c_void_p(a) for a in args]
        ptrs = np.array([ctypes.addressof(h) for h in holders], dtype=np.uint64)
        check(self.driver.cuLaunchKernel(kernel, *grid, *block, 0, stream, ptrs.ctypes.data, 0),
              "cuLaunchKernel")

    def h2d(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        check(self.driver.cuMemcpyHtoDAsync(dst, src, nbytes, stream), "cuMemcpyHtoDAsync")

    def d2h(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        check(self.driver.cuMemcpyDtoHAsync(dst, src, nbytes, stream), "cuMemcpyDtoHAsync")

    def record(self, event: Any, stream: Any) -> None:
        check(self.driver.cuEventRecord(event, stream), "cuEventRecord")

    def wait(self, event: Any) -> None:
        check(self.driver.cuEventSynchronize(event), "cuEventSynchronize")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(check(self.driver.cuEventElapsedTime(start, end), "cuEventElapsedTime"))

    def sync_stream(self, stream: Any) -> None:
        check(self.driver.cuStreamSynchronize(stream), "cuStreamSynchronize")


def pinned_array(ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A numpy view of pinned host memory (no copy)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    return np.frombuffer((ctypes.c_uint8 * n).from_address(ptr), dtype=dt).reshape(shape)


# --------------------------------------------------------------------------------------------
# The slot pipeline
# --------------------------------------------------------------------------------------------


class Executor(Protocol):
    """What runs the network on one slot's buffers: a TensorRT execution context bound to them,
    or, in the GPU check, a stand-in kernel."""

    def execute(self, stream: Any, batch: int) -> None: ...


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, ...]  # per image, without the batch dimension
    dtype: Any = np.float32

    @property
    def nbytes(self) -> int:  # per submission: math.prod, not np.prod (microseconds, not tens)
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass
class Slot:
    index: int
    stream: Any
    done: Any  # event recorded after the last copy back
    input_ptr: int  # float32 (max_batch, 3, H, W) on the device: the network input
    output_ptrs: list[int]
    host_outputs: list[np.ndarray]  # pinned, (max_batch, *shape)
    host_input: np.ndarray  # pinned float32, for ``submit_batch``
    staging_ptr: int = 0  # pinned uint8 raw frames
    staging_dev: int = 0
    staging_bytes: int = 0
    executor: Any = None
    batch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # What the slot's queued GPU work reads and must outlive it: DLPack capsules of decoder
    # frames (each holds a reference to its NVDEC surface). Dropped only once the work is done.
    keep: list[Any] = field(default_factory=list)
    decoded: Any = None  # event recorded on the decoder's stream, waited for by this slot


class GpuPipeline:
    """N in-flight slots over one device; see the module docstring."""

    def __init__(
        self,
        device: CudaDevice,
        width: int,
        height: int,
        max_batch: int,
        outputs: Sequence[OutputSpec],
        make_executor: Callable[[Slot], Executor] | None,
        num_slots: int = 2,
        letterbox: Any = None,
    ) -> None:
        from daemon.vision.gpu_letterbox import GpuLetterbox

        if num_slots < 1:
            raise ValueError("num_slots must be >= 1")
        self.device, self.width, self.height, self.max_batch = device, width, height, max_batch
        self.outputs = list(outputs)
        self.ring = SlotRing(num_slots)
        device.make_current()  # this thread may be new to the device
        # ``letterbox``: an already compiled GpuLetterbox (the TensorRT backend compiles it
        # before building the engine, so a missing NVRTC fails in seconds, not after the build).
        self.letterbox = letterbox if letterbox is not None else GpuLetterbox(device)
        self._image_floats = 3 * height * width
        self.slots: list[Slot] = []
        self._closed = False
        self.last_h2d_bytes = 0  # raw bytes the last submit_yuv/submit_frames copied to the device
        self.last_device_frames = 0  # frames of the last submission read from decoder surfaces
        # Completion (the pipelined-engine interface): a thread waits on each submission's
        # blocking-sync event in submission order, marks it ready and calls ``on_complete``.
        self._on_complete: Callable[[], None] | None = None
        self._cv = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._ready: dict[int, BaseException | None] = {}  # ticket seq -> error of its wait
        self._completer: threading.Thread | None = None
        device.make_current()
        try:
            for i in range(num_slots):
                slot = Slot(index=i, stream=device.stream(), done=device.event(blocking=True),
                            input_ptr=0, output_ptrs=[], host_outputs=[],
                            host_input=np.empty(0, np.float32))
                self.slots.append(slot)  # at once: close() frees what was made so far
                slot.decoded = device.event()
                slot.input_ptr = device.alloc(max_batch * self._image_floats * 4)
                for o in self.outputs:
                    slot.output_ptrs.append(device.alloc(max_batch * o.nbytes))
                    host = device.alloc_pinned(max_batch * o.nbytes)
                    slot.extra.setdefault("host_output_ptrs", []).append(host)
                    slot.host_outputs.append(pinned_array(host, (max_batch, *o.shape), o.dtype))
                host_in_ptr = device.alloc_pinned(max_batch * self._image_floats * 4)
                slot.extra["host_input_ptr"] = host_in_ptr
                slot.host_input = pinned_array(host_in_ptr, (max_batch, 3, height, width), np.float32)
                slot.executor = make_executor(slot) if make_executor else None
        except BaseException:
            self.close()
            raise
        self._completer = threading.Thread(target=self._complete_loop, name="gpu-completion", daemon=True)
        self._completer.start()

    # -- submission ---------------------------------------------------------------------------

    def _ensure_staging(self, slot: Slot, nbytes: int) -> None:
        if nbytes <= slot.staging_bytes:
            return
        d = self.device
        if slot.staging_bytes:
            d.free_pinned(slot.staging_ptr)
            d.free(slot.staging_dev)
        cap = max(nbytes, 1 << 20)
        slot.staging_ptr, slot.staging_dev, slot.staging_bytes = d.alloc_pinned(cap), d.alloc(cap), cap

    def _finish(self, slot: Slot, n: int) -> None:
        d = self.device
        if slot.executor is not None:
            slot.executor.execute(slot.stream, n)
        for o, dev, host in zip(self.outputs, slot.output_ptrs, slot.extra.get("host_output_ptrs", [])):
            d.d2h(host, dev, n * o.nbytes, slot.stream)
        d.record(slot.done, slot.stream)

    def submit_frames(self, images: Sequence[np.ndarray], infos: Sequence[Any],
                      tags: Sequence[Hashable] | None = None, timeout: float | None = None) -> Ticket:
        """Raw RGB uint8 (H, W, 3) frames + their ``LetterboxInfo`` -> a ticket. Only the raw
        bytes cross the bus; resize, padding, HWC->CHW and /255 run in the kernel."""
        n = len(images)
        if not 1 <= n <= self.max_batch or len(infos) != n:
            raise ValueError(f"need 1..{self.max_batch} images with one LetterboxInfo each, got {n}/{len(infos)}")
        for img in images:
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected RGB uint8 HxWx3 frames, got {img.dtype} {img.shape}")

        def fill(slot: Slot) -> None:
            sizes = [img.nbytes for img in images]
            self._ensure_staging(slot, sum(sizes))
            staging = pinned_array(slot.staging_ptr, (slot.staging_bytes,), np.uint8)
            offsets, off = [], 0
            for img, size in zip(images, sizes):
                # The one CPU pass over the pixels: into pinned memory, 1 byte per channel.
                np.copyto(staging[off:off + size].reshape(img.shape), img)
                offsets.append(off)
                off += size
            self.device.h2d(slot.staging_dev, slot.staging_ptr, off, slot.stream)
            self.last_h2d_bytes = off
            for b, (img, info, o) in enumerate(zip(images, infos, offsets)):
                self.letterbox.enqueue(
                    slot.staging_dev + o, img.shape[1], img.shape[0], img.shape[1] * 3,
                    slot.input_ptr + b * self._image_floats * 4, self.width, self.height, info,
                    slot.stream)

        return self._submit(n, tags, timeout, fill)

    def submit_yuv(self, frames: Sequence[Any], infos: Sequence[Any] | None = None,
                   tags: Sequence[Hashable] | None = None, timeout: float | None = None) -> Ticket:
        """Decoded frames as they come from the decoder -> a ticket.

        ``frames``: PyAV ``VideoFrame``s, or ``(y, u, v)`` tuples of uint8 planes (yuv420p).

        - An NVDEC frame (``format.name == "cuda"``, ``sw_format`` nv12; ``daemon.sources.nvdec``)
          never leaves the device: the kernel reads its planes where the decoder left them
          (their addresses and pitches from DLPack, :func:`daemon.sources.nvdec.device_planes`),
          after the slot's stream has waited, on the GPU, for the decoder's stream (see
          :meth:`_wait_for_decoder`). The DLPack capsules, each holding a reference to its
          surface, stay with the slot until the results are collected.
        - A yuv420p or nv12 frame in host memory crosses the bus as its planes (1.5 bytes per
          pixel) and the colour conversion runs in the kernel (``daemon.vision.gpu_letterbox``).
        - A frame of any other pixel format is converted to RGB24 on the CPU
          (``to_ndarray(format="rgb24")``) and takes the RGB kernel (3 bytes per pixel).

        The kernel reads the frame's chroma siting, colorspace and range as ``letterbox_av``
        does (``gpu_letterbox.yuv_params``). ``infos``: one ``LetterboxInfo`` per frame, or None
        to compute them. A batch may mix formats, sizes and decoders.
        """
        from daemon.vision.gpu_letterbox import YUV_FORMATS, yuv_params, yuv_planes
        from daemon.vision.letterbox import letterbox_params

        n = len(frames)
        if not 1 <= n <= self.max_batch or (infos is not None and len(infos) != n):
            raise ValueError(f"need 1..{self.max_batch} frames (and one LetterboxInfo each), got {n}")
        planes: list[tuple[str, list[Any], int, int]] = []  # kind, arrays (or device planes), w, h
        siting: list[tuple[int, int, int]] = []  # (chroma location, colorspace, range) per frame, as swscale reads them
        for f in frames:
            fmt = getattr(getattr(f, "format", None), "name", None)
            if fmt == "cuda":
                from daemon.sources.nvdec import device_planes

                dp = device_planes(f, self.device.ordinal)
                planes.append(("cuda", [dp], f.width, f.height))
                siting.append(yuv_params(f))
            elif isinstance(f, tuple) or fmt in YUV_FORMATS:
                kind, y, u, v = yuv_planes(f)
                siting.append(yuv_params(f))
                planes.append((kind, [y, u] + ([v] if v is not None else []), y.shape[1], y.shape[0]))
            elif isinstance(f, np.ndarray):
                if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
                    raise ValueError(f"expected RGB uint8 HxWx3 arrays, got {f.dtype} {f.shape}")
                planes.append(("rgb24", [f], f.shape[1], f.shape[0]))
                siting.append((0, 2, 0))
            else:  # another pixel format: the CPU converts, the GPU still resizes
                rgb = f.to_ndarray(format="rgb24")
                planes.append(("rgb24", [rgb], rgb.shape[1], rgb.shape[0]))
                siting.append((0, 2, 0))
        infos = list(infos) if infos is not None else [
            letterbox_params(w, h, self.width, self.height) for _, _, w, h in planes]
        host_bytes = sum(a.nbytes for kind, arrs, _, _ in planes if kind != "cuda" for a in arrs)
        on_device = [arrs[0] for kind, arrs, _, _ in planes if kind == "cuda"]

        def fill(slot: Slot) -> None:
            self.last_h2d_bytes = host_bytes
            self.last_device_frames = len(on_device)
            offsets: list[list[int]] = []
            if host_bytes:
                self._ensure_staging(slot, host_bytes)
                staging = pinned_array(slot.staging_ptr, (slot.staging_bytes,), np.uint8)
                off = 0
                for kind, arrs, _, _ in planes:
                    offs = []
                    if kind != "cuda":
                        for a in arrs:  # packed, no row padding: the only CPU pass over the pixels
                            np.copyto(staging[off:off + a.nbytes].reshape(a.shape), a)
                            offs.append(off)
                            off += a.nbytes
                    offsets.append(offs)
                self.device.h2d(slot.staging_dev, slot.staging_ptr, off, slot.stream)
            else:
                offsets = [[] for _ in planes]
            if on_device:
                slot.keep.extend(on_device)
                self._wait_for_decoder(slot)
            base = slot.staging_dev
            for b, ((kind, arrs, w, h), info, offs, yuv) in enumerate(
                    zip(planes, infos, offsets, siting)):
                out = slot.input_ptr + b * self._image_floats * 4
                if kind == "cuda":
                    dp = arrs[0]
                    self.letterbox.enqueue_yuv(dp.y_ptr, dp.y_pitch, dp.uv_ptr, dp.uv_ptr + 1, dp.uv_pitch, 2,
                                               w, h, out, self.width, self.height, info, slot.stream, *yuv)
                elif kind == "rgb24":
                    self.letterbox.enqueue(base + offs[0], w, h, w * 3, out, self.width, self.height,
                                           info, slot.stream)
                elif kind == "nv12":
                    self.letterbox.enqueue_yuv(base + offs[0], w, base + offs[1], base + offs[1] + 1,
                                               arrs[1].shape[1], 2, w, h, out, self.width, self.height,
                                               info, slot.stream, *yuv)
                else:
                    self.letterbox.enqueue_yuv(base + offs[0], w, base + offs[1], base + offs[2],
                                               arrs[1].shape[1], 1, w, h, out, self.width, self.height,
                                               info, slot.stream, *yuv)

        return self._submit(n, tags, timeout, fill)

    def _wait_for_decoder(self, slot: Slot) -> None:
        """Order the slot's stream after the decoder's copies of its frames.

        FFmpeg's NVDEC hwaccel (libavcodec/nvdec.c) maps each decoded picture and copies it
        into the output frame with ``cuMemcpy2DAsync`` on ``AVCUDADeviceContext.stream``, which
        PyAV leaves NULL (hwcontext_cuda.c: "Setting stream to NULL will make functions
        automatically use the default CUstream"): the legacy default stream of the shared
        primary context. PyAV's ``__dlpack__`` refuses a ``stream`` argument and leaves this to
        the consumer. The slots' streams are non-blocking, so they do not synchronize with the
        legacy stream implicitly: record an event there (it covers every copy enqueued before
        the frame was handed over) and make the slot's stream wait for it -- on the GPU, the
        CPU never blocks."""
        self.device.record(slot.decoded, self.device.legacy_stream)
        self.device.stream_wait(slot.stream, slot.decoded)

    def _submit(self, n: int, tags: Sequence[Hashable] | None, timeout: float | None,
                fill: Callable[[Slot], None]) -> Ticket:
        """Take a slot, enqueue ``fill`` (the input side), the executor and the copies back.
        On any failure the slot's stream is synchronized before the slot is handed back: a copy
        or kernel already queued must not race the next submission's use of the same buffers."""
        if self._closed:
            raise RuntimeError("the GPU pipeline is closed")
        ticket = self.ring.acquire(tags if tags is not None else range(n), timeout)
        slot = self.slots[ticket.slot]
        try:
            self.device.make_current()
            fill(slot)
            slot.batch = n
            self._finish(slot, n)
        except BaseException:
            try:
                self.device.sync_stream(slot.stream)
            except CudaError:
                pass  # the context is broken: nothing in flight can complete either
            slot.keep.clear()
            self.ring.release(ticket)
            raise
        with self._cv:
            self._waiting.append(ticket)
            self._cv.notify_all()
        return ticket

    def submit_batch(self, batch: np.ndarray, tags: Sequence[Hashable] | None = None,
                     timeout: float | None = None) -> Ticket:
        """An already letterboxed float32 (N, 3, H, W) batch (the ``Backend.infer`` path)."""
        n = batch.shape[0]
        if batch.shape[1:] != (3, self.height, self.width) or not 1 <= n <= self.max_batch:
            raise ValueError(f"expected (1..{self.max_batch}, 3, {self.height}, {self.width}), got {batch.shape}")

        def fill(slot: Slot) -> None:
            np.copyto(slot.host_input[:n], batch, casting="same_kind")
            self.device.h2d(slot.input_ptr, slot.extra["host_input_ptr"], n * self._image_floats * 4,
                            slot.stream)

        return self._submit(n, tags, timeout, fill)

    # -- completion ---------------------------------------------------------------------------

    def set_on_complete(self, callback: Callable[[], None] | None) -> None:
        """``callback()`` is called (from the completion thread) each time a submission's outputs
        become ready; it must only wake the consumer (``scheduler.wake()``), never collect. Called
        once at once if a submission is already ready."""
        with self._cv:
            self._on_complete = callback
            pending = bool(self._ready)
        if callback is not None and pending:
            callback()

    def ready(self, ticket: Ticket) -> bool:
        """Whether ``collect(ticket)`` would return without waiting (never blocks)."""
        with self._cv:
            if ticket.seq in self._ready:
                return True
        if not self.ring.holds(ticket):
            return False
        try:
            return self.device.query(self.slots[ticket.slot].done)
        except CudaError:
            return True  # collect raises the error and frees the slot

    def _complete_loop(self) -> None:
        """Wait for each submission's blocking-sync event, in submission order (each slot's
        stream is FIFO, and a consumer collects in that order anyway). The wait sleeps: the
        event has ``CU_EVENT_BLOCKING_SYNC`` and the context blocking-sync scheduling."""
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if not self._waiting:
                    return
                ticket = self._waiting[0]
            error: BaseException | None = None
            try:
                self.device.make_current()
                self.device.wait(self.slots[ticket.slot].done)
            except BaseException as exc:  # reported by collect()
                error = exc
            with self._cv:
                self._waiting.popleft()
                mark = self.ring.holds(ticket)  # not when collect() got there first
                if mark:
                    self._ready[ticket.seq] = error
                callback = self._on_complete if mark else None
                self._cv.notify_all()
            if callback is not None:
                try:
                    callback()
                except Exception:  # a consumer's bug must not end completion for everyone
                    import logging

                    logging.getLogger(__name__).exception("on_complete callback failed")

    def collect(self, ticket: Ticket) -> list[np.ndarray]:
        """Wait (sleeping, never spinning) for a submission and return its outputs (copies,
        batch first, in output order). The slot is free again afterwards, also when the wait
        fails (the error is raised; a later submit never blocks on a leaked slot)."""
        if not self.ring.holds(ticket):
            raise StaleTicket(f"slot {ticket.slot} no longer holds submission {ticket.seq}")
        slot = self.slots[ticket.slot]
        try:
            with self._cv:
                done = ticket.seq in self._ready
                error = self._ready.get(ticket.seq)
            if error is not None:
                raise error
            if not done:
                self.device.make_current()
                self.device.wait(slot.done)
            n = slot.batch
            return [h[:n].copy() for h in slot.host_outputs]
        except CudaError:
            try:  # nothing of this slot may still be running when it is reused
                self.device.sync_stream(slot.stream)
            except CudaError:
                pass
            raise
        finally:
            with self._cv:
                self._ready.pop(ticket.seq, None)
            slot.keep.clear()  # the decoder's surfaces go back to its pool
            self.ring.release(ticket)  # raises StaleTicket if the slot moved on: results not returned

    def close(self) -> None:
        """Release everything, in dependency order: stop the completion thread; wait for every
        slot's stream; release the executors (TensorRT execution contexts hold the buffers'
        addresses); then the decoder surfaces, buffers, events and streams; the kernel tables
        last. The engine and runtime are released by their owner after this returns."""
        if self._closed:
            return
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        d = self.device
        d.make_current()
        for slot in self.slots:
            try:
                d.sync_stream(slot.stream)
            except CudaError:
                pass
        if self._completer is not None:
            self._completer.join(timeout=5.0)
        for slot in self.slots:
            close = getattr(slot.executor, "close", None)
            if close is not None:
                close()
            slot.executor = None
        for slot in self.slots:
            slot.keep.clear()
            for p in [slot.input_ptr, *slot.output_ptrs] + ([slot.staging_dev] if slot.staging_bytes else []):
                if p:
                    d.free(p)
            for p in [slot.extra.get("host_input_ptr", 0), *slot.extra.get("host_output_ptrs", [])] + (
                    [slot.staging_ptr] if slot.staging_bytes else []):
                if p:
                    d.free_pinned(p)
            for ev in (slot.done, slot.decoded):
                if ev is not None:
                    d.driver.cuEventDestroy(ev)
            d.driver.cuStreamDestroy(slot.stream)
        self.slots = []
        self.letterbox.close()
