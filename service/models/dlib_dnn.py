"""Parse a serialized dlib DNN (``dlib/dnn/core.h``, layers.h, loss.h) into plain data.

Sections 2–3 of dlib-models.md. The file is one recursively serialized network: the loss
layer (version, type string, fields), then the run of wrapper versions outermost first
(2 = ``add_layer``, 3 = the innermost ``add_layer`` over the input layer, 1 = a tag or skip
layer, which store nothing else), then the input layer, then one payload per non-1 entry of
the run, innermost first. The file carries no topology beyond that run — which tag an
``add_prev`` refers to comes from the C++ network definition, so graph builders validate
``DlibNet.version_run`` against their own template.

Every array is float32 and owned (copied out of the file buffer). Parsing is to exact EOF;
anything unexpected raises :class:`DlibFormatError` naming the file, byte offset and item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.models.dlib_serialize import DlibFormatError, DlibReader
from service.pipeline.types import FloatArray

__all__ = [
    "AddPrev",
    "Affine",
    "AvgPool",
    "BatchNorm",
    "Conv",
    "DetectorWindow",
    "DlibFormatError",
    "DlibNet",
    "Fc",
    "InputLayer",
    "Layer",
    "MaxPool",
    "MetricLoss",
    "MmodLoss",
    "Relu",
    "parse_dnn",
]


# ---------------------------------------------------------------------------- input layers


@dataclass(frozen=True)
class InputLayer:
    """How images become the network's input tensor.

    ``kind`` is dlib's type string: ``input_rgb_image_sized`` (fixed ``size`` = (rows, cols))
    or ``input_rgb_image_pyramid`` / ``input_rgb_image_pyramid2`` (``pyramid_padding`` and
    ``pyramid_outer_padding``; v1 files imply 10 and 11). Pixels become ``(v - mean)/256``
    per channel, R, G, B planes.
    """

    kind: str
    mean_rgb: tuple[float, float, float]
    size: tuple[int, int] | None = None
    pyramid_padding: int | None = None
    pyramid_outer_padding: int | None = None


# ---------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class Conv:
    """Cross-correlation like ONNX Conv: ``weights`` (F, C, kh, kw) OIHW, ``bias`` (F,)
    (zeros when the layer has no bias), ``stride`` and ``pad`` as (y, x), symmetric pad."""

    weights: FloatArray = field(repr=False)
    bias: FloatArray = field(repr=False)
    stride: tuple[int, int]
    pad: tuple[int, int]
    use_relu: bool = False  # con_6 can fuse a relu after the conv

    @property
    def num_filters(self) -> int:
        return int(self.weights.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])


@dataclass(frozen=True, eq=False)
class Affine:
    """``y = x·gamma + beta``. ``mode`` "conv": one (gamma, beta) per channel, arrays (K,);
    "fc": one per element, arrays shaped like a sample (K, H, W)."""

    gamma: FloatArray = field(repr=False)
    beta: FloatArray = field(repr=False)
    mode: str
    disabled: bool = False  # affine_2 may be switched off (then it is the identity)


@dataclass(frozen=True, eq=False)
class BatchNorm:
    """Batch norm in inference form (running statistics). ``mode`` "conv" (per channel,
    arrays (K,)) or "fc" (per element). dlib evaluates it as the affine ``as_affine()``."""

    gamma: FloatArray = field(repr=False)
    beta: FloatArray = field(repr=False)
    running_mean: FloatArray = field(repr=False)
    running_var: FloatArray = field(repr=False)
    eps: float
    mode: str

    def as_affine(self) -> tuple[FloatArray, FloatArray]:
        """(scale, shift) with ``y = x·scale + shift`` — dlib's own load-time conversion,
        ``g = gamma/sqrt(running_var + eps)``, ``b = beta - g·running_mean``."""
        g = self.gamma / np.sqrt(self.running_var + np.float32(self.eps))
        b = self.beta - g * self.running_mean
        return g.astype(np.float32), b.astype(np.float32)


@dataclass(frozen=True)
class Relu:
    disabled: bool = False  # relu_2 may be switched off


@dataclass(frozen=True)
class _Pool:
    """``kernel``/``stride``/``pad`` as (y, x); kernel (0, 0) means global pooling."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.kernel == (0, 0)


@dataclass(frozen=True)
class MaxPool(_Pool):
    """dlib ``max_pool_2``."""


@dataclass(frozen=True)
class AvgPool(_Pool):
    """dlib ``avg_pool_2``."""


