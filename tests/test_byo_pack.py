"""Bring-your-own packs: the manifest (sha256 pins, explicit conventions, model id), the
``facegate models add|verify`` commands, the factory, ArcFace alignment and the embedder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from byo_packs import MOBILEFACENET, detector_file, make_pack, require_shared_models
from conftest import SHARED_FACES, grace_hopper_path

from service.cli.main import main as cli_main
from service.config import Settings
from service.errors import InvalidArgument, ModelPackError
from service.models.byo_pack import (
    ARCFACE_112_TEMPLATE,
    derive_model_id,
    load_byo_pack,
    parse_embedder_spec,
)
from service.models.byo_presets import EMBEDDER_PRESETS
from service.models.pack import MANIFEST, PackManifest, sha256_file
from service.pipeline.arcface import ArcFaceEmbedder, align_to_template
from service.pipeline.byo_analyzer import ByoAnalyzer
from service.pipeline.decode import decode_image
from service.pipeline.dlib_analyzer import DlibAnalyzer
from service.pipeline.factory import build_analyzer


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_written_manifest_is_a_pack_manifest_with_pins_and_explicit_conventions(
    tmp_path: Path,
) -> None:
    pack = make_pack(tmp_path, "retina-mfn", "retinaface_mnet025")
    doc = json.loads((tmp_path / "retina-mfn" / MANIFEST).read_text())
    again = PackManifest.from_json(json.dumps(doc))  # the same family as the dlib pack's
    assert again == pack.manifest
    assert set(doc["files"]) == {"detector", "embedder"}
    models = require_shared_models()
    assert doc["files"]["embedder"]["sha256"] == sha256_file(models / MOBILEFACENET)
    assert doc["landmarks"] == {"kind": "detector", "layout": "arcface5", "points": 5}
    assert doc["detector"]["kind"] == "retinaface" and doc["detector"]["colour"] == "BGR"
    assert doc["embedder"]["mean"] == [123.675, 116.28, 103.53]
    assert doc["embedder"]["template"] == [list(p) for p in ARCFACE_112_TEMPLATE]
    assert doc["thresholds"]["cosine_default"] == pytest.approx(0.35)
    assert pack.manifest.model_id.startswith("mobilefacenet-")
    assert pack.manifest.model_id == derive_model_id(pack.manifest)


def test_model_id_follows_the_files_and_the_preprocessing(tmp_path: Path) -> None:
    a = make_pack(tmp_path, "a", "yunet_2023mar").manifest.model_id
    assert make_pack(tmp_path, "a2", "yunet_2023mar").manifest.model_id == a
    assert make_pack(tmp_path, "b", "scrfd_2.5g").manifest.model_id != a  # other landmarks
    bgr = dict(EMBEDDER_PRESETS["mobilefacenet"], colour="BGR")
    manifest = make_pack(tmp_path, "c", "yunet_2023mar").manifest
    changed = PackManifest.from_json(
        manifest.to_json().replace('"colour": "RGB"', '"colour": "BGR"')
    )
    assert changed.embedder["colour"] == bgr["colour"]
    assert derive_model_id(changed) != a


def test_sha256_mismatch_is_refused_naming_the_file_and_both_hashes(tmp_path: Path) -> None:
    pack = make_pack(tmp_path, "p", "yunet_2023mar", symlink=False)
    embedder = pack.file("embedder")
    pinned = pack.manifest.files["embedder"].sha256
    _flip_last_byte(embedder)
    actual = sha256_file(embedder)
    with pytest.raises(ModelPackError) as info:
        load_byo_pack("p", tmp_path)
    message = info.value.message
    assert "mobilefacenet.onnx (embedder) is corrupt" in message
    assert actual in message and pinned in message
    assert info.value.metadata["sha256"] == actual
    assert info.value.metadata["expected_sha256"] == pinned
    with pytest.raises(ModelPackError, match="is corrupt"):
        build_analyzer(Settings(data_dir=tmp_path, model_dir=tmp_path, model_pack="p"))


def test_a_hand_edited_model_id_or_missing_convention_is_refused(tmp_path: Path) -> None:
    make_pack(tmp_path, "p", "scrfd_500m")
    path = tmp_path / "p" / MANIFEST
    doc = json.loads(path.read_text())
    doc["model_id"] = "dlib-resnet-v1"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelPackError, match="does not match the files and conventions"):
        load_byo_pack(path, tmp_path)  # a manifest path works as well as a name
    make_pack(tmp_path, "p", "scrfd_500m")
    doc = json.loads(path.read_text())
    del doc["detector"]["colour"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelPackError, match=r"detector\.colour is missing") as info:
        load_byo_pack("p", tmp_path)
    assert info.value.metadata["field"] == "detector.colour"


def test_cli_add_then_verify_then_serve_the_pack_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = require_shared_models()
    packs = tmp_path / "packs"
    rc = cli_main(
        [
            "models", "add", "sc", "--packs-dir", str(packs), "--json",
            "--detector", str(detector_file("scrfd_500m")),
            "--detector-kind", "scrfd", "--detector-input", "input.1",
            "--detector-size", "640x640", "--detector-colour", "RGB",
            "--detector-mean", "127.5,127.5,127.5", "--detector-std", "128,128,128",
            "--strides", "8,16,32", "--anchors-per-cell", "2",
            "--score-threshold", "0.5", "--nms-iou", "0.4",
            *[f"--detector-output={r}_{s}={n}" for r, names in (
                ("score", ("443", "468", "493")),
                ("bbox", ("446", "471", "496")),
                ("kps", ("449", "474", "499")),
            ) for s, n in zip((8, 16, 32), names, strict=True)],
            "--embedder", str(models / MOBILEFACENET),
            "--embedder-input", "input", "--embedder-output", "output",
            "--chip-size", "112", "--embedder-colour", "RGB", "--norm", "imagenet",
            "--embedding-dim", "128", "--cosine-threshold", "0.35",
        ]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    written = json.loads(out.out)
    assert written["name"] == "sc" and written["embedding_dim"] == 128
    # Flags alone give the same manifest sections as the presets.
    preset = make_pack(tmp_path / "other", "sc", "scrfd_500m")
    assert written["model_id"] == preset.manifest.model_id

    assert cli_main(["models", "verify", "--packs-dir", str(packs), "--name", "sc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == written["model_id"]

    analyzer = build_analyzer(Settings(data_dir=tmp_path, model_dir=packs, model_pack="sc"))
    assert isinstance(analyzer, ByoAnalyzer) and analyzer.model_id == written["model_id"]
    image = decode_image(grace_hopper_path().read_bytes(), Settings().decode)
    faces = analyzer.locate(image)
    assert len(faces) == 1 and faces.layout == "arcface5"
    vec = analyzer.embed_chips(analyzer.align(image, faces))
    assert vec.shape == (1, 128) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5


def test_cli_add_refuses_missing_or_wrong_conventions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = require_shared_models()
    base = ["models", "add", "x", "--packs-dir", str(tmp_path), "--cosine-threshold", "0.3",
            "--embedder", str(models / MOBILEFACENET),
            "--embedder-preset", "mobilefacenet"]  # fmt: skip
    assert cli_main([*base, "--detector", str(detector_file("scrfd_500m")),
                     "--detector-kind", "scrfd"]) == 1  # fmt: skip
    assert "detector.input_size is missing" in capsys.readouterr().err
    assert cli_main([*base, "--detector", str(detector_file("scrfd_500m")),
                     "--detector-preset", "scrfd_2.5g"]) == 1  # fmt: skip
    assert "outputs the model lacks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written


def test_factory_default_is_the_dlib_pack(packs_dir: Path, tmp_path: Path) -> None:
    analyzer = build_analyzer(Settings(data_dir=tmp_path, model_dir=packs_dir))
    assert isinstance(analyzer, DlibAnalyzer) and analyzer.model_id == "dlib-resnet-v1"


def test_unknown_pack_name_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="facegate models add"):
        build_analyzer(Settings(data_dir=tmp_path, model_dir=tmp_path, model_pack="nope"))


# ---------------------------------------------------------------- alignment, embedder


def test_alignment_to_the_template_itself_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    chips = align_to_template(img, np.array([ARCFACE_112_TEMPLATE]), ARCFACE_112_TEMPLATE, 112)
    assert np.array_equal(chips[0], img)


def test_large_faces_are_box_filtered_before_warping() -> None:
    """A face 4× the chip size: the chip equals the 4×4 box-average of the image."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # each pixel → a 4×4 block
    lm = (np.array(ARCFACE_112_TEMPLATE) * 4 + 1.5)[None]  # block centres
    chip = align_to_template(big, lm, ARCFACE_112_TEMPLATE, 112)[0]
    assert np.abs(chip.astype(int) - small.astype(int)).max() <= 1


