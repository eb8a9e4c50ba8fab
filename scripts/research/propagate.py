"""Data-free activation statistics: means and channel covariances propagated through a graph.

Every tensor of the graph is modelled as Gaussian per position, with a channel mean ``mu``
and covariance ``C`` that are the same at every position, and a separable spatial
correlation ``Cov(x_c(p), x_d(q)) = C_cd rho^(|p - q|_1)`` (``rho`` the correlation of
neighbouring positions). The network input's moments are measured on synthetic images
(:mod:`lbyl_onnx.inputs.synthetic`); every node then maps them in closed form:

- **Conv** (weight ``W``, ``O x C/g x k x k``): ``mu' = W_sum mu + b`` and
  ``C'_oo' = sum_{c,d,p,q} W_ocp W_o'dq C_cd R_pq`` with ``R_pq = rho^(|p - q|_1)`` over the
  kernel's taps (dilation included); ``rho'`` is the same sum with the taps of one channel
  a stride apart, divided by the variance (averaged over channels, weighted by variance).
  ``Gemm``/``MatMul`` with a constant weight: ``mu' = W mu + b``, ``C' = W C W^T``.
- **BatchNormalization re-anchors**: its running statistics are its input's per-channel
  mean and variance, so its output has mean ``beta`` and variance
  ``gamma^2 var / (var + eps)`` exactly; only the correlations come from upstream (the
  identity where nothing upstream is known).
- **Activations**: Mehler's series (:func:`lbyl_onnx.methods.moments.activation_moments`),
  closed form for ReLU, Clip(0, c), LeakyReLU and PRelu, quadrature for HardSwish,
  HardSigmoid, Sigmoid and Tanh; ``x * Sigmoid(x)`` (Swish) as one function of ``x``.
- **Averaging** (AveragePool, GlobalAveragePool, ReduceMean over space) scales ``C`` by the
  mean of ``R`` over the window's pairs of positions; **Add** of two computed tensors adds
  moments as if independent; a product with a per-sample gate (squeeze-and-excitation)
  scales by the gate's mean; **Concat** of channels is block diagonal.
- **Approximate**: MaxPool and Resize pass moments through (``rho`` raised to the stride).
  Any other node leaves its outputs unknown, and so everything downstream up to the next
  BatchNormalization.

It assumes what no network satisfies exactly (Gaussian pre-activations, stationary and
separable spatial statistics, independent residual branches, no zero padding);
``scripts/statistics_diagnostic.py`` measures how far the result is from real activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from lbyl_onnx.graph.index import GraphIndex, attribute
from lbyl_onnx.graph.shapes import infer_shapes
from lbyl_onnx.graph.units import Unit
from lbyl_onnx.methods.calibrated import ActivationStats
from lbyl_onnx.methods.moments import Activation

from .mehler import Function, activation_moments

MAX_COST = 4e10
"""Multiply-adds one node's covariance may take; a larger one (a dense layer on a large
flattened map) leaves its output unknown."""

MAX_FEATURES = 8192
"""The largest flattened map whose features get a covariance (``8192^2`` doubles: 512 MiB)."""


@dataclass(frozen=True)
class Moments:
    """The model of one tensor: channel mean ``(C,)``, channel covariance ``(C, C)``, and the
    correlation of neighbouring positions (0 for features without positions)."""

    mean: np.ndarray
    cov: np.ndarray
    rho: float = 0.0


def _window_correlation(rho: float, size: int, dilation: int = 1) -> np.ndarray:
    """``rho^|i - j|`` between the taps of a 1-D window (``size x size``)."""
    taps = np.arange(size) * dilation
    return rho ** np.abs(taps[:, None] - taps[None, :])


def _average_factor(rho: float, size: int) -> float:
    """The mean of ``rho^|i - j|`` over all pairs of a 1-D window: the variance of a mean of
    ``size`` neighbours, relative to one."""
    return float(_window_correlation(rho, size).mean()) if size > 1 else 1.0


def _dense_weight(weight: np.ndarray, group: int, channels: int) -> np.ndarray:
    """A grouped conv's weight as the full ``O x C x taps`` one (zeros across groups)."""
    out, per_group = weight.shape[0], weight.shape[1]
    taps = weight.reshape(out, per_group, -1)
    if group == 1:
        return taps
    full = np.zeros((out, channels, taps.shape[2]))
    step = out // group
    for g in range(group):
        full[g * step : (g + 1) * step, g * per_group : (g + 1) * per_group] = taps[
            g * step : (g + 1) * step
        ]
    return full


