"""Face detection with dlib's MMOD CNN, converted to ONNX: no dlib at run time.

``MmodDetector.detect`` reproduces ``dlib.cnn_face_detection_model_v1(img, upsample)``
(docs/dlib-models.md §5–6): optional ``pyramid_up``, the tiled pyramid canvas, one ONNX
Runtime pass, then dlib's ``loss_mmod::to_label`` decoding — positive cells become 80x80
windows, mapped back through the pyramid tile they fall in, sorted by score, greedily
suppressed with dlib's ``test_box_overlap`` (whose "IoU" divides by the *bounding box* of the
two rectangles, not their union) and finally mapped back through the upsampling.

Boxes are dlib's integer, inclusive rectangles; they may extend past the image (callers clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument, ModelPackError
from service.pipeline.onnx_session import cpu_session
from service.pipeline.pyramid import build_tiled_pyramid
from service.pipeline.types import Detections, FloatArray, UInt8Array

_MAX_UPSAMPLE = 4  # each step quadruples the pixels; beyond this it is a configuration error


@dataclass(frozen=True, slots=True)
class MmodConfig:
    """What the converted model's metadata says about decoding (see mmod_onnx.METADATA_KEYS)."""

    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    pyramid_down: int
    window: tuple[int, int]  # width, height
    cell_stride: int
    cell_offset: int
    nms_iou: float
    nms_covered: float

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> MmodConfig:
        if meta.get("facegate.kind") != "dlib_mmod":
            raise ModelPackError(
                f"{source}: not a facegate-converted dlib MMOD detector "
                f"(metadata kind {meta.get('facegate.kind')!r})"
            )
        try:
            r, g, b = (float(v) for v in meta["mean_rgb"].split(","))
            w, h = (int(v) for v in meta["window"].split(","))
            config = cls(
                mean_rgb=(r, g, b),
                pyramid_padding=int(meta["pyramid_padding"]),
                pyramid_outer_padding=int(meta["pyramid_outer_padding"]),
                pyramid_down=int(meta["pyramid_down"]),
                window=(w, h),
                cell_stride=int(meta["cell_stride"]),
                cell_offset=int(meta["cell_offset"]),
                nms_iou=float(meta["nms_iou"]),
                nms_covered=float(meta["nms_covered"]),
            )
        except (KeyError, ValueError) as exc:
            raise ModelPackError(f"{source}: bad MMOD detector metadata ({exc!r})") from exc
        if config.pyramid_down != 6:
            raise ModelPackError(f"{source}: only pyramid_down<6> is supported")
        return config


