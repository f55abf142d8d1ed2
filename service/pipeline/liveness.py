"""Presentation-attack detection (liveness) with MiniFASNet-style ONNX models.

Each model looks at a square-ish context crop around the face — the face box expanded about
its centre by the model's ``scale`` (2.7 for MiniFASNetV2, 4.0 for MiniFASNetV1SE) — resized
to 80×80, BGR, raw 0..255, and outputs three logits whose softmax index 1 is "real" (0 and
2 are attack types). Several models are fused by averaging their real-probabilities, as the
models' authors (Silent-Face-Anti-Spoofing, Apache-2.0) do.

The crop reproduces the authors' ``CropImage`` exactly, because the models only ever saw
crops made that way: box width/height are ``right - left + 1`` (their detector convention),
the scale is reduced when the expanded box would be larger than the image, and an expanded
box that sticks out of the image is *shifted* back inside (not cut), so the crop keeps its
shape and context; its edges are then truncated to integer pixels (inclusive). The crop is
resized with half-pixel-centred bilinear interpolation *without* antialiasing, which is what
their ``cv2.resize(..., INTER_LINEAR)`` does; values are rounded to integers like OpenCV's
uint8 output (OpenCV's fixed-point weights differ from this float arithmetic by at most one
grey level on a few pixels). Pillow's BILINEAR resize is *not* used: when shrinking it
filters over the whole footprint (antialiasing), which changes what the model sees.

A score is an estimate for one photo, not proof of life: a still-image PAD model stops
printed photos and screen replays that look like the attacks it was trained on. The
threshold is configurable; see the tests and the project's benchmarks for the measurements
behind the default.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from service.errors import InvalidArgument, LivenessFailed, ModelPackError
from service.pipeline.onnx_session import cpu_session
from service.pipeline.types import DecodedImage, FloatArray, UInt8Array

# The authors' scales for the two Apache-2.0 models (their file names encode them).
MINIFASNET_V2_SCALE = 2.7
MINIFASNET_V1SE_SCALE = 4.0
# sha256 of the ONNX exports in ../shared/models/pad (see its SHA256SUMS); other exports of
# the same weights are welcome, pinned by the operator's own digest.
MINIFASNET_V2_SHA256 = "4eed38f0bde33c9b805942a5f25e42ce1161e2bda545254be622be957727794e"
MINIFASNET_V1SE_SHA256 = "d819a69bac6b9ade2a0f4d9b60b618e1260f7bf3ba1fddff6c5d82131cb1083f"

# Fused real-probability below which a face is rejected: 0.5, "real" more likely than not.
# Measured with the default analyzer's MMOD boxes (tests/test_liveness.py): attacks
# image_F1 0.172 and image_F2 0.004, the live image_T1 0.999; 62 genuine deepface web photos
# median 0.983, 54 of 62 at or above 0.5 (lowest 0.039); 40 LFW photos median 0.995, 37 of 40.
DEFAULT_THRESHOLD = 0.5

REAL_CLASS = 1
NUM_CLASSES = 3


@dataclass(frozen=True, kw_only=True)
class LivenessModel:
    """One MiniFASNet-style ONNX file and how to crop for it."""

    path: Path
    scale: float  # box expansion about its centre (2.7 for MiniFASNetV2, 4.0 for V1SE)
    input_size: int = 80
    sha256: str | None = None  # pin the file: a different file is a ModelPackError

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InvalidArgument(f"liveness model scale must be > 0, got {self.scale}")
        if self.input_size < 8:
            raise InvalidArgument(f"liveness input size must be >= 8, got {self.input_size}")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @staticmethod
    def minifasnet_pair(directory: Path, *, pin: bool = True) -> tuple[LivenessModel, ...]:
        """MiniFASNetV2.onnx (scale 2.7) and MiniFASNetV1SE.onnx (scale 4.0) in ``directory``,
        pinned to the known exports' sha256 unless ``pin`` is False."""
        return (
            LivenessModel(
                path=directory / "MiniFASNetV2.onnx",
                scale=MINIFASNET_V2_SCALE,
                sha256=MINIFASNET_V2_SHA256 if pin else None,
            ),
            LivenessModel(
                path=directory / "MiniFASNetV1SE.onnx",
                scale=MINIFASNET_V1SE_SCALE,
                sha256=MINIFASNET_V1SE_SHA256 if pin else None,
            ),
        )


