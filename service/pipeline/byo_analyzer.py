"""A FaceAnalyzer from any landmark-predicting detector and an ArcFace-style embedder.

The bring-your-own counterpart of ``DlibAnalyzer``: detector (YuNet, SCRFD or RetinaFace,
landmarks included) → ArcFace template alignment → embedder, with the same conventions
across stages (largest face first, L2-normalised embeddings). Landmarks come out in ArcFace
order, so located faces carry ``layout="arcface5"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from service.models.byo_pack import ByoPack
from service.models.calibration import Calibration
from service.models.pack import PackManifest
from service.pipeline.arcface import ArcFaceEmbedder, align_to_template
from service.pipeline.dlib_analyzer import l2_normalise, order_largest_first
from service.pipeline.onnx_detectors import build_detector
from service.pipeline.quality import ARCFACE5
from service.pipeline.timing import DETECT, NO_TIMING, StageTimer
from service.pipeline.types import DecodedImage, Detections, FloatArray, LocatedFaces, UInt8Array


class LandmarkDetector(Protocol):
    def detect(self, rgb: UInt8Array) -> Detections:
        """Boxes, scores and (N, 5, 2) ArcFace-order landmarks in image pixels."""


@dataclass(frozen=True)
class ByoAnalyzer:
    manifest: PackManifest
    detector: LandmarkDetector
    embedder: ArcFaceEmbedder
    template: np.ndarray  # (5, 2) chip pixels
    pack_dir: Path | None = None  # where the manifest lives (calibrate.py writes into it)
    timer: StageTimer = field(default=NO_TIMING, compare=False)

    @classmethod
    def from_pack(
        cls, pack: ByoPack, *, threads: int = 1, timer: StageTimer = NO_TIMING
    ) -> ByoAnalyzer:
        return cls(
            manifest=pack.manifest,
            detector=build_detector(pack.file("detector"), pack.detector, threads=threads),
            embedder=ArcFaceEmbedder(pack.file("embedder"), pack.embedder, threads=threads),
            template=np.asarray(pack.embedder.template, np.float64),
            pack_dir=pack.pack_dir,
            timer=timer,
        )

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def embedding_dim(self) -> int:
        return self.embedder.embedding_dim

    @property
    def default_threshold(self) -> float:
        return float(self.manifest.thresholds["cosine_default"])

    @property
    def calibration(self) -> Calibration | None:
        return self.manifest.calibration

    @property
    def chip_size(self) -> int:
        return self.embedder.chip_size

    def locate(self, image: DecodedImage) -> LocatedFaces:
        with self.timer.stage(DETECT):
            found = self.detector.detect(image.rgb)
        if found.landmarks is None:  # a LandmarkDetector always predicts them
            raise TypeError(f"{type(self.detector).__name__} returned no landmarks")
        order = order_largest_first(found.boxes)
        return LocatedFaces(
            boxes=np.ascontiguousarray(found.boxes[order]),
            scores=np.ascontiguousarray(found.scores[order]),
            landmarks=np.ascontiguousarray(found.landmarks[order]),
            layout=ARCFACE5,
        )

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        return align_to_template(image.rgb, faces.landmarks, self.template, self.chip_size)

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        return l2_normalise(self.embedder.embed(chips))
