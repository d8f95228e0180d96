#!/usr/bin/env python3
"""The GPU path's checks and figures in one short run (issue 4). Needs an NVIDIA GPU and
cuda-python; PyAV for the real frames and the CPU letterbox (else synthetic frames only).

    python3 bench/gpu_check.py [--media DIR] [--out DIR]

(a) GPU letterbox vs CPU: the kernel's output against ``letterbox_reference`` (the filter it
    implements, float64 numpy) and against the daemon's CPU letterbox (``letterbox_rgb``,
    libswscale through PyAV), on real frames of several sizes including odd widths/heights.
(b) Attribution under concurrency: 3 slots, a producer and a collector thread, batches of 1..4
    of distinct frames; a STAND-IN for the engine (``standin_checksum``, not TensorRT) reduces
    each slot's network input to 8 weighted checksums per image, and each result must equal the
    CPU checksum of the CPU letterbox of the frame its ticket names -- and no other frame's.
(c) Copy/compute overlap: a STAND-IN workload of known cost (``standin_busy``: every SM spins
    for a set number of cycles, tuned to the measured copy time of a frame) in place of the
    engine; 2 slots pipelined vs 1 slot serial over the same frames; pass at <= 0.6x.
(d) Throughput of GPU preprocessing + transfer (host -> pinned copy, H2D of the raw uint8
    frame, letterbox kernel) at 720p and 1080p, 2 slots, batch 1 and 4.

Writes gpu_check.json and gpu_check.txt to --out (default $OUT, else ./out). Exit 0 when every
check passes, 1 when one fails, 3 when no GPU/cuda-python (nothing run).
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

from daemon.backends.cuda import CudaDevice, GpuPipeline, OutputSpec, check, cuda_unavailable_reason  # noqa: E402
from daemon.vision.gpu_letterbox import letterbox_reference  # noqa: E402
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


def load_frames(media: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """Real frames (PyAV decode of the demo video and photos) plus odd-size crops."""
    frames: dict[str, np.ndarray] = {}
    try:
        import av
    except ImportError:
        av = None
    if av is not None and media is not None and media.is_dir():
        with av.open(str(media / "bikes.mp4")) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i in (0, 60, 120, 180):
                    frames[f"bikes{i}_640x272"] = f.to_ndarray(format="rgb24")
                if i > 180:
                    break
        for name in ("bus.jpg", "zidane.jpg"):
            with av.open(str(media / name)) as c:
                img = next(c.decode(video=0)).to_ndarray(format="rgb24")
            frames[f"{name.split('.')[0]}_{img.shape[1]}x{img.shape[0]}"] = img
        bus, z = frames["bus_810x1080"], frames["zidane_1280x720"]
        frames["bus_crop_809x1079"] = np.ascontiguousarray(bus[:1079, :809])
        frames["zidane_crop_1277x719"] = np.ascontiguousarray(z[1:, 3:])
        frames["zidane_crop_1279x720"] = np.ascontiguousarray(z[:, 1:])
        frames["bus_crop_233x101"] = np.ascontiguousarray(bus[100:201, 100:333])  # upscaled
        zf = av.VideoFrame.from_ndarray(z, format="rgb24")
        frames["zidane_up_1920x1080"] = zf.reformat(width=1920, height=1080, format="rgb24").to_ndarray()
        source = "real (PyAV-decoded demo video and photos)"
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:1080, 0:1920]
        base = np.stack([(127 + 120 * np.sin(xx / 9 + yy / 17)), (127 + 120 * np.cos(xx / 23)),
                         (yy * 255 // 1080)], -1).astype(np.uint8)
        base[::37] = rng.integers(0, 256, base[::37].shape, dtype=np.uint8)
        for w, h in [(1920, 1080), (1280, 720), (640, 272), (809, 1079), (1277, 719), (233, 101)]:
            frames[f"synthetic_{w}x{h}"] = np.ascontiguousarray(base[:h, :w])
        source = "synthetic (PyAV missing: no real frames)"
    return frames, source


def check_letterbox(dev: CudaDevice, frames: dict[str, np.ndarray]) -> dict[str, Any]:
    pipe = GpuPipeline(dev, W, H, 1, [OutputSpec("input", (3, H, W))],
                       lambda slot: CopyInput(dev, slot), num_slots=2)
    try:
        from daemon.vision.letterbox import letterbox_rgb
    except ImportError:
        letterbox_rgb = None
    rows = []
    for name, img in frames.items():
        info = letterbox_params(img.shape[1], img.shape[0], W, H)
        gpu = pipe.collect(pipe.submit_frames([img], [info]))[0][0]
        ref, _ = letterbox_reference(img, W, H, info)
        row = {"frame": name, "size": f"{img.shape[1]}x{img.shape[0]}",
               "max_abs_vs_reference_x255": float(np.abs(gpu - ref).max() * 255)}
        if letterbox_rgb is not None:
            cpu, _ = letterbox_rgb(img, W, H)
            d = np.abs(gpu - cpu)
            row["max_abs_vs_pyav_x255"] = float(d.max() * 255)
            row["share_over_1_255_vs_pyav"] = float((d > TOL + 1e-7).mean())
            row["ref_vs_pyav_x255"] = float(np.abs(ref - cpu).max() * 255)
        rows.append(row)
    pipe.close()
    ok_ref = all(r["max_abs_vs_reference_x255"] <= 1.0 for r in rows)
    return {"rows": rows, "pass_vs_reference": ok_ref,
            "pass_vs_pyav_all": all(r.get("max_abs_vs_pyav_x255", 0) <= 1.0 for r in rows)}


def check_attribution(dev: CudaDevice, kernels: dict[str, Any], frames: dict[str, np.ndarray],
                      n_frames: int = 96) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    pool = list(frames.values())
    imgs, refs = [], []
    for k in range(n_frames):
        base = pool[k % len(pool)].copy()
        # Distinct content per frame: a real frame plus a frame-specific patch of noise.
        base[: min(32, base.shape[0]), : min(32, base.shape[1])] = rng.integers(
            0, 256, (min(32, base.shape[0]), min(32, base.shape[1]), 3), dtype=np.uint8)
        imgs.append(base)
        refs.append(cpu_checksum(letterbox_reference(base, W, H)[0]))
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
            infos = [letterbox_params(imgs[j].shape[1], imgs[j].shape[0], W, H) for j in ids]
            q.put(pipe.submit_frames([imgs[j] for j in ids], infos, tags=ids, timeout=30))
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


def _run(pipe: GpuPipeline, imgs: list[np.ndarray], infos: list[Any], batch: int, inflight: int) -> float:
    pending: list[Any] = []
    t0 = time.perf_counter()
    for i in range(0, len(imgs), batch):
        if len(pending) >= inflight:
            pipe.collect(pending.pop(0))
        pending.append(pipe.submit_frames(imgs[i:i + batch], infos[i:i + batch]))
    for p in pending:
        pipe.collect(p)
    return time.perf_counter() - t0


def check_overlap(dev: CudaDevice, kernels: dict[str, Any], frame: np.ndarray, n: int = 120) -> dict[str, Any]:
    sms = check(dev.driver.cuDeviceGetAttribute(
        dev.driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev.device))
    sink = dev.alloc(4)
    imgs = [frame] * n
    infos = [letterbox_params(frame.shape[1], frame.shape[0], W, H)] * n
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
    return {"frame": f"{frame.shape[1]}x{frame.shape[0]}", "frames": n,
            "copy_side_ms_per_frame": copy_s * 1e3, "standin_kernel_ms": standin_ms,
            "standin_cycles": cycles, "one_slot_serial_s": serial, "two_slots_s": two,
            "ratio": ratio, "pass": ratio <= 0.6}


def throughput(dev: CudaDevice, frames: dict[str, np.ndarray], n: int = 240) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, img in frames.items():
        info = letterbox_params(img.shape[1], img.shape[0], W, H)
        for batch in (1, 4):
            pipe = GpuPipeline(dev, W, H, batch, [], None, num_slots=2)
            imgs, infos = [img] * n, [info] * n
            _run(pipe, imgs[:16], infos[:16], batch, 2)
            dt = _run(pipe, imgs, infos, batch, 2)
            pipe.close()
            out[f"{label}_batch{batch}_fps"] = n / dt
        try:
            from daemon.vision.letterbox import letterbox_rgb

            t0 = time.perf_counter()
            for _ in range(20):
                letterbox_rgb(img, W, H)
            out[f"{label}_cpu_pyav_letterbox_fps_1thread"] = 20 / (time.perf_counter() - t0)
        except ImportError:
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--media", type=Path, default=None, help="folder with bikes.mp4, bus.jpg, zidane.jpg")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
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
    frames, source = load_frames(args.media)
    report["frames"] = source
    kernels = dev.compile(STANDIN_SOURCE, ["standin_checksum", "standin_busy"], "standin.cu")
    steps = [
        ("letterbox", lambda: check_letterbox(dev, frames)),
        ("attribution", lambda: check_attribution(dev, kernels, frames)),
        ("overlap_1080p", lambda: check_overlap(dev, kernels, _pick(frames, 1920))),
        ("throughput", lambda: throughput(dev, {"720p": _pick(frames, 1280), "1080p": _pick(frames, 1920)})),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # keep going: one broken check must not hide the others
            import traceback

            report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        report[name]["elapsed_s"] = round(time.perf_counter() - t0, 2)
        print(f"== {name}\n{json.dumps(report[name], indent=1, default=str)}", flush=True)
    ok = (report["letterbox"].get("pass_vs_reference") and report["attribution"].get("pass")
          and report["overlap_1080p"].get("pass"))
    report["pass"] = bool(ok)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"device: {dev.name} (sm {dev.compute_capability}); frames: {source}"]
    for r in report["letterbox"].get("rows", []):
        lines.append(f"letterbox {r['frame']:24s} gpu-ref {r['max_abs_vs_reference_x255']:.4f}/255"
                     + (f"  gpu-pyav {r['max_abs_vs_pyav_x255']:.3f}/255" if "max_abs_vs_pyav_x255" in r else ""))
    a, o = report["attribution"], report["overlap_1080p"]
    lines.append(f"attribution: {a.get('frames')} frames, {a.get('wrong')} wrong")
    lines.append(f"overlap: 2 slots {o.get('two_slots_s', 0):.3f}s vs 1 slot serial {o.get('one_slot_serial_s', 0):.3f}s"
                 f" = {o.get('ratio', 0):.2f}x (stand-in {o.get('standin_kernel_ms', 0):.2f} ms/frame)")
    for k, v in report["throughput"].items():
        if k.endswith("fps"):
            lines.append(f"throughput {k}: {v:.0f}")
    lines.append("PASS" if ok else "FAIL")
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


def _pick(frames: dict[str, np.ndarray], width: int) -> np.ndarray:
    for img in frames.values():
        if img.shape[1] == width:
            return img
    raise LookupError(f"no {width}-wide frame")


if __name__ == "__main__":
    sys.exit(main())