def lround(v: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """C's lround (halves away from zero), element-wise and exact."""
    t = np.trunc(v)
    frac = v - t  # exact in floating point
    return np.where(np.abs(frac) >= 0.5, t + np.sign(v), t).astype(np.int64)


def map_windows_to_image(
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    tile_rects: npt.NDArray[np.int64],
    config: MmodConfig,
) -> npt.NDArray[np.float64]:
    """Windows of score cells (r, c) as (K, 4) double [l, t, r, b] in image coordinates.

    Each cell's window is centred on tensor pixel (stride·c + offset, stride·r + offset); it
    belongs to the tile containing that centre, else the nearest tile (first on ties), and is
    scaled up by point_up of pyramid_down<6> once per level: p ← p·6/5 + 0.3.
    """
    cx = (config.cell_stride * cols + config.cell_offset).astype(np.float64)
    cy = (config.cell_stride * rows + config.cell_offset).astype(np.float64)
    half_w = (config.window[0] - 1) / 2.0
    half_h = (config.window[1] - 1) / 2.0
    # The centre is an integer pixel already, so dlib's rounding of dcenter() is a no-op.
    px = (cx[:, None]).astype(np.int64)
    py = (cy[:, None]).astype(np.int64)
    left, top = tile_rects[None, :, 0], tile_rects[None, :, 1]
    right, bottom = tile_rects[None, :, 2], tile_rects[None, :, 3]
    dx = np.clip(px, left, right) - px
    dy = np.clip(py, top, bottom) - py
    level = np.argmin(dx * dx + dy * dy, axis=1)  # containing tiles have distance 0
    box = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    box -= tile_rects[level][:, [0, 1, 0, 1]].astype(np.float64)
    ratio = config.pyramid_down / (config.pyramid_down - 1.0)
    for i in range(int(level.max(initial=0))):
        deeper = level > i
        box[deeper] = box[deeper] * ratio + 0.3
    return box


def overlaps(
    a: tuple[int, int, int, int], b: tuple[int, int, int, int], iou: float, covered: float
) -> bool:
    """dlib ``test_box_overlap``: inner/area(bounding box of a and b) > iou, or inner covers
    more than ``covered`` of either box. Rectangles are inclusive."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return False
    inner = float(iw * ih)
    outer = float((max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1))
    area_a = float((a[2] - a[0] + 1) * (a[3] - a[1] + 1))
    area_b = float((b[2] - b[0] + 1) * (b[3] - b[1] + 1))
    return inner / outer > iou or inner / area_a > covered or inner / area_b > covered


def non_max_suppression(boxes: npt.NDArray[np.int64], iou: float, covered: float) -> list[int]:
    """Greedy NMS over boxes already sorted best first; indices of the kept ones."""
    kept: list[int] = []
    kept_boxes: list[tuple[int, int, int, int]] = []
    for i, row in enumerate(boxes.tolist()):
        box = (row[0], row[1], row[2], row[3])
        if any(overlaps(k, box, iou, covered) for k in kept_boxes):
            continue
        kept.append(i)
        kept_boxes.append(box)
    return kept


def rect_down_pyramid2(boxes: npt.NDArray[np.int64], levels: int) -> npt.NDArray[np.int64]:
    """pyramid_down<2>::rect_down applied ``levels`` times (p/2 − (1.25, 0.75)), lround'ed."""
    out = boxes.astype(np.float64)
    shift = np.array([1.25, 0.75, 1.25, 0.75])
    for _ in range(levels):
        out = out / 2.0 - shift
    return lround(out)


class MmodDetector:
    """dlib's CNN face detector over ONNX Runtime. Thread-safe (one ORT session)."""

    def __init__(self, onnx_path: Path, *, upsample: int = 1, threads: int = 1) -> None:
        if not 0 <= upsample <= _MAX_UPSAMPLE:
            raise InvalidArgument(f"upsample must be in 0..{_MAX_UPSAMPLE}, got {upsample}")
        self._session = cpu_session(onnx_path, threads=threads, what=f"MMOD detector {onnx_path}")
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        self.config = MmodConfig.from_metadata(meta, str(onnx_path))
        self.upsample = upsample
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def scores(self, canvas: FloatArray) -> FloatArray:
        """The raw score map (N, 1, H', W') for a normalised pyramid canvas (N, 3, H, W)."""
        out = self._session.run([self._output], {self._input: canvas})[0]
        return np.asarray(out, dtype=np.float32)

    def detect(self, rgb: UInt8Array, *, upsample: int | None = None) -> Detections:
        """Faces in an (H, W, 3) uint8 RGB image, best score first.

        ``upsample`` overrides the constructor's value for this call: each step doubles the
        image (finding faces down to ~40 px instead of ~80 px) and costs ~4× the time.
        """
        _check_image(rgb)
        if upsample is None:
            upsample = self.upsample
        elif not 0 <= upsample <= _MAX_UPSAMPLE:
            raise InvalidArgument(f"upsample must be in 0..{_MAX_UPSAMPLE}, got {upsample}")
        cfg = self.config
        pyramid = build_tiled_pyramid(
            rgb,
            cfg.mean_rgb,
            upsample=upsample,
            padding=cfg.pyramid_padding,
            outer_padding=cfg.pyramid_outer_padding,
        )
        if len(pyramid.rects) == 0 or min(_score_map_size(pyramid.tensor.shape[2:])) <= 0:
            return Detections.empty()
        score_map = self.scores(pyramid.tensor)[0, 0]
        rows, cols = np.nonzero(score_map > 0)
        if rows.size == 0:
            return Detections.empty()
        scores = score_map[rows, cols]
        order = np.argsort(-scores, kind="stable")
        rows, cols, scores = rows[order], cols[order], scores[order]
        windows = map_windows_to_image(
            rows.astype(np.int64), cols.astype(np.int64), pyramid.rects, cfg
        )
        boxes = lround(windows)
        keep = non_max_suppression(boxes, cfg.nms_iou, cfg.nms_covered)
        boxes = rect_down_pyramid2(boxes[keep], upsample)
        return Detections(
            boxes=np.ascontiguousarray(boxes, dtype=np.float32),
            scores=np.ascontiguousarray(scores[keep], dtype=np.float32),
        )


def _score_map_size(shape: tuple[int, ...]) -> tuple[int, int]:
    def f(h: int) -> int:
        for _ in range(3):  # three 5x5 stride-2 convs; the rest keep the size
            h = (h - 5) // 2 + 1
        return h

    return f(int(shape[0])), f(int(shape[1]))


def _check_image(rgb: object) -> None:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
        or not rgb.flags.c_contiguous
    ):
        raise InvalidArgument(
            "detector input must be a C-contiguous uint8 (H, W, 3) RGB array, got "
            f"{type(rgb).__name__} shape {getattr(rgb, 'shape', None)} "
            f"dtype {getattr(rgb, 'dtype', None)}"
        )
