"""Build the face-descriptor ResNet (``dlib_face_recognition_resnet_model_v1``) as ONNX.

Section 4.1 of dlib-models.md. The dlib file stores layer payloads but not the skip
topology, so the graph follows the C++ definition in ``dnn_face_recognition_ex.cpp``
(``anet_type``), and the parsed file is first checked against that template: the
wrapper-version run, the payload kinds in order, and every conv's channel count.

Graph contract:

* input ``chips``: uint8 ``[N, 150, 150, 3]`` RGB (NHWC, exactly what alignment produces),
  N dynamic. The graph does dlib's ``input_rgb_image_sized`` preprocessing itself —
  ``(pixel - mean_c) / 256`` on R, G, B planes — so embedding is a single ORT run.
* output ``descriptors``: float32 ``[N, 128]``, the raw fc output (not L2-normalised; dlib's
  descriptors have norm ≈ 1 but not exactly 1).

Every ``affine`` is folded into the conv before it; dlib's zero-padding ``add_prev`` (⊕:
shapes grow to the element-wise max, missing values are 0, top-left aligned) becomes
``Pad`` on the smaller operand followed by ``Add``. All shapes except N are static.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.errors import ModelPackError
from service.models.dlib_dnn import (
    AddPrev,
    Affine,
    AvgPool,
    Conv,
    DlibNet,
    Fc,
    Layer,
    MaxPool,
    MetricLoss,
    Relu,
)

OPSET = 17
# IR 8 is what opset 17 shipped with; a conservative choice keeps older runtimes loading it.
IR_VERSION = 8
INPUT_NAME = "chips"
OUTPUT_NAME = "descriptors"
CHIP_SIZE = 150
EMBEDDING_DIM = 128

# The network, innermost first, as (stage kind, channels). "ares" = relu(block(x) + x),
# "ares_down" = relu(avgpool2x2s2(x) ⊕ block_stride2(x)). From anet_type in
# dnn_face_recognition_ex.cpp: alevel4 (3×ares32), alevel3 (ares_down64 + 3×ares64),
# alevel2/1 (ares_down + 2×ares at 128/256), alevel0 (ares_down256).
_STAGES: tuple[tuple[str, int], ...] = (
    ("ares", 32),
    ("ares", 32),
    ("ares", 32),
    ("ares_down", 64),
    ("ares", 64),
    ("ares", 64),
    ("ares", 64),
    ("ares_down", 128),
    ("ares", 128),
    ("ares", 128),
    ("ares_down", 256),
    ("ares", 256),
    ("ares", 256),
    ("ares_down", 256),
)

# Payload kinds per stage, innermost first, and the wrapper-version entries (1 = tag/skip)
# they contribute, also innermost first.
_STEM_KINDS = (Conv, Affine, Relu, MaxPool)
_ARES_KINDS = (Conv, Affine, Relu, Conv, Affine, AddPrev, Relu)
_ARES_DOWN_KINDS = (Conv, Affine, Relu, Conv, Affine, AvgPool, AddPrev, Relu)
_HEAD_KINDS = (AvgPool, Fc)
_ARES_RUN = "1" + "2" * 7  # tag1, then the seven add_layers
_ARES_DOWN_RUN = "1" + "2" * 5 + "11" + "2" * 3  # tag1, block, tag2, skip1, pool, add, relu


def expected_version_run() -> str:
    """The wrapper-version run (outermost first) that ``anet_type`` serializes to."""
    inner_first = "3" + "2" * 3  # stem: the con over the input layer is the innermost
    for kind, _ in _STAGES:
        inner_first += _ARES_RUN if kind == "ares" else _ARES_DOWN_RUN
    inner_first += "22"  # avg_pool_everything, fc_no_bias
    return inner_first[::-1]


def expected_layer_kinds() -> tuple[type, ...]:
    kinds: list[type] = list(_STEM_KINDS)
    for kind, _ in _STAGES:
        kinds.extend(_ARES_KINDS if kind == "ares" else _ARES_DOWN_KINDS)
    kinds.extend(_HEAD_KINDS)
    return tuple(kinds)


def validate_resnet(net: DlibNet) -> None:
    """Refuse a network that is not dlib's face-descriptor ResNet (the topology is assumed)."""
    if net.version_run != expected_version_run():
        raise ModelPackError(
            "descriptor network: layer structure differs from dlib's face-recognition ResNet "
            f"(version run {net.version_run[:40]}… of length {len(net.version_run)})"
        )
    if net.input.kind != "input_rgb_image_sized" or net.input.size != (CHIP_SIZE, CHIP_SIZE):
        raise ModelPackError(
            f"descriptor network: expected a {CHIP_SIZE}x{CHIP_SIZE} input_rgb_image_sized "
            f"input, found {net.input.kind} {net.input.size}"
        )
    if not isinstance(net.loss, MetricLoss):
        raise ModelPackError("descriptor network: expected a loss_metric network")
    kinds = expected_layer_kinds()
    if len(net.layers) != len(kinds):
        raise ModelPackError(f"descriptor network: {len(net.layers)} layers, expected {len(kinds)}")
    for i, (layer, kind) in enumerate(zip(net.layers, kinds, strict=True)):
        if not isinstance(layer, kind):
            raise ModelPackError(
                f"descriptor network: layer {i} is {type(layer).__name__}, expected {kind.__name__}"
            )
        if isinstance(layer, Affine) and (layer.mode != "conv" or layer.disabled):
            raise ModelPackError(f"descriptor network: layer {i} is not a per-channel affine")
        if isinstance(layer, Relu) and layer.disabled:
            raise ModelPackError(f"descriptor network: layer {i} is a disabled relu")
        if isinstance(layer, Conv) and layer.use_relu:
            raise ModelPackError(f"descriptor network: layer {i} fuses an unexpected relu")