def conv_moments(
    x: Moments,
    weight: np.ndarray,
    bias: np.ndarray | None,
    group: int = 1,
    strides: tuple[int, int] = (1, 1),
    dilations: tuple[int, int] = (1, 1),
) -> Moments:
    """The moments of a 2-D conv's output (module docstring). ``weight`` is
    ``O x C/group x kh x kw``."""
    out, per_group, kh, kw = weight.shape
    channels = per_group * group
    w = weight.astype(np.float64)
    if per_group == 1 and group == channels:  # depthwise: C'_oo' = C_c(o)c(o') w_o^T R w_o'
        taps = w.reshape(out, -1)
        source = np.arange(out) // (out // channels)
        mean = x.mean[source] * taps.sum(axis=1)

        def form(spatial: np.ndarray, diagonal: bool = False) -> np.ndarray:
            if diagonal:
                return x.cov[source, source] * np.einsum("op,pq,oq->o", taps, spatial, taps)
            return x.cov[np.ix_(source, source)] * (taps @ spatial @ taps.T)

    else:
        full = _dense_weight(w, group, channels)  # O x C x taps
        by_channel = np.einsum("ocp,cd->odp", full, x.cov, optimize=True)  # sum_c W_ocp C_cd
        mean = full.sum(axis=2) @ x.mean

        def form(spatial: np.ndarray, diagonal: bool = False) -> np.ndarray:
            mixed = by_channel @ spatial  # sum_{c,p} W_ocp C_cd R_pq
            if diagonal:
                return np.sum(mixed * full, axis=(1, 2))
            return mixed.reshape(out, -1) @ full.reshape(out, -1).T

    rows = _window_correlation(x.rho, kh, dilations[0])
    cols = _window_correlation(x.rho, kw, dilations[1])
    cov = form(np.kron(rows, cols))  # taps in row-major order, as the weight stores them
    if bias is not None:
        mean = mean + bias.astype(np.float64).reshape(-1)
    rho = 0.0
    if x.rho > 0:  # each channel with itself one output position (a stride) to the right
        taps_x = np.arange(kw) * dilations[1]
        shifted = x.rho ** np.abs(taps_x[:, None] - taps_x[None, :] - strides[1])
        rho = _weighted_correlation(form(np.kron(rows, shifted), diagonal=True), np.diag(cov))
    return Moments(mean, (cov + cov.T) / 2, rho)


def _weighted_correlation(lagged: np.ndarray, variance: np.ndarray) -> float:
    """``sum lagged / sum variance``, in ``[0, 1)``."""
    total = float(np.sum(variance))
    return float(np.clip(np.sum(lagged) / total, 0.0, 0.999)) if total > 0 else 0.0


def dense_moments(x: Moments, weight: np.ndarray, bias: np.ndarray | None) -> Moments:
    """``y = W x + b`` with ``W`` as ``O x C``: ``mu' = W mu + b``, ``C' = W C W^T``."""
    w = weight.astype(np.float64)
    mean = w @ x.mean + (0.0 if bias is None else bias.astype(np.float64).reshape(-1))
    cov = w @ x.cov @ w.T
    return Moments(mean, (cov + cov.T) / 2, 0.0)


def anchored(x: Moments | None, mean: np.ndarray, variance: np.ndarray) -> Moments:
    """``x``'s correlations (the identity when ``x`` is unknown) with the given means and
    variances: what a BatchNormalization's statistics fix."""
    sd = np.sqrt(np.maximum(variance, 0.0))
    if x is None:
        return Moments(mean, np.diag(sd**2), 0.0)
    own = np.sqrt(np.maximum(np.diag(x.cov), 0.0))
    safe = np.where(own > 0, own, 1.0)
    corr = x.cov / safe[:, None] / safe[None, :]
    np.fill_diagonal(corr, 1.0)
    return Moments(mean, corr * sd[:, None] * sd[None, :], x.rho)


