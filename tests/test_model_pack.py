"""The default model pack: prepare, idempotence, verification, repair, corrupt sources, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.cli import models as cli_models
from service.errors import ModelPackError
from service.models.pack import (
    DEFAULT_PACK,
    EXPECTED_SOURCE_SHA256,
    MANIFEST,
    PACK_FILES,
    SOURCE_FILES,
    PackManifest,
    ensure_default_pack,
    load_pack,
    locate_source_models,
    prepare_default_pack,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_pack(packs_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "packs"
    shutil.copytree(packs_dir / DEFAULT_PACK, dest / DEFAULT_PACK)
    return dest


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """A private copy of the three .dat files that a test may damage."""
    src = locate_source_models()
    dest = tmp_path / "sources"
    dest.mkdir()
    for name in SOURCE_FILES.values():
        shutil.copyfile(src / name, dest / name)
    return dest


def test_locate_source_models_finds_the_dat_files() -> None:
    models = locate_source_models()
    for name, digest in EXPECTED_SOURCE_SHA256.items():
        assert sha256(models / name) == digest


def test_prepared_pack_files_and_manifest(packs_dir: Path) -> None:
    pack_dir, manifest = load_pack(packs_dir)
    assert pack_dir == packs_dir / DEFAULT_PACK
    assert sorted(p.name for p in pack_dir.iterdir()) == sorted([MANIFEST, *PACK_FILES.values()])
    assert manifest.name == DEFAULT_PACK
    assert manifest.model_id == "dlib-resnet-v1"
    assert set(manifest.files) == {"detector", "landmarks", "embedder"}
    for role, f in manifest.files.items():
        assert f.path == PACK_FILES[role]
        assert sha256(pack_dir / f.path) == f.sha256
        assert (pack_dir / f.path).stat().st_size == f.bytes
    assert manifest.detector["kind"] == "dlib_mmod"
    assert manifest.detector["upsample"] == 1 and manifest.detector["window"] == 80
    assert manifest.landmarks["kind"] == "dlib_ert" and manifest.landmarks["points"] == 5
    emb = manifest.embedder
    assert emb["kind"] == "dlib_resnet" and emb["chip_size"] == 150
    assert emb["padding"] == 0.25 and emb["embedding_dim"] == 128
    assert emb["input"] == "uint8 RGB NHWC"
    assert manifest.thresholds["cosine_default"] == pytest.approx(0.917)
    assert "0.6" in manifest.notes["cosine_default"]
    assert dict(manifest.source) == EXPECTED_SOURCE_SHA256
    assert manifest.created_by.startswith("facegate")
    # The manifest on disk round-trips exactly.
    text = (pack_dir / MANIFEST).read_text()
    assert PackManifest.from_json(text).to_json() == text


def test_second_prepare_is_a_no_op(packs_dir: Path) -> None:
    pack_dir = packs_dir / DEFAULT_PACK
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in pack_dir.iterdir()}
    manifest = prepare_default_pack(packs_dir)
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in pack_dir.iterdir()}
    assert before == after
    assert manifest.to_json() == (pack_dir / MANIFEST).read_text()


def test_force_rebuilds_atomically(packs_dir: Path, tmp_path: Path) -> None:
    packs = copy_pack(packs_dir, tmp_path)
    old_inode = (packs / DEFAULT_PACK / MANIFEST).stat().st_ino
    manifest = prepare_default_pack(packs, force=True)
    assert (packs / DEFAULT_PACK / MANIFEST).stat().st_ino != old_inode
    assert load_pack(packs)[1].files == manifest.files
    # Nothing but the pack and its lock file is left beside it.
    assert sorted(p.name for p in packs.iterdir()) == sorted([DEFAULT_PACK, ".dlib-default.lock"])


def test_corrupt_output_fails_load_and_ensure_repairs(packs_dir: Path, tmp_path: Path) -> None:
    packs = copy_pack(packs_dir, tmp_path)
    target = packs / DEFAULT_PACK / PACK_FILES["embedder"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ModelPackError, match=r"resnet_descriptor\.onnx \(embedder\) is corrupt"):
        load_pack(packs)
    pack_dir, manifest = ensure_default_pack(packs)
    assert sha256(pack_dir / PACK_FILES["embedder"]) == manifest.files["embedder"].sha256
    load_pack(packs)


def test_truncated_or_missing_output_is_reported(packs_dir: Path, tmp_path: Path) -> None:
    packs = copy_pack(packs_dir, tmp_path)
    npz = packs / DEFAULT_PACK / PACK_FILES["landmarks"]
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(ModelPackError, match=r"shape_predictor_5\.npz \(landmarks\) is corrupt"):
        load_pack(packs)
    npz.unlink()
    with pytest.raises(ModelPackError, match=r"shape_predictor_5\.npz \(landmarks\) is missing"):
        load_pack(packs)


def test_corrupt_manifest_is_reported(packs_dir: Path, tmp_path: Path) -> None:
    packs = copy_pack(packs_dir, tmp_path)
    manifest_path = packs / DEFAULT_PACK / MANIFEST
    doc = json.loads(manifest_path.read_text())
    doc["files"]["detector"]["path"] = "../../etc/passwd"
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ModelPackError, match="bad file name"):
        load_pack(packs)
    manifest_path.write_text("{not json")
    with pytest.raises(ModelPackError, match="not JSON"):
        load_pack(packs)
    doc["files"]["detector"]["path"] = PACK_FILES["detector"]
    doc["format_version"] = 999
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ModelPackError, match="format version 999"):
        load_pack(packs)


def test_missing_pack_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match=r"not found.*facegate models prepare"):
        load_pack(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("role", ["detector", "landmarks", "embedder"])
def test_damaged_source_is_named(source_copy: Path, tmp_path: Path, damage: str, role: str) -> None:
    name = SOURCE_FILES[role]
    path = source_copy / name
    quoted = re.escape(name)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[1000] ^= 0x40
        path.write_bytes(bytes(data))
        expected = (
            f"{quoted} is corrupt: sha256 [0-9a-f]{{64}} .* expected {EXPECTED_SOURCE_SHA256[name]}"
        )
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
        expected = f"{quoted} is corrupt"
    else:
        path.unlink()
        expected = f"{quoted} is missing"
    packs = tmp_path / "packs"
    with pytest.raises(ModelPackError, match=expected):
        prepare_default_pack(packs, source_dir=source_copy)
    assert not (packs / DEFAULT_PACK).exists()


def test_prepare_from_explicit_source_dir(source_copy: Path, tmp_path: Path) -> None:
    manifest = prepare_default_pack(tmp_path / "packs", source_dir=source_copy)
    assert load_pack(tmp_path / "packs")[1].to_json() == manifest.to_json()


# ---------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="facegate")
    cli_models.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


def test_cli_verify_and_prepare(
    packs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["models", "verify", "--packs-dir", str(packs_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model_id"] == "dlib-resnet-v1" and doc["embedding_dim"] == 128
    assert run_cli(["models", "prepare", "--packs-dir", str(packs_dir)]) == 0
    assert "dlib-default" in capsys.readouterr().out

    assert run_cli(["models", "verify", "--packs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model pack 'dlib-default' not found")
    assert err.count("\n") == 1

    packs = copy_pack(packs_dir, tmp_path)
    (packs / DEFAULT_PACK / PACK_FILES["detector"]).write_bytes(b"garbage")
    assert run_cli(["models", "verify", "--packs-dir", str(packs)]) == 1
    assert "mmod_detector.onnx (detector) is corrupt" in capsys.readouterr().err


def test_default_threshold_reproduces_dlibs_rule(packs_dir: Path) -> None:
    """Cosine >= cosine_default on normalised descriptors ⇔ dlib's raw Euclidean <= 0.6,
    on every pair of the parity fixture's 25 faces (dlib's own descriptors)."""
    threshold = load_pack(packs_dir)[1].thresholds["cosine_default"]
    doc = json.loads((Path(__file__).parent / "fixtures" / "dlib_descriptors.json").read_text())
    raw = np.asarray([f["descriptor"] for r in doc["images"] for f in r["faces"]], np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    i, j = np.triu_indices(len(raw), 1)
    dlib_same = np.linalg.norm(raw[i] - raw[j], axis=1) <= 0.6
    ours_same = (unit[i] * unit[j]).sum(axis=1) >= threshold
    assert dlib_same.sum() >= 5  # the fixture holds some same-person pairs
    np.testing.assert_array_equal(ours_same, dlib_same)