@dataclass
class _Value:
    """A graph value and its static (C, H, W) shape (N is dynamic)."""

    name: str
    shape: tuple[int, int, int]


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self._name(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        out = self._name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # -- layers ---------------------------------------------------------------------------

    def conv_affine(self, x: _Value, conv: Conv, affine: Affine) -> _Value:
        f, c, kh, kw = conv.weights.shape
        if c != x.shape[0]:
            raise ModelPackError(
                f"descriptor network: conv expects {c} input channels, gets {x.shape[0]}"
            )
        if affine.gamma.shape != (f,):
            raise ModelPackError("descriptor network: affine size does not match its conv")
        # Fold y = (W*x + b)·g + β into W' = W·g[o], b' = b·g + β (float64, then float32).
        g = affine.gamma.astype(np.float64)
        w = (conv.weights.astype(np.float64) * g[:, None, None, None]).astype(np.float32)
        b = (conv.bias.astype(np.float64) * g + affine.beta.astype(np.float64)).astype(np.float32)
        (sy, sx), (py, px) = conv.stride, conv.pad
        out = self.node(
            "Conv",
            [x.name, self.const("W", w), self.const("B", b)],
            "conv",
            kernel_shape=[kh, kw],
            strides=[sy, sx],
            pads=[py, px, py, px],
        )
        h = (x.shape[1] + 2 * py - kh) // sy + 1
        wd = (x.shape[2] + 2 * px - kw) // sx + 1
        return _Value(out, (f, h, wd))

    def relu(self, x: _Value) -> _Value:
        return _Value(self.node("Relu", [x.name], "relu"), x.shape)

    def pool(self, x: _Value, layer: MaxPool | AvgPool) -> _Value:
        (kh, kw), (sy, sx), (py, px) = layer.kernel, layer.stride, layer.pad
        op = "MaxPool" if isinstance(layer, MaxPool) else "AveragePool"
        if (py, px) != (0, 0):
            # dlib pads pooling with -inf (max) / excludes pads (avg); not needed for this net.
            raise ModelPackError("descriptor network: padded pooling is not supported")
        out = self.node(op, [x.name], op.lower(), kernel_shape=[kh, kw], strides=[sy, sx])
        h = (x.shape[1] - kh) // sy + 1
        w = (x.shape[2] - kw) // sx + 1
        return _Value(out, (x.shape[0], h, w))

    def _pad_to(self, x: _Value, shape: tuple[int, int, int]) -> str:
        extra = [t - s for s, t in zip(x.shape, shape, strict=True)]
        if not any(extra):
            return x.name
        pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
        return self.node("Pad", [x.name, self.const("pads", pads)], "pad", mode="constant")

    def add_prev(self, a: _Value, b: _Value) -> _Value:
        """dlib's ⊕: grow both operands to the element-wise max shape with zeros, then add."""
        shape = (
            max(a.shape[0], b.shape[0]),
            max(a.shape[1], b.shape[1]),
            max(a.shape[2], b.shape[2]),
        )
        out = self.node("Add", [self._pad_to(a, shape), self._pad_to(b, shape)], "add")
        return _Value(out, shape)


def build_resnet_onnx(net: DlibNet) -> onnx.ModelProto:
    """The descriptor ResNet as an ONNX model (uint8 NHWC chips → raw 128-d descriptors)."""
    validate_resnet(net)
    g = _GraphBuilder()
    layers: list[Layer] = list(net.layers)
    pos = 0

    def take(n: int) -> list[Layer]:
        nonlocal pos
        out = layers[pos : pos + n]
        pos += n
        return out

    # Preprocessing: uint8 NHWC → float NCHW, (v - mean)/256. Division by 256 is exact, so
    # Mul by 1/256 gives dlib's values bit for bit.
    x_f = g.node("Cast", [INPUT_NAME], "cast", to=TensorProto.FLOAT)
    x_t = g.node("Transpose", [x_f], "nchw", perm=[0, 3, 1, 2])
    mean = np.asarray(net.input.mean_rgb, np.float32).reshape(1, 3, 1, 1)
    x_c = g.node("Sub", [x_t, g.const("mean_rgb", mean)], "centre")
    x_s = g.node("Mul", [x_c, g.const("inv256", np.asarray(1.0 / 256.0, np.float32))], "scale")
    x = _Value(x_s, (3, CHIP_SIZE, CHIP_SIZE))

    conv, affine, _, pool = take(4)
    assert isinstance(conv, Conv) and isinstance(affine, Affine)
    assert isinstance(pool, MaxPool)
    x = g.pool(g.relu(g.conv_affine(x, conv, affine)), pool)

    for kind, channels in _STAGES:
        c1, a1, _, c2, a2 = take(5)
        assert isinstance(c1, Conv) and isinstance(a1, Affine)
        assert isinstance(c2, Conv) and isinstance(a2, Affine)
        if c1.num_filters != channels or c2.num_filters != channels:
            raise ModelPackError(
                f"descriptor network: {kind} stage has {c1.num_filters}/{c2.num_filters} "
                f"filters, expected {channels}"
            )
        block = g.conv_affine(g.relu(g.conv_affine(x, c1, a1)), c2, a2)
        if kind == "ares":
            take(2)  # add_prev, relu
            x = g.relu(g.add_prev(block, x))
        else:
            skip_pool, _, _ = take(3)  # avg_pool, add_prev, relu
            assert isinstance(skip_pool, AvgPool)
            x = g.relu(g.add_prev(g.pool(x, skip_pool), block))

    head_pool, fc = take(2)
    assert isinstance(head_pool, AvgPool) and head_pool.is_global
    assert isinstance(fc, Fc)
    pooled = g.node("GlobalAveragePool", [x.name], "gap")
    flat = g.node("Flatten", [pooled], "flatten", axis=1)
    if fc.weights.shape != (x.shape[0], EMBEDDING_DIM):
        raise ModelPackError(
            f"descriptor network: fc weights {fc.weights.shape}, expected "
            f"({x.shape[0]}, {EMBEDDING_DIM})"
        )
    out = g.node("MatMul", [flat, g.const("fc_W", fc.weights)], "fc")
    if fc.bias is not None:
        out = g.node("Add", [out, g.const("fc_B", fc.bias)], "fc_bias")
    # Rename the last node's output to the public name.
    g.nodes[-1].output[0] = OUTPUT_NAME

    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.UINT8, ["N", CHIP_SIZE, CHIP_SIZE, 3]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", EMBEDDING_DIM])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facegate",
        doc_string="dlib face-recognition ResNet v1 converted by facegate "
        "(input: uint8 RGB NHWC 150x150 chips; output: raw 128-d descriptors)",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model