def context_boxes(
    boxes: npt.NDArray[np.floating], scale: float, width: int, height: int
) -> npt.NDArray[np.int64]:
    """(N, 4) inclusive integer [x0, y0, x1, y1] crops, as the models' authors make them.

    Expand each box about its centre by ``scale`` (less when that would exceed the image),
    shift it back inside the image when it sticks out, then truncate to integers.
    """
    b = boxes.astype(np.float64)
    w = b[:, 2] - b[:, 0] + 1.0
    h = b[:, 3] - b[:, 1] + 1.0
    s = np.minimum(np.minimum((height - 1) / h, (width - 1) / w), scale)
    new_w, new_h = w * s, h * s
    cx, cy = b[:, 0] + w / 2, b[:, 1] + h / 2
    x0, y0 = cx - new_w / 2, cy - new_h / 2
    x1, y1 = cx + new_w / 2, cy + new_h / 2
    # Shift, don't cut: each crop has at most the image's size, so one shift suffices.
    dx = np.where(x0 < 0, -x0, 0.0) - np.where(x1 > width - 1, x1 - (width - 1), 0.0)
    dy = np.where(y0 < 0, -y0, 0.0) - np.where(y1 > height - 1, y1 - (height - 1), 0.0)
    out = np.stack([x0 + dx, y0 + dy, x1 + dx, y1 + dy], axis=1)
    # int() in the authors' code truncates toward zero; values are >= 0 here up to rounding.
    crops: npt.NDArray[np.int64] = np.trunc(out).astype(np.int64)
    crops[:, [0, 2]] = np.clip(crops[:, [0, 2]], 0, width - 1)
    crops[:, [1, 3]] = np.clip(crops[:, [1, 3]], 0, height - 1)
    return crops


