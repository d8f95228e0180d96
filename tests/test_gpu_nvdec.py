"""NVDEC decode (``decode: cuda``), the completion interface and the GPU pipeline's error paths,
on a real GPU (marker ``gpu``; skipped elsewhere with the reason). Media: ``--media DIR`` or the
cache (``$DETECTD_CACHE_DIR/media``).

    pytest -rs -m gpu tests/test_gpu_nvdec.py --media DIR
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.backends.cuda import cuda_unavailable_reason

_NO_GPU = cuda_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_NO_GPU is not None, reason=f"no GPU: {_NO_GPU}")]

W = H = 416


@pytest.fixture(scope="module")
def device() -> Any:
    from daemon.sources.nvdec import shared_device

    return shared_device()


@pytest.fixture(scope="module")
def bikes(gpu_media: Path) -> Path:
    p = gpu_media / "bikes.mp4"
    if not p.is_file():
        pytest.skip(f"bikes.mp4 not in {gpu_media} (pass --media DIR or run `detectd fetch-model`)")
    return p


class CopyInput:
    """Stand-in executor (not an engine): copies the network input out, to read the letterbox."""

    def __init__(self, dev: Any, slot: Any) -> None:
        self.dev, self.slot = dev, slot

    def execute(self, stream: Any, batch: int) -> None:
        from daemon.backends.cuda import check

        check(self.dev.driver.cuMemcpyDtoDAsync(self.slot.output_ptrs[0], self.slot.input_ptr,
                                                batch * 3 * H * W * 4, stream))


def _pipe(device: Any, make: Any = None, slots: int = 2, batch: int = 2) -> Any:
    from daemon.backends.cuda import GpuPipeline, OutputSpec

    return GpuPipeline(device, W, H, batch, [OutputSpec("input", (3, H, W))],
                       make or (lambda slot: CopyInput(device, slot)), num_slots=slots)


def test_nvdec_surfaces_are_letterboxed_on_the_device(device: Any, bikes: Path) -> None:
    """NVDEC frames stay on the GPU (no byte copied to it) and their letterbox equals the CPU
    letterbox of the same frames decoded on the CPU within 1/255."""
    import av

    from daemon.sources.nvdec import hwaccel
    from daemon.vision.letterbox import letterbox_av

    pipe = _pipe(device)
    try:
        with av.open(str(bikes), hwaccel=hwaccel(0, True)) as hc, av.open(str(bikes)) as cc:
            for i, (hf, cf) in enumerate(zip(hc.decode(video=0), cc.decode(video=0))):
                if i >= 6:
                    break
                assert hf.format.name == "cuda" and hf.sw_format.name == "nv12"
                got = pipe.collect(pipe.submit_yuv([hf, cf]))[0]
                assert pipe.last_device_frames == 1
                assert pipe.last_h2d_bytes == cf.width * cf.height * 3 // 2  # only the CPU frame's planes
                cpu = letterbox_av(cf, W, H)[0]
                assert np.abs(got[0] - cpu).max() <= 1.0 / 255 + 1e-6
                assert np.abs(got[1] - cpu).max() <= 1.0 / 255 + 1e-6
    finally:
        pipe.close()


class _Sink:
    def __init__(self, want: int) -> None:
        self.frames: list[Any] = []
        self.want = want
        self.full = threading.Event()

    def put(self, frame: Any, stop: threading.Event | None = None) -> bool:
        if len(self.frames) < self.want:
            self.frames.append(frame)
        else:
            self.full.set()
        return True

    def is_full(self, stream: str) -> bool:
        return False


def _source(url: Path, decode: str, want: int = 5) -> tuple[Any, _Sink, Any]:
    from prometheus_client import CollectorRegistry

    from daemon.config import StreamConfig
    from daemon.metrics import Metrics
    from daemon.sources.pyav import StreamSource

    metrics = Metrics(CollectorRegistry())
    sink = _Sink(want)
    src = StreamSource(StreamConfig(id="cam", url=str(url), decode=decode), sink, metrics,
                       lambda *a, **k: None)
    src.start()
    assert sink.full.wait(30) or src.finished.wait(30)
    src.stop()
    src.join(10)
    return src, sink, metrics


def test_stream_source_decodes_on_nvdec_under_auto_with_the_gpu_backend(device: Any, bikes: Path) -> None:
    from daemon.sources import nvdec

    nvdec.set_gpu_backend(True)
    try:
        _, sink, metrics = _source(bikes, "auto")
    finally:
        nvdec.set_gpu_backend(False)
    assert len(sink.frames) == 5
    assert all(f.native.format.name == "cuda" for f in sink.frames)
    assert metrics.registry.get_sample_value(
        "detectd_stream_decoder_info", {"stream": "cam", "decoder": "nvdec", "reason": "nvdec"}) == 1


def test_decode_cuda_with_a_cpu_backend_downloads_nvdec_frames(device: Any, bikes: Path) -> None:
    """``decode: cuda`` while the backend runs on the CPU: NVDEC decodes, PyAV downloads each
    frame (nv12 in host memory), and the CPU letterbox takes it."""
    from daemon.sources import nvdec
    from daemon.vision.letterbox import letterbox_av

    nvdec.set_gpu_backend(False)
    src, sink, metrics = _source(bikes, "cuda")
    assert [f.native.format.name for f in sink.frames] == ["nv12"] * 5
    assert letterbox_av(sink.frames[0].native, W, H)[0].shape == (3, H, W)
    assert metrics.registry.get_sample_value(
        "detectd_stream_decoder_info", {"stream": "cam", "decoder": "nvdec", "reason": "nvdec"}) == 1


def test_stream_below_nvdec_minimum_size_falls_back_to_the_cpu(device: Any, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """H.264 at 32x32 is below NVDEC's 48x16 minimum: decoded on the CPU, reason ``size``."""
    import av

    clip = tmp_path / "tiny.mp4"
    with av.open(str(clip), "w") as o:
        s: Any = o.add_stream("libx264", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for i in range(10):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    with caplog.at_level("WARNING", logger="daemon.sources.nvdec"):
        _, sink, metrics = _source(clip, "cuda")
    assert sink.frames and all(f.native.format.name != "cuda" for f in sink.frames)
    assert metrics.registry.get_sample_value(
        "detectd_stream_decoder_info", {"stream": "cam", "decoder": "cpu", "reason": "size"}) == 1
    assert "48x16" in caplog.text


class _Raises:
    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def execute(self, stream: Any, batch: int) -> None:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("stand-in executor failure")


def test_failed_submit_syncs_and_frees_the_slot(device: Any) -> None:
    from daemon.vision.letterbox import letterbox_params

    failing = _Raises(after=0)
    pipe = _pipe(device, lambda slot: failing, slots=1, batch=1)
    img = np.zeros((10, 20, 3), np.uint8)
    try:
        with pytest.raises(RuntimeError, match="stand-in executor failure"):
            pipe.submit_frames([img], [letterbox_params(20, 10, W, H)], timeout=1)
        assert pipe.ring.in_flight == 0  # the one slot is free again: the next submit does not block
        failing.after = 10
        t = pipe.submit_frames([img], [letterbox_params(20, 10, W, H)], timeout=1)
        pipe.collect(t)
    finally:
        pipe.close()


def test_failed_collect_frees_the_slot(device: Any) -> None:
    from daemon.backends.cuda import CudaError
    from daemon.vision.letterbox import letterbox_params

    pipe = _pipe(device, slots=1, batch=1)
    img = np.zeros((10, 20, 3), np.uint8)
    info = letterbox_params(20, 10, W, H)
    try:
        t = pipe.submit_frames([img], [info], timeout=1)
        while not pipe.ready(t):
            time.sleep(0.001)
        with pipe._cv:  # the completion thread saw an error for this ticket
            pipe._ready[t.seq] = CudaError("cuEventSynchronize failed: injected")
        with pytest.raises(CudaError, match="injected"):
            pipe.collect(t)
        assert pipe.ring.in_flight == 0
        pipe.collect(pipe.submit_frames([img], [info], timeout=1))  # would block forever on a leaked slot
    finally:
        pipe.close()


def test_on_complete_fires_and_ready_turns_true_without_collecting(device: Any) -> None:
    from daemon.vision.letterbox import letterbox_params

    pipe = _pipe(device, slots=2, batch=1)
    fired = threading.Event()
    pipe.set_on_complete(fired.set)
    img = np.random.default_rng(0).integers(0, 255, (100, 200, 3), np.uint8)
    try:
        t = pipe.submit_frames([img], [letterbox_params(200, 100, W, H)], timeout=1)
        assert fired.wait(5)
        assert pipe.ready(t)
        out = pipe.collect(t)[0]
        assert out.shape == (1, 3, H, W)
        assert not pipe.ready(t)  # collected: the ticket is gone
    finally:
        pipe.close()


def test_close_releases_executors_before_buffers_and_is_idempotent(device: Any) -> None:
    order: list[str] = []

    class Ctx:
        def execute(self, stream: Any, batch: int) -> None:
            pass

        def close(self) -> None:
            order.append("executor")

    pipe = _pipe(device, lambda slot: Ctx(), slots=2)
    real_free = device.free

    def free(ptr: int) -> None:
        order.append("buffer")
        real_free(ptr)

    device.free = free
    try:
        pipe.close()
        pipe.close()
    finally:
        del device.free
    assert order[:2] == ["executor", "executor"] and "buffer" in order
    assert order.index("buffer") > 1


def test_waiting_for_a_result_does_not_spin_a_core(device: Any) -> None:
    """collect() on a slot busy for ~0.5 s costs the waiting thread almost no CPU time
    (blocking-sync event in a blocking-sync context; a default event spins a whole core)."""
    import ctypes
    import resource

    from daemon.backends.cuda import GpuPipeline, OutputSpec

    src = r'''extern "C" __global__ void busy(long long cycles) {
        long long t0 = clock64(); while (clock64() - t0 < cycles) { } }'''
    k = device.compile(src, ["busy"], "busy.cu")["busy"]

    class Busy:
        def execute(self, stream: Any, batch: int) -> None:
            device.launch(k, (1, 1, 1), (1, 1, 1), stream, [ctypes.c_longlong(900_000_000)])  # ~0.5 s

    pipe = GpuPipeline(device, 64, 64, 1, [OutputSpec("o", (1,))], lambda slot: Busy(), num_slots=1)
    try:
        from daemon.vision.letterbox import letterbox_params

        t = pipe.submit_frames([np.zeros((8, 8, 3), np.uint8)], [letterbox_params(8, 8, 64, 64)], timeout=1)
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        pipe.collect(t)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        pipe.close()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    assert w1 - w0 > 0.2  # it did wait
    assert cpu < 0.25 * (w1 - w0), f"{cpu:.3f} s CPU while waiting {w1 - w0:.3f} s"
