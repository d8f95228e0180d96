"""ONNX Runtime on the CPU: the backend for machines without an NVIDIA GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from daemon.backends.base import BackendError

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, input_name: str, output_names: list[str], *,
                 precision: str = "fp32", threads: int = 0, max_batch: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # threads=0 lets ONNX Runtime use one thread per physical core.
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # No busy-waiting between ops: the decoder threads share these cores, and spinning
        # workers starve them (measured: faster end to end on a loaded 2-core machine).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BackendError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        if input_name not in inputs:
            raise BackendError(f"{path}: model has no input {input_name!r} (inputs: {inputs})")
        outputs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in output_names if n not in outputs]
        if missing:
            raise BackendError(f"{path}: model lacks outputs {missing} (outputs: {outputs})")
        self.input_name = input_name
        self.output_names = list(output_names)
        self.precision = precision
        self.max_batch = max(1, int(max_batch))
        self.threads = threads

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: batch})

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
