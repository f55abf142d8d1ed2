"""The default model pack's analyzer: dlib MMOD → 5-point ERT → 150×150 chip → ResNet.

It composes the stage modules and owns nothing but their wiring and the few conventions
that span stages (largest face first, L2-normalised embeddings).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from service.config import Settings
from service.models.calibration import Calibration
from service.models.pack import PackManifest, ensure_default_pack
from service.pipeline.align import extract_chips
from service.pipeline.detect import MmodDetector
from service.pipeline.embed import Embedder
from service.pipeline.landmarks import ShapePredictor
from service.pipeline.timing import DETECT, LANDMARKS, NO_TIMING, StageTimer
from service.pipeline.types import DecodedImage, Detections, FloatArray, LocatedFaces, UInt8Array


def order_largest_first(boxes: FloatArray) -> np.ndarray:
    """Indices that sort boxes by area, largest first (ties keep detector order)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return np.argsort(-areas, kind="stable")


# "auto" upsampling: frames whose shorter side is below this are small or far-away shots, so
# the detector looks at them at double size (faces from ~40 px); larger frames from a
# counter-top camera hold faces well above the MMOD window's ~80 px, and skipping the
# upsample makes detection ~4× cheaper (measured 145 vs 543 ms on a 640×480 frame).
AUTO_UPSAMPLE_BELOW_PX = 480


def choose_upsample(policy: int, height: int, width: int) -> int:
    """The detector's upsample count for one image; policy < 0 means automatic."""
    if policy >= 0:
        return policy
    return 1 if min(height, width) < AUTO_UPSAMPLE_BELOW_PX else 0


def detection_view(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image the detector runs on, and the factor from its pixels back to ``rgb``'s.

    Detection cost grows with the pixel count, so a large photo is shrunk to ``max_side``
    first (bounding the CPU one request can take); landmarks and the chip still come from
    the full-resolution image.
    """
    h, w = rgb.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return rgb, 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return np.ascontiguousarray(small), w / size[0]


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
    # < 0: automatic (see choose_upsample); >= 0: always that many doublings.
    upsample: int = -1
    # Larger images are shrunk to this longer side for detection; 0 = never.
    detect_max_side: int = 1280
    timer: StageTimer = field(default=NO_TIMING, compare=False)

    @classmethod
    def from_pack(
        cls,
        pack_dir: Path,
        manifest: PackManifest,
        *,
        threads: int = 1,
        upsample: int = -1,
        detect_max_side: int = 1280,
        timer: StageTimer = NO_TIMING,
    ) -> DlibAnalyzer:
        files = manifest.files
        return cls(
            timer=timer,
            upsample=upsample,
            detect_max_side=detect_max_side,
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
    def calibration(self) -> Calibration | None:
        return self.manifest.calibration

    @property
    def chip_size(self) -> int:
        return int(self.manifest.embedder["chip_size"])

    @property
    def chip_padding(self) -> float:
        return float(self.manifest.embedder["padding"])

    def locate(self, image: DecodedImage) -> LocatedFaces:
        with self.timer.stage(DETECT):
            view, back = detection_view(image.rgb, self.detect_max_side)
            found = self.detector.detect(
                view, upsample=choose_upsample(self.upsample, view.shape[0], view.shape[1])
            )
        if back != 1.0:
            found = Detections(
                boxes=np.round(found.boxes * np.float32(back)).astype(np.float32),
                scores=found.scores,
            )
        order = order_largest_first(found.boxes)
        boxes = np.ascontiguousarray(found.boxes[order])
        scores = np.ascontiguousarray(found.scores[order])
        with self.timer.stage(LANDMARKS):
            landmarks = self.landmarker.predict(image.rgb, boxes)
        return LocatedFaces(boxes=boxes, scores=scores, landmarks=landmarks)

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        return extract_chips(
            image.rgb, faces.landmarks, size=self.chip_size, padding=self.chip_padding
        )

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        return l2_normalise(self.embedder.embed(chips))


_build_lock = threading.Lock()


def build_default_analyzer(settings: Settings, *, timer: StageTimer = NO_TIMING) -> DlibAnalyzer:
    """Prepare the default pack on first use (seconds), verify it, and load its models."""
    with _build_lock:
        pack_dir, manifest = ensure_default_pack(settings.packs_dir)
    return DlibAnalyzer.from_pack(
        pack_dir,
        manifest,
        threads=settings.model_threads,
        upsample=settings.detector_upsample,
        detect_max_side=settings.detect_max_side,
        timer=timer,
    )