def test_bad_landmarks_are_invalid_arguments() -> None:
    img = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(InvalidArgument):
        align_to_template(img, np.zeros((1, 4, 2)), ARCFACE_112_TEMPLATE, 112)
    with pytest.raises(InvalidArgument):
        align_to_template(img, np.full((1, 5, 2), np.nan), ARCFACE_112_TEMPLATE, 112)


def test_embedder_batches_colour_order_and_names(tmp_path: Path) -> None:
    models = require_shared_models()
    spec = parse_embedder_spec(EMBEDDER_PRESETS["mobilefacenet"])
    emb = ArcFaceEmbedder(models / MOBILEFACENET, spec)
    rng = np.random.default_rng(2)
    chips = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    batch = emb.embed(chips)
    one = np.concatenate([emb.embed(chips[i : i + 1]) for i in range(3)])
    assert batch.shape == (3, 128) and np.allclose(batch, one, atol=1e-5)
    assert emb.embed(chips[:0]).shape == (0, 128)
    bgr = ArcFaceEmbedder(
        models / MOBILEFACENET,
        parse_embedder_spec(dict(EMBEDDER_PRESETS["mobilefacenet"], colour="BGR")),
    )
    assert np.allclose(bgr.embed(chips[:, :, :, ::-1].copy()), batch, atol=1e-5)
    wrong = dict(EMBEDDER_PRESETS["mobilefacenet"], output="embedding")
    with pytest.raises(ModelPackError, match="output 'embedding'"):
        ArcFaceEmbedder(models / MOBILEFACENET, parse_embedder_spec(wrong))
    with pytest.raises(InvalidArgument, match="shape"):
        emb.embed(np.zeros((1, 150, 150, 3), np.uint8))