def _hard_sigmoid(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda z: np.clip(alpha * z + beta, 0.0, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _swish(z: np.ndarray) -> np.ndarray:
    return z * _sigmoid(z)


class _Propagation:
    """The walk over the nodes in order, one :class:`Moments` (or None) per tensor."""

    def __init__(self, model: onnx.ModelProto, start: dict[str, Moments], shapes) -> None:
        self.index = GraphIndex(model)
        self.shapes = shapes
        self.moments: dict[str, Moments | None] = dict(start)

    def run(self) -> dict[str, Moments | None]:
        for node in self.index.model.graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                result = self.node(node)
            except (ValueError, IndexError, TypeError, np.linalg.LinAlgError):
                result = None
            if node.output and node.output[0]:
                self.moments[node.output[0]] = result
        return self.moments

    def get(self, name: str) -> Moments | None:
        return self.moments.get(name)

    def constant(self, name: str) -> np.ndarray | None:
        value = self.index.value(name) if name else None
        return None if value is None else value.astype(np.float64)

    def spatial(self, name: str) -> tuple[int, int] | None:
        shape = self.shapes.get(name)
        if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            return None
        return int(shape[2]), int(shape[3])

    def node(self, node: onnx.NodeProto) -> Moments | None:
        op, inputs = node.op_type, list(node.input)
        x = self.get(inputs[0]) if inputs else None
        if op == "BatchNormalization":
            gamma, beta, mean, var = (self.constant(n) for n in inputs[1:5])
            eps = float(attribute(node, "epsilon", 1e-5))
            return anchored(x, beta, gamma**2 * var / (var + eps))
        if op in ("Add", "Sub", "Mul", "Div"):
            return self.arithmetic(node)
        if x is None:
            return None
        if op in ("Identity", "Dropout"):
            return x
        if op == "Conv":
            weight = self.constant(inputs[1])
            if weight is None or weight.ndim != 4:
                return None
            group = int(attribute(node, "group", 1))
            if weight.shape[0] * weight.size > MAX_COST:
                return None
            return conv_moments(
                x,
                weight,
                self.constant(inputs[2]) if len(inputs) > 2 else None,
                group,
                tuple(attribute(node, "strides", [1, 1])),
                tuple(attribute(node, "dilations", [1, 1])),
            )
        if op in ("Gemm", "MatMul"):
            return self.dense(node, x)
        function = self.function(node)
        if function is not None:
            mean, cov, rho = activation_moments(x.mean, x.cov, function, x.rho)
            return Moments(mean, cov, rho)
        if op in ("MaxPool", "Resize", "Upsample"):
            stride = max(attribute(node, "strides", [1]) or [1]) if op == "MaxPool" else 1
            return Moments(x.mean, x.cov, x.rho**stride)
        if op == "AveragePool":
            kernel = attribute(node, "kernel_shape")
            factor = _average_factor(x.rho, kernel[0]) * _average_factor(x.rho, kernel[-1])
            return Moments(x.mean, x.cov * factor, x.rho)
        if op in ("GlobalAveragePool", "ReduceMean"):
            return self.global_average(node, x)
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            return self.reshape(node, x)
        if op == "Concat":
            return self.concat(node)
        if op == "Transpose":
            perm = list(attribute(node, "perm", []))
            return x if perm in ([0, 3, 1, 2], [0, 2, 3, 1]) else None
        return None

    def function(self, node: onnx.NodeProto) -> Function | None:
        """The node as an element-wise function of its first input, if it is one."""
        op = node.op_type
        if op == "Relu":
            return Activation("relu")
        if op == "LeakyRelu":
            return Activation("leaky", np.float64(attribute(node, "alpha", 0.01)))
        if op == "PRelu":
            slope = self.constant(node.input[1])
            return None if slope is None else Activation("leaky", slope.reshape(-1))
        if op == "Clip":
            low, high = self.clip_bounds(node)
            if low == 0.0:
                return Activation("clip", high=high)
            return lambda z: np.clip(z, low, np.inf if high is None else high)
        if op == "HardSigmoid":
            return _hard_sigmoid(attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5))
        if op == "HardSwish":
            gate = _hard_sigmoid(1 / 6, 0.5)
            return lambda z: z * gate(z)
        if op == "Sigmoid":
            return _sigmoid
        if op == "Tanh":
            return np.tanh
        return None

    def clip_bounds(self, node: onnx.NodeProto) -> tuple[float, float | None]:
        if self.index.opset < 11:
            return float(attribute(node, "min", -np.inf)), attribute(node, "max")
        bounds = [
            self.constant(node.input[i]) if len(node.input) > i and node.input[i] else None
            for i in (1, 2)
        ]
        low = -np.inf if bounds[0] is None else float(bounds[0].reshape(-1)[0])
        high = None if bounds[1] is None else float(bounds[1].reshape(-1)[0])
        return low, high

    def dense(self, node: onnx.NodeProto, x: Moments) -> Moments | None:
        weight = self.constant(node.input[1])
        if weight is None or weight.ndim != 2:
            return None
        if node.op_type == "Gemm":
            if attribute(node, "transA", 0):
                return None
            w = weight if attribute(node, "transB", 0) else weight.T
            w = w * float(attribute(node, "alpha", 1.0))
            bias = self.constant(node.input[2]) if len(node.input) > 2 else None
            bias = None if bias is None else bias * float(attribute(node, "beta", 1.0))
        else:
            w, bias = weight.T, None
        if w.shape[1] != len(x.mean) or w.shape[0] * w.shape[1] ** 2 > MAX_COST:
            return None
        if bias is not None and bias.size not in (1, w.shape[0]):
            return None
        return dense_moments(x, w, bias)

    def per_channel(self, value: np.ndarray, channels: int) -> np.ndarray | None:
        """A constant operand as one value per channel (NCHW or features-last), if it is."""
        if value.size == 1:
            return np.full(channels, float(value.reshape(-1)[0]))
        squeezed = value.reshape(-1)
        if squeezed.size == channels and (
            value.ndim <= 1 or value.shape[-1] == channels or value.shape[-3:] == (channels, 1, 1)
        ):
            return squeezed
        return None

    def arithmetic(self, node: onnx.NodeProto) -> Moments | None:
        op = node.op_type
        swish = self.swish_input(node) if op == "Mul" else None
        if swish is not None:
            x = self.get(swish)
            if x is None:
                return None
            mean, cov, rho = activation_moments(x.mean, x.cov, _swish, x.rho)
            return Moments(mean, cov, rho)
        a, b = self.get(node.input[0]), self.get(node.input[1])
        ca, cb = self.constant(node.input[0]), self.constant(node.input[1])
        if a is not None and b is not None:
            if op in ("Add", "Sub") and len(a.mean) == len(b.mean):  # independent branches
                sign = 1.0 if op == "Add" else -1.0
                total = np.sum(np.diag(a.cov)) + np.sum(np.diag(b.cov))
                rho = (
                    (a.rho * np.sum(np.diag(a.cov)) + b.rho * np.sum(np.diag(b.cov))) / total
                    if total > 0
                    else 0.0
                )
                return Moments(a.mean + sign * b.mean, a.cov + b.cov, float(rho))
            if op == "Mul" and len(a.mean) == len(b.mean):
                gated, gate = (a, b) if self.spatial(node.input[1]) == (1, 1) else (b, a)
                g = gate.mean
                return Moments(gated.mean * g, gated.cov * np.outer(g, g), gated.rho)
            return None
        x, value = (a, cb) if a is not None else (b, ca)
        if x is None or value is None:
            return None
        per = self.per_channel(value, len(x.mean))
        if per is None:
            return None
        if op == "Add":
            return Moments(x.mean + per, x.cov, x.rho)
        if op == "Sub":
            sign = 1.0 if a is not None else -1.0
            return Moments(sign * (x.mean - per), x.cov, x.rho)
        if op == "Div" and a is None:
            return None
        scale = per if op == "Mul" else 1.0 / per
        return Moments(x.mean * scale, x.cov * np.outer(scale, scale), x.rho)

    def swish_input(self, node: onnx.NodeProto) -> str | None:
        """``x`` when the product is ``x * Sigmoid(x)``."""
        for a, b in (node.input, node.input[::-1]):
            gate = self.index.producer.get(b)
            if gate is not None and gate.op_type == "Sigmoid" and gate.input[0] == a:
                return a
        return None

    def global_average(self, node: onnx.NodeProto, x: Moments) -> Moments | None:
        if node.op_type == "ReduceMean":
            axes = attribute(node, "axes")
            if axes is None and len(node.input) > 1:
                value = self.constant(node.input[1])
                axes = None if value is None else value.astype(int).tolist()
            if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
                return None
        size = self.spatial(node.input[0])
        if size is None:
            return None
        factor = _average_factor(x.rho, size[0]) * _average_factor(x.rho, size[1])
        return Moments(x.mean, x.cov * factor, 0.0)

    def reshape(self, node: onnx.NodeProto, x: Moments) -> Moments | None:
        """Reshapes that keep one value per channel (a 1 x 1 map to features), and flattens
        of a small ``C x H x W`` map into ``C H W`` features: mean repeated, covariance
        ``C kron R_H kron R_W`` (channel-major, as Flatten orders them)."""
        before = self.shapes.get(node.input[0])
        after = self.shapes.get(node.output[0])
        if before is None or after is None or not all(isinstance(d, int) for d in before[1:]):
            return None
        channels = len(x.mean)
        size = [d for d in before[1:] if d != 1]
        if len(size) == 1 and size[0] == channels and channels in after:
            return Moments(x.mean, x.cov, x.rho if len(after) == 4 else 0.0)
        flat = int(np.prod(before[1:]))
        if len(before) == 4 and before[1] == channels and len(after) == 2 and flat in after:
            if flat > MAX_FEATURES:
                return None
            h, w = before[2], before[3]
            spatial = np.kron(_window_correlation(x.rho, h), _window_correlation(x.rho, w))
            return Moments(np.repeat(x.mean, h * w), np.kron(x.cov, spatial), 0.0)
        return None

    def concat(self, node: onnx.NodeProto) -> Moments | None:
        if attribute(node, "axis") not in (1, -3):
            return None
        parts = [self.get(n) for n in node.input]
        if any(p is None for p in parts):
            return None
        mean = np.concatenate([p.mean for p in parts])
        cov = np.zeros((len(mean), len(mean)))
        at, weighted = 0, 0.0
        for p in parts:
            n = len(p.mean)
            cov[at : at + n, at : at + n] = p.cov
            weighted += p.rho * float(np.trace(p.cov))
            at += n
        total = float(np.trace(cov))
        return Moments(mean, cov, weighted / total if total > 0 else 0.0)


def input_moments(samples: np.ndarray, layout: str) -> Moments:
    """The moments of one input from samples: channels on axis 1 (``NCHW``), last
    (``NHWC``) or features (``dense``); ``rho`` the mean correlation of horizontal and
    vertical neighbours."""
    x = samples.astype(np.float64)
    if layout == "NHWC":
        x = np.moveaxis(x, -1, 1)
    if layout == "dense":
        flat = x.reshape(len(x), -1)
        return Moments(flat.mean(0), np.cov(flat, rowvar=False).reshape(flat.shape[1], -1), 0.0)
    channels = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    mean = channels.mean(0)
    centred = x - mean[None, :, None, None]
    variance = float(np.mean(centred**2))
    lag = np.mean(centred[..., 1:] * centred[..., :-1]) + np.mean(
        centred[:, :, 1:] * centred[:, :, :-1]
    )
    rho = float(np.clip(lag / 2 / variance, 0.0, 0.999)) if variance > 0 else 0.0
    return Moments(mean, np.atleast_2d(np.cov(channels, rowvar=False)), rho)


def propagate(
    model: onnx.ModelProto,
    start: dict[str, Moments],
    input_shapes: dict[str, list[int]] | None = None,
) -> dict[str, Moments | None]:
    """The moments of every tensor of ``model`` reachable from the inputs' ``start``."""
    shapes = infer_shapes(model, {k: list(v) for k, v in (input_shapes or {}).items()})
    return _Propagation(model, start, shapes).run()


def propagated_statistics(
    model: onnx.ModelProto,
    units: list[Unit],
    inputs: dict[str, np.ndarray],
    input_shapes: dict[str, list[int]] | None = None,
) -> dict[str, ActivationStats]:
    """Per unit whose recorded channels the propagation reaches, their statistics as
    :class:`ActivationStats` (one nominal observation); ``inputs``: samples of every input
    (synthetic ones for a data-free model of the input)."""
    from lbyl_onnx.inputs.specs import input_specs

    layouts = {s.name: s.layout for s in input_specs(model, input_shapes)}
    start = {name: input_moments(value, layouts[name]) for name, value in inputs.items()}
    moments = propagate(model, start, input_shapes)
    stats = {}
    for unit in units:
        found = moments.get(unit.record)
        if found is not None and len(found.mean) == unit.channels:
            outer = found.cov + np.outer(found.mean, found.mean)
            stats[unit.name] = ActivationStats(found.mean.copy(), outer, 1)
    return stats
