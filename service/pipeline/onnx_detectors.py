"""Face detectors that predict their own five landmarks: YuNet, SCRFD, RetinaFace (ONNX).

One class per model with the same interface (``detect(rgb) -> Detections`` in image
pixels, landmarks (N, 5, 2) in ArcFace order: subject's right eye (image left), left eye,
nose tip, right and left mouth corners). Each decodes its own raw outputs from the
conventions its ``DetectorSpec`` states (``service.models.byo_pack``) — output names come
from the pack, never from tensor shapes. Shared steps: letterbox into the fixed network
input (top-left anchored, so mapping back is one division), vectorised decoding of the
candidates above the score threshold only, greedy NMS, and results ordered by score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.errors import InvalidArgument, ModelPackError
from service.models.byo_pack import DetectorSpec
from service.pipeline.onnx_session import cpu_session
from service.pipeline.types import Detections, UInt8Array

F64 = npt.NDArray[np.float64]
# Candidates kept for NMS at most (highest scores first); a frame never holds more faces.
MAX_CANDIDATES = 5000


def letterbox(rgb: UInt8Array, spec: DetectorSpec) -> tuple[npt.NDArray[np.float32], float]:
    """The (1, 3, H, W) network input and the factor from input pixels to image pixels.

    The image is resized (aspect kept) to fit ``spec.input_size`` and placed at the top-left
    of a black canvas; channels follow ``spec.colour`` and are normalised (x − mean) / std.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise InvalidArgument("image must be a uint8 (H, W, 3) RGB array")
    h, w = rgb.shape[:2]
    in_w, in_h = spec.input_size
    scale = min(in_w / w, in_h / h)
    new_w, new_h = max(1, min(in_w, round(w * scale))), max(1, min(in_h, round(h * scale)))
    resized = (
        rgb
        if (new_w, new_h) == (w, h)
        else np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    )
    canvas = np.zeros((in_h, in_w, 3), np.float32)
    canvas[:new_h, :new_w] = resized
    if spec.colour == "BGR":
        canvas = canvas[:, :, ::-1]
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    # Padding is normalised like pixels of value 0, as the models saw it in training.
    chw = ((canvas - mean) / std).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(chw, dtype=np.float32), 1.0 / scale


def nms(boxes: F64, scores: F64, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression: indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def _finish(boxes: F64, scores: F64, landmarks: F64, spec: DetectorSpec, back: float) -> Detections:
    """NMS, then map letterbox pixels back to image pixels; ordered by score."""
    if scores.size == 0:
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
        )
    keep = nms(boxes, scores, spec.nms_iou)
    return Detections(
        boxes=np.ascontiguousarray(boxes[keep] * back, dtype=np.float32),
        scores=np.ascontiguousarray(scores[keep], dtype=np.float32),
        landmarks=np.ascontiguousarray(landmarks[keep].reshape(-1, 5, 2) * back, np.float32),
    )


