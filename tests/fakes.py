"""FakeAnalyzer: a deterministic stand-in for the face models, for engine unit tests.

Test photos are real PNGs (decoded by the real decoder) whose first pixels spell out what
the fake "sees": how many faces, how large the second one is, whose face it is, which
photo of that person (variant), and an optional blend with another person's face (to make
look-alikes). Embeddings are fixed random directions per identity, plus a small per-variant
perturbation, so two photos of one person score ~0.9 and two people ~0 +- 0.13.

The fake's faces pass the real quality gate's strict enrolment preset: a frontal face of
FAKE_FACE px (inter-eye 0.3 of that) inside the frame, and 150×150 textured, well-exposed
chips that carry the identity in a corner pixel the gate does not look at.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
from PIL import Image

from service.models.calibration import Calibration
from service.pipeline.types import DecodedImage, FloatArray, LocatedFaces, UInt8Array

FAKE_DIM = 64
FAKE_THRESHOLD = 0.6
MARKER = 77
_FACE = 150.0  # side of the main face box, px
FAKE_FACE = _FACE
_SECOND_X = 8.0 + _FACE + 8.0  # a face box starting here is a second person
_CHIP = 150
_NOISE = 0.3 / np.sqrt(FAKE_DIM)  # per-variant perturbation: cos(variant, base) ~ 0.96


def face_png(
    identity: int,
    variant: int = 0,
    *,
    faces: int = 1,
    second_area_pct: int = 30,
    blend_with: int | None = None,
    blend_pct: int = 50,
    background: int = 0,
    size: int = 320,
) -> bytes:
    """A PNG the FakeAnalyzer reads as ``faces`` faces, the largest being ``identity``'s."""
    if not 0 <= identity < 65536 or not 0 <= variant < 256:
        raise ValueError("identity must fit 16 bits and variant 8 bits")
    rng = np.random.default_rng(background)
    rgb = np.full((size, size, 3), 128, dtype=np.uint8)
    # A noisy strip makes photos with different backgrounds different files (digests).
    rgb[1:5] = rng.integers(0, 256, size=(4, size, 3), dtype=np.uint8)
    rgb[0, 0] = (MARKER, faces, second_area_pct)
    rgb[0, 1] = (identity & 255, identity >> 8, variant)
    if blend_with is None:
        rgb[0, 2] = (0, 0, 0)
    else:
        rgb[0, 2] = (blend_with & 255, blend_with >> 8, blend_pct)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def no_face_png(size: int = 64) -> bytes:
    rgb = np.full((size, size, 3), 200, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def identity_vector(identity: int) -> FloatArray:
    v = np.random.default_rng(identity).standard_normal(FAKE_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def expected_embedding(
    identity: int, variant: int = 0, blend_with: int | None = None, blend_pct: int = 50
) -> FloatArray:
    v = identity_vector(identity).astype(np.float64)
    if blend_with is not None and blend_pct:
        w = blend_pct / 100.0
        v = (1.0 - w) * v + w * identity_vector(blend_with)
    if variant:
        v = v + _NOISE * np.random.default_rng(
            1_000_000 + identity * 256 + variant
        ).standard_normal(FAKE_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


# Sharp (noise) and well exposed (mean 128): passes the quality gate's sharpness and exposure.
_TEXTURE = np.clip(
    np.random.default_rng(7).normal(128.0, 30.0, (_CHIP, _CHIP, 1)).repeat(3, axis=2), 0, 255
).astype(np.uint8)


class FakeAnalyzer:
    """Implements service.pipeline.analyzer.FaceAnalyzer over face_png() images."""

    def __init__(
        self,
        *,
        threshold: float = FAKE_THRESHOLD,
        embed_delay_s: float = 0.0,
        calibration: Calibration | None = None,
    ) -> None:
        self._threshold = threshold
        self._calibration = calibration
        self.embed_delay_s = embed_delay_s
        self._lock = threading.Lock()
        self.embed_batch_sizes: list[int] = []

    @property
    def model_id(self) -> str:
        return "fake-v1"

    @property
    def embedding_dim(self) -> int:
        return FAKE_DIM

    @property
    def default_threshold(self) -> float:
        return self._threshold

    @property
    def calibration(self) -> Calibration | None:
        return self._calibration

    def locate(self, image: DecodedImage) -> LocatedFaces:
        px = image.rgb
        if int(px[0, 0, 0]) != MARKER:
            return LocatedFaces(
                np.zeros((0, 4), np.float32),
                np.zeros((0,), np.float32),
                np.zeros((0, 5, 2), np.float32),
            )
        n = int(px[0, 0, 1])
        second = _FACE * float(np.sqrt(int(px[0, 0, 2]) / 100.0))
        boxes = [(8.0, 8.0, 8.0 + _FACE, 8.0 + _FACE)]
        boxes += [(_SECOND_X, 8.0, _SECOND_X + second, 8.0 + second)] * (n - 1)
        b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        lm = np.stack(
            [
                np.array(
                    [
                        # dlib order; eye centres 0.3 w apart, the nose base at the
                        # frontal drop (0.75 eye distances) below them: a frontal face.
                        [x0 + 0.72 * w, y0 + 0.4 * w],
                        [x0 + 0.58 * w, y0 + 0.4 * w],
                        [x0 + 0.28 * w, y0 + 0.4 * w],
                        [x0 + 0.42 * w, y0 + 0.4 * w],
                        [x0 + 0.5 * w, y0 + 0.625 * w],
                    ],
                    dtype=np.float32,
                )
                for x0, y0, w in ((bx[0], bx[1], bx[2] - bx[0]) for bx in b)
            ]
        ).reshape(-1, 5, 2)
        return LocatedFaces(b, np.ones(len(b), np.float32), lm)

    def align(self, image: DecodedImage, faces: LocatedFaces) -> UInt8Array:
        """Textured chips carrying the identity of each face in their corner pixels (the
        second face is another person)."""
        px = image.rgb
        identity = int(px[0, 1, 0]) | (int(px[0, 1, 1]) << 8)
        chips = np.repeat(_TEXTURE[None], len(faces), axis=0)
        for i in range(len(faces)):
            # A face at _SECOND_X is a second person: identity + 1000.
            ident = identity if faces.boxes[i, 0] < _SECOND_X else (identity + 1000) % 65536
            chips[i, 0, 0] = (ident & 255, ident >> 8, px[0, 1, 2])
            chips[i, 0, 1] = px[0, 2]
        return chips

    def embed_chips(self, chips: UInt8Array) -> FloatArray:
        with self._lock:
            self.embed_batch_sizes.append(int(chips.shape[0]))
        if self.embed_delay_s:
            time.sleep(self.embed_delay_s)
        out = np.zeros((chips.shape[0], FAKE_DIM), dtype=np.float32)
        for i, chip in enumerate(chips):
            ident = int(chip[0, 0, 0]) | (int(chip[0, 0, 1]) << 8)
            variant = int(chip[0, 0, 2])
            blend = int(chip[0, 1, 0]) | (int(chip[0, 1, 1]) << 8)
            pct = int(chip[0, 1, 2])
            out[i] = expected_embedding(ident, variant, blend if pct else None, pct)
        return out
