"""Cost of applying display orientation in the letterbox, measured side by side.

Three ways to letterbox one decoded phone frame (720x540 stored, turned cclock) into the 416x416
network input, in interleaved rounds so that machine noise hits all alike:

- ``stored``: ``letterbox_av`` on the frame as stored (no turn: the baseline, wrong picture);
- ``turn_small`` (what detectd does): scale in the stored orientation, turn the small RGB result
  with a numpy view written straight into the input (``letterbox_oriented``);
- ``turn_full``: convert the full frame to RGB, turn it, then letterbox the RGB array.

Writes bench/results/orient.json: median seconds per frame and ratios to ``stored``.
Run: ``.venv/bin/python bench/bench_orient.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.vision.letterbox import letterbox_av, letterbox_rgb
from daemon.vision.orient import frame_orientation, letterbox_oriented, oriented_rgb


def main(rounds: int = 15, per_round: int = 40) -> dict[str, object]:
    with av.open(str(ROOT / "tests/data/rotated_phone.mp4")) as c:
        vf = next(c.decode(video=0))
    orient = frame_orientation(vf)
    out = np.empty((3, 416, 416), np.float32)
    ways = {
        "stored": lambda: letterbox_av(vf, 416, 416, out),
        "turn_small": lambda: letterbox_oriented(vf, orient, 416, 416, out),
        "turn_full": lambda: letterbox_rgb(oriented_rgb(vf, orient), 416, 416, out),
    }
    samples: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(per_round):
                ways[name]()
            samples[name].append((time.perf_counter() - t0) / per_round)
    med = {k: statistics.median(v) for k, v in samples.items()}
    result = {"frame": f"{vf.width}x{vf.height} {vf.format.name}, {orient}", "rounds": rounds,
              "per_round": per_round, "median_s": med,
              "ratio_to_stored": {k: round(v / med["stored"], 3) for k, v in med.items()}}
    result["loadavg"] = os.getloadavg()
    path = ROOT / "bench/results/orient.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
