"""benchmarks/calibrate.py end to end on a few real LFW identities, and the default pack
carrying the committed calibration."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_FACES

from service.models.calibration import Calibration
from service.models.pack import (
    DEFAULT_PACK,
    MANIFEST,
    default_pack_calibration,
    ensure_default_pack,
    load_pack,
    prepare_default_pack,
)

if str(ROOT) not in sys.path:  # the benchmarks are scripts beside the package, not installed
    sys.path.insert(0, str(ROOT))
calibrate = importlib.import_module("benchmarks.calibrate")

LFW = SHARED_FACES / "lfw-devtrain" / "images"


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight LFW people with 3-4 photos each, linked into an LFW-layout folder."""
    if not LFW.is_dir():
        pytest.skip(f"needs LFW DevTrain at {LFW} (absent on this machine)")
    root = tmp_path_factory.mktemp("tiny-lfw")
    chosen = 0
    for person in sorted(LFW.iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if 3 <= len(photos) <= 4:
            (root / "images" / person.name).mkdir(parents=True)
            for p in photos:
                (root / "images" / person.name / p.name).symlink_to(p)
            chosen += 1
        if chosen == 8:
            break
    return root


def copy_pack(packs_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "packs"
    shutil.copytree(packs_dir / DEFAULT_PACK, dest / DEFAULT_PACK)
    return dest


def test_calibrate_writes_the_manifest_section(
    tiny_lfw: Path,
    packs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    packs = copy_pack(packs_dir, tmp_path)
    argv = [
        "--data",
        str(tiny_lfw),
        "--packs-dir",
        str(packs),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--targets",
        "0.01,1e-5",
        "--no-split",
        "--write",
        "--plot",
        str(tmp_path / "curve.png"),
        "--json",
    ]
    assert calibrate.main(argv) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    images = len(list(tiny_lfw.glob("images/*/*.jpg")))
    assert doc["identities"] == 8 and doc["images"] == images
    assert "computed in" in err
    (point,) = doc["points"]
    assert point["target_fmr"] == 0.01 and point["support"] == "weak"  # < 1,000 impostors
    assert point["false_matches"] <= point["impostor_pairs"] // 100
    assert point["genuine_pairs"] > 0 and 0.0 <= point["tmr"] <= 1.0
    assert "needs at least 100,000 impostor pairs" in doc["unsupported"]["1e-05"]
    written = load_pack(packs)[1].calibration
    assert written is not None and written.to_doc() == {
        k: v for k, v in doc.items() if k not in ("machine", "seconds")
    }
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun embeds nothing: the cache answers.
    assert calibrate.main([*argv[:-4], "--json"]) == 0
    again, err = capsys.readouterr()
    assert "(cached)" in err
    assert json.loads(again)["points"] == doc["points"]


def test_calibrate_on_an_identity_csv_with_a_held_out_half(
    tiny_lfw: Path, packs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["path,identity"] + [
        f"images/{p.parent.name}/{p.name},{p.parent.name}"
        for p in sorted(tiny_lfw.glob("images/*/*.jpg"))
    ]
    (tiny_lfw / "people.csv").write_text("\n".join(rows) + "\n")
    try:
        code = calibrate.main(
            [
                "--data",
                str(tiny_lfw / "people.csv"),
                "--packs-dir",
                str(packs_dir),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--targets",
                "0.05",
                "--json",
            ]
        )
    finally:
        (tiny_lfw / "people.csv").unlink()
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    halves = [calibrate.in_calibration_half(p.name) for p in (tiny_lfw / "images").iterdir()]
    assert doc["identities"] == sum(halves)
    assert "calibration half" in doc["dataset"] and "other half" in doc["evaluation_dataset"]
    # Every point calibrated is checked on the held-out half (when it has impostor pairs).
    assert len(doc["evaluation"]) == len(doc["points"]) or len(doc["points"]) == 0


def test_bad_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ids.csv").write_text("image,who\na.jpg,x\n")
    assert calibrate.main(["--data", str(tmp_path / "ids.csv")]) == 1
    assert "the header must name a path column" in capsys.readouterr().err
    assert calibrate.main(["--data", str(tmp_path / "nowhere")]) == 1
    assert "no such folder or CSV file" in capsys.readouterr().err


def test_default_pack_carries_the_committed_calibration(packs_dir: Path, tmp_path: Path) -> None:
    committed = default_pack_calibration()
    assert load_pack(packs_dir)[1].calibration == committed
    # A pack prepared before the calibration changed is brought in line without reconverting.
    packs = copy_pack(packs_dir, tmp_path)
    manifest = packs / DEFAULT_PACK / MANIFEST
    doc = json.loads(manifest.read_text())
    doc.pop("calibration", None)
    manifest.write_text(json.dumps(doc))
    models = {p.name: p.stat().st_mtime_ns for p in (packs / DEFAULT_PACK).iterdir()}
    _, refreshed = ensure_default_pack(packs)
    assert refreshed.calibration == committed
    assert load_pack(packs)[1].calibration == committed
    after = {p.name: p.stat().st_mtime_ns for p in (packs / DEFAULT_PACK).iterdir()}
    assert {k: v for k, v in after.items() if k != MANIFEST} == {
        k: v for k, v in models.items() if k != MANIFEST
    }
    assert prepare_default_pack(packs).calibration == committed


def test_committed_calibration_is_the_default_packs() -> None:
    committed = default_pack_calibration()
    if committed is None:
        pytest.fail("service/models/dlib_default_calibration.json is missing")
    assert isinstance(committed, Calibration)
    assert committed.model_id == "dlib-resnet-v1"
    assert {p.target_fmr for p in committed.points} >= {1e-3, 1e-4, 1e-5}
    thresholds = [committed.threshold_for(f) for f in (1e-3, 1e-4, 1e-5)]
    assert thresholds == sorted(thresholds)  # stricter rate, higher threshold
    assert committed.evaluation, "the shipped thresholds carry their held-out check"