@dataclass(frozen=True)
class AddPrev:
    """Zero-padded add of this layer's input and an earlier tagged output (which tag is not
    in the file). Output dims are the element-wise max; missing values count as 0."""


@dataclass(frozen=True, eq=False)
class Fc:
    """``y = x_flat @ weights (+ bias)``: ``weights`` (num_inputs, num_outputs), ``bias``
    (num_outputs,) or None."""

    weights: FloatArray = field(repr=False)
    bias: FloatArray | None = field(repr=False)


Layer = Conv | Affine | BatchNorm | Relu | MaxPool | AvgPool | AddPrev | Fc


# ---------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class MetricLoss:
    """``loss_metric``: descriptors of one identity lie within ``dist_thresh`` (Euclidean)."""

    margin: float
    dist_thresh: float


@dataclass(frozen=True)
class DetectorWindow:
    width: int
    height: int
    label: str = ""


@dataclass(frozen=True)
class MmodLoss:
    """``loss_mmod`` options: sliding windows and the NMS rule used to decode detections.

    ``overlaps_nms``/``overlaps_ignore`` are ``test_box_overlap`` (iou_thresh,
    percent_covered_thresh).
    """

    options_version: int
    windows: tuple[DetectorWindow, ...]
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou_threshold: float
    overlaps_nms: tuple[float, float]
    overlaps_ignore: tuple[float, float]
    assume_image_pyramid: bool = True
    use_bounding_box_regression: bool = False
    bbr_lambda: float = 100.0


# ---------------------------------------------------------------------------- network


@dataclass(frozen=True, eq=False)
class DlibNet:
    """A parsed network. ``version_run`` is the wrapper versions outermost first, one
    character each ("2" add_layer, "3" innermost add_layer, "1" tag/skip); ``layers`` are
    the payloads of the non-"1" entries, **innermost (input side) first**."""

    version_run: str
    input: InputLayer
    layers: tuple[Layer, ...]
    loss: MetricLoss | MmodLoss
    param_count: int
    sample_expansion_factor: int = 1

    def count(self, kind: type) -> int:
        return sum(1 for layer in self.layers if isinstance(layer, kind))


# ---------------------------------------------------------------------------- parsing


def parse_dnn(data: bytes, source: str) -> DlibNet:
    """Parse a whole serialized dlib network (``net_type`` written by ``dlib::serialize``)."""
    return _Parser(DlibReader(data, source)).network()