def test_same_person_scores_higher_than_strangers(tmp_path: Path) -> None:
    """Real LFW photos through the whole BYO analyzer (the accuracy benchmark does all pairs)."""
    lfw = SHARED_FACES / "lfw-devtrain" / "images"
    if not lfw.is_dir():
        pytest.skip(f"needs the shared LFW photos at {lfw}")
    analyzer = ByoAnalyzer.from_pack(make_pack(tmp_path, "y", "yunet_2023mar"))
    people = ["Aaron_Peirsol", "Colin_Powell", "Tony_Blair"]

    def vec(name: str, i: int) -> np.ndarray:
        image = decode_image((lfw / name / f"{name}_{i:04d}.jpg").read_bytes(), Settings().decode)
        faces = analyzer.locate(image)
        return analyzer.embed_chips(analyzer.align(image, faces))[0]

    a = {p: (vec(p, 1), vec(p, 2)) for p in people}
    same = [float(a[p][0] @ a[p][1]) for p in people]
    other = [float(a[p][0] @ a[q][1]) for p in people for q in people if p != q]
    assert min(same) > max(other)
    assert min(same) > 0.35 > max(other)


def test_symlinked_and_copied_packs_verify_the_same(tmp_path: Path) -> None:
    linked = make_pack(tmp_path / "l", "p", "yunet_2023mar", symlink=True)
    copied = make_pack(tmp_path / "c", "p", "yunet_2023mar", symlink=False)
    assert linked.file("detector").is_symlink() and not copied.file("detector").is_symlink()
    assert linked.manifest.model_id == copied.manifest.model_id
    shutil.rmtree(tmp_path / "c" / "p")
