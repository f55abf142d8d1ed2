"""Helpers for the bring-your-own-model tests: the shared ONNX files and packs made of them.

The files live in ``../shared/models`` (never in the repository); tests skip with a reason
when they are absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_MODELS

from service.models.byo_pack import ByoPack, load_byo_pack, write_byo_pack
from service.models.byo_presets import DETECTOR_PRESETS, EMBEDDER_PRESETS

# preset name → file under ../shared/models/detectors
DETECTOR_FILES = {
    "yunet_2023mar": "face_detection_yunet_2023mar.onnx",
    "scrfd_2.5g": "scrfd_2.5g_bnkps.onnx",
    "scrfd_500m": "det_500m.onnx",
    "retinaface_mnet025": "retinaface_mnet025.onnx",
}
MOBILEFACENET = "embedders/mobilefacenet.onnx"
# The MobileFaceNet packs' cosine_default: on LFW DevTrain with SCRFD landmarks the best
# threshold is 0.277 (99.45 %) and 0.35 gives 98.95 % (benchmarks/README.md).
MOBILEFACENET_COSINE = 0.35


def require_shared_models() -> Path:
    if not (SHARED_MODELS / MOBILEFACENET).is_file():
        pytest.skip(f"needs the third-party ONNX models at {SHARED_MODELS} (absent here)")
    return SHARED_MODELS


def detector_file(preset: str) -> Path:
    return require_shared_models() / "detectors" / DETECTOR_FILES[preset]


def make_pack(
    packs_dir: Path,
    name: str,
    detector_preset: str,
    *,
    symlink: bool = True,
    cosine: float = MOBILEFACENET_COSINE,
) -> ByoPack:
    """A MobileFaceNet pack with the given detector, written and loaded like an operator's."""
    models = require_shared_models()
    write_byo_pack(
        packs_dir / name,
        detector_file=detector_file(detector_preset),
        detector=DETECTOR_PRESETS[detector_preset],
        embedder_file=models / MOBILEFACENET,
        embedder=EMBEDDER_PRESETS["mobilefacenet"],
        cosine_default=cosine,
        symlink=symlink,
    )
    return load_byo_pack(name, packs_dir)
