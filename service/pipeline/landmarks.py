"""Landmarks with dlib's ERT cascade (``shape_predictor``) in numpy, integer-exact with dlib.

For each face box the initial shape is refined by C cascades. In each cascade the feature
pixels are placed with the similarity transform from the initial shape to the current
shape, sampled from the grey image, and every tree adds the leaf it reaches. Parity with
dlib comes from doing the same arithmetic: the transforms are dlib's own (see
``service.pipeline.align``), pixel positions are rounded with floor(v+0.5), the leaves are
summed in float32 in tree order (a sequential cumulative sum, never a pairwise reduction).

Vectorised over all faces and all trees of a cascade: the trees' node indices advance
together one depth level at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument
from service.models.shape_predictor import ShapePredictorModel
from service.pipeline.align import affine_from_three_points, dlib_similarity
from service.pipeline.types import FloatArray, UInt8Array

# Box corners travel through float32 in dlib (vector<float,2>); beyond 2^24 they would round.
_MAX_COORD = float(1 << 24)
_UNIT_CORNERS = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))


def grey_intensity(rgb: UInt8Array) -> UInt8Array:
    """dlib's get_pixel_intensity for RGB (last axis): (R+G+B)/3 with integer division.

    A single-channel array (last axis of 1, or a 2-d grey image) is returned as is.
    """
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        return rgb[..., 0] if rgb.ndim > 2 else rgb
    r = rgb[..., 0].astype(np.uint16)
    r += rgb[..., 1]
    r += rgb[..., 2]
    grey: UInt8Array = (r // 3).astype(np.uint8)
    return grey


@dataclass(frozen=True, slots=True, eq=False)
class ShapePredictor:
    """Runs a converted ERT model; ``predict`` gives (N, P, 2) float32 integer landmarks."""

    model: ShapePredictorModel

    @classmethod
    def from_file(cls, path: Path) -> ShapePredictor:
        return cls(ShapePredictorModel.load(path))

    @property
    def num_parts(self) -> int:
        return self.model.num_parts

    def predict(self, rgb: UInt8Array, boxes: FloatArray) -> FloatArray:
        """Landmarks for each box [left, top, right, bottom] (dlib's inclusive rectangle edges).

        ``rgb`` is (H, W, 3) uint8 (or an (H, W) uint8 grey image). Box edges are rounded to
        whole pixels as dlib rectangles are integers. Returns (N, P, 2) float32 (x, y) pixel
        coordinates, integer-valued like dlib's ``full_object_detection`` parts.
        """
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
            raise InvalidArgument("image must be a uint8 numpy array")
        if not (rgb.ndim == 3 and rgb.shape[2] == 3) and rgb.ndim != 2:
            raise InvalidArgument(f"image must be (H, W, 3) RGB or (H, W) grey, got {rgb.shape}")
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 4:
            raise InvalidArgument(f"boxes must be (N, 4) [left, top, right, bottom], got {b.shape}")
        p = self.model.num_parts
        if b.shape[0] == 0:
            return np.zeros((0, p, 2), np.float32)
        if not np.isfinite(b).all() or np.abs(b).max() > _MAX_COORD:
            raise InvalidArgument("box coordinates must be finite and within ±2^24")
        rects = np.floor(b + 0.5)
        if (rects[:, 2] < rects[:, 0]).any() or (rects[:, 3] < rects[:, 1]).any():
            raise InvalidArgument("boxes must have right >= left and bottom >= top")
        return _predict(self.model, rgb, rects)


def _predict(m: ShapePredictorModel, img: UInt8Array, rects: npt.NDArray[np.float64]) -> FloatArray:
    n = rects.shape[0]
    p = m.num_parts
    h, w = img.shape[:2]
    num_trees, num_splits, num_leaves = m.num_trees, m.num_splits, m.num_leaves
    depth = num_splits.bit_length()  # S = 2^depth − 1
    # Flat offsets so every gather is a 1-d take: tree t's node j is t·S + j, its leaf t·L + j,
    # face i's feature f is i·F + f.
    tree_split0 = (np.arange(num_trees, dtype=np.intp) * num_splits)[None, :]
    tree_leaf0 = (np.arange(num_trees, dtype=np.intp) * num_leaves - num_splits)[None, :]
    face_feat0 = (np.arange(n, dtype=np.intp) * m.num_features)[:, None]

    # unnormalizing_tform(rect): dlib's find_affine_transform (0,0),(1,0),(1,1) → tl, tr, br
    unnorm = np.empty((n, 2, 3), np.float64)
    for i in range(n):
        left, top, right, bottom = (float(v) for v in rects[i])
        um, ub = affine_from_three_points(
            _UNIT_CORNERS, [(left, top), (right, top), (right, bottom)]
        )
        unnorm[i, :, :2] = um
        unnorm[i, :, 2] = ub
    u00, u01, ub0 = (unnorm[:, 0, j, None] for j in range(3))
    u10, u11, ub1 = (unnorm[:, 1, j, None] for j in range(3))

    init = m.initial_shape
    init_x = init[0::2].astype(np.float64).tolist()
    init_y = init[1::2].astype(np.float64).tolist()
    shape = np.repeat(init[None, :], n, axis=0)  # (N, 2P) float32
    for k in range(m.num_cascades):
        # per face: 2×2 similarity part from the initial to the current shape, as float32
        tf = np.empty((n, 4), np.float32)
        for i in range(n):
            cur = shape[i].astype(np.float64)
            sm, _ = dlib_similarity(init_x, init_y, cur[0::2].tolist(), cur[1::2].tolist())
            tf[i] = (sm[0][0], sm[0][1], sm[1][0], sm[1][1])
        anchor = m.anchor_idx[k]
        dx = m.deltas[k, :, 0][None, :]
        dy = m.deltas[k, :, 1][None, :]
        # feature pixel in normalised shape space, float32 as dlib
        qx = (tf[:, 0, None] * dx + tf[:, 1, None] * dy) + shape[:, 2 * anchor]
        qy = (tf[:, 2, None] * dx + tf[:, 3, None] * dy) + shape[:, 2 * anchor + 1]
        qx64 = qx.astype(np.float64)
        qy64 = qy.astype(np.float64)
        px = np.floor(((u00 * qx64 + u01 * qy64) + ub0) + 0.5)
        py = np.floor(((u10 * qx64 + u11 * qy64) + ub1) + 0.5)
        inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        # Intensity only where features are sampled (12k pixels per face, not the image).
        sampled = img[
            np.where(inside, py, 0).astype(np.intp), np.where(inside, px, 0).astype(np.intp)
        ]
        feat = np.where(inside, grey_intensity(sampled), 0).astype(np.float32).ravel()  # N·F

        idx1 = m.split_idx1[k].ravel()
        idx2 = m.split_idx2[k].ravel()
        thresh = m.split_thresh[k].ravel()
        node = np.zeros((n, num_trees), np.intp)
        for _ in range(depth):
            at = tree_split0 + node
            f1 = feat.take(face_feat0 + idx1.take(at))
            f2 = feat.take(face_feat0 + idx2.take(at))
            # left child 2i+1 when the difference exceeds the threshold, else right 2i+2
            node = 2 * node + 2 - (f1 - f2 > thresh.take(at))
        leaves = m.leaf_values[k].reshape(num_trees * num_leaves, -1)
        inc = leaves.take(tree_leaf0 + node, axis=0)  # (N, T, 2P)
        # sequential float32 sum in tree order, starting from the current shape
        acc = np.concatenate([shape[:, None, :], inc], axis=1)
        shape = np.cumsum(acc, axis=1, dtype=np.float32)[:, -1, :]

    sx = shape[:, 0::2].astype(np.float64)
    sy = shape[:, 1::2].astype(np.float64)
    out = np.empty((n, p, 2), np.float32)
    out[:, :, 0] = np.floor(((u00 * sx + u01 * sy) + ub0) + 0.5)
    out[:, :, 1] = np.floor(((u10 * sx + u11 * sy) + ub1) + 0.5)
    return out
