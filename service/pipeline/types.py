"""Frozen results passed between pipeline stages.

Arrays inside are numpy; empty results keep their shape and dtype ((0, 4) boxes,
(0, 5, 2) landmarks) so callers never special-case "no face".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image as the detector sees it: EXIF-oriented, 8-bit RGB, C-contiguous (H, W, 3)."""

    rgb: UInt8Array
    format: str  # "JPEG", "PNG", "WEBP", ... as Pillow names it

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True, slots=True)
class Detections:
    """Face boxes in image pixels: (N, 4) float32 [left, top, right, bottom] and (N,) scores.

    For the dlib MMOD detector the box edges are dlib's integer, inclusive rectangle edges
    (they may extend past the image border); other detectors give float edges.
    ``landmarks`` is (N, 5, 2) float32 when the detector predicts them itself (YuNet, SCRFD,
    RetinaFace) and None when a separate landmark stage must run (dlib MMOD).
    """

    boxes: FloatArray
    scores: FloatArray
    landmarks: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32))


@dataclass(frozen=True, slots=True)
class LocatedFaces:
    """Detections with the five alignment landmarks: boxes (N,4), scores (N,), landmarks (N,5,2).

    ``layout`` names the landmark order, which is the detector's own; alignment uses the
    pack's matching template and the quality gate reads eyes and nose by it:

    * ``"dlib5"``: image-right eye outer and inner corner, image-left eye outer and inner
      corner, nose base (dlib's 5-point shape predictor).
    * ``"arcface5"``: image-left eye centre, image-right eye centre, nose tip, image-left
      mouth corner, image-right mouth corner (the subject's right side first, as in the
      ArcFace 112×112 template; YuNet, SCRFD and RetinaFace give this order).
    """

    boxes: FloatArray
    scores: FloatArray
    landmarks: FloatArray
    layout: str = "dlib5"

    def __len__(self) -> int:
        return int(self.boxes.shape[0])
