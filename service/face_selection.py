"""Choose the customer's face among the located ones, and describe it.

A terminal's camera sees the customer in front and sometimes people behind. The largest
face is the customer's; but when another face is nearly as large, facegate cannot tell who
is paying and refuses (``MultipleFaces``) rather than risk charging the wrong person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.domain import FaceBox, FaceQuality
from service.errors import MultipleFaces, NoFace
from service.pipeline.types import LocatedFaces

# A second face at least this fraction of the largest face's area makes the photo ambiguous.
COMPARABLE_AREA = 0.6


@dataclass(frozen=True, slots=True)
class SelectedFace:
    index: int  # into the LocatedFaces
    faces: LocatedFaces  # just the selected face (N = 1), ready for align()
    quality: FaceQuality


def box_areas(boxes: np.ndarray) -> np.ndarray:
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    areas: np.ndarray = (w * h).astype(np.float64)
    return areas


def inter_eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres of a 5-point set in dlib's order (outer and inner
    corner of one eye, then of the other, then the nose base)."""
    a = landmarks[0:2].mean(axis=0)
    b = landmarks[2:4].mean(axis=0)
    return float(np.hypot(*(a - b)))


def select_face(faces: LocatedFaces, *, comparable_area: float = COMPARABLE_AREA) -> SelectedFace:
    """The largest face, or ``NoFace`` / ``MultipleFaces``."""
    n = len(faces)
    if n == 0:
        raise NoFace("no face was found in the image")
    areas = box_areas(faces.boxes)
    order = np.argsort(-areas, kind="stable")
    best = int(order[0])
    if n > 1:
        second = int(order[1])
        ratio = float(areas[second] / areas[best]) if areas[best] > 0 else 1.0
        if ratio >= comparable_area:
            raise MultipleFaces(
                f"{n} faces found and the second largest is {ratio:.0%} the size of the "
                "largest; only the paying customer may be in the picture",
                metadata={"faces": str(n), "area_ratio": f"{ratio:.3f}"},
            )
    b = faces.boxes[best]
    score = float(faces.scores[best])
    box = FaceBox(float(b[0]), float(b[1]), float(b[2]), float(b[3]), score)
    quality = FaceQuality(box, inter_eye_distance(faces.landmarks[best]), score)
    one = LocatedFaces(
        boxes=np.ascontiguousarray(faces.boxes[best : best + 1]),
        scores=np.ascontiguousarray(faces.scores[best : best + 1]),
        landmarks=np.ascontiguousarray(faces.landmarks[best : best + 1]),
    )
    return SelectedFace(best, one, quality)
