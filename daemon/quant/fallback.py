"""Mixed precision: which convolution inputs stay in float after INT8 calibration.

Entropy calibration (TensorRT's EntropyCalibration2) chooses each threshold from that tensor's
histogram alone. For YOLOv3-Tiny one tensor decides most of the loss: the first pool
(``maxpool_1``, the second convolution's input), whose rare values between ~22 and ~60 carry
what the detector needs and which every entropy calibration clips at 21-23, TensorRT's own
table included (docs/int8.md, "What limits agreement"). No threshold choice fixes that without
leaving the method; running that one convolution in higher precision does, at a cost that is
small on a GPU. This is the accuracy-controlled fallback of NNCF's
``quantize_with_accuracy_control`` and of TensorRT's per-layer precision, decided on the
calibration frames only (the held-out frames stay for the gate):

0. In the ``tensorrt`` layout the network's image input stays float by rule (``fixed``): the
   pixels are 8-bit, the symmetric int8 form at TensorRT's scale 1/127 keeps 7 of those bits, and
   a 3-channel first convolution gains nothing from INT8 (the ``cpu`` layout's uint8 input at
   1/255 is exact, so it has no such rule).
1. On a sample of the calibration frames (``SAMPLE`` at most, spread over the set: ``Sampler``), the
   all-INT8 model's box-weighted mAP@0.5 agreement with FP32 (FP32 detections at conf 0.25 as
   reference, INT8 at conf 0.05: the gate's definition, daemon.quant.agreement) is measured.
   Within ``max_drop`` of 1.0: nothing stays float.
2. Otherwise each convolution input is ranked by its sensitivity: the lowest head SQNR (dB) of
   the model with only that tensor quantized (every other convolution input kept float). Only
   inputs whose float convolutions (``weight_shares``) hold at most ``MAX_WEIGHT_SHARE`` (1%) of the model's weights are
   candidates, so the model stays about 4x smaller than FP32: the early, wide layers, where one
   clipped channel spreads furthest and a float convolution costs the least memory.
3. The most sensitive are kept in float one at a time, in rank order, re-measuring the
   agreement after each, until it is within ``max_drop`` or ``max_layers`` are float. The
   prefix with the best agreement is kept (the shortest on a tie; nothing when no prefix beats
   the all-INT8 model), so reverts after the best prefix are dropped.

With fewer than ``MIN_BOXES`` FP32 boxes in the sample nothing is decided (one box would move the
agreement by more than the drop allowed).

The thresholds themselves are untouched: the TensorRT table still holds every tensor's
entropy threshold (TensorRT 10 builds from the Q/DQ model, where a convolution without Q/DQ
runs in float). Which variants get a fallback is ``model.calibration.fallback_targets``
(default ``tensorrt`` only: in the ``cpu`` layout the float first layers add 35% to
OpenVINO's time per frame and 12% to ONNX Runtime's, measured in docs/int8.md). The image-input
rule (step 0) applies whenever mixed precision is on for the ``tensorrt`` variant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import onnx

from daemon.quant import qdq
from daemon.quant.agreement import head_sqnr_db, map_at_50
from daemon.quant.errors import check_cancel
from daemon.quant.histogram import TensorStats
from daemon.vision.letterbox import LetterboxInfo

log = logging.getLogger("detectd.calibrate")

SAMPLE = 48  # at most, calibration frames the decision is measured on (demo: 38, 59 FP32 boxes)
# A candidate's convolutions may hold at most this share of the model's weights, so an INT8
# model stays ~4x smaller than FP32 whatever is kept float. YOLOv3-Tiny's candidates: the inputs
# of its first four convolutions (images 0.005%, maxpool_1 0.05%, maxpool_3 0.2%, maxpool_5 0.8%
# of 8.9 M weights) and of two 1x1 ones (route_17 0.4%, leaky_21 0.7%); the deep 3x3 ones
# (leaky_13 -> conv_14: 13%) are not.
MAX_WEIGHT_SHARE = 0.01


MIN_BOXES = 30  # fewer FP32 boxes in the sample: one box would move the agreement by > 0.03


def weight_shares(model: onnx.ModelProto, target: str = "tensorrt") -> dict[str, float]:
    """Per convolution input (``qdq.conv_inputs``): the share of all convolution weights (0..1)
    that stays float when it is kept float in `target`'s layout: the convolutions it feeds
    (``tensorrt``), or those fed by any tensor of its ``qdq.float_group`` (``cpu``):
    ``qdq.float_tensors``."""
    inits = {i.name: i for i in model.graph.initializer}
    per: dict[str, int] = dict.fromkeys(qdq.conv_inputs(model), 0)
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) >= 2 and node.input[0] in per \
                and node.input[1] in inits:
            per[node.input[0]] += int(np.prod(inits[node.input[1]].dims))
    total = sum(per.values()) or 1
    out = {}
    for t in per:
        unquantized = qdq.float_tensors(model, target, [t])
        out[t] = sum(w for x, w in per.items() if x in unquantized) / total
    return out


class Sampler:
    """Up to ``SAMPLE`` frames spread evenly over a stream of unknown length, in bounded memory:
    every k-th frame is kept; when one more than ``SAMPLE`` would be held, every other one is
    dropped and k doubles. So the sample covers everything that arrived (a source that runs
    short, a `count` larger than the source): every frame up to ``SAMPLE`` of them, else
    between SAMPLE/2 + 1 and SAMPLE (38 of the demo's 300)."""

    def __init__(self, size: int = SAMPLE) -> None:
        self.size = max(2, size)
        self.step = 1
        self.frames: list[np.ndarray] = []
        self.infos: list[LetterboxInfo] = []
        self.indices: list[int] = []

    def offer(self, index: int, frame: np.ndarray, info: LetterboxInfo) -> None:
        """Frame number `index` (0, 1, 2, ... in arrival order); copied when kept."""
        if index % self.step:
            return
        self.frames.append(frame.copy())
        self.infos.append(info)
        self.indices.append(index)
        if len(self.frames) > self.size:
            self.step *= 2
            keep = [k for k, i in enumerate(self.indices) if i % self.step == 0]
            self.frames = [self.frames[k] for k in keep]
            self.infos = [self.infos[k] for k in keep]
            self.indices = [self.indices[k] for k in keep]

    def stacked(self) -> np.ndarray | None:
        return np.stack(self.frames) if self.frames else None


@dataclass
class FallbackReport:
    """What the fallback measured for one variant (``target``). Agreements are box-weighted
    mAP@0.5 against FP32 on ``frames`` calibration frames with ``boxes`` FP32 boxes;
    ``fixed`` are kept float by rule, before anything is measured (the ``tensorrt`` layout's
    8-bit image input); ``baseline`` is the agreement with only those float;
    ``sensitivity_db`` maps each candidate convolution input to the lowest head SQNR (dB) with
    only it quantized (empty when the baseline was already within ``max_drop``); ``steps`` lists
    (tensor kept float, agreement after) in the order tried; ``float_inputs`` all kept float,
    ``fixed`` first."""

    target: str
    max_drop: float
    max_layers: int
    frames: int = 0
    boxes: int = 0
    baseline: float | None = None
    fixed: list[str] = field(default_factory=list)
    sensitivity_db: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)
    float_inputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FallbackReport":
        r = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        r.steps = [(str(a), float(b)) for a, b in r.steps]  # JSON gives lists
        return r

    def line(self) -> str:
        """One line for the calibration summary."""
        if self.max_layers <= 0:
            return ("mixed precision: off for this variant (every convolution INT8; "
                    "fallback_targets, fallback_max_layers)")
        fixed = "".join(f"{t} (8-bit input, by rule), " for t in self.fixed)
        if self.baseline is None:
            return (f"mixed precision: kept in float {fixed or 'nothing, '}nothing measured: "
                    f"{self.boxes} FP32 boxes in the {self.frames} calibration frames sampled, "
                    f"fewer than {MIN_BOXES}")
        target = 1.0 - self.max_drop
        chosen = self.float_inputs[len(self.fixed):]
        if not chosen:
            why = (f"within {self.max_drop:g} of 1" if within(self.baseline, self.max_drop)
                   else "keeping more in float did not help")
            return (f"mixed precision: kept in float {fixed or 'nothing, '}the rest INT8 "
                    f"(agreement {self.baseline:.3f} on {self.frames} calibration frames, {why})")
        after = dict(self.steps)[chosen[-1]]
        short = "" if within(after, self.max_drop) else (
            f"; short of {target:.2f}, stopped at fallback_max_layers {self.max_layers}")
        return (f"mixed precision: kept in float {fixed}{', '.join(chosen)} (agreement on "
                f"{self.frames} calibration frames {self.baseline:.3f} -> {after:.3f}{short})")


