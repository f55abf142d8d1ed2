"""Build dlib's MMOD CNN face detector (``mmod_human_face_detector``) as ONNX.

Sections 3 and 4.2 of dlib-models.md. The network is a plain chain — three 5x5 stride-2
convs (the downsampler), three 5x5 stride-1 ``rcon5`` blocks, each conv followed by batch
norm and relu, then one 9x9 conv to a single score channel — so the graph is fully
convolutional and the file alone describes it; it is still checked against that template.

Graph contract:

* input ``image``: float32 ``[N, 3, H, W]`` with H, W dynamic — the tiled pyramid canvas,
  already ``(pixel - mean)/256`` (see ``service.pipeline.pyramid``).
* output ``scores``: float32 ``[N, 1, H', W']`` with ``H' = f(f(f(H)))``,
  ``f(h) = (h - 5)//2 + 1``; a cell's score is the detection confidence of the window
  centred on it.

Each batch norm is folded into its conv exactly as dlib evaluates it at inference:
``g = gamma/sqrt(running_var + eps)`` and ``b = beta - g·running_mean`` in float32 (eps is
the file's 1e-4; the running variances are ~1e-5, so eps matters), then
``W' = W·g``, ``B' = B·g + b`` computed in float64 and rounded once.

Everything the decoder needs besides the scores travels in the model's metadata
(``metadata_props``, see :data:`METADATA_KEYS`) so a converted file is self-describing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.errors import ModelPackError
from service.models.dlib_dnn import Affine, BatchNorm, Conv, DlibNet, MmodLoss, Relu

OPSET = 17
IR_VERSION = 8  # what opset 17 shipped with; older runtimes still load it
INPUT_NAME = "image"
OUTPUT_NAME = "scores"

# (kernel, stride, pad, filters) of the six conv-bn-relu blocks, innermost first, then the
# final score conv; from dnn_mmod_face_detection_ex.cpp (downsampler + 3×rcon5 + con9).
_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (5, 2, 0, 16),
    (5, 2, 0, 32),
    (5, 2, 0, 32),
    (5, 1, 2, 45),
    (5, 1, 2, 45),
    (5, 1, 2, 45),
)
_HEAD = (9, 1, 4, 1)

METADATA_KEYS = (
    "facegate.kind",  # "dlib_mmod"
    "mean_rgb",  # "r,g,b" floats subtracted before /256
    "pyramid_padding",  # rows/cols between tiles
    "pyramid_outer_padding",  # zeros around the canvas
    "pyramid_down",  # N of pyramid_down<N>: each level is (N-1)/N of the previous
    "window",  # "width,height" of the detection window in tensor pixels
    "cell_stride",  # output cell (r, c) is centred on input (stride·c + offset, stride·r + offset)
    "cell_offset",
    "nms_iou",  # test_box_overlap thresholds used for non-max suppression
    "nms_covered",
)


def expected_layer_kinds() -> tuple[type, ...]:
    return (Conv, BatchNorm, Relu) * len(_BLOCKS) + (Conv,)


def validate_mmod(net: DlibNet) -> MmodLoss:
    """Refuse a network that is not dlib's MMOD face detector; return its loss options."""
    where = "detector network"
    if net.version_run != "2" * 18 + "3":
        raise ModelPackError(
            f"{where}: layer structure differs from dlib's MMOD detector "
            f"(version run {net.version_run!r})"
        )
    if net.input.kind not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise ModelPackError(f"{where}: expected an image-pyramid input, found {net.input.kind}")
    loss = net.loss
    if not isinstance(loss, MmodLoss):
        raise ModelPackError(f"{where}: expected a loss_mmod network")
    if len(loss.windows) != 1 or loss.use_bounding_box_regression or not loss.assume_image_pyramid:
        raise ModelPackError(
            f"{where}: expected one detection window without box regression over an image "
            f"pyramid, found {len(loss.windows)} windows, bbr={loss.use_bounding_box_regression}"
        )
    kinds = expected_layer_kinds()
    if len(net.layers) != len(kinds):
        raise ModelPackError(f"{where}: {len(net.layers)} layers, expected {len(kinds)}")
    for i, (layer, kind) in enumerate(zip(net.layers, kinds, strict=True)):
        if not isinstance(layer, kind):
            raise ModelPackError(
                f"{where}: layer {i} is {type(layer).__name__}, expected {kind.__name__}"
            )
        if isinstance(layer, BatchNorm) and layer.mode != "conv":
            raise ModelPackError(f"{where}: layer {i} is not a per-channel batch norm")
        if isinstance(layer, Relu) and layer.disabled:
            raise ModelPackError(f"{where}: layer {i} is a disabled relu")
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    in_channels = 3
    for i, (conv, (k, s, p, f)) in enumerate(zip(convs, (*_BLOCKS, _HEAD), strict=True)):
        got = (conv.weights.shape, conv.stride, conv.pad, conv.use_relu)
        want = ((f, in_channels, k, k), (s, s), (p, p), False)
        if got != want:
            raise ModelPackError(f"{where}: conv {i} is {got}, expected {want}")
        in_channels = f
    return loss


