"""One way to open an ONNX Runtime session for a pipeline stage.

Every stage runs on the CPU with its own small thread budget: parallelism comes from
concurrent requests, so each session keeps one inter-op thread and sequential execution,
and ORT's info-level chatter stays out of the service's logs.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from service.errors import InvalidArgument, ModelPackError


def cpu_session(model: Path | bytes, *, threads: int, what: str) -> ort.InferenceSession:
    """A CPU session for ``model`` (a file or serialized bytes) with ``threads`` intra-op threads.

    ``what`` names the model (and its file) in the error raised when it cannot be loaded.
    """
    if threads < 1:
        raise InvalidArgument(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own, untyped exceptions for unusable files
        raise ModelPackError(f"cannot load {what}: {exc}") from exc
