"""`facegate embed IMAGE... --json` through the real models (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import astronaut_rgb, grace_hopper_path, jpeg_bytes
from PIL import Image

from service.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_line_per_image_with_boxes_landmarks_embeddings(
    capsys: pytest.CaptureFixture[str], packs_dir: Path, tmp_path: Path
) -> None:
    astronaut = tmp_path / "astronaut.jpg"
    astronaut.write_bytes(jpeg_bytes(astronaut_rgb()))
    code, out, err = run(
        capsys,
        "embed",
        str(grace_hopper_path()),
        str(astronaut),
        "--json",
        "--packs-dir",
        str(packs_dir),
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["grace_hopper.jpg", "astronaut.jpg"]
    vectors = []
    for record in lines:
        (face,) = record["faces"]
        left, top, right, bottom = face["box"]
        assert 0 <= left < right and 0 <= top < bottom and face["score"] > 0
        assert np.asarray(face["landmarks"]).shape == (5, 2)
        # Landmarks fall inside the face box, in the image's own pixel coordinates.
        pts = np.asarray(face["landmarks"])
        assert (pts[:, 0] >= left).all() and (pts[:, 0] <= right).all()
        v = np.asarray(face["embedding"])
        assert v.shape == (128,) and abs(np.linalg.norm(v) - 1) < 1e-5
        vectors.append(v)
    assert float(vectors[0] @ vectors[1]) < 0.9  # two different people


def test_exif_orientation_is_applied_before_coordinates(
    capsys: pytest.CaptureFixture[str], packs_dir: Path, tmp_path: Path
) -> None:
    """A photo stored sideways with EXIF orientation 6 gives the same face, upright coords."""
    upright = Image.open(grace_hopper_path()).convert("RGB")
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": pixels are stored rotated 90 CCW
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif, quality=95)
    upright_file = tmp_path / "upright.jpg"
    upright.save(upright_file, quality=95)
    code, out, err = run(
        capsys, "embed", str(upright_file), str(sideways), "--json", "--packs-dir", str(packs_dir)
    )
    assert code == 0, err
    want, got = (json.loads(line)["faces"] for line in out.splitlines())
    assert len(want) == len(got) == 1
    # Same face at the same place in upright coordinates (re-encoding moves it a pixel or two).
    assert np.abs(np.subtract(got[0]["box"], want[0]["box"])).max() <= 8
    assert np.abs(np.subtract(got[0]["landmarks"], want[0]["landmarks"])).max() <= 8


def test_unreadable_input_is_a_one_line_reason_and_non_zero(
    capsys: pytest.CaptureFixture[str], packs_dir: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    code, out, err = run(
        capsys,
        "embed",
        str(junk),
        str(tmp_path / "missing.jpg"),
        str(grace_hopper_path()),
        "--json",
        "--packs-dir",
        str(packs_dir),
    )
    assert code != 0
    errors = err.strip().splitlines()
    assert len(errors) == 2
    assert "junk.jpg" in errors[0] and "IMAGE_UNDECODABLE" in errors[0]
    assert "missing.jpg" in errors[1] and "cannot read" in errors[1]
    # The readable image in the same call is still processed.
    assert len(out.splitlines()) == 1 and json.loads(out)["faces"]
