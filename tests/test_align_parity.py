"""Face chips vs ``dlib.get_face_chip(img, shape, 150, 0.25)``: bit-identical (sha256).

dlib's landmarks and chip hashes come from tests/fixtures/dlib_landmarks.json (generated
once with dlib by tests/fixtures/make_dlib_landmarks.py). Large faces go through dlib's
image pyramid and small ones don't, and some landmark sets come from boxes hanging over
the image border, so every branch of the chip extraction is compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.pipeline.align import extract_chips
from tests.conftest import astronaut_rgb, grace_hopper_path, require_shared_faces

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "dlib_landmarks.json").read_text())
IMAGES: list[dict[str, Any]] = FIXTURE["images"]


def load_fixture_image(entry: dict[str, Any]) -> np.ndarray:
    """The image exactly as the fixture generator decoded it (skip if a decoder differs)."""
    source: str = entry["source"]
    if source == "pypi:grace_hopper.jpg":
        rgb = np.asarray(Image.open(grace_hopper_path()).convert("RGB"))
    elif source == "pypi:astronaut":
        rgb = astronaut_rgb()
    else:
        path = require_shared_faces() / source.removeprefix("shared:")
        rgb = np.asarray(Image.open(path).convert("RGB"))
    rgb = np.ascontiguousarray(rgb)
    if hashlib.sha256(rgb.tobytes()).hexdigest() != entry["rgb_sha256"]:
        pytest.skip(f"{source}: this Pillow/libjpeg decodes other pixels than the fixture's")
    return rgb


def test_fixture_has_chips() -> None:
    assert FIXTURE["chip"] == {"size": 150, "padding": 0.25}
    chips = sum(1 for e in IMAGES for it in e["faces"] + e["jittered"] if "chip_sha256" in it)
    assert chips >= 250


@pytest.mark.parametrize("entry", IMAGES, ids=[e["source"] for e in IMAGES])
def test_chips_equal_dlib(entry: dict[str, Any]) -> None:
    rgb = load_fixture_image(entry)
    items = [it for it in entry["faces"] + entry["jittered"] if "chip_sha256" in it]
    landmarks = np.array([it["landmarks"] for it in items], np.float32)
    chips = extract_chips(rgb, landmarks, size=150, padding=0.25)
    wrong = []
    for it, chip in zip(items, chips, strict=True):
        digest = hashlib.sha256(np.ascontiguousarray(chip).tobytes()).hexdigest()
        if digest != it["chip_sha256"]:
            wrong.append(
                f"landmarks {it['landmarks']}: mean dlib {it['chip_mean']} ours {chip.mean():.6f}"
            )
    assert not wrong, f"{len(wrong)}/{len(items)} chips differ:\n" + "\n".join(wrong[:5])
