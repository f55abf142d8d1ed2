"""The default model pack's analyzer: dlib MMOD → 5-point ERT → 150×150 chip → ResNet.

It composes the stage modules and owns nothing but their wiring and the few conventions
that span stages (largest face first, L2-normalised embeddings).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import Settings
from service.models.pack import PackManifest, ensure_default_pack
from service.pipeline.align import extract_chips
from service.pipeline.detect import MmodDetector
from service.pipeline.embed import Embedder
from service.pipeline.landmarks import ShapePredictor
from service.pipeline.types import DecodedImage, FloatArray, LocatedFaces, UInt8Array


def order_largest_first(boxes: FloatArray) -> np.ndarray:
    """Indices that sort boxes by area, largest first (ties keep detector order)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return np.argsort(-areas, kind="stable")


def l2_normalise(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A zero descriptor never comes out of the ResNet; guard anyway so NaN can't reach the index.
    out = vectors / np.maximum(norms, np.float32(1e-12))
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class DlibAnalyzer:
    """FaceAnalyzer over the converted dlib models (no dlib at run time)."""

    manifest: PackManifest
    detector: MmodDetector
    landmarker: ShapePredictor
    embedder: Embedder

    @classmethod
    def from_pack(cls, pack_dir: Path, manifest: PackManifest, *, threads: int = 1) -> DlibAnalyzer:
        files = manifest.files
        return cls(
            manifest=manifest,
            detector=MmodDetector(
                pack_dir / files["detector"].path,
                upsample=int(manifest.detector.get("upsample", 1)),
                threads=threads,
            ),
            landmarker=ShapePredictor.from_file(pack_dir / files["landmarks"].path),
            embedder=Embedder(pack_dir / files["embedder"].path, threads=threads),
        )

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest.embedder["embedding_dim"])

    @property
    def default_threshold(self) -> float:
        return float(self.manifest.thresholds["cosine_default"])

    @property
    def chip_size(self) -> int:
        return int(self.manifest.embedder["chip_size"])

    @property
    def chip_padding(self) -> float:
        return float(self.manifest.embedder["padding"])

    def locate(self, image: DecodedImage) -> LocatedFaces:
        found = self.detector.detect(image.rgb)
        order = order_largest_first(found.boxes)
        boxes = np.ascontiguousarray(found.boxes[order])
        scores = np.ascontiguousarray(found.scores[order])
        landmarks = self.landmarker.predict(image.rgb, boxes)
        return LocatedFaces(boxes=boxes, scores=scores, landmarks=landmarks)

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        return extract_chips(
            image.rgb, faces.landmarks, size=self.chip_size, padding=self.chip_padding
        )

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        return l2_normalise(self.embedder.embed(chips))


_build_lock = threading.Lock()


def build_default_analyzer(settings: Settings) -> DlibAnalyzer:
    """Prepare the default pack on first use (seconds), verify it, and load its models."""
    with _build_lock:
        pack_dir, manifest = ensure_default_pack(settings.packs_dir)
    return DlibAnalyzer.from_pack(pack_dir, manifest, threads=settings.model_threads)
