"""Embed aligned face chips with the pack's descriptor network (one ONNX Runtime run).

The ONNX graph takes uint8 RGB chips in NHWC exactly as alignment produces them and does
dlib's preprocessing itself, so a whole batch is one ``run`` with no numpy work around it.
Descriptors come out raw (dlib's scale, norm ≈ 1); normalising is the analyzer's job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.errors import InvalidArgument, ModelPackError
from service.pipeline.onnx_session import cpu_session
from service.pipeline.types import FloatArray, UInt8Array


class Embedder:
    """(N, S, S, 3) uint8 chips → (N, D) float32 raw descriptors. Thread-safe."""

    def __init__(self, onnx_path: Path, *, threads: int = 1) -> None:
        self._session = cpu_session(
            onnx_path, threads=threads, what=f"descriptor model {onnx_path}"
        )
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelPackError(f"{onnx_path}: expected one input and one output")
        shape = inputs[0].shape
        out_shape = outputs[0].shape
        if (
            inputs[0].type != "tensor(uint8)"
            or len(shape) != 4
            or shape[3] != 3
            or not isinstance(shape[1], int)
            or shape[1] != shape[2]
            or len(out_shape) != 2
            or not isinstance(out_shape[1], int)
        ):
            raise ModelPackError(
                f"{onnx_path}: expected uint8 [N,S,S,3] → [N,D], got {inputs[0].type} "
                f"{shape} → {out_shape}"
            )
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.chip_size: int = shape[1]
        self.embedding_dim: int = out_shape[1]
        self.threads = threads

    def embed(self, chips: UInt8Array) -> FloatArray:
        """Raw descriptors for a batch of chips; N = 0 gives a (0, D) array."""
        s = self.chip_size
        if not isinstance(chips, np.ndarray):
            raise InvalidArgument(f"chips must be a numpy array, got {type(chips).__name__}")
        if chips.dtype != np.uint8:
            raise InvalidArgument(f"chips must be uint8, got {chips.dtype}")
        if chips.ndim != 4 or chips.shape[1:] != (s, s, 3):
            raise InvalidArgument(f"chips must have shape (N, {s}, {s}, 3), got {chips.shape}")
        if chips.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        (out,) = self._session.run([self._output], {self._input: np.ascontiguousarray(chips)})
        return np.ascontiguousarray(out, dtype=np.float32)
