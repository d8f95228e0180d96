"""OpenVINO on the CPU: the CPU backend ``auto`` prefers where the ``openvino`` package imports.

OpenVINO (Intel's inference engine for CPUs; it also runs on AMD x86 and ARM) reads detectd's
ONNX models as they are, Q/DQ included: its low-precision transformations turn each
QuantizeLinear/DequantizeLinear pair into a FakeQuantize and run the convolutions with int8
kernels (VNNI / AVX-512 / AVX2 / ARM dot-product). On the INT8 ``cpu`` variant it computes what
ONNX Runtime computes (tests/test_openvino.py checks the boxes) at about 3x ONNX Runtime's FP32
speed (bench/bench_openvino.py, docs/openvino.md).

Shapes: input (N, 3, H, W), N <= ``max_batch``, RGB letterboxed: float32 0..1, or for an INT8
model uint8 0..255 (``input_dtype``; see below); outputs the raw YOLO heads, float32
(N, A*(5+C), h, w) in head order, exactly as the ONNX Runtime backend.

INT8: the ``cpu`` Q/DQ model is handed to OpenVINO in the form it runs fastest,
``daemon/backends/ov_graph.py`` (the requantization between each convolution and its activation
and the no-op pairs after pools left out, the image's own quantization replaced by uint8 input):
about a tenth less CPU per inference, and the letterbox writes 8-bit pixels.

Completion (the pipeline's interface for engines with work in flight): ``set_on_complete(cb)``
has every infer request call ``cb()`` from OpenVINO's thread when its job finishes, and
``ready(ticket)`` says, without blocking, whether a ticket's outputs can be collected.

Two ways to run it, one shape as the GPU path (``daemon/backends/cuda.py``):

- ``infer(batch)``: synchronous, returns copies (warm-up, tools, benchmarks);
- ``input_slot(n)`` -> write the letterboxed frames into the returned array -> ``submit(n)``
  -> ticket -> ``collect(ticket)``: up to ``in_flight`` infer requests run at once, each with its
  own input buffer, so the per-frame loop letterboxes, decodes and publishes while OpenVINO
  computes (its requests release the GIL). Tickets are collected oldest first; the arrays
  ``collect`` returns stay valid until that request is submitted again.

The compiled model is cached in ``<detectd cache>/openvino`` (OpenVINO's ``CACHE_DIR``; under
systemd that is the unit's ``CacheDirectory``), so a restart imports it instead of compiling.
OpenVINO keys each blob on a hash of the model graph and weights, the compile options and its own
version, so a changed model or an upgraded OpenVINO compiles afresh and never reuses a stale blob.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.backends.base import BackendError

log = logging.getLogger(__name__)

# model.performance_hint -> OpenVINO's PERFORMANCE_HINT.
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def openvino_unavailable_reason() -> str | None:
    """None when ``openvino`` imports and offers a CPU device, else a one-line reason."""
    try:
        import openvino as ov
    except Exception as exc:  # ImportError, or a broken install raising at load
        return f"the openvino package does not import ({type(exc).__name__}: {exc})"
    try:
        devices = ov.Core().available_devices
    except Exception as exc:
        return f"OpenVINO cannot list its devices ({type(exc).__name__}: {exc})"
    if "CPU" not in devices:
        return f"OpenVINO offers no CPU device here (devices: {devices})"
    return None


def _ignore(_: Any) -> None:
    """The callback a closed backend's requests keep."""


def _finished(ref: "weakref.ref[OpenVinoBackend]", slot: int) -> None:
    """OpenVINO's callback, on its own thread, when request `slot`'s job is done: mark the
    ticket ready, then wake the pipeline."""
    backend = ref()
    if backend is None:
        return
    seq = backend._busy.get(slot)
    if seq is not None:
        backend._done[slot] = seq
    cb = backend._on_complete
    if cb is not None:
        cb()


@dataclass(frozen=True)
class OvTicket:
    """One submitted batch: which infer request runs it and how many images it holds."""

    slot: int
    n: int
    seq: int


