#!/usr/bin/env python3
"""The GPU path's checks and figures in one short run (issue 4). Needs an NVIDIA GPU,
cuda-python, PyAV and the media files (bikes.mp4, bus.jpg, zidane.jpg): without PyAV or the
media it FAILS (exit 2) rather than fall back to synthetic frames.

    python3 bench/gpu_check.py --media DIR [--out DIR]

(a) GPU letterbox vs CPU, on real decoded frames (the demo video's yuv420p frames, the photos
    as decoded (yuvj420p, full range), the demo frame re-encoded by swscale to 1920x1080, 1280x720, 1277x719, 809x1079,
    641x271, 233x101, 416x416, and one nv12 frame): the YUV kernel (decoder planes in, 1.5 bytes
    per pixel) against the daemon's CPU letterbox ``letterbox_av`` -- the gate "GPU equals CPU
    within 1/255" -- with max |diff| and the share of values over 1/255; also against its own
    float64 twin (kernel correctness only, not the gate), the twin against ``letterbox_av`` (what
    tests/test_gpu_yuv_cpu.py asserts on the CPU) and the RGB kernel against ``letterbox_rgb``.
(b) Attribution under concurrency: 3 slots, a producer and a collector thread, batches of 1..4
    of distinct yuv420p frames; a STAND-IN for the engine (``standin_checksum``, not TensorRT)
    reduces each slot's network input to 8 weighted checksums per image, and each result must
    equal the CPU checksum of the frame its ticket names -- and no other frame's.
(c) Copy/compute overlap: a STAND-IN workload of known cost (``standin_busy``: every SM spins
    for a set number of cycles, tuned to the measured copy time of a frame) in place of the
    engine; 2 slots pipelined vs 1 slot serial over the same 1080p yuv420p frames; pass <= 0.6x.
(d) Throughput of GPU preprocessing + transfer at 720p and 1080p, 2 slots, 2 tickets in flight,
    batch 1 and 4: the YUV path (planes -> pinned -> H2D -> kernel) and the RGB path, with the
    bytes copied per frame, and the CPU letterbox (one thread) for comparison.
(e) NVDEC (issue 15): letterbox from decoder surfaces vs the CPU, 1/4/8 streams, completion-to-
    publish latency (docs/gpu.md), and ``daemon_loop``: the daemon's own Streams / Scheduler /
    Detector / Pipeline / Publisher with a STAND-IN engine backend (bench/gpu_daemon_loop.py).

Writes gpu_check.json and gpu_check.txt to --out (default $OUT, else ./out). Exit 0 when every
check passes, 1 when one fails, 2 without real frames, 3 when no GPU/cuda-python.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:  # daemon.vision.letterbox (and so the GPU letterbox) needs PyAV
    import av  # noqa: F401
except ImportError as _exc:
    print(f"gpu_check: FAILED, PyAV does not import ({_exc}): the checks need real decoded frames "
          "and the CPU letterbox; install the av wheel", file=sys.stderr)
    sys.exit(2)
from daemon.backends.cuda import CudaDevice, GpuPipeline, OutputSpec, check, cuda_unavailable_reason  # noqa: E402
from daemon.vision.letterbox import letterbox_params  # noqa: E402

W = H = 416
TOL = 1.0 / 255

STANDIN_SOURCE = r"""
// STAND-IN for the TensorRT engine (this is not a network): per image, 8 weighted checksums of
// the letterboxed input, so the CPU can tell which frame a slot really held.
extern "C" __global__ void standin_checksum(const float* __restrict__ in, int per_image,
                                            float* __restrict__ out)
{
    __shared__ float s[256];
    const float* x = in + (size_t)blockIdx.x * per_image;
    float acc = 0.f;
    for (int i = threadIdx.x; i < per_image; i += 256) acc += x[i] * (float)((i % 97) + 1);
    s[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < 8) {
        float t = 0.f;
        for (int k = threadIdx.x; k < 256; k += 8) t += s[k];
        out[blockIdx.x * 8 + threadIdx.x] = t;
    }
}
// STAND-IN workload of known cost: every thread of a full-GPU grid spins `cycles` SM clocks.
extern "C" __global__ void standin_busy(long long cycles, int* sink)
{
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
    if (threadIdx.x == 1023) sink[0] = (int)blockIdx.x;
}
"""


def cpu_checksum(chw: np.ndarray) -> np.ndarray:
    """What ``standin_checksum`` computes, in float64: partition p = thread index mod 8."""
    x = chw.reshape(-1).astype(np.float64)
    i = np.arange(x.size)
    v = x * ((i % 97) + 1)
    return np.array([v[(i % 256) % 8 == p].sum() for p in range(8)])


class StandInChecksum:
    """Executor STAND-IN (not TensorRT): checksum of the slot's input into output 0."""

    def __init__(self, dev: CudaDevice, kernels: dict[str, Any], slot: Any) -> None:
        self.dev, self.k, self.slot = dev, kernels["standin_checksum"], slot

    def execute(self, stream: Any, batch: int) -> None:
        self.dev.launch(self.k, (batch, 1, 1), (256, 1, 1), stream,
                        [ctypes.c_void_p(self.slot.input_ptr), ctypes.c_int(3 * H * W),
                         ctypes.c_void_p(self.slot.output_ptrs[0])])


class StandInBusy:
    """Executor STAND-IN of known cost: occupies every SM for ``cycles`` clocks."""

    def __init__(self, dev: CudaDevice, kernels: dict[str, Any], sink: int, sms: int) -> None:
        self.dev, self.k, self.sink, self.sms, self.cycles = dev, kernels["standin_busy"], sink, sms, 0

    def execute(self, stream: Any, batch: int) -> None:
        self.dev.launch(self.k, (self.sms * 2, 1, 1), (1024, 1, 1), stream,
                        [ctypes.c_longlong(self.cycles * batch), ctypes.c_void_p(self.sink)])