def _linear_taps(
    start: int, length: int, out: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Source indices (lo, hi) and weight of hi for OpenCV-style INTER_LINEAR along one axis."""
    f = (np.arange(out, dtype=np.float64) + 0.5) * (length / out) - 0.5
    f = np.maximum(f, 0.0)
    lo = np.minimum(np.floor(f).astype(np.int64), length - 1)
    frac = np.where(lo >= length - 1, 0.0, f - lo)
    hi = np.minimum(lo + 1, length - 1)
    return start + lo, start + hi, frac.astype(np.float32)


def crop_resize_bgr(rgb: UInt8Array, crops: npt.NDArray[np.int64], size: int) -> FloatArray:
    """(N, 3, size, size) float32 BGR 0..255 model input from inclusive integer crops."""
    n = crops.shape[0]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in crops[i])
        xl, xh, wx = _linear_taps(x0, x1 - x0 + 1, size)
        yl, yh, wy = _linear_taps(y0, y1 - y0 + 1, size)
        top = rgb[yl].astype(np.float32)  # (size, W, 3)
        bot = rgb[yh].astype(np.float32)
        rows = top + (bot - top) * wy[:, None, None]
        left, right = rows[:, xl], rows[:, xh]
        patch = left + (right - left) * wx[None, :, None]
        # RGB → BGR, HWC → CHW; rounded like OpenCV's uint8 result.
        out[i] = np.rint(patch[:, :, ::-1].transpose(2, 0, 1))
    return out


def _softmax_real(logits: FloatArray) -> FloatArray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    real: FloatArray = (e[:, REAL_CLASS] / e.sum(axis=1)).astype(np.float32)
    return real


def _read_pinned(model: LivenessModel) -> tuple[bytes, str]:
    try:
        data = model.path.read_bytes()
    except OSError as exc:
        raise ModelPackError(f"cannot read liveness model {model.path}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if model.sha256 is not None and digest != model.sha256:
        raise ModelPackError(
            f"liveness model {model.path} has sha256 {digest}, expected {model.sha256}"
        )
    return data, digest


def _with_free_batch(data: bytes) -> bytes | None:
    """The graph with a symbolic batch dimension, or None when it has no fixed one to free.

    The published exports fix the batch at 1, but their only reshape is Flatten(axis=1),
    so the graph itself is batch-agnostic; freeing the dimension lets a request's faces run
    in one call. The result is checked by a test run before it is trusted.
    """
    proto = onnx.load_from_string(data)
    changed = False
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
            changed = True
    if not changed:
        return None
    # Intermediate shapes recorded at export time would pin the batch again.
    del proto.graph.value_info[:]
    return proto.SerializeToString()


class _Session:
    """One model's ORT session, batched when the graph allows it."""

    def __init__(self, model: LivenessModel, threads: int) -> None:
        self.model = model
        data, self.sha256 = _read_pinned(model)
        size = model.input_size

        def load(blob: bytes) -> ort.InferenceSession:
            return cpu_session(blob, threads=threads, what=f"liveness model {model.path}")

        session = load(data)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        if (
            shape is None
            or len(outputs) != 1
            or inputs[0].type != "tensor(float)"
            or len(shape) != 4
            or list(shape[1:]) != [3, size, size]
        ):
            raise ModelPackError(
                f"{model.path}: expected one float input [N,3,{size},{size}] and one output, "
                f"got {[(i.name, i.type, i.shape) for i in inputs]} → "
                f"{[(o.name, o.shape) for o in outputs]}"
            )
        self._input = inputs[0].name
        probe = np.zeros((2, 3, size, size), np.float32)
        self.batched = False
        try:
            free = _with_free_batch(data)
            candidate = load(free) if free is not None else session
            if np.shape(candidate.run(None, {self._input: probe})[0]) == (2, NUM_CLASSES):
                session, self.batched = candidate, True
        except Exception:  # a graph that pins its batch: run one face at a time instead
            self.batched = False
        try:
            out = session.run(None, {self._input: probe[:1]})[0]
        except Exception as exc:
            raise ModelPackError(f"liveness model {model.path} does not run: {exc}") from None
        if np.shape(out) != (1, NUM_CLASSES):
            raise ModelPackError(
                f"{model.path}: expected [N,{NUM_CLASSES}] logits, got shape {np.shape(out)}"
            )
        self._session = session

    def real_probability(self, batch: FloatArray) -> FloatArray:
        if self.batched:
            logits = self._session.run(None, {self._input: batch})[0]
        else:
            logits = np.concatenate(
                [
                    self._session.run(None, {self._input: batch[i : i + 1]})[0]
                    for i in range(len(batch))
                ]
            )
        return _softmax_real(np.asarray(logits, np.float32))


class LivenessDetector:
    """Fused real-probability of faces from one or more MiniFASNet-style models. Thread-safe
    (ORT sessions allow concurrent ``run``; nothing else here is mutable)."""

    def __init__(
        self,
        models: Sequence[LivenessModel],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        threads: int = 1,
    ) -> None:
        if not models:
            raise InvalidArgument("a liveness detector needs at least one model")
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidArgument(f"liveness threshold must be in [0, 1], got {threshold}")
        if threads < 1:
            raise InvalidArgument(f"threads must be >= 1, got {threads}")
        self.threshold = float(threshold)
        self.models: tuple[LivenessModel, ...] = tuple(models)
        self._sessions = [_Session(m, threads) for m in self.models]

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Each model as ``<file name>@sha256:<digest of the file loaded>``."""
        return tuple(f"{s.model.path.name}@sha256:{s.sha256}" for s in self._sessions)

    def score(self, image: DecodedImage, boxes: npt.ArrayLike) -> FloatArray:
        """(N,) float32 fused real-probability in [0, 1], one per [left, top, right, bottom] box."""
        rgb = _check_image(image)
        b = _check_boxes(boxes, image.width, image.height)
        if b.shape[0] == 0:
            return np.zeros((0,), np.float32)
        total = np.zeros((b.shape[0],), np.float64)
        for session in self._sessions:
            m = session.model
            crops = context_boxes(b, m.scale, image.width, image.height)
            total += session.real_probability(crop_resize_bgr(rgb, crops, m.input_size))
        fused: FloatArray = (total / len(self._sessions)).astype(np.float32)
        return fused

    def check(self, image: DecodedImage, box: npt.ArrayLike) -> float:
        """The face's fused score; ``LivenessFailed`` when it is below the threshold."""
        one = np.asarray(box, dtype=np.float64)
        if one.shape != (4,):
            raise InvalidArgument(f"box must be [left, top, right, bottom], got shape {one.shape}")
        value = float(self.score(image, one[None, :])[0])
        if value < self.threshold:
            raise LivenessFailed(
                f"the face did not pass the liveness check (score {value:.3f} < "
                f"{self.threshold:.3f}); a live person must face the camera",
                metadata={
                    "check": "liveness",
                    "score": f"{value:.4f}",
                    "threshold": f"{self.threshold:.4f}",
                },
            )
        return value


def _check_image(image: DecodedImage) -> UInt8Array:
    rgb = image.rgb if isinstance(image, DecodedImage) else None
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        raise InvalidArgument("liveness needs a DecodedImage with (H, W, 3) uint8 RGB pixels")
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise InvalidArgument(f"image too small for liveness: {rgb.shape[1]}×{rgb.shape[0]}")
    return rgb


def _check_boxes(boxes: npt.ArrayLike, width: int, height: int) -> npt.NDArray[np.float64]:
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument("boxes must be numbers [left, top, right, bottom]") from None
    if b.ndim != 2 or b.shape[1] != 4:
        raise InvalidArgument(f"boxes must have shape (N, 4), got {b.shape}")
    if not np.isfinite(b).all():
        raise InvalidArgument("boxes must be finite")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise InvalidArgument("boxes need right >= left and bottom >= top")
    # A box entirely off the image has no face to look at; partly outside is normal (MMOD).
    if ((b[:, 2] < 0) | (b[:, 3] < 0) | (b[:, 0] > width - 1) | (b[:, 1] > height - 1)).any():
        raise InvalidArgument(f"a box lies entirely outside the {width}×{height} image")
    return b