def fold_batch_norm(conv: Conv, norm: BatchNorm | Affine) -> tuple[np.ndarray, np.ndarray]:
    """(W', B') with conv-then-norm == one conv: W' = W·g[o], B' = B·g + b."""
    if isinstance(norm, BatchNorm):
        g32, b32 = norm.as_affine()  # float32, as dlib converts bn to affine at load time
    else:
        g32, b32 = norm.gamma, norm.beta
    g = g32.astype(np.float64)
    w = (conv.weights.astype(np.float64) * g[:, None, None, None]).astype(np.float32)
    b = (conv.bias.astype(np.float64) * g + b32.astype(np.float64)).astype(np.float32)
    return w, b


def cell_to_input_mapping(net: DlibNet) -> tuple[int, int]:
    """(stride, offset) with output cell c centred on input pixel stride·c + offset.

    Walks the convs from the output inward like dlib's output_tensor_to_input_tensor:
    p ← p·stride − pad + kernel//2 (identical for rows and columns here).
    """
    stride, offset = 1, 0
    for layer in reversed(net.layers):
        if isinstance(layer, Conv):
            (s, _), (p, _) = layer.stride, layer.pad
            k = layer.kernel[0]
            # p_in = (stride·c + offset)·s − p + k//2
            stride, offset = stride * s, offset * s - p + k // 2
    return stride, offset


def output_size(h: int) -> int:
    """Rows (or columns) of the score map for an input of ``h`` rows: f(f(f(h)))."""
    for k, s, p, _ in (*_BLOCKS, _HEAD):
        h = (h + 2 * p - k) // s + 1
    return h


def build_mmod_onnx(net: DlibNet) -> onnx.ModelProto:
    """The MMOD detector as an ONNX model (normalised pyramid canvas → score map)."""
    loss = validate_mmod(net)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    layers = list(net.layers)

    def conv_node(x: str, i: int, conv: Conv, w: np.ndarray, b: np.ndarray) -> str:
        k = conv.kernel
        (sy, sx), (py, px) = conv.stride, conv.pad
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w), f"conv{i}_W"))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(b), f"conv{i}_B"))
        out = f"conv{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"conv{i}_W", f"conv{i}_B"],
                [out],
                name=out,
                kernel_shape=list(k),
                strides=[sy, sx],
                pads=[py, px, py, px],
            )
        )
        return out

    x = INPUT_NAME
    for i in range(len(_BLOCKS)):
        conv, norm, _ = layers[3 * i : 3 * i + 3]
        assert isinstance(conv, Conv) and isinstance(norm, BatchNorm)
        w, b = fold_batch_norm(conv, norm)
        y = conv_node(x, i, conv, w, b)
        x = f"relu{i}"
        nodes.append(helper.make_node("Relu", [y], [x], name=x))
    head = layers[-1]
    assert isinstance(head, Conv)
    y = conv_node(x, len(_BLOCKS), head, head.weights, head.bias)
    nodes[-1].output[0] = OUTPUT_NAME

    graph = helper.make_graph(
        nodes,
        "mmod_human_face_detector",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1, "Hout", "Wout"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facegate",
        doc_string="dlib MMOD CNN face detector converted by facegate (input: normalised "
        "tiled-pyramid canvas float32 NCHW; output: per-cell window scores)",
    )
    model.ir_version = IR_VERSION
    stride, offset = cell_to_input_mapping(net)
    window = loss.windows[0]
    padding = net.input.pyramid_padding
    outer = net.input.pyramid_outer_padding
    meta: dict[str, Any] = {
        "facegate.kind": "dlib_mmod",
        "mean_rgb": ",".join(repr(float(v)) for v in net.input.mean_rgb),
        "pyramid_padding": padding,
        "pyramid_outer_padding": outer,
        "pyramid_down": 6,  # input_rgb_image_pyramid<pyramid_down<6>> in the C++ net type
        "window": f"{window.width},{window.height}",
        "cell_stride": stride,
        "cell_offset": offset,
        "nms_iou": repr(float(loss.overlaps_nms[0])),
        "nms_covered": repr(float(loss.overlaps_nms[1])),
    }
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    return model