class OpenVinoBackend:
    """``threads``: INFERENCE_NUM_THREADS (0 = OpenVINO's choice, one per physical core).
    ``hint``: ``latency`` or ``throughput`` (PERFORMANCE_HINT). ``in_flight``: infer requests
    that may run at once (0 = twice OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS for the hint, at
    least 2, so the Python side of the loop overlaps inference). ``cache_dir``: CACHE_DIR, or None for
    no compiled-model cache. Raises BackendError naming the model file when OpenVINO cannot
    read or compile it."""

    name = "openvino"

    def __init__(self, path: str | Path, input_name: str, output_names: list[str], *,
                 precision: str = "fp32", threads: int = 0, max_batch: int = 1,
                 hint: str = "throughput", in_flight: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        import openvino as ov

        self.path = Path(path)
        self.precision = precision
        self.max_batch = max(1, int(max_batch))
        self.threads = int(threads)
        self.hint = hint
        core = ov.Core()
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self.input_dtype: type[np.generic] = np.float32
        self.derived = ""
        try:
            if precision == "int8":
                import onnx

                from daemon.backends.ov_graph import derive

                d = derive(onnx.load(str(path)), uint8_input=True)
                model = core.read_model(d.model.SerializeToString(), b"")
                if d.uint8_input:
                    self.input_dtype = np.uint8
                self.derived = (f"{d.conv_act_pairs} conv->activation and {d.preserving_pairs} "
                                f"pool/resize Q/DQ pairs folded, {'uint8' if d.uint8_input else 'float32'} input")
            else:
                model = core.read_model(str(path))
        except Exception as exc:
            raise BackendError(f"{path}: OpenVINO cannot read the model: {exc}") from exc
        inputs = [i.get_any_name() for i in model.inputs]
        if input_name not in inputs:
            raise BackendError(f"{path}: model has no input {input_name!r} (inputs: {inputs})")
        outputs = [o.get_any_name() for o in model.outputs]
        missing = [n for n in output_names if n not in outputs]
        if missing:
            raise BackendError(f"{path}: model lacks outputs {missing} (outputs: {outputs})")
        shape = model.input(input_name).get_partial_shape()
        c, h, w = (shape[i].get_length() for i in (1, 2, 3))
        # A static batch of 1 compiles the fastest kernels; larger batches get a bounded
        # dynamic dimension so a partial batch computes only its own images.
        batch = ov.Dimension(1) if self.max_batch == 1 else ov.Dimension(1, self.max_batch)
        model.reshape({input_name: ov.PartialShape([batch, c, h, w])})
        config: dict[str, Any] = {"PERFORMANCE_HINT": HINTS.get(hint, hint.upper()),
                                  "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        t0 = time.perf_counter()
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise BackendError(f"{path}: OpenVINO cannot compile the model: {exc}") from exc
        self.compile_seconds = time.perf_counter() - t0
        try:
            self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        except Exception:  # older OpenVINO without the property
            self.loaded_from_cache = False
        optimal = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        # Twice OpenVINO's optimum: with 8 streams on 2 cores, 4 requests (throughput hint) gave
        # 2.36x ONNX Runtime INT8 against 1.50x with 2 (bench/bench_openvino.py, streams).
        self.in_flight = int(in_flight) if in_flight else max(2, 2 * optimal)
        self.output_ports = [self.compiled.output(n) for n in output_names]
        self.input_name = input_name
        self.output_names = list(output_names)
        self.requests = [self.compiled.create_infer_request() for _ in range(self.in_flight)]
        # One input buffer per request: a frame letterboxed for request k+1 never touches the
        # memory request k is still reading (OpenVINO shares it, no copy).
        self.buffers = [np.empty((self.max_batch, c, h, w), self.input_dtype) for _ in self.requests]
        # One shared-memory Tensor per (request, batch size), made once: no per-frame wrapper.
        self._tensors: dict[tuple[int, int], Any] = {}
        self._sync = self.compiled.create_infer_request()
        self._next = 0
        self._seq = 0
        self._busy: dict[int, int] = {}  # slot -> seq of the ticket it runs
        self._done: dict[int, int] = {}  # slot -> seq of the last ticket whose job finished
        self._on_complete: Callable[[], None] | None = None
        # The callback holds the backend weakly: no request -> callback -> backend -> request
        # cycle for the garbage collector to tear down in an arbitrary order at exit.
        ref = weakref.ref(self)
        for slot, req in enumerate(self.requests):
            req.set_callback(lambda slot, ref=ref: _finished(ref, slot), slot)
        log.info("OpenVINO %s: %s (%s%s) compiled in %.2fs%s; hint %s, %d infer requests, "
                 "%s threads, max batch %d", ov.get_version(), self.path.name, precision,
                 f"; {self.derived}" if self.derived else "",
                 self.compile_seconds, " (from the compiled-model cache)" if self.loaded_from_cache
                 else "", config["PERFORMANCE_HINT"], self.in_flight,
                 self.compiled.get_property("INFERENCE_NUM_THREADS") or "auto", self.max_batch)

    # -- synchronous -----------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """(N, 3, H, W) float32 0..1 (or uint8 0..255 when ``input_dtype`` is uint8) -> raw
        head outputs (copies), each (N, A*(5+C), h, w). Float input to a uint8-input model is
        quantized as the model's own first QuantizeLinear would (``ov_graph.quantize_pixels``)."""
        import openvino as ov

        if batch.shape[0] > self.max_batch:
            raise BackendError(f"{self.path}: batch of {batch.shape[0]} exceeds model.max_batch "
                               f"{self.max_batch}")
        if self.input_dtype == np.uint8 and batch.dtype != np.uint8:
            from daemon.backends.ov_graph import quantize_pixels

            x = quantize_pixels(batch)
        else:
            x = np.ascontiguousarray(batch, self.input_dtype)
        self._sync.set_input_tensor(ov.Tensor(x, shared_memory=True))
        self._sync.infer()
        return [self._sync.get_tensor(p).data.copy() for p in self.output_ports]

    # -- pipelined (submit / collect) ------------------------------------------------------
    def input_slot(self, n: int) -> np.ndarray:
        """The (n, 3, H, W) buffer (``input_dtype``: float32 0..1, or uint8 pixels, which
        ``vision.letterbox`` writes when given such a buffer) the next ``submit(n)`` sends; fill
        it first.
        Raises BackendError when that request still runs an uncollected ticket."""
        if not 1 <= n <= self.max_batch:
            raise BackendError(f"batch of {n} outside 1..model.max_batch {self.max_batch}")
        if self._next in self._busy:
            raise BackendError("every OpenVINO infer request is in flight: collect one first")
        return self.buffers[self._next][:n]

    def submit(self, n: int) -> OvTicket:
        """Start inference on the first ``n`` images of the buffer ``input_slot(n)`` returned."""
        import openvino as ov

        slot = self._next
        if slot in self._busy:
            raise BackendError("every OpenVINO infer request is in flight: collect one first")
        req = self.requests[slot]
        tensor = self._tensors.get((slot, n))
        if tensor is None:
            tensor = self._tensors[(slot, n)] = ov.Tensor(self.buffers[slot][:n], shared_memory=True)
        req.set_input_tensor(tensor)
        # Book the ticket before starting: the completion callback may run at once.
        self._seq += 1
        self._done.pop(slot, None)
        self._busy[slot] = self._seq
        req.start_async()
        self._next = (slot + 1) % len(self.requests)
        return OvTicket(slot, n, self._seq)

    def collect(self, ticket: OvTicket) -> list[np.ndarray]:
        """Wait for ``ticket`` and return its head outputs (views valid until its request is
        submitted again). Raises BackendError for a ticket already collected."""
        if self._busy.get(ticket.slot) != ticket.seq:
            raise BackendError(f"OpenVINO ticket {ticket.seq} was already collected")
        req = self.requests[ticket.slot]
        req.wait()
        del self._busy[ticket.slot]
        return [req.get_tensor(p).data for p in self.output_ports]

    # -- completion ------------------------------------------------------------------------
    def set_on_complete(self, callback: Callable[[], None] | None) -> None:
        """Call `callback()` (from OpenVINO's thread; it must only wake the pipeline, e.g.
        ``scheduler.wake()``) whenever a submitted job's outputs are ready. None removes it."""
        self._on_complete = callback

    def ready(self, ticket: OvTicket) -> bool:
        """True when ``collect(ticket)`` will not wait (its job finished); never blocks.
        Raises BackendError for a ticket already collected."""
        if self._busy.get(ticket.slot) != ticket.seq:
            raise BackendError(f"OpenVINO ticket {ticket.seq} was already collected")
        return self._done.get(ticket.slot) == ticket.seq

    @property
    def pending(self) -> int:
        return len(self._busy)

    def close(self) -> None:
        for slot in list(self._busy):
            self.requests[slot].wait()
        for req in self.requests:
            req.set_callback(_ignore, None)
        self._busy.clear()
        self._on_complete = None
        self._tensors.clear()
        self.requests = []
        self._sync = None
        self.compiled = None
