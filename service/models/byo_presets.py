"""Conventions of the detector and embedder files facegate has been verified with.

``facegate models add --detector-preset NAME`` copies one of these into the manifest in
full, so the manifest stays explicit and self-contained; any field can be overridden by a
flag, and a model not listed here is described with flags alone. The values are those of
``../shared/models/README.md`` (checked by running each model on real photos); the output
names of SCRFD differ between files, so each file has its own preset.

Licences differ: YuNet and RetinaFace mnet0.25 are MIT; the SCRFD files (InsightFace) are
for non-commercial research only and MobileFaceNet's weights come with no licence, so those
are for evaluation only, never a product default.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from service.models.byo_pack import ARCFACE_112_TEMPLATE


def _per_stride(strides: tuple[int, ...], **names: tuple[str, ...]) -> dict[str, str]:
    return {
        f"{role}_{s}": onnx
        for role, onnxs in names.items()
        for s, onnx in zip(strides, onnxs, strict=True)
    }


_STRIDES = (8, 16, 32)


def _insightface_scrfd(
    *, score: tuple[str, ...], bbox: tuple[str, ...], kps: tuple[str, ...]
) -> dict[str, Any]:
    """An InsightFace SCRFD export (``*_bnkps.onnx``): per-stride score/bbox/kps outputs."""
    return {
        "kind": "scrfd",
        "input": "input.1",
        "input_size": [640, 640],
        "colour": "RGB",
        "mean": [127.5, 127.5, 127.5],
        "std": [128.0, 128.0, 128.0],
        "strides": list(_STRIDES),
        "anchors_per_cell": 2,
        "outputs": _per_stride(_STRIDES, score=score, bbox=bbox, kps=kps),
        "score_threshold": 0.5,
        "nms_iou": 0.4,
        "licence": "InsightFace: non-commercial research only (evaluation only)",
    }


DETECTOR_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "yunet_2023mar": {
            "kind": "yunet",
            "input": "input",
            "input_size": [640, 640],
            "colour": "BGR",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "strides": list(_STRIDES),
            "outputs": {
                f"{r}_{s}": f"{r}_{s}" for s in _STRIDES for r in ("cls", "obj", "bbox", "kps")
            },
            "score_threshold": 0.6,
            "nms_iou": 0.3,
            "licence": "MIT",
        },
        # InsightFace's exports differ only in their output tensors' names.
        "scrfd_2.5g": _insightface_scrfd(
            score=("446", "466", "486"), bbox=("449", "469", "489"), kps=("452", "472", "492")
        ),
        "scrfd_500m": _insightface_scrfd(
            score=("443", "468", "493"), bbox=("446", "471", "496"), kps=("449", "474", "499")
        ),
        "retinaface_mnet025": {
            "kind": "retinaface",
            "input": "input0",
            "input_size": [640, 640],
            "colour": "BGR",
            "mean": [104.0, 117.0, 123.0],
            "std": [1.0, 1.0, 1.0],
            "outputs": {"loc": "output0", "conf": "output1", "landmarks": "output2"},
            "steps": [8, 16, 32],
            "min_sizes": [[16, 32], [64, 128], [256, 512]],
            "variances": [0.1, 0.2],
            "score_threshold": 0.6,
            "nms_iou": 0.4,
            "licence": "MIT",
        },
    }
)

# Normalisations in 0..255 pixel units: the model sees (pixel − mean) / std.
NORMALISATIONS: Mapping[str, tuple[list[float], list[float]]] = MappingProxyType(
    {
        # torchvision's ImageNet statistics (x/255 − m) / s, rewritten in pixel units
        "imagenet": ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
        "arcface": ([127.5, 127.5, 127.5], [127.5, 127.5, 127.5]),  # InsightFace recognisers
        "raw": ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
    }
)

EMBEDDER_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "mobilefacenet": {
            "kind": "arcface",
            "input": "input",
            "output": "output",
            "chip_size": 112,
            "padding": 0.0,
            "colour": "RGB",
            "mean": NORMALISATIONS["imagenet"][0],
            "std": NORMALISATIONS["imagenet"][1],
            "embedding_dim": 128,
            "template": [list(p) for p in ARCFACE_112_TEMPLATE],
            "licence": "no licence granted (evaluation only)",
        },
    }
)
