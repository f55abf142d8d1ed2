"""ArcFace-style recognisers: template alignment to a tight 112×112 chip, then the ONNX model.

Alignment follows the convention these models were trained with (InsightFace's
``norm_crop``): the least-squares similarity carrying the five detected landmarks onto the
template, in pixel coordinates where a pixel's centre is its integer index, then bilinear
sampling with black outside the image. It differs from dlib's chip extraction
(``align.extract_chips``: padded [0,1] template, half-pixel offset), which the dlib ResNet
needs and these models do not. One addition: a face much larger than the chip is first
box-filtered down by an integer factor, so the chip is not aliased (plain warping samples
one pixel in four of a 4× face); at the sizes the models were trained on it is a no-op.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.errors import InvalidArgument, ModelPackError
from service.models.byo_pack import EmbedderSpec
from service.pipeline.align import similarity_transform
from service.pipeline.onnx_session import cpu_session
from service.pipeline.types import FloatArray, UInt8Array

F64 = npt.NDArray[np.float64]
# Image pixels per chip pixel above which the face is box-filtered down before warping.
ANTIALIAS_ABOVE = 1.5


def chip_to_image(landmarks: npt.ArrayLike, template: npt.ArrayLike) -> tuple[F64, F64]:
    """(M, b): image point = M · chip point + b, for one (5, 2) landmark set.

    The similarity is fitted from the landmarks onto the template (as the models' training
    alignment does) and inverted.
    """
    a, t = similarity_transform(landmarks, template)
    det = float(np.linalg.det(a))
    if not math.isfinite(det) or abs(det) < 1e-12:
        raise InvalidArgument("landmarks are degenerate (all points coincide)")
    inv: F64 = np.linalg.inv(a).astype(np.float64)
    offset: F64 = -inv @ t
    return inv, offset


def _sample(img: UInt8Array, xs: F64, ys: F64) -> UInt8Array:
    """Bilinear samples at (xs, ys) (pixel centres at integers), black outside, rounded."""
    h, w = img.shape[:2]
    padded = np.zeros((h + 2, w + 2, 3), np.float32)
    padded[1:-1, 1:-1] = img
    # Shift into the padded frame; far-away points land on the black border.
    x = np.clip(xs + 1.0, 0.0, w + 1.0)
    y = np.clip(ys + 1.0, 0.0, h + 1.0)
    x0 = np.minimum(np.floor(x).astype(np.intp), w)
    y0 = np.minimum(np.floor(y).astype(np.intp), h)
    fx = (x - x0)[..., None].astype(np.float32)
    fy = (y - y0)[..., None].astype(np.float32)
    top = padded[y0, x0] * (1 - fx) + padded[y0, x0 + 1] * fx
    bottom = padded[y0 + 1, x0] * (1 - fx) + padded[y0 + 1, x0 + 1] * fx
    out = top * (1 - fy) + bottom * fy
    chip: UInt8Array = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return chip


def align_one(rgb: UInt8Array, m: F64, b: F64, size: int) -> UInt8Array:
    """The (size, size, 3) chip whose pixel p samples the image at m·p + b."""
    scale = math.sqrt(abs(float(np.linalg.det(m))))
    c = np.arange(size, dtype=np.float64)
    gx, gy = np.meshgrid(c, c)
    xs = m[0, 0] * gx + m[0, 1] * gy + b[0]
    ys = m[1, 0] * gx + m[1, 1] * gy + b[1]
    src = rgb
    if scale > ANTIALIAS_ABOVE:
        f = int(scale)
        h, w = rgb.shape[:2]
        # Only the chip's footprint (plus a margin) is filtered.
        x_lo = max(math.floor(xs.min()) - 2 * f, 0)
        y_lo = max(math.floor(ys.min()) - 2 * f, 0)
        x_hi = min(math.ceil(xs.max()) + 2 * f + 1, w)
        y_hi = min(math.ceil(ys.max()) + 2 * f + 1, h)
        if x_hi - x_lo >= f and y_hi - y_lo >= f:
            crop = Image.fromarray(np.ascontiguousarray(rgb[y_lo:y_hi, x_lo:x_hi]))
            src = np.asarray(crop.reduce(f))
            # Reduced pixel i averages input pixels [i·f, i·f + f − 1]: centre i·f + (f − 1)/2.
            xs = (xs - x_lo - (f - 1) / 2.0) / f
            ys = (ys - y_lo - (f - 1) / 2.0) / f
        else:  # the face lies outside the image: nothing to filter
            return np.zeros((size, size, 3), np.uint8)
    return _sample(src, xs, ys)


def align_to_template(
    rgb: UInt8Array, landmarks: FloatArray, template: npt.ArrayLike, size: int
) -> UInt8Array:
    """(N, size, size, 3) uint8 RGB chips, one per (5, 2) landmark set (ArcFace order)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise InvalidArgument("image must be a uint8 (H, W, 3) RGB array")
    tmpl = np.asarray(template, np.float64)
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != tmpl.shape:
        raise InvalidArgument(
            f"landmarks must be (N, {tmpl.shape[0]}, 2), got shape {np.shape(landmarks)}"
        )
    if not np.isfinite(pts).all():
        raise InvalidArgument("landmarks contain non-finite coordinates")
    out = np.zeros((pts.shape[0], size, size, 3), np.uint8)
    for i in range(pts.shape[0]):
        m, b = chip_to_image(pts[i], tmpl)
        out[i] = align_one(rgb, m, b, size)
    return out


