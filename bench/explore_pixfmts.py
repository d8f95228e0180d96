"""Which pixel formats and frame sizes crash libswscale (or another native call) in PyAV?

Each case is a (pixel format, width, height) frame of random bytes, round-tripped through the
``rawvideo`` codec in a NUT container (so the decoder has produced it, as in the daemon), then put
through the native calls a decoded frame reaches in detectd:

- ``letterbox``: ``frame.reformat(new_w, new_h, rgb24, BILINEAR|ACCURATE_RND|FULL_CHR_H_INT)``
  (daemon/vision/letterbox.py, the model input),
- ``rgb``: ``frame.to_ndarray(format="rgb24")`` (``Frame.rgb()``, ``detectd annotate``),
- ``preview``: ``frame.reformat(even w, even h, rgb24)`` (the preview page).

A crash (SIGABRT from an ``av_assert0``, SIGSEGV) kills the child; the parent records the case
that was running and starts a new child at the next case, so one run maps the whole table.
Result: ``bench/results/pixfmt_safety.json`` (per format: cases ok / error / crash; every case
that was not ok, with the error text or crash signal) and a summary on stdout. Run: ``python bench/explore_pixfmts.py [--formats a,b] [--sizes 17x9,2x2]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

SIZES = ["1x1", "1x2", "2x1", "2x2", "3x3", "3x2", "2x3", "4x4", "17x9", "16x9", "17x10", "16x8",
         "33x17", "640x272", "641x271", "4000x3", "3x4000"]
OPS = ["letterbox", "rgb", "preview"]


def software_formats() -> list[str]:
    import av.video.format as vf
    out = []
    for name in sorted(vf.names):
        try:
            f = vf.VideoFormat(name)
        except Exception:
            continue
        # Hardware surfaces (cuda, vaapi, ...) have no components and no CPU pixels.
        if not f.components:
            continue
        out.append(name)
    return out


def make_frame(fmt: str, w: int, h: int) -> Any:
    """A decoded frame of random bytes: encoded with rawvideo into NUT, then demuxed/decoded."""
    import av
    import numpy as np
    rng = np.random.default_rng(w * 1000 + h)
    frame = av.VideoFrame(w, h, fmt)
    for p in frame.planes:
        buf = np.frombuffer(p, np.uint8)
        buf[:] = rng.integers(0, 256, buf.size, dtype=np.uint8)
    bio = io.BytesIO()
    try:
        with av.open(bio, "w", format="nut") as out:
            s = out.add_stream("rawvideo", rate=10)
            s.width, s.height, s.pix_fmt = w, h, fmt
            for pkt in s.encode(frame):
                out.mux(pkt)
            for pkt in s.encode(None):
                out.mux(pkt)
    except Exception:
        return frame, "direct"  # rawvideo/nut refuses this format: use the frame as made
    bio.seek(0)
    try:
        with av.open(bio) as inp:
            for f in inp.decode(video=0):
                return f, "decoded"
    except av.FFmpegError:
        pass  # the rawvideo decoder refuses this size: the converters still get the frame
    return frame, "direct"


def run_op(frame: Any, op: str) -> None:
    if op == "letterbox":
        from daemon.vision.letterbox import letterbox_av
        letterbox_av(frame, 416, 416)
    elif op == "rgb":
        frame.to_ndarray(format="rgb24")
    elif op == "preview":
        w, h = frame.width, frame.height
        scale = min(1.0, 640 / w)
        frame.reformat(width=max(2, int(w * scale) // 2 * 2), height=max(2, int(h * scale) // 2 * 2),
                       format="rgb24").to_ndarray()


def child(cases: list[list[Any]]) -> None:
    for i, (fmt, size, op) in enumerate(cases):
        w, h = map(int, size.split("x"))
        print(f"START {i}", flush=True)
        try:
            frame, how = make_frame(fmt, w, h)
            run_op(frame, op)
            print(f"OK {i} {how}", flush=True)
        except Exception as exc:  # a Python error is a *safe* failure: recorded, not a crash
            msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            print(f"ERR {i} {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "pixfmt_safety.json"))
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(json.load(sys.stdin))
        return 0
    fmts = args.formats.split(",") if args.formats else software_formats()
    cases = [[f, s, o] for f in fmts for s in args.sizes.split(",") for o in args.ops.split(",")]
    results: dict[int, dict[str, Any]] = {}
    start = 0
    t0 = time.time()
    while start < len(cases):
        p = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(cases[start:]),
                           capture_output=True, text=True)
        running = None
        for line in p.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            idx, _, msg = rest.partition(" ")
            i = start + int(idx)
            if kind == "START":
                running = i
            elif kind == "OK":
                results[i] = {"result": "ok", "path": msg}
                running = None
            elif kind == "ERR":
                results[i] = {"result": "error", "error": msg}
                running = None
        if p.returncode == 0:
            break
        if running is None:
            sys.stderr.write(p.stderr[-2000:])
            raise SystemExit(f"child failed outside a case: rc {p.returncode}")
        sig = -p.returncode if p.returncode < 0 else p.returncode
        name = signal.Signals(sig).name if p.returncode < 0 else f"exit {sig}"
        tail = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or [""]
        results[running] = {"result": "crash", "signal": name, "stderr": tail[0][:200]}
        start = running + 1
    table = [dict(zip(("format", "size", "op"), c), **results.get(i, {"result": "missing"}))
             for i, c in enumerate(cases)]
    crashes = [r for r in table if r["result"] == "crash"]
    errors = [r for r in table if r["result"] == "error"]
    summary = {"cases": len(table), "ok": sum(r["result"] == "ok" for r in table),
               "errors": len(errors), "crashes": len(crashes), "seconds": round(time.time() - t0, 1)}
    # Per format: how many cases were ok / errors / crashes; every case that was not ok in full.
    formats: dict[str, dict[str, int]] = {}
    for r in table:
        counts = formats.setdefault(r["format"], {"ok": 0, "error": 0, "crash": 0, "missing": 0})
        counts[r["result"]] += 1
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"summary": summary, "sizes": args.sizes.split(","), "ops": args.ops.split(","),
                   "formats": formats, "failures": [r for r in table if r["result"] != "ok"]},
                  fh, indent=0)
    print(json.dumps(summary))
    for r in crashes:
        print("CRASH", r["format"], r["size"], r["op"], r["signal"], r.get("stderr", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
