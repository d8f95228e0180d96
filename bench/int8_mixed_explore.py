"""The exploration behind mixed precision (docs/int8.md, "Mixed precision"): tensorrt-layout
models with chosen convolution inputs kept float, scored against FP32 on calibration frames and
on the harness. A development tool, not the benchmark (bench/bench_int8.py is).

    .venv/bin/python bench/int8_mixed_explore.py SIDECAR.calib.table.json > out.log

SIDECAR: a calibration table's sidecar (its `tensors` give the thresholds), e.g. the daemon's
in `<cache>/models/`. Prints (1) each convolution input's sensitivity: the lowest head SQNR with
only it quantized, on every 10th calibration frame (30); (2) class-averaged / box-weighted mAP@0.5
and the lowest head SQNR of a few float choices, on every 3rd calibration frame (100) and on the
harness (310 held-out frames). Output of the fifth session's run:
bench/results/int8-mixed-exploration.log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_int8 as B  # noqa: E402
from daemon.config import ModelConfig  # noqa: E402
from daemon.models.info import ModelInfo  # noqa: E402
from daemon.models.resolve import fp32_model  # noqa: E402
from daemon.quant import qdq  # noqa: E402
from daemon.quant.agreement import head_sqnr_db, map_at_50  # noqa: E402
from daemon.quant.histogram import TensorStats  # noqa: E402
from daemon.quant.sources import FrameSource  # noqa: E402
from daemon.vision.letterbox import letterbox_av  # noqa: E402
from daemon.vision.yolo import postprocess  # noqa: E402

COMBOS = [[], ["maxpool_1"], ["images", "maxpool_1"], ["maxpool_1", "maxpool_7"],
          ["images", "maxpool_1", "maxpool_3", "maxpool_7", "maxpool_11"]]


def main() -> int:
    fp32 = fp32_model(ModelConfig())
    info = ModelInfo.from_onnx(fp32)
    proto = onnx.load(str(fp32))
    heads = [h.name for h in info.heads]
    side = json.loads(Path(sys.argv[1]).read_text())
    stats = qdq.share_ranges(proto, {n: TensorStats(n, t["min"], t["max"], t["threshold"])
                                     for n, t in side["tensors"].items()})
    inputs = qdq.conv_inputs(proto)

    def model(float_inputs: list[str]) -> bytes:
        return qdq.quantize_model(proto, stats, "tensorrt",
                                  float_inputs=float_inputs).SerializeToString()

    cal, cal_infos, ten = [], [], []
    for i, (frame, _, _) in enumerate(FrameSource("demo").split_frames(300, 0)):
        if i % 3 == 0 or i % 10 == 0:
            x, li = letterbox_av(frame, 416, 416)
            if i % 3 == 0:
                cal.append(x)
                cal_infos.append(li)
            if i % 10 == 0:
                ten.append(x)
    dev = np.stack(cal)
    every10 = np.stack(ten)
    ref = B.run(B.session(str(fp32), 2), every10, heads)
    for t in inputs:
        out = B.run(B.session(model([c for c in inputs if c != t]), 2), every10, heads)
        print(f"sensitivity {t}: {min(head_sqnr_db(heads, ref, out).values()):.2f} dB", flush=True)
    frames, infos, _ = B.harness_frames()
    sets = {"calibration part (every 3rd)": (dev, cal_infos), "harness": (frames, infos)}
    refs = {}
    for k, (fr, inf) in sets.items():
        out = B.run(B.session(str(fp32), 2), fr, heads)
        refs[k] = (out, postprocess(out, inf, info.heads, 0.25, 0.45))
    for combo in COMBOS:
        sess = B.session(model(combo), 2)
        parts = []
        for k, (fr, inf) in sets.items():
            out = B.run(sess, fr, heads)
            ro, rd = refs[k]
            a = map_at_50(rd, postprocess(out, inf, info.heads, 0.05, 0.45))
            parts.append(f"{k} {a.map50:.3f} / {a.box_weighted:.4f} / "
                         f"{min(head_sqnr_db(heads, ro, out).values()):.1f}")
        print(f"float {combo or 'nothing'}: " + " | ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