def within(agreement: float, max_drop: float) -> bool:
    """The stop rule, one predicate for the decision and the summary: `agreement` is at most
    `max_drop` short of 1 (a float-rounding margin of 1e-9, so 0.99 is within 0.01)."""
    return agreement >= 1.0 - max_drop - 1e-9


def greedy(ranked: Sequence[str], baseline: float, evaluate: Callable[[list[str]], float],
           max_drop: float, max_layers: int) -> tuple[list[tuple[str, float]], list[str]]:
    """Steps 1 and 3 of the module docstring as a pure function: (steps, kept). `evaluate`
    returns the agreement with the given inputs kept float."""
    steps: list[tuple[str, float]] = []
    if within(baseline, max_drop):
        return steps, []
    chosen: list[str] = []
    best, best_n = baseline, 0
    for t in ranked[:max_layers]:
        chosen.append(t)
        a = evaluate(list(chosen))
        steps.append((t, a))
        if a > best:
            best, best_n = a, len(chosen)
        if within(a, max_drop):
            break
    return steps, chosen[:best_n]


def choose_float_inputs(
    proto: onnx.ModelProto, info: Any, stats: Mapping[str, TensorStats], frames: np.ndarray,
    infos: Sequence[LetterboxInfo], target: str, max_drop: float, max_layers: int,
    batch: int, threads: int, cancel: threading.Event | None = None,
) -> FallbackReport:
    """Decide which convolution inputs of the `target` variant stay float (module docstring).

    `frames`: (N, 3, H, W) float32 letterboxed calibration frames, `infos` their letterbox
    geometry; `stats` the calibrated (shared) statistics. ONNX Runtime runs `batch` frames at
    a time on `threads` threads. Cost: one FP32 pass, one all-INT8 pass and, when the drop is
    larger than `max_drop`, one pass per candidate (6 of YOLOv3-Tiny's 13 convolution inputs)
    and up to `max_layers` more: under a minute for 48 frames on 2 cores. Raises CalibrationCancelled
    when `cancel` is set."""
    from daemon.quant.scoring import run_batches, session
    from daemon.vision.yolo import postprocess

    report = FallbackReport(target, max_drop, max_layers)
    if max_layers <= 0:
        return report
    inputs = qdq.conv_inputs(proto)
    if target == "tensorrt":
        # The pixels are 8-bit; the symmetric int8 form at TensorRT's scale 1/127 holds 7 bits
        # of them, and a 3-channel first convolution gains nothing from INT8.
        graph_inputs = {i.name for i in proto.graph.input}
        report.fixed = [t for t in inputs if t in graph_inputs]
    report.float_inputs = list(report.fixed)
    if not len(frames):
        return report
    t0 = time.perf_counter()
    log.info("mixed precision (%s variant): measuring on %d calibration frames (10-60 s "
             "on 2 cores)", target, len(frames))
    heads = [h.name for h in info.heads]

    def outputs(float_inputs: list[str]) -> list[np.ndarray]:
        check_cancel(cancel)
        model = qdq.quantize_model(proto, stats, target, float_inputs=float_inputs)
        return run_batches(session(model.SerializeToString(), threads), info.input_name, frames,
                           batch, heads, cancel)

    ref_out = run_batches(session(proto.SerializeToString(), threads), info.input_name, frames,
                          batch, heads, cancel)
    reference = postprocess(ref_out, list(infos), info.heads, 0.25, 0.45)

    def agreement(float_inputs: list[str]) -> float:
        predicted = postprocess(outputs(float_inputs), list(infos), info.heads, 0.05, 0.45)
        return round(map_at_50(reference, predicted).box_weighted, 4)

    report.frames, report.boxes = len(frames), sum(len(d) for d in reference)
    if report.boxes >= MIN_BOXES:  # fewer: one box would move the agreement by > 0.03
        _decide(report, proto, target, inputs, ref_out, heads, outputs, agreement)
    log.info("mixed precision (%s variant), %.0f s: %s", target, time.perf_counter() - t0,
             report.line().removeprefix("mixed precision: "))
    return report


def _decide(report: FallbackReport, proto: onnx.ModelProto, target: str, inputs: list[str],
            ref_out: list[np.ndarray], heads: list[str],
            outputs: Callable[[list[str]], list[np.ndarray]],
            agreement: Callable[[list[str]], float]) -> None:
    """Steps 1-3 of the module docstring, from `report.fixed` on; fills `report`."""
    fixed = list(report.fixed)
    report.baseline = agreement(fixed)
    if within(report.baseline, report.max_drop):
        return
    shares = weight_shares(proto, target)
    candidates = [t for t in inputs if shares[t] <= MAX_WEIGHT_SHARE and t not in fixed]
    for t in candidates:
        # only t quantized: every other convolution input float
        quantized = outputs([c for c in inputs if c != t])
        report.sensitivity_db[t] = round(min(head_sqnr_db(heads, ref_out, quantized).values()), 2)
    ranked = sorted(candidates, key=lambda t: report.sensitivity_db[t])
    report.steps, kept = greedy(ranked, report.baseline, lambda c: agreement(fixed + c),
                                report.max_drop, report.max_layers)
    report.float_inputs = fixed + kept