class ArcFaceEmbedder:
    """(N, S, S, 3) uint8 RGB chips → (N, D) float32 raw embeddings. Thread-safe.

    Colour order and normalisation come from the pack's ``EmbedderSpec``. A model whose
    batch dimension is fixed at 1 (many exports are) runs once per chip; otherwise the
    whole batch is one run.
    """

    def __init__(self, onnx_path: Path, spec: EmbedderSpec, *, threads: int = 1) -> None:
        self.spec = spec
        self._session = cpu_session(onnx_path, threads=threads, what=f"embedder {onnx_path}")
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        where = {"file": onnx_path.name}
        if spec.input_name not in inputs or spec.output_name not in outputs:
            raise ModelPackError(
                f"{onnx_path}: the manifest names input {spec.input_name!r} and output "
                f"{spec.output_name!r}; the model has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}",
                metadata={**where, "field": "embedder.input/output"},
            )
        shape = inputs[spec.input_name].shape
        s = spec.chip_size
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], (3, s, s), strict=True)
        ):
            raise ModelPackError(
                f"{onnx_path}: input {spec.input_name!r} is {shape}, the manifest says NCHW "
                f"[N, 3, {s}, {s}]",
                metadata={**where, "field": "embedder.chip_size"},
            )
        out_shape = outputs[spec.output_name].shape
        dim = out_shape[-1] if out_shape else None
        if isinstance(dim, int) and dim != spec.embedding_dim:
            raise ModelPackError(
                f"{onnx_path}: output {spec.output_name!r} has {dim} values, the manifest says "
                f"embedding_dim {spec.embedding_dim}",
                metadata={**where, "field": "embedder.embedding_dim"},
            )
        self._one_at_a_time = shape[0] == 1
        self._mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        self.chip_size = s
        self.embedding_dim = spec.embedding_dim

    def preprocess(self, chips: UInt8Array) -> npt.NDArray[np.float32]:
        s = self.chip_size
        if not isinstance(chips, np.ndarray) or chips.dtype != np.uint8:
            raise InvalidArgument("chips must be a uint8 numpy array")
        if chips.ndim != 4 or chips.shape[1:] != (s, s, 3):
            raise InvalidArgument(f"chips must have shape (N, {s}, {s}, 3), got {chips.shape}")
        x = chips[..., ::-1] if self.spec.colour == "BGR" else chips
        nchw = x.transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray((nchw - self._mean) / self._std, dtype=np.float32)

    def embed(self, chips: UInt8Array) -> FloatArray:
        blob = self.preprocess(chips)
        n = blob.shape[0]
        if n == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        name, out = self.spec.input_name, [self.spec.output_name]
        if self._one_at_a_time:
            rows = [self._session.run(out, {name: blob[i : i + 1]})[0] for i in range(n)]
            result = np.concatenate([np.asarray(r).reshape(1, -1) for r in rows])
        else:
            result = np.asarray(self._session.run(out, {name: blob})[0]).reshape(n, -1)
        if result.shape[1] != self.embedding_dim:
            raise ModelPackError(
                f"the embedder returned {result.shape[1]} values per face, the manifest says "
                f"{self.embedding_dim}"
            )
        return np.ascontiguousarray(result, dtype=np.float32)
