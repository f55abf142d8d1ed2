"""Choose the customer's face among the located ones.

A terminal's camera sees the customer in front and sometimes people behind: the largest face
is the customer's. Whether another face is too close in size to tell who is paying is the
quality gate's ``multiple_faces`` check (``service.pipeline.quality``), with the limit of the
call's policy (``comparable_face_ratio``): one rule, one place, one configurable number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import NoFace
from service.pipeline.types import LocatedFaces


@dataclass(frozen=True, slots=True)
class SelectedFace:
    index: int  # into the LocatedFaces given to select_face
    face: LocatedFaces  # just the selected face (N = 1), ready for align()


def box_areas(boxes: np.ndarray) -> np.ndarray:
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    areas: np.ndarray = (w * h).astype(np.float64)
    return areas


def select_face(faces: LocatedFaces) -> SelectedFace:
    """The largest face (the first of equals), or ``NoFace``."""
    if len(faces) == 0:
        raise NoFace("no face was found in the image")
    best = int(np.argsort(-box_areas(faces.boxes), kind="stable")[0])
    one = LocatedFaces(
        boxes=np.ascontiguousarray(faces.boxes[best : best + 1]),
        scores=np.ascontiguousarray(faces.scores[best : best + 1]),
        landmarks=np.ascontiguousarray(faces.landmarks[best : best + 1]),
        layout=faces.layout,
    )
    return SelectedFace(best, one)