def _grid(cols: int, rows: int, repeat: int = 1) -> tuple[F64, F64]:
    """Cell column and row indices, row-major (each repeated ``repeat`` times)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    return (
        np.repeat(c.astype(np.float64), repeat),
        np.repeat(r.astype(np.float64), repeat),
    )


class _OnnxDetector:
    """Session, output-name checks and the letterbox; subclasses decode."""

    kind = ""

    def __init__(self, onnx_path: Path, spec: DetectorSpec, *, threads: int = 1) -> None:
        if spec.kind != self.kind:
            raise ModelPackError(f"{type(self).__name__} cannot run a {spec.kind!r} detector")
        self.spec = spec
        self._session = cpu_session(onnx_path, threads=threads, what=f"detector {onnx_path}")
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if spec.input_name not in inputs:
            raise ModelPackError(
                f"{onnx_path}: the manifest names input {spec.input_name!r}, the model has "
                f"{sorted(inputs)}",
                metadata={"file": onnx_path.name, "field": "detector.input"},
            )
        shape = inputs[spec.input_name].shape
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if len(fixed) == 2 and (fixed[1], fixed[0]) != spec.input_size:
            raise ModelPackError(
                f"{onnx_path}: the model's input is fixed at {fixed[1]}x{fixed[0]} (WxH), the "
                f"manifest says input_size {list(spec.input_size)}",
                metadata={"file": onnx_path.name, "field": "detector.input_size"},
            )
        missing = sorted(
            f"{k}={spec.outputs[k]}"
            for k in spec.required_outputs()
            if spec.outputs[k] not in outputs
        )
        if missing:
            raise ModelPackError(
                f"{onnx_path}: the manifest names outputs the model lacks: {', '.join(missing)}"
                f" (the model has {', '.join(sorted(outputs))})",
                metadata={"file": onnx_path.name, "field": "detector.outputs"},
            )
        self._keys = spec.required_outputs()
        self._names = [spec.outputs[k] for k in self._keys]

    def _run(self, rgb: UInt8Array) -> tuple[dict[str, F64], float]:
        blob, back = letterbox(rgb, self.spec)
        raw = self._session.run(self._names, {self.spec.input_name: blob})
        outs = {k: np.asarray(v, np.float64).reshape(-1, np.asarray(v).shape[-1])
                for k, v in zip(self._keys, raw, strict=True)}  # fmt: skip
        return outs, back

    def detect(self, rgb: UInt8Array) -> Detections:
        raise NotImplementedError


class YuNetDetector(_OnnxDetector):
    """OpenCV Zoo YuNet (2023mar): one prior per cell, score = sqrt(cls · obj)."""

    kind = "yunet"

    def detect(self, rgb: UInt8Array) -> Detections:
        outs, back = self._run(rgb)
        in_w, in_h = self.spec.input_size
        boxes, scores, marks = [], [], []
        for s in self.spec.strides:
            cols, rows = in_w // s, in_h // s
            score = np.sqrt(
                np.clip(outs[f"cls_{s}"][:, 0], 0, 1) * np.clip(outs[f"obj_{s}"][:, 0], 0, 1)
            )
            self._check_len(score, rows * cols, s)
            hit = np.nonzero(score >= self.spec.score_threshold)[0]
            if hit.size == 0:
                continue
            col, row = _grid(cols, rows)
            col, row = col[hit], row[hit]
            b = outs[f"bbox_{s}"][hit]
            k = outs[f"kps_{s}"][hit]
            cx, cy = (col + b[:, 0]) * s, (row + b[:, 1]) * s
            w, h = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
            kx = (col[:, None] + k[:, 0::2]) * s
            ky = (row[:, None] + k[:, 1::2]) * s
            marks.append(np.stack([kx, ky], axis=2).reshape(-1, 10))
            scores.append(score[hit])
        return _concat_finish(boxes, scores, marks, self.spec, back)

    def _check_len(self, score: F64, expected: int, stride: int) -> None:
        if score.shape[0] != expected:
            raise ModelPackError(
                f"yunet stride {stride}: {score.shape[0]} scores for a {expected}-cell grid; "
                "the manifest's strides or input_size do not fit this model"
            )


class ScrfdDetector(_OnnxDetector):
    """InsightFace SCRFD (with keypoints): distances to box edges from anchor centres."""

    kind = "scrfd"

    def detect(self, rgb: UInt8Array) -> Detections:
        outs, back = self._run(rgb)
        in_w, in_h = self.spec.input_size
        a = self.spec.anchors_per_cell
        boxes, scores, marks = [], [], []
        for s in self.spec.strides:
            cols, rows = in_w // s, in_h // s
            score = outs[f"score_{s}"][:, 0]
            if score.shape[0] != rows * cols * a:
                raise ModelPackError(
                    f"scrfd stride {s}: {score.shape[0]} scores for {rows * cols} cells × {a} "
                    "anchors; the manifest's strides, anchors_per_cell or outputs do not fit"
                )
            hit = np.nonzero(score >= self.spec.score_threshold)[0]
            if hit.size == 0:
                continue
            col, row = _grid(cols, rows, repeat=a)
            cx, cy = col[hit] * s, row[hit] * s
            d = outs[f"bbox_{s}"][hit] * s
            k = outs[f"kps_{s}"][hit] * s
            boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1))
            kx = cx[:, None] + k[:, 0::2]
            ky = cy[:, None] + k[:, 1::2]
            marks.append(np.stack([kx, ky], axis=2).reshape(-1, 10))
            scores.append(score[hit])
        return _concat_finish(boxes, scores, marks, self.spec, back)


class RetinaFaceDetector(_OnnxDetector):
    """RetinaFace (biubug6 export): SSD priors, offsets scaled by the variances."""

    kind = "retinaface"

    def __init__(self, onnx_path: Path, spec: DetectorSpec, *, threads: int = 1) -> None:
        super().__init__(onnx_path, spec, threads=threads)
        self._priors = self._make_priors()

    def _make_priors(self) -> F64:
        """(P, 4) [cx, cy, w, h] in input pixels: per step, cells row-major, sizes inner."""
        in_w, in_h = self.spec.input_size
        parts = []
        for step, sizes in zip(self.spec.steps, self.spec.min_sizes, strict=True):
            cols, rows = -(-in_w // step), -(-in_h // step)  # ceil, as the network's maps
            col, row = _grid(cols, rows, repeat=len(sizes))
            size = np.tile(np.asarray(sizes, np.float64), rows * cols)
            parts.append(np.stack([(col + 0.5) * step, (row + 0.5) * step, size, size], 1))
        return np.concatenate(parts)

    def detect(self, rgb: UInt8Array) -> Detections:
        outs, back = self._run(rgb)
        priors = self._priors
        conf = outs["conf"]
        if conf.shape[0] != priors.shape[0] or conf.shape[1] != 2:
            raise ModelPackError(
                f"retinaface: {conf.shape[0]}×{conf.shape[1]} confidences for {priors.shape[0]}"
                " priors; the manifest's steps, min_sizes or input_size do not fit this model"
            )
        score = conf[:, 1]  # softmaxed in the graph; column 1 = face
        hit = np.nonzero(score >= self.spec.score_threshold)[0]
        p = priors[hit]
        v0, v1 = self.spec.variances
        loc = outs["loc"][hit]
        cx = p[:, 0] + loc[:, 0] * v0 * p[:, 2]
        cy = p[:, 1] + loc[:, 1] * v0 * p[:, 3]
        w = p[:, 2] * np.exp(loc[:, 2] * v1)
        h = p[:, 3] * np.exp(loc[:, 3] * v1)
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        lm = outs["landmarks"][hit]
        kx = p[:, 0:1] + lm[:, 0::2] * v0 * p[:, 2:3]
        ky = p[:, 1:2] + lm[:, 1::2] * v0 * p[:, 3:4]
        marks = np.stack([kx, ky], axis=2).reshape(-1, 10)
        return _finish(boxes, score[hit], marks, self.spec, back)


def _concat_finish(
    boxes: list[F64], scores: list[F64], marks: list[F64], spec: DetectorSpec, back: float
) -> Detections:
    if not scores:
        return _finish(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 10)), spec, back)
    return _finish(np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks), spec, back)


DETECTORS: dict[str, type[_OnnxDetector]] = {
    d.kind: d for d in (YuNetDetector, ScrfdDetector, RetinaFaceDetector)
}


def build_detector(onnx_path: Path, spec: DetectorSpec, *, threads: int = 1) -> _OnnxDetector:
    """The detector class ``spec.kind`` names, loaded from ``onnx_path``."""
    try:
        cls = DETECTORS[spec.kind]
    except KeyError:
        raise ModelPackError(f"unknown detector kind {spec.kind!r}") from None
    return cls(onnx_path, spec, threads=threads)