class CopyInput:
    """Executor that copies the network input back (to read the GPU letterbox's output)."""

    def __init__(self, dev: CudaDevice, slot: Any) -> None:
        self.dev, self.slot = dev, slot

    def execute(self, stream: Any, batch: int) -> None:
        check(self.dev.driver.cuMemcpyDtoDAsync(self.slot.output_ptrs[0], self.slot.input_ptr,
                                                batch * 3 * H * W * 4, stream), "cuMemcpyDtoDAsync")


# --------------------------------------------------------------------------------------------


class NoRealFrames(RuntimeError):
    """PyAV or the media files are missing: the check needs real decoded frames."""


def load_frames(media: Path | None) -> tuple[dict[str, Any], str]:
    """Real decoded frames as PyAV ``VideoFrame``s in the decoder's pixel format: the demo
    video (yuv420p, as decoded), the photos converted to yuv420p, and the demo frame re-encoded
    by swscale to other sizes including odd ones; one nv12 frame. Raises :class:`NoRealFrames`
    when PyAV or the media are missing (no synthetic fallback: the check is about real frames)."""
    try:
        import av
    except ImportError as exc:
        raise NoRealFrames(f"PyAV does not import ({exc}); install the av wheel") from exc
    if media is None or not (media / "bikes.mp4").is_file():
        raise NoRealFrames(f"no bikes.mp4 in {media} (pass --media DIR with bikes.mp4, bus.jpg, zidane.jpg)")
    frames: dict[str, Any] = {}
    with av.open(str(media / "bikes.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 60, 120, 180):
                frames[f"bikes{i}_{f.format.name}_{f.width}x{f.height}"] = f
            if i > 180:
                break
    for name in ("bus.jpg", "zidane.jpg"):  # JPEG: yuvj420p (full range, centred chroma) as decoded
        if (media / name).is_file():
            with av.open(str(media / name)) as c:
                img = next(c.decode(video=0))
            frames[f"{name.split('.')[0]}_{img.format.name}_{img.width}x{img.height}"] = img
    b0 = next(iter(frames.values()))
    for w, h in [(1920, 1080), (1280, 720), (1277, 719), (809, 1079), (641, 271), (233, 101), (416, 416)]:
        frames[f"bikes0_reenc_{w}x{h}"] = b0.reformat(width=w, height=h, format="yuv420p")
    frames["bikes0_nv12_1277x719"] = frames["bikes0_reenc_1277x719"].reformat(format="nv12")
    return frames, "real (PyAV-decoded demo video + photos, re-encoded sizes incl. odd widths)"


def check_letterbox(dev: CudaDevice, frames: dict[str, Any]) -> dict[str, Any]:
    """YUV kernel vs the daemon's CPU letterbox (``letterbox_av``: libswscale scales + converts)
    -- the gate -- and vs its own float64 twin (a kernel-correctness check only). The RGB
    kernel's agreement (frame converted to RGB24 first) is reported beside it."""
    from daemon.vision.gpu_letterbox import letterbox_yuv_reference, yuv_params
    from daemon.vision.letterbox import letterbox_av, letterbox_rgb

    pipe = GpuPipeline(dev, W, H, 1, [OutputSpec("input", (3, H, W))],
                       lambda slot: CopyInput(dev, slot), num_slots=2)
    rows = []
    for name, f in frames.items():
        info = letterbox_params(f.width, f.height, W, H)
        gpu = pipe.collect(pipe.submit_yuv([f], [info]))[0][0]
        copied = pipe.last_h2d_bytes
        cpu, _ = letterbox_av(f, W, H)
        twin = letterbox_yuv_reference(f, W, H, info)[0]
        dt = np.abs(twin - cpu)
        region = (slice(None), slice(info.pad_y, info.pad_y + info.new_h), slice(info.pad_x, info.pad_x + info.new_w))
        d = gpu - cpu
        rgb = f.to_ndarray(format="rgb24")
        gpu_rgb = pipe.collect(pipe.submit_frames([rgb], [info]))[0][0]
        cpu_rgb, _ = letterbox_rgb(rgb, W, H)
        rows.append({
            "frame": name, "format": f.format.name, "size": f"{f.width}x{f.height}",
            "h2d_bytes": copied, "bytes_per_pixel": round(copied / (f.width * f.height), 3),
            "max_abs_vs_cpu_x255": float(np.abs(d).max() * 255),
            "share_over_1_255_vs_cpu": float((np.abs(d) > TOL + 1e-7).mean()),
            "share_over_1_255_vs_cpu_image_region": float((np.abs(d[region]) > TOL + 1e-7).mean()),
            "mean_signed_vs_cpu_x255_rgb": [float(d[region][c].mean() * 255) for c in range(3)],
            "path": "yuv", "siting_colorspace_range": list(yuv_params(f)),
            "max_abs_vs_twin_x255": float(np.abs(gpu - twin).max() * 255),
            "twin_max_abs_vs_cpu_x255": float(dt.max() * 255),
            "twin_share_over_1_255_vs_cpu": float((dt > TOL + 1e-7).mean()),
            "rgb_path_max_abs_vs_cpu_rgb_x255": float(np.abs(gpu_rgb - cpu_rgb).max() * 255),
        })
    pipe.close()
    return {"rows": rows,
            "pass_gpu_equals_cpu_within_1_255": all(r["max_abs_vs_cpu_x255"] <= 1.0 + 1e-4 for r in rows),
            "pass_kernel_equals_twin": all(r["max_abs_vs_twin_x255"] <= 0.01 for r in rows),
            "note": "letterbox_av is libswscale (BILINEAR|ACCURATE_RND|FULL_CHR_H_INT): full-resolution chroma "
                    "sited as the frame says, exact matrix; the kernel computes the same in float32 and does not "
                    "round to uint8 (see daemon/vision/gpu_letterbox.py)"}


def _planes(f: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from daemon.vision.gpu_letterbox import yuv_planes

    fmt, y, u, v = yuv_planes(f)
    if fmt == "nv12":
        u, v = u[:, 0::2], u[:, 1::2]
    return np.ascontiguousarray(y), np.ascontiguousarray(u), np.ascontiguousarray(v)


def check_attribution(dev: CudaDevice, kernels: dict[str, Any], frames: dict[str, Any],
                      n_frames: int = 96) -> dict[str, Any]:
    from daemon.vision.gpu_letterbox import letterbox_yuv_reference

    rng = np.random.default_rng(7)
    pool = [_planes(f) for f in frames.values() if f.width <= 1280]
    imgs, refs = [], []
    for k in range(n_frames):
        y, u, v = (a.copy() for a in pool[k % len(pool)])
        # Distinct content per frame: a real frame plus a frame-specific patch of noise in Y.
        y[: min(32, y.shape[0]), : min(32, y.shape[1])] = rng.integers(
            0, 256, (min(32, y.shape[0]), min(32, y.shape[1])), dtype=np.uint8)
        imgs.append((y, u, v))
        refs.append(cpu_checksum(letterbox_yuv_reference((y, u, v), W, H)[0]))
    refs_a = np.stack(refs)
    pipe = GpuPipeline(dev, W, H, 4, [OutputSpec("checksum", (8,))],
                       lambda slot: StandInChecksum(dev, kernels, slot), num_slots=3)
    q: Queue[Any] = Queue()
    errors: list[str] = []

    def producer() -> None:
        i = 0
        while i < n_frames:
            b = int(rng.integers(1, 5))
            ids = list(range(i, min(i + b, n_frames)))
            infos = [letterbox_params(imgs[j][0].shape[1], imgs[j][0].shape[0], W, H) for j in ids]
            q.put(pipe.submit_yuv([imgs[j] for j in ids], infos, tags=ids, timeout=30))
            i += len(ids)
        q.put(None)

    checked = wrong = 0
    t = threading.Thread(target=producer)
    t0 = time.perf_counter()
    t.start()
    while True:
        ticket = q.get()
        if ticket is None:
            break
        time.sleep(float(rng.uniform(0, 0.002)))  # uneven collection: slots overlap more
        out = pipe.collect(ticket)[0]
        for b, fid in enumerate(ticket.tags):
            got = out[b].astype(np.float64)
            err = np.abs(got - refs_a) / (np.abs(refs_a) + 1e-9)
            best = int(np.argmin(err.max(axis=1)))
            checked += 1
            if err[fid].max() > 1e-4 or best != fid:
                wrong += 1
                errors.append(f"frame {fid}: rel err {err[fid].max():.2e}, closest frame {best}")
    t.join()
    pipe.close()
    return {"frames": checked, "wrong": wrong, "errors": errors[:10], "slots": 3,
            "seconds": time.perf_counter() - t0, "pass": wrong == 0 and checked == n_frames}


def _run(pipe: GpuPipeline, imgs: list[Any], infos: list[Any], batch: int, inflight: int) -> float:
    """Submit/collect with ``inflight`` tickets outstanding; YUV frames (VideoFrame or planes)
    through ``submit_yuv``, RGB arrays through ``submit_frames``."""
    pending: list[Any] = []
    submit = pipe.submit_frames if isinstance(imgs[0], np.ndarray) else pipe.submit_yuv
    t0 = time.perf_counter()
    for i in range(0, len(imgs), batch):
        if len(pending) >= inflight:
            pipe.collect(pending.pop(0))
        pending.append(submit(imgs[i:i + batch], infos[i:i + batch]))
    for p in pending:
        pipe.collect(p)
    return time.perf_counter() - t0


def check_overlap(dev: CudaDevice, kernels: dict[str, Any], frame: Any, n: int = 120) -> dict[str, Any]:
    sms = check(dev.driver.cuDeviceGetAttribute(
        dev.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev.device))
    sink = dev.alloc(4)
    imgs = [frame] * n
    infos = [letterbox_params(frame.width, frame.height, W, H)] * n
    busy: list[StandInBusy] = []

    def make(slot: Any) -> StandInBusy:
        b = StandInBusy(dev, kernels, sink, sms)
        busy.append(b)
        return b

    p1 = GpuPipeline(dev, W, H, 1, [OutputSpec("out", (255, 13, 13))], make, num_slots=1)
    p2 = GpuPipeline(dev, W, H, 1, [OutputSpec("out", (255, 13, 13))], make, num_slots=2)
    # Cost of the copy side per frame (no stand-in work), serial: the stand-in is set to match.
    _run(p1, imgs[:10], infos[:10], 1, 1)
    copy_s = _run(p1, imgs, infos, 1, 1) / n
    # Calibrate cycles -> seconds of the busy stand-in with events.
    start, end = dev.event(timing=True), dev.event(timing=True)
    probe = StandInBusy(dev, kernels, sink, sms)
    probe.cycles = 1_000_000
    s = p1.slots[0].stream
    dev.record(start, s)
    probe.execute(s, 1)
    dev.record(end, s)
    dev.wait(end)
    ms_per_mcycle = dev.elapsed_ms(start, end)
    cycles = int(copy_s * 1e3 / ms_per_mcycle * 1e6)
    for b in busy:
        b.cycles = cycles
    dev.record(start, s)
    probe.cycles = cycles
    probe.execute(s, 1)
    dev.record(end, s)
    dev.wait(end)
    standin_ms = dev.elapsed_ms(start, end)
    _run(p2, imgs[:10], infos[:10], 1, 2)
    serial = _run(p1, imgs, infos, 1, 1)
    two = _run(p2, imgs, infos, 1, 2)
    p1.close()
    p2.close()
    dev.free(sink)
    ratio = two / serial
    return {"frame": f"{frame.width}x{frame.height} {frame.format.name}", "frames": n,
            "copy_side_ms_per_frame": copy_s * 1e3, "standin_kernel_ms": standin_ms,
            "standin_cycles": cycles, "one_slot_serial_s": serial, "two_slots_s": two,
            "ratio": ratio, "pass": ratio <= 0.6}


def throughput(dev: CudaDevice, frames: dict[str, Any], n: int = 240) -> dict[str, Any]:
    """GPU preprocessing + transfer, 2 slots, 2 tickets in flight: the YUV path (decoded
    yuv420p frame -> planes -> pinned -> H2D -> kernel) and, for comparison, the RGB path
    (RGB24 array, which the CPU would first have to produce) and the CPU letterbox."""
    from daemon.vision.letterbox import letterbox_av

    out: dict[str, Any] = {}
    for label, f in frames.items():
        info = letterbox_params(f.width, f.height, W, H)
        rgb = f.to_ndarray(format="rgb24")
        for path, item in (("yuv", f), ("rgb", rgb)):
            for batch in (1, 4):
                pipe = GpuPipeline(dev, W, H, batch, [], None, num_slots=2)
                imgs, infos = [item] * n, [info] * n
                _run(pipe, imgs[:16], infos[:16], batch, 2)
                dt = _run(pipe, imgs, infos, batch, 2)
                out[f"{label}_{path}_h2d_bytes_per_frame"] = pipe.last_h2d_bytes // batch
                pipe.close()
                out[f"{label}_{path}_batch{batch}_fps"] = n / dt
        t0 = time.perf_counter()
        for _ in range(20):
            letterbox_av(f, W, H)
        out[f"{label}_cpu_letterbox_av_fps_1thread"] = 20 / (time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------------
# NVDEC (issue 15): zero-copy decode, the letterbox on decoder surfaces, streams, completion
# --------------------------------------------------------------------------------------------

CLIP_FRAMES = 300


def ensure_clips(media: Path, out_dir: Path) -> dict[str, Path]:
    """1080p H.264 and HEVC clips (``CLIP_FRAMES`` frames, 25 frames/s, 6 Mbit/s, GOP 50, the
    encoders' ``veryfast`` preset): the demo video scaled to 1920x1080 and looped. Taken from
    ``media/gpu`` when present (``make_clip`` made them), else made here with PyAV."""
    clips = {}
    for codec, enc in (("h264", "libx264"), ("hevc", "libx265")):
        for d in (media / "gpu", out_dir):
            p = d / f"{codec}_1080p.mp4"
            if p.is_file():
                clips[codec] = p
                break
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            clips[codec] = make_clip(media / "bikes.mp4", out_dir / f"{codec}_1080p.mp4", enc)
    return clips


def make_clip(src: Path, out: Path, encoder: str, n: int = CLIP_FRAMES) -> Path:
    import av

    frames = []
    rng = np.random.default_rng(5)
    with av.open(str(src)) as c:
        for f in c.decode(video=0):
            big = f.reformat(width=1920, height=1080, format="yuv420p", interpolation="BICUBIC")
            # Sensor-like grain, so that the encoder spends a camera's bit rate (an upscaled
            # clip alone is too smooth: about 1.3 Mbit/s at the same settings).
            a = big.to_ndarray()
            a[:1080] = np.clip(a[:1080].astype(np.int16) + rng.integers(-4, 5, a[:1080].shape), 0, 255)
            frames.append(av.VideoFrame.from_ndarray(a.astype(np.uint8), format="yuv420p"))
    with av.open(str(out), "w") as o:
        s: Any = o.add_stream(encoder, rate=25)
        s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
        s.bit_rate, s.gop_size = 6_000_000, 50
        s.options = {"preset": "veryfast", **({"x265-params": "log-level=error"} if encoder == "libx265" else {})}
        for i in range(n):
            f = frames[i % len(frames)]
            f.pts = None
            for pkt in s.encode(f):
                o.mux(pkt)
        for pkt in s.encode():
            o.mux(pkt)
    return out


def _nvdec_open(path: Path, hw_owned: bool = True) -> Any:
    import av

    from daemon.sources.nvdec import hwaccel

    return av.open(str(path), hwaccel=hwaccel(0, hw_owned))


def _download(dev: CudaDevice, ptr: int, pitch: int, rows: int, cols: int) -> np.ndarray:
    """A device plane back to the host (only to prove what NVDEC decoded; the daemon never does)."""
    check(dev.driver.cuCtxSynchronize(), "cuCtxSynchronize")
    buf = np.empty((rows, pitch), np.uint8)
    check(dev.driver.cuMemcpyDtoH(buf.ctypes.data, ptr, buf.nbytes), "cuMemcpyDtoH")
    return buf[:, :cols]


def check_nvdec_letterbox(dev: CudaDevice, clips: dict[str, Path], picks: tuple[int, ...] = (0, 1, 37, 120, 251)
                          ) -> dict[str, Any]:
    """The letterbox of NVDEC surfaces (device planes through DLPack, nothing copied to the
    host) against the CPU letterbox (``letterbox_av``) of the same frame decoded by libavcodec
    on the CPU; the decoded planes themselves are compared too (H.264/HEVC decode bit-exactly)."""
    import av

    from daemon.sources.nvdec import device_planes
    from daemon.vision.gpu_letterbox import yuv_planes
    from daemon.vision.letterbox import letterbox_av

    rows = []
    pipe = GpuPipeline(dev, W, H, 1, [OutputSpec("input", (3, H, W))], lambda slot: CopyInput(dev, slot), num_slots=2)
    try:
        for codec, path in clips.items():
            with _nvdec_open(path) as hc, av.open(str(path)) as cc:
                for i, (hf, cf) in enumerate(zip(hc.decode(video=0), cc.decode(video=0))):
                    if i > max(picks):
                        break
                    if i not in picks:
                        continue
                    row: dict[str, Any] = {"clip": codec, "frame": i, "format": hf.format.name,
                                           "sw_format": getattr(hf.sw_format, "name", None)}
                    got = pipe.collect(pipe.submit_yuv([hf]))[0][0]
                    row["h2d_bytes"] = pipe.last_h2d_bytes
                    row["device_frames"] = pipe.last_device_frames
                    cpu = letterbox_av(cf, W, H)[0]
                    row["max_abs_vs_cpu_letterbox_x255"] = float(np.abs(got - cpu).max() * 255)
                    dp = device_planes(hf)
                    _, y, u, v = yuv_planes(cf)
                    assert v is not None
                    yd = _download(dev, dp.y_ptr, dp.y_pitch, hf.height, hf.width)
                    uvd = _download(dev, dp.uv_ptr, dp.uv_pitch, (hf.height + 1) // 2, 2 * ((hf.width + 1) // 2))
                    row["planes_bit_exact_vs_cpu_decode"] = bool(
                        (yd == y).all() and (uvd[:, 0::2] == u).all() and (uvd[:, 1::2] == v).all())
                    row["y_pitch"] = dp.y_pitch
                    try:  # what the preview/annotate path does with a surface: PyAV downloads it
                        rgb = hf.to_ndarray(format="rgb24")
                        row["download_rgb_max_abs_vs_cpu"] = int(np.abs(rgb.astype(int) - cf.to_ndarray(format="rgb24")).max())
                    except Exception as exc:  # noqa: BLE001
                        row["download_rgb_error"] = f"{type(exc).__name__}: {exc}"
                    rows.append(row)
    finally:
        pipe.close()
    ok = bool(rows) and all(r["max_abs_vs_cpu_letterbox_x255"] <= 1.0 + 1e-4 and r["h2d_bytes"] == 0
                            and r["device_frames"] == 1 for r in rows)
    return {"rows": rows, "pass": ok, "pass_planes_bit_exact": all(r["planes_bit_exact_vs_cpu_decode"] for r in rows)}


def _cpu_seconds() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _checksum_pipeline(cls: Any, dev: CudaDevice, kernels: dict[str, Any], max_batch: int) -> tuple[Any, Any]:
    """A 3-slot pipeline running the checksum STAND-IN, whose ``on_complete`` notifies the
    returned condition (what the daemon's ``scheduler.wake()`` does)."""
    pipe = cls(dev, W, H, max_batch, [OutputSpec("checksum", (8,))],
               lambda slot: StandInChecksum(dev, kernels, slot), num_slots=3)
    cv = threading.Condition()

    def wake() -> None:
        with cv:
            cv.notify()

    pipe.set_on_complete(wake)
    return pipe, cv


def run_streams(dev: CudaDevice, kernels: dict[str, Any], path: Path, n: int, mode: str,
                seconds: float, warm: float, max_batch: int = 8, rate: float = 0.0) -> dict[str, Any]:
    """``n`` threads decode ``path`` in a loop; ``mode``: ``decode`` (NVDEC alone, frames
    dropped), ``nvdec`` (NVDEC surfaces -> device letterbox -> STAND-IN engine, results collected
    on completion), ``cpu`` (libavcodec frame threads -> planes copied to the device -> same).
    Frames/s and CPU cores (process CPU time / wall time) over ``seconds`` after ``warm``.
    ``rate`` > 0: each stream delivers at most ``rate`` frames/s, as a camera does (the decoder
    thread sleeps until the next frame is due), to measure the CPU a given load costs."""
    import av
    from collections import deque
    from queue import Empty, Full

    stop = threading.Event()
    q: Queue[Any] = Queue(maxsize=4 * n)
    done_t: list[tuple[float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def decoder(i: int) -> None:
        try:
            with (av.open(str(path)) if mode == "cpu" else _nvdec_open(path)) as c:
                vs = c.streams.video[0]
                if mode == "cpu":
                    vs.thread_type = "AUTO"
                due = time.perf_counter()
                while not stop.is_set():
                    for f in c.decode(vs):
                        if stop.is_set():
                            return
                        if rate:
                            due += 1.0 / rate
                            time.sleep(max(0.0, due - time.perf_counter()))
                        if mode == "decode":
                            with lock:
                                done_t.append((time.perf_counter(), 1))
                            continue
                        while not stop.is_set():
                            try:
                                q.put(f, timeout=0.1)
                                break
                            except Full:
                                pass
                    c.seek(0)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"decoder {i}: {type(exc).__name__}: {exc}")

    def pipeline() -> None:
        try:
            pipe, _ = _checksum_pipeline(GpuPipeline, dev, kernels, max_batch)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"pipeline: {type(exc).__name__}: {exc}")
            return
        pending: deque[Any] = deque()
        try:
            while not stop.is_set():
                try:
                    batch = [q.get(timeout=0.05)]
                except Empty:
                    batch = []
                while batch and len(batch) < max_batch:
                    try:
                        batch.append(q.get_nowait())
                    except Empty:
                        break
                if batch:
                    if len(pending) >= 3:
                        t, k = pending.popleft()
                        pipe.collect(t)  # sleeps on the blocking-sync event
                        done_t.append((time.perf_counter(), k))
                    pending.append((pipe.submit_yuv(batch, timeout=None), len(batch)))
                while pending and pipe.ready(pending[0][0]):
                    t, k = pending.popleft()
                    pipe.collect(t)
                    done_t.append((time.perf_counter(), k))
            for t, _ in pending:
                pipe.collect(t)
        except Exception as exc:  # noqa: BLE001
            import traceback

            errors.append(f"pipeline: {type(exc).__name__}: {exc} {traceback.format_exc()[-600:]}")
        finally:
            pipe.close()

    threads = [threading.Thread(target=decoder, args=(i,), daemon=True) for i in range(n)]
    if mode != "decode":
        threads.append(threading.Thread(target=pipeline, daemon=True))
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(warm)
    c0, w0 = _cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    c1, w1 = _cpu_seconds(), time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    frames = sum(k for ts, k in done_t if w0 <= ts < w1)
    first = min((ts for ts, _ in done_t), default=float("nan")) - t_start
    return {"mode": mode, "streams": n, "paced_fps_per_stream": rate, "frames": frames, "fps": frames / (w1 - w0),
            "cpu_cores": (c1 - c0) / (w1 - w0), "seconds": w1 - w0, "first_result_s": first,
            "errors": errors[:4]}


def throughput_streams(dev: CudaDevice, kernels: dict[str, Any], clips: dict[str, Path],
                       counts: tuple[int, ...] = (1, 4, 8), seconds: float = 3.0, warm: float = 1.5
                       ) -> dict[str, Any]:
    rows = []
    for codec, path in clips.items():
        for n in counts:
            for mode in ("decode", "nvdec", "cpu"):
                r = run_streams(dev, kernels, path, n, mode, seconds, warm)
                r["codec"] = codec
                rows.append(r)
                print(f"   {codec} x{n} {mode:6s}: {r['fps']:7.0f} frames/s, {r['cpu_cores']:.2f} cores"
                      + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
    # The goal's load exactly: 8 x 1080p H.264 at 250 frames/s each (2000 in all), paced like
    # cameras, through the whole pipeline and through decode alone: the CPU each costs.
    for mode in ("decode", "nvdec"):
        r = run_streams(dev, kernels, clips["h264"], 8, mode, seconds, warm, rate=250.0)
        r["codec"] = "h264"
        rows.append(r)
        print(f"   h264 x8 {mode:6s} paced 8 x 250/s: {r['fps']:7.0f} frames/s, {r['cpu_cores']:.2f} cores", flush=True)
    goal = rows[-1]
    return {"rows": rows, "stand_in": "standin_checksum (a STAND-IN for the TensorRT engine: reads the whole "
                                      "letterboxed batch, writes 8 sums per image); TensorRT does not install here",
            "goal_8x_h264_fps": goal["fps"] if goal else None, "goal_8x_h264_cores": goal["cpu_cores"] if goal else None,
            "pass": bool(goal["fps"] >= 0.98 * 2000 and goal["cpu_cores"] <= 1.5 and not goal["errors"]
                         and max(r["fps"] for r in rows if r["codec"] == "h264" and r["streams"] == 8
                                 and r["mode"] == "nvdec") >= 2000)}


class TimedPipeline(GpuPipeline):
    """GpuPipeline with timing events around each slot's work (for the latency figure only):
    ``t0`` before the input side, ``t1`` after the copies back, before the completion event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.t0 = [self.device.event(timing=True) for _ in self.slots]
        self.t1 = [self.device.event(timing=True) for _ in self.slots]

    def _submit(self, n: int, tags: Any, timeout: Any, fill: Any) -> Any:
        def timed(slot: Any) -> None:
            self.device.record(self.t0[slot.index], slot.stream)
            fill(slot)

        return super()._submit(n, tags, timeout, timed)

    def _finish(self, slot: Any, n: int) -> None:
        d = self.device
        if slot.executor is not None:
            slot.executor.execute(slot.stream, n)
        for o, dev_ptr, host in zip(self.outputs, slot.output_ptrs, slot.extra.get("host_output_ptrs", [])):
            d.d2h(host, dev_ptr, n * o.nbytes, slot.stream)
        d.record(self.t1[slot.index], slot.stream)
        d.record(slot.done, slot.stream)

    def gpu_ms(self, ticket: Any) -> float:
        return self.device.elapsed_ms(self.t0[ticket.slot], self.t1[ticket.slot])


def completion_latency(dev: CudaDevice, kernels: dict[str, Any], path: Path,
                       rates: tuple[float, ...] = (5.0, 25.0, 100.0), samples: int = 100) -> dict[str, Any]:
    """Completion-to-publish latency: frames arrive at ``rate`` (one NVDEC 1080p surface each,
    submitted from a producer thread); the consumer sleeps on a condition that the pipeline's
    ``on_complete`` notifies, collects every ready ticket and publishes one message per frame on
    a real ZeroMQ PUB socket (loopback). Latency = publish time - submit time - the GPU time of
    the slot's work (timing events) -- an upper bound of completion-to-publish (the work starts
    after the submit call began). Also the CPU the process used while waiting (no spinning)."""
    import zmq

    frames = []
    with _nvdec_open(path) as c:
        for f in c.decode(video=0):
            frames.append(f)
            if len(frames) >= 16:
                break
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    sub = ctx.socket(zmq.SUB)
    sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    pipe, cv = _checksum_pipeline(TimedPipeline, dev, kernels, 1)
    out: dict[str, Any] = {}
    try:
        for rate in rates:
            n = max(samples, int(rate * 4))
            submitted: dict[int, tuple[Any, float]] = {}
            lat, gpu, total = [], [], []
            finished = threading.Event()

            def producer() -> None:
                t0 = time.perf_counter()
                for k in range(n):
                    due = t0 + k / rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                    ts = time.perf_counter()
                    t = pipe.submit_yuv([frames[k % len(frames)]], timeout=None)
                    with cv:
                        submitted[t.seq] = (t, ts)
                finished.set()

            th = threading.Thread(target=producer)
            c0, w0 = _cpu_seconds(), time.perf_counter()
            th.start()
            got = 0
            while got < n:
                with cv:
                    cv.wait(timeout=1.0)
                    ready = [(t, ts) for t, ts in submitted.values() if pipe.ready(t)]
                    for t, _ in ready:
                        submitted.pop(t.seq)
                for t, ts in sorted(ready, key=lambda x: x[0].seq):
                    g = pipe.gpu_ms(t)
                    res = pipe.collect(t)
                    pub.send_multipart([b"detections/bench/", res[0].tobytes()])
                    tp = time.perf_counter()
                    lat.append((tp - ts) * 1e3 - g)
                    gpu.append(g)
                    total.append((tp - ts) * 1e3)
                    got += 1
                if finished.is_set() and got < n and not submitted:
                    break
            th.join()
            c1, w1 = _cpu_seconds(), time.perf_counter()
            a = np.asarray(lat)
            out[f"{rate:g}fps"] = {
                "frames": len(lat), "completion_to_publish_ms_p50": float(np.percentile(a, 50)),
                "completion_to_publish_ms_p99": float(np.percentile(a, 99)),
                "completion_to_publish_ms_max": float(a.max()),
                "gpu_ms_p50": float(np.percentile(gpu, 50)), "submit_to_publish_ms_p99": float(np.percentile(total, 99)),
                "cpu_cores": (c1 - c0) / (w1 - w0)}
            print(f"   {rate:g} frames/s: completion->publish p50 {out[f'{rate:g}fps']['completion_to_publish_ms_p50']:.3f} "
                  f"p99 {out[f'{rate:g}fps']['completion_to_publish_ms_p99']:.3f} ms, "
                  f"{out[f'{rate:g}fps']['cpu_cores']:.3f} cores", flush=True)
    finally:
        pipe.close()
        pub.close(0)
        sub.close(0)
        ctx.term()
    out["pass"] = all(v["completion_to_publish_ms_p99"] <= 2.0 for k, v in out.items() if k.endswith("fps"))
    return out


def _daemon_loop(dev: CudaDevice, kernels: dict[str, Any], clip: Path, seconds: float) -> dict[str, Any]:
    """The daemon's own Detector/Pipeline loop with a stand-in engine (bench/gpu_daemon_loop.py),
    imported here: it needs the daemon's whole import chain (onnx, pydantic, pyzmq), the other
    steps do not."""
    from gpu_daemon_loop import daemon_loop

    return daemon_loop(dev, kernels, clip, seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", type=Path, default=None, help="folder with bikes.mp4, bus.jpg, zidane.jpg")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    ap.add_argument("--clips", type=Path, default=None,
                    help="where to find/make the 1080p H.264 and HEVC clips (default: MEDIA/gpu, else OUT/clips)")
    ap.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    ap.add_argument("--seconds", type=float, default=3.0, help="steady-state seconds per stream configuration")
    args = ap.parse_args()
    if args.media is None:
        from daemon.models.assets import cache_dir

        args.media = cache_dir() / "media"
    args.out.mkdir(parents=True, exist_ok=True)
    why = cuda_unavailable_reason()
    if why:
        print(f"gpu_check: nothing run: {why}")
        return 3
    dev = CudaDevice(0)
    report: dict[str, Any] = {"device": dev.name, "compute_capability": dev.compute_capability,
                              "python": platform.python_version()}
    try:
        import cuda.bindings

        report["cuda_bindings"] = getattr(cuda.bindings, "__version__", "?")
    except ImportError:
        pass
    report["driver_version"] = check(dev.driver.cuDriverGetVersion())
    try:
        frames, source = load_frames(args.media)
    except NoRealFrames as exc:
        print(f"gpu_check: FAILED, no real frames: {exc}", file=sys.stderr)
        return 2
    report["frames"] = source
    kernels = dev.compile(STANDIN_SOURCE, ["standin_checksum", "standin_busy"], "standin.cu")
    from daemon.backends.cuda import nvrtc_unavailable_reason

    report["nvrtc"] = nvrtc_unavailable_reason() or "ok"
    report["context_flags"] = dev.context_flags
    report["pyav"] = av.__version__
    clips = ensure_clips(args.media, args.clips or args.out / "clips")
    report["clips"] = {k: {"path": str(v), "bytes": v.stat().st_size} for k, v in clips.items()}
    steps = [
        ("nvdec_letterbox", lambda: check_nvdec_letterbox(dev, clips)),
        ("streams", lambda: throughput_streams(dev, kernels, clips, seconds=args.seconds)),
        ("completion_latency", lambda: completion_latency(dev, kernels, clips["h264"])),
        ("daemon_loop", lambda: _daemon_loop(dev, kernels, clips["h264"], args.seconds)),
        ("letterbox", lambda: check_letterbox(dev, frames)),
        ("attribution", lambda: check_attribution(dev, kernels, frames)),
        ("overlap_1080p", lambda: check_overlap(dev, kernels, frames["bikes0_reenc_1920x1080"])),
        ("throughput", lambda: throughput(dev, {"720p": frames["bikes0_reenc_1280x720"],
                                                "1080p": frames["bikes0_reenc_1920x1080"]})),
    ]
    only = {x for x in args.only.split(",") if x}
    steps = [(n, f) for n, f in steps if not only or n in only]
    for name, fn in steps:
        print(f"== {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # keep going: one broken check must not hide the others
            import traceback

            report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        report[name]["elapsed_s"] = round(time.perf_counter() - t0, 2)
        print(f"== {name}\n{json.dumps(report[name], indent=1, default=str)}", flush=True)
    def get(step: str, key: str = "pass") -> Any:
        return report.get(step, {}).get(key) if step in report else "not run"

    checks = {"nvdec_letterbox_within_1_255_zero_copy": get("nvdec_letterbox"),
              "nvdec_planes_bit_exact": get("nvdec_letterbox", "pass_planes_bit_exact"),
              "streams_8x_h264_2000fps_1.5cores": get("streams"),
              "completion_to_publish_p99_2ms": get("completion_latency"),
              "daemon_loop_runs": get("daemon_loop"),
              "letterbox_gpu_equals_cpu_within_1_255": get("letterbox", "pass_gpu_equals_cpu_within_1_255"),
              "letterbox_kernel_equals_twin": get("letterbox", "pass_kernel_equals_twin"),
              "attribution": get("attribution"),
              "overlap": get("overlap_1080p")}
    report["checks"] = checks
    ok = all(v is True for v in checks.values() if v != "not run")
    report["pass"] = bool(ok)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"device: {dev.name} (sm {dev.compute_capability}); PyAV {report['pyav']}; frames: {source}"]
    for r in report.get("nvdec_letterbox", {}).get("rows", []):
        lines.append(f"nvdec {r['clip']} frame {r['frame']}: {r['format']}/{r['sw_format']}, letterbox vs CPU "
                     f"{r['max_abs_vs_cpu_letterbox_x255']:.3f}/255, {r['h2d_bytes']} B to the device, planes "
                     f"bit-exact {r['planes_bit_exact_vs_cpu_decode']}")
    for r in report.get("streams", {}).get("rows", []):
        paced = f" paced {r['paced_fps_per_stream']:g}/s each" if r.get("paced_fps_per_stream") else ""
        lines.append(f"streams {r['codec']} x{r['streams']} {r['mode']:6s}{paced}: {r['fps']:7.0f} frames/s, "
                     f"{r['cpu_cores']:.2f} cores" + (f" ERRORS {r['errors']}" if r["errors"] else ""))
    for k, v in report.get("completion_latency", {}).items():
        if isinstance(v, dict) and "completion_to_publish_ms_p99" in v:
            lines.append(f"completion->publish at {k}: p50 {v['completion_to_publish_ms_p50']:.3f} ms, p99 "
                         f"{v['completion_to_publish_ms_p99']:.3f} ms, {v['cpu_cores']:.3f} cores")
    for r in report.get("daemon_loop", {}).get("rows", []):
        lines.append(f"daemon loop {r['streams']} x h264{' realtime' if r['realtime'] else ''}: " + (
            f"ERROR {r['error']}" if "error" in r else
            f"{r['fps']:7.0f} frames/s, {r['cpu_cores']:.2f} cores, completion->publish p50 "
            f"{r['completion_to_publish_ms_p50']:.3f} ms, p99 {r['completion_to_publish_ms_p99']:.3f} ms "
            f"({r['latency_samples']} frames); {r['frames_read_on_device']}/{r['frames_submitted']} frames read on the device"))
    for r in report.get("letterbox", {}).get("rows", []):
        lines.append(f"letterbox {r['frame']:28s} [{r['path']}] vs letterbox_av max {r['max_abs_vs_cpu_x255']:.3f}/255, "
                     f"{100 * r['share_over_1_255_vs_cpu']:.2f}% > 1/255; vs twin {r['max_abs_vs_twin_x255']:.4f}/255; "
                     f"{r['h2d_bytes']} B copied")
    a, o = report.get("attribution", {}), report.get("overlap_1080p", {})
    if a:
        lines.append(f"attribution: {a.get('frames')} frames, {a.get('wrong')} wrong")
    if o:
        lines.append(f"overlap: 2 slots {o.get('two_slots_s', 0):.3f}s vs 1 slot serial {o.get('one_slot_serial_s', 0):.3f}s"
                     f" = {o.get('ratio', 0):.2f}x (stand-in {o.get('standin_kernel_ms', 0):.2f} ms/frame)")
    for k, v in report.get("throughput", {}).items():
        if k.endswith("fps") or k.endswith("per_frame"):
            lines.append(f"throughput {k}: {v:.0f}")
    for name in [n for n, _ in steps]:
        if "error" in report.get(name, {}):
            lines.append(f"{name}: ERROR {report[name]['error']}")
    lines.append(" ".join(f"{k}={'PASS' if v is True else 'FAIL' if v != 'not run' else 'not-run'}"
                          for k, v in checks.items()))
    lines.append("PASS" if ok else "FAIL")
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
