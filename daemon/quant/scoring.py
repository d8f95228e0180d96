"""Scoring INT8 models against the FP32 model on held-out frames: mAP@0.5 agreement, head SQNR
and the tensors whose own quantization loses the most."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from daemon.quant import qdq
from daemon.quant.agreement import SqnrAccumulator, fake_quantize, head_sqnr_db, map_at_50
from daemon.quant.errors import check_cancel
from daemon.quant.histogram import ActivationCollector, TensorStats
from daemon.quant.report import VariantReport
from daemon.vision.letterbox import LetterboxInfo



def session(model: bytes | str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_batches(sess: ort.InferenceSession, input_name: str, frames: np.ndarray,
                 batch: int, outputs: list[str] | None = None,
                 cancel: threading.Event | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """`sess`'s outputs over `frames` (N x C x H x W float32), `batch` frames a run, concatenated
    along N; `on_batch(n)` is told how many frames each run took (progress)."""
    parts = []
    for i in range(0, len(frames), batch):
        check_cancel(cancel)  # hundreds of held-out frames: a stop must not wait for all
        parts.append(sess.run(outputs, {input_name: frames[i:i + batch]}))
        if on_batch is not None:
            on_batch(len(frames[i:i + batch]))
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]



def score_variants(
    proto: onnx.ModelProto, info: Any, stats: dict[str, TensorStats], blobs: dict[str, bytes],
    frames: np.ndarray, infos: list[LetterboxInfo], variants: dict[str, VariantReport],
    batch: int, threads: int, cancel: threading.Event | None = None, conf: float = 0.25,
    nms: float = 0.45, pred_conf: float = 0.05, tensor_sqnr: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, int]:
    """mAP@0.5 of each INT8 variant against FP32 on held-out frames, SQNR of the heads, and
    the tensors whose own quantization (FP32 activations quantized with the chosen scales)
    loses the most. `progress(done, total)` is called after each batch, counting frame runs:
    every held-out frame goes through FP32 and each variant, so total = frames x (1 + variants)
    (the optional per-tensor SQNR pass is not counted)."""
    from daemon.vision.yolo import postprocess

    total = len(frames) * (1 + len(blobs))
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    heads = [h.name for h in info.heads]
    fp32 = session(proto.SerializeToString(), threads)
    ref_out = run_batches(fp32, info.input_name, frames, batch, heads, cancel, tick)
    reference = postprocess(ref_out, infos, info.heads, conf, nms)
    del fp32
    classes = len({int(c) for d in reference for c in d.class_ids})
    for t, blob in blobs.items():
        check_cancel(cancel)
        sess = session(blob, threads)
        out = run_batches(sess, info.input_name, frames, batch, heads, cancel, tick)
        predicted = postprocess(out, infos, info.heads, pred_conf, nms)
        v = variants[t]
        agreement = map_at_50(reference, predicted)
        v.map50 = agreement.map50
        v.map50_box_weighted = round(agreement.box_weighted, 4)
        v.head_sqnr_db = {k: round(x, 2) for k, x in head_sqnr_db(heads, ref_out, out).items()}
    if not tensor_sqnr:
        return len(frames), sum(len(d) for d in reference), classes
    # per-tensor SQNR, one frame batch at a time (activations are not kept)
    # tensors a variant keeps in float (mixed precision) lose nothing there: not listed
    trt_float, cpu_float = (qdq.float_tensors(proto, t, variants[t].fallback.get("float_inputs", ()))
                            for t in ("tensorrt", "cpu"))
    trt_tensors = set(qdq.conv_inputs(proto)) - trt_float
    cpu_params = {k: v for k, v in qdq.cpu_params(proto, stats).items() if k not in cpu_float}
    collector = ActivationCollector(proto, threads=threads)
    acc_trt, acc_cpu = SqnrAccumulator(), SqnrAccumulator()
    names = collector.tensors
    for i in range(0, len(frames), batch):
        check_cancel(cancel)
        x = frames[i:i + batch]
        outs = dict(zip(collector._run, collector.session.run(collector._run,
                                                               {collector.input_name: x})))
        outs[collector.input_name] = x
        for name in names:
            a = outs.get(name)
            if a is None:
                continue
            if name in trt_tensors:
                p = qdq.symmetric_int8(stats[name].threshold)
                acc_trt.add(name, a, fake_quantize(a, p.scale, 0, -128, 127))
            if name in cpu_params:
                p = cpu_params[name]
                acc_cpu.add(name, a, fake_quantize(a, p.scale, p.zero_point, 0, 255))
        del outs
    variants["tensorrt"].worst_tensors_sqnr_db = [(n, round(d, 2)) for n, d in acc_trt.worst(5)]
    variants["cpu"].worst_tensors_sqnr_db = [(n, round(d, 2)) for n, d in acc_cpu.worst(5)]
    return len(frames), sum(len(d) for d in reference), classes

