"""The contract between the face pipeline and the engine that serves requests.

The engine decodes, then asks an analyzer to *locate* faces (detect + landmarks) and to
*align* the chosen face into a chip; chips from many concurrent requests are then embedded
in one batched model run (``embed_chips``), which is why the three steps are separate.
"""

from __future__ import annotations

from typing import Protocol

from service.models.calibration import Calibration
from service.pipeline.types import DecodedImage, FloatArray, LocatedFaces, UInt8Array


class FaceAnalyzer(Protocol):
    @property
    def model_id(self) -> str:
        """Identifies the embedding space; templates of different model ids never meet."""

    @property
    def embedding_dim(self) -> int: ...

    @property
    def default_threshold(self) -> float:
        """Cosine-similarity threshold from the model pack's manifest (uncalibrated)."""

    @property
    def calibration(self) -> Calibration | None:
        """Thresholds per target false-match rate measured for this pack, if any."""

    def locate(self, image: DecodedImage) -> LocatedFaces:
        """All faces in the image, largest first."""

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        """(N, S, S, 3) uint8 RGB chips, one per located face."""

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        """(N, D) float32 L2-normalised embeddings, one model run for the whole batch."""
