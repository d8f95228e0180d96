"""How well does daemon/sources/damage.py find smeared frames? Cut transport-stream packets out of
an intact file at many positions, decode both, and compare the frames marked damaged with the
frames whose pixels differ from the intact decode (same pts).

``python bench/damage_sweep.py [INTACT.ts] [--step 9] [--run 1]`` -> bench/results/damage_sweep.json
with, per cut, the frames that differ, the frames marked, misses (differ, not marked) and extra
marks (marked, identical), and totals for CORRUPT_HOLD_PACKETS 0..4.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import Any

import av
import numpy as np

from daemon.sources import damage

TS = 188


THREAD_TYPE = "AUTO"
HOLDS = (0, 1, 3)


def decode(data: bytes, hold: int) -> dict[int, tuple[bool, np.ndarray]]:
    damage.CORRUPT_HOLD_PACKETS = hold
    out: dict[int, tuple[bool, np.ndarray]] = {}
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        s.thread_type = THREAD_TYPE
        t = damage.DamageTracker(float(s.time_base))
        for p in c.demux(s):
            t.on_packet(p.pts, p.dts, p.duration, p.is_keyframe, p.is_corrupt)
            try:
                frames = p.decode()
            except av.FFmpegError:
                t.on_loss("rejected")
                continue
            for f in frames:
                out[f.pts] = (t.on_frame(f.pts, f.is_corrupt, f.key_frame), f.to_ndarray(format="gray"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("intact", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "loss_intact.ts"))
    ap.add_argument("--step", type=int, default=9)
    ap.add_argument("--run", type=int, default=1, help="consecutive TS packets removed per cut")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "damage_sweep.json"))
    ap.add_argument("--thread-type", default="AUTO", help="AUTO (files), NONE (live), SLICE (PyAV's default)")
    args = ap.parse_args()
    global THREAD_TYPE
    THREAD_TYPE = args.thread_type
    src = open(args.intact, "rb").read()
    ref = {k: v[1] for k, v in decode(src, 0).items()}
    totals: dict[int, dict[str, int]] = {}
    cuts: list[dict[str, Any]] = []
    for hold in HOLDS:
        tot = {"cuts": 0, "cuts_with_damage": 0, "damaged_frames": 0, "missed": 0, "extra": 0,
               "cuts_with_a_miss": 0}
        for start in range(4, len(src) // TS - args.run, args.step):
            data = src[:start * TS] + src[(start + args.run) * TS:]
            got = decode(data, hold)
            differ = {k for k, (_, img) in got.items() if k in ref and not np.array_equal(img, ref[k])}
            marked = {k for k, (d, _) in got.items() if d}
            tot["cuts"] += 1
            tot["cuts_with_damage"] += bool(differ)
            tot["damaged_frames"] += len(differ)
            tot["missed"] += len(differ - marked)
            tot["extra"] += len(marked - differ)
            tot["cuts_with_a_miss"] += bool(differ - marked)
            if hold == damage.CORRUPT_HOLD_PACKETS_DEFAULT:
                cuts.append({"cut": start, "differ": len(differ), "marked": len(marked),
                             "missed": sorted(differ - marked), "extra": len(marked - differ)})
        totals[hold] = tot
        print(hold, tot, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"file": os.path.basename(args.intact), "run": args.run, "step": args.step,
                   "thread_type": args.thread_type,
                   "totals_by_hold": totals, "cuts": cuts}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
