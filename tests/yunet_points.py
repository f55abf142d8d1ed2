"""Test-only: the largest face's 5 landmarks from YuNet (OpenCV Zoo, MIT), in the ArcFace
order ("arcface5"), to calibrate and check the quality gate's pose model for that layout.

Conventions from ../shared/models/README.md: input [1,3,640,640] BGR raw 0..255, the image
letterboxed (scaled to fit, padded right/bottom); per stride s in 8/16/32 and grid cell
(row, col): score = sqrt(cls·obj), box centre ((col + b0)·s, (row + b1)·s), size
(exp(b2)·s, exp(b3)·s), landmark j ((col + k[2j])·s, (row + k[2j+1])·s). The production
detector module is another helper's; this is only what the tests need (the best face).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

SIZE = 640
STRIDES = (8, 16, 32)


class YuNetPoints:
    def __init__(self, path: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def largest(self, rgb: np.ndarray, min_score: float = 0.6) -> np.ndarray | None:
        """(5, 2) float32 landmarks of the largest face scoring >= min_score, or None."""
        h, w = rgb.shape[:2]
        scale = SIZE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        canvas = np.zeros((SIZE, SIZE, 3), np.float32)
        resized = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        canvas[: size[1], : size[0]] = resized[:, :, ::-1]  # RGB -> BGR
        blob = canvas.transpose(2, 0, 1)[None]
        out = dict(
            zip(
                [o.name for o in self._session.get_outputs()],
                self._session.run(None, {"input": blob}),
                strict=True,
            )
        )
        best: tuple[float, np.ndarray] | None = None
        for s in STRIDES:
            n = SIZE // s
            score = np.sqrt(
                np.clip(out[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{s}"][0, :, 0], 0, 1)
            )
            cols = np.arange(n * n) % n
            rows = np.arange(n * n) // n
            for i in np.flatnonzero(score >= min_score):
                b = out[f"bbox_{s}"][0, i]
                area = float(np.exp(b[2]) * np.exp(b[3])) * s * s
                k = out[f"kps_{s}"][0, i].reshape(5, 2)
                pts = np.stack([(cols[i] + k[:, 0]) * s, (rows[i] + k[:, 1]) * s], axis=1)
                if best is None or area > best[0]:
                    best = (area, pts / scale)
        return None if best is None else best[1].astype(np.float32)
