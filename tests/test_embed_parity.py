"""Parity with dlib: given dlib's own landmarks, our chips + ONNX ResNet reproduce
``compute_face_descriptor`` within 1e-4 (max abs difference per component).

The reference numbers in ``fixtures/dlib_descriptors.json`` were produced once with dlib
by ``fixtures/make_dlib_descriptors.py``; dlib is not needed to run this test. Photos from
``../shared/faces`` are skipped (with a reason) when that folder is absent; the two photos
shipped in PyPI packages always run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.models.pack import load_pack
from service.pipeline.align import extract_chips
from service.pipeline.embed import Embedder
from tests.conftest import SHARED_FACES, astronaut_rgb, grace_hopper_path

FIXTURE = Path(__file__).parent / "fixtures" / "dlib_descriptors.json"
TOLERANCE = 1e-4
DOC: dict[str, Any] = json.loads(FIXTURE.read_text())
RECORDS = [r for r in DOC["images"] if r["faces"]]


def load_image(record: dict[str, Any]) -> np.ndarray:
    name: str = record["image"]
    if name == "pkg:grace_hopper":
        path = grace_hopper_path()
    elif name == "pkg:astronaut":
        rgb = astronaut_rgb()
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == record["sha256"], "astronaut changed"
        return rgb
    else:
        assert name.startswith("shared:"), name
        path = SHARED_FACES / name.removeprefix("shared:")
        if not path.is_file():
            pytest.skip(f"needs the shared photo {path} (absent on this machine)")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"], (
        f"{path} differs from the photo the fixture was made from; "
        "regenerate with tests/fixtures/make_dlib_descriptors.py"
    )
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def embedder(packs_dir: Path) -> Embedder:
    pack_dir, manifest = load_pack(packs_dir)
    return Embedder(pack_dir / manifest.files["embedder"].path)


def dlib_landmarks(record: dict[str, Any]) -> np.ndarray:
    return np.asarray([f["landmarks"] for f in record["faces"]], np.float32).reshape(-1, 5, 2)


def test_fixture_covers_enough_faces() -> None:
    assert sum(len(r["faces"]) for r in RECORDS) >= 20
    assert {"pkg:grace_hopper", "pkg:astronaut"} <= {r["image"] for r in RECORDS}
    assert DOC["chip_size"] == 150 and DOC["chip_padding"] == 0.25


@pytest.mark.parametrize("record", RECORDS, ids=[r["image"] for r in RECORDS])
def test_descriptors_match_dlib(record: dict[str, Any], embedder: Embedder) -> None:
    rgb = load_image(record)
    chips = extract_chips(rgb, dlib_landmarks(record), size=150, padding=0.25)
    ours = embedder.embed(chips)
    theirs = np.asarray([f["descriptor"] for f in record["faces"]], np.float64)
    diff = np.abs(ours.astype(np.float64) - theirs)
    assert diff.max() < TOLERANCE, f"max abs diff {diff.max():.3g} per face {diff.max(axis=1)}"


@pytest.mark.parametrize("record", RECORDS, ids=[r["image"] for r in RECORDS])
def test_chips_are_bit_identical_to_dlib(record: dict[str, Any]) -> None:
    rgb = load_image(record)
    chips = extract_chips(rgb, dlib_landmarks(record), size=150, padding=0.25)
    ours = [hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest() for c in chips]
    assert ours == [f["chip_sha256"] for f in record["faces"]]


def test_same_person_pairs_are_closer_than_strangers() -> None:
    """A sanity check on the fixture itself: dlib's 0.6 rule separates these LFW pairs."""
    by_name = {r["image"]: np.asarray(r["faces"][0]["descriptor"]) for r in RECORDS}
    lfw = "shared:lfw-devtrain/images/"
    pairs = [("Aaron_Peirsol", 1, 2), ("Aaron_Sorkin", 1, 2)]
    for person, a, b in pairs:
        ka = f"{lfw}{person}/{person}_{a:04d}.jpg"
        kb = f"{lfw}{person}/{person}_{b:04d}.jpg"
        assert np.linalg.norm(by_name[ka] - by_name[kb]) <= 0.6
    assert np.linalg.norm(by_name["pkg:grace_hopper"] - by_name["pkg:astronaut"]) > 0.6