class _Parser:
    def __init__(self, reader: DlibReader) -> None:
        self.r = reader
        self.param_count = 0

    # -- helpers ------------------------------------------------------------------------

    def _version(self, what: str, allowed: tuple[int, ...]) -> int:
        at = self.r.offset
        v = self.r.int()
        if v not in allowed:
            raise self.r.error(f"unsupported {what} version {v}", at)
        return v

    def _params(self, what: str) -> FloatArray:
        at = self.r.offset
        params = self.r.tensor().reshape(-1)
        if params.size == 0:
            raise self.r.error(f"{what} has no parameters (untrained network?)", at)
        self.param_count += int(params.size)
        return params

    def _pair(self) -> tuple[int, int]:
        return self.r.int(), self.r.int()

    def _doubles(self, n: int) -> None:
        for _ in range(n):
            self.r.float()

    # -- structure ----------------------------------------------------------------------

    def network(self) -> DlibNet:
        r = self.r
        self._version("add_loss_layer", (1,))
        loss = self.loss()
        run: list[int] = []
        while True:
            at = r.offset
            v = r.int()
            if v in (1, 2, 3):
                run.append(v)
                continue
            r.offset = at  # the first value > 3 is the input layer's type-string length
            break
        if not run or run[-1] not in (2, 3) or any(v == 3 for v in run[:-1]):
            raise r.error(f"implausible layer version run {''.join(map(str, run))!r}")
        input_layer = self.input_layer()
        layers: list[Layer] = []
        factor = 1
        for i, version in enumerate(reversed(run)):
            if version == 1:
                continue
            innermost = i == 0
            layers.append(self.layer())
            for _ in range(3):  # setup_called, gradient_input_is_stale, output/grad disabled
                r.bool()
            r.tensor()  # x_grad
            r.tensor()  # cached_output
            r.tensor()  # grad_final (innermost) / params_grad (others)
            if innermost and version == 3:
                at = r.offset
                factor = r.int()
                if factor < 1:
                    raise r.error(f"invalid sample_expansion_factor {factor}", at)
        r.expect_end()
        return DlibNet(
            version_run="".join(map(str, run)),
            input=input_layer,
            layers=tuple(layers),
            loss=loss,
            param_count=self.param_count,
            sample_expansion_factor=factor,
        )

    def input_layer(self) -> InputLayer:
        r = self.r
        at = r.offset
        kind = r.string(max_len=256)
        mean = (r.float(), r.float(), r.float())
        if kind == "input_rgb_image_sized":
            rows, cols = r.uint("rows"), r.uint("cols")
            return InputLayer(kind, mean, size=(rows, cols))
        if kind == "input_rgb_image_pyramid":
            return InputLayer(kind, mean, pyramid_padding=10, pyramid_outer_padding=11)
        if kind == "input_rgb_image_pyramid2":
            pad, outer = r.uint("padding"), r.uint("outer padding")
            return InputLayer(kind, mean, pyramid_padding=pad, pyramid_outer_padding=outer)
        raise r.error(f"unsupported input layer {kind!r}", at)

    def loss(self) -> MetricLoss | MmodLoss:
        r = self.r
        at = r.offset
        kind = r.string(max_len=256)
        if kind == "loss_metric_2":
            return MetricLoss(margin=r.float(), dist_thresh=r.float())
        if kind == "loss_metric_":
            return MetricLoss(margin=0.1, dist_thresh=0.75)
        if kind == "loss_mmod_":
            return self.mmod_options()
        raise r.error(f"unsupported loss layer {kind!r}", at)

    def mmod_options(self) -> MmodLoss:
        r = self.r
        version = self._version("mmod_options", (1, 2, 3, 4))
        if version == 1:
            windows: tuple[DetectorWindow, ...] = (DetectorWindow(r.uint(), r.uint()),)
        else:
            at = r.offset
            n = r.uint("window count")
            if n > 10_000:
                raise r.error(f"implausible detector window count {n}", at)
            found = []
            for _ in range(n):
                wv = self._version("detector_window_details", (1, 2))
                w, h = r.uint("window width"), r.uint("window height")
                label = r.string(max_len=4096) if wv == 2 else ""
                found.append(DetectorWindow(w, h, label))
            windows = tuple(found)
        lfa, lmt, iou = r.float(), r.float(), r.float()
        nms = (r.float(), r.float())
        ignore = (r.float(), r.float())
        pyramid = True
        if version >= 3:
            # uint8_t is serialized as one raw byte (USE_DEFAULT_BYTE_SERIALIZATION_FOR).
            pyramid = r.raw(1, "assume_image_pyramid")[0] != 0
        bbr, bbr_lambda = False, 100.0
        if version >= 4:
            bbr, bbr_lambda = r.bool(), r.float()
        return MmodLoss(version, windows, lfa, lmt, iou, nms, ignore, pyramid, bbr, bbr_lambda)

    def layer(self) -> Layer:
        r = self.r
        at = r.offset
        kind = r.string(max_len=256)
        if kind in ("con_4", "con_5", "con_6"):
            return self.conv(kind, at)
        if kind in ("affine_", "affine_2"):
            params = self._params(kind)
            gamma_shape, beta_shape = r.alias_tensor(), r.alias_tensor()
            mode = self._mode(r.int(), at)
            disabled = r.bool() if kind == "affine_2" else False
            gamma, beta = self._split_gamma_beta(params, gamma_shape, beta_shape, mode, at)
            return Affine(gamma, beta, mode, disabled)
        if kind in ("bn_con2", "bn_fc2"):
            return self.batch_norm(kind, at)
        if kind in ("relu_", "relu_2"):
            return Relu(disabled=r.bool() if kind == "relu_2" else False)
        if kind in ("max_pool_2", "avg_pool_2"):
            kernel = self._pair()
            stride = self._pair()
            pad = self._pair()
            if min(*kernel, *pad) < 0 or min(stride) < 1:
                raise r.error(f"{kind}: invalid kernel {kernel} stride {stride} pad {pad}", at)
            return (MaxPool if kind == "max_pool_2" else AvgPool)(kernel, stride, pad)
        if kind == "add_prev_":
            return AddPrev()
        if kind in ("fc_2", "fc_3"):
            return self.fc(kind, at)
        raise r.error(f"unknown layer type {kind!r}", at)

    def _mode(self, value: int, at: int) -> str:
        if value == 0:
            return "conv"
        if value == 1:
            return "fc"
        raise self.r.error(f"invalid layer mode {value} (0=conv, 1=fc)", at)

    def _split_gamma_beta(
        self,
        params: FloatArray,
        gamma_shape: tuple[int, int, int, int],
        beta_shape: tuple[int, int, int, int],
        mode: str,
        at: int,
    ) -> tuple[FloatArray, FloatArray]:
        n = int(np.prod(gamma_shape))
        if gamma_shape != beta_shape or params.size != 2 * n:
            raise self.r.error(
                f"gamma/beta shapes {gamma_shape}/{beta_shape} do not match "
                f"{params.size} parameters",
                at,
            )
        shape: tuple[int, ...] = (n,) if mode == "conv" else gamma_shape[1:]
        return params[:n].reshape(shape), params[n:].reshape(shape)

    def conv(self, kind: str, at: int) -> Conv:
        r = self.r
        params = self._params(kind)
        num_filters = r.int()
        kh, kw = self._pair()
        stride = self._pair()
        pad = self._pair()
        filters = r.alias_tensor()
        biases = r.alias_tensor()
        self._doubles(4)  # learning-rate / weight-decay multipliers
        use_bias = r.bool() if kind in ("con_5", "con_6") else True
        use_relu = r.bool() if kind == "con_6" else False
        f, c, fh, fw = filters
        n_w = f * c * fh * fw
        if (
            (f, fh, fw) != (num_filters, kh, kw)
            or biases[1] != f
            or min(stride) < 1
            or min(pad) < 0
            or params.size not in (n_w, n_w + f)
            or (use_bias and params.size != n_w + f)
        ):
            raise r.error(
                f"{kind}: inconsistent geometry (filters {filters}, biases {biases}, "
                f"num_filters {num_filters}, kernel {(kh, kw)}, stride {stride}, pad {pad}, "
                f"{params.size} parameters)",
                at,
            )
        weights = params[:n_w].reshape(f, c, fh, fw)
        bias = params[n_w:] if params.size == n_w + f else np.zeros(f, np.float32)
        if not use_bias:
            bias = np.zeros(f, np.float32)
        return Conv(weights, np.ascontiguousarray(bias), stride, pad, use_relu)

    def batch_norm(self, kind: str, at: int) -> BatchNorm:
        r = self.r
        params = self._params(kind)
        gamma_shape, beta_shape = r.alias_tensor(), r.alias_tensor()
        r.tensor()  # means of the last training batch (unused at inference)
        r.tensor()  # invstds of the last training batch
        running_mean = r.tensor().reshape(-1)
        running_var = r.tensor().reshape(-1)
        r.uint("num_updates")
        r.uint("running stats window")
        self._doubles(4)
        eps = r.float()
        mode = "conv" if kind == "bn_con2" else "fc"
        gamma, beta = self._split_gamma_beta(params, gamma_shape, beta_shape, mode, at)
        if running_mean.size != gamma.size or running_var.size != gamma.size:
            raise r.error(
                f"{kind}: running statistics of size {running_mean.size}/{running_var.size} "
                f"for {gamma.size} channels",
                at,
            )
        if not eps > 0:
            raise r.error(f"{kind}: invalid eps {eps}", at)
        return BatchNorm(
            gamma,
            beta,
            running_mean.reshape(gamma.shape),
            running_var.reshape(gamma.shape),
            eps,
            mode,
        )

    def fc(self, kind: str, at: int) -> Fc:
        r = self.r
        num_outputs = r.uint("num_outputs")
        num_inputs = r.uint("num_inputs")
        params = self._params(kind)
        weights_shape = r.alias_tensor()
        r.alias_tensor()  # biases
        bias_mode = r.int()
        self._doubles(4)
        if kind == "fc_3":
            r.bool()  # use_bias; bias_mode already says whether a bias row is stored
        n_w = num_inputs * num_outputs
        has_bias = bias_mode == 0
        if (
            bias_mode not in (0, 1)
            or weights_shape[0] * weights_shape[1] != n_w
            or params.size != n_w + (num_outputs if has_bias else 0)
        ):
            raise r.error(
                f"{kind}: inconsistent geometry ({num_inputs}→{num_outputs}, weights "
                f"{weights_shape}, bias_mode {bias_mode}, {params.size} parameters)",
                at,
            )
        weights = params[:n_w].reshape(num_inputs, num_outputs)
        bias = params[n_w:].copy() if has_bias else None
        return Fc(weights, bias)
