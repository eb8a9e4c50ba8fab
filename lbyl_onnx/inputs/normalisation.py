"""The input normalisation of an image model, estimated from the model alone.

The per-channel affine map ``scale * x + shift`` that takes ``[0, 1]`` images to the range
the model was trained on: fitted to the first BatchNormalization's running statistics
(:func:`fit_normalisation`, which states its assumptions), else the common convention that
suits the first layer's bias, else :data:`FALLBACK`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ..graph.index import GraphIndex
from ..runtime.record import Recorder
from .images import CONVENTIONS, IMAGE_SIDE, convention, synthetic_images
from .specs import InputSpec, input_specs, to_layout

MOMENT_POSITIONS = 2048
"""Output positions per batch of 8 images at which :func:`fit_normalisation` measures."""


FALLBACK = "[-1,1]"
"""The convention used when nothing in the model tells the input range (no first linear layer
reached through affine ops, or one without BatchNormalization statistics and without bias):
``(x - 0.5) / 0.5``, between ``[0, 1]`` and ImageNet's ``(x - mean) / std`` in scale, and
zero-centred like most conventions. A guess, not a measurement."""


@dataclass
class Normalisation:
    """The affine map ``scale * x + shift`` (per channel) applied to ``[0, 1]`` images.

    ``source`` says how it was chosen (:func:`fit_normalisation`): ``batchnorm`` (fitted to
    the first BatchNormalization's running statistics), ``bias`` (the convention that suits
    the first layer's bias) or ``fallback`` (:data:`FALLBACK`, with ``reason``). ``fit``
    holds, for ``batchnorm``, the fit's median absolute log ratio of predicted to target
    standard deviation and its mean standardised error of the means; for ``bias``, the
    ratio per convention.
    """

    scale: np.ndarray
    shift: np.ndarray
    source: str
    reason: str = ""
    fit: dict[str, float] = field(default_factory=dict)
    convention: str = ""
    """The named convention (:data:`CONVENTIONS`) the map is, or ``""`` for a fitted one."""

    def describe(self) -> str:
        """One phrase for the report: the map, and how it was chosen."""
        if not self.convention:
            scale, shift = float(np.mean(self.scale)), float(np.mean(self.shift))
            sign = "-" if shift < 0 else "+"
            return (
                f"x * {scale:.3g} {sign} {abs(shift):.3g}, "
                "fitted to the first BatchNormalization's statistics"
            )
        how = {
            "given": "as given",
            "bias": "guessed from the first layer's bias",
            "fallback": f"guessed ({self.reason})",
        }
        return f"{self.convention}, {how.get(self.source, self.source)}"


PREPROCESSING_OPS = {"Transpose", "Identity", "Cast", "Add", "Sub", "Mul", "Div", "Pad"}
"""Ops allowed between the image input and its first linear layer: each is affine in its one
data input when its other inputs are constants (``Pad`` in constant mode only)."""


FLATTENING_OPS = {"Flatten", "Reshape"}
"""Ops that may lead the input to a Gemm/MatMul first layer (also affine)."""


@dataclass(frozen=True)
class FirstLayer:
    """The first linear layer that reads an image input: ``node`` (Conv, Gemm or MatMul),
    ``target`` (its output, after a bias ``Add`` if there is one: the tensor a following
    BatchNormalization reads) and that BatchNormalization (``None`` when there is none)."""

    node: onnx.NodeProto
    target: str
    bn: onnx.NodeProto | None
    spatial: bool
    """True when the path is fully convolutional (any image size gives the same moments)."""


def _sole_reader(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    readers = index.readers.get(tensor, [])
    if len(readers) != 1 or readers[0].index < 0 or tensor in index.graph_outputs:
        return None
    return readers[0].node


def _affine_in(index: GraphIndex, node: onnx.NodeProto, tensor: str) -> bool:
    """Whether ``node`` reads ``tensor`` as its only non-constant input, where it is affine."""
    data = [t for t in node.input if t and index.value(t) is None]
    if data != [tensor]:
        return False
    if node.op_type in ("Div", "Pad", "Conv", "Flatten", "Reshape", "Transpose", "Cast"):
        return node.input[0] == tensor
    if node.op_type in ("Gemm", "MatMul"):
        return node.input[0] == tensor
    return True


def first_layer(model: onnx.ModelProto, name: str) -> tuple[FirstLayer | None, str]:
    """The first Conv/Gemm/MatMul that reads input ``name`` through affine preprocessing
    (:data:`PREPROCESSING_OPS`, and :data:`FLATTENING_OPS` before a Gemm/MatMul), and the
    BatchNormalization right after it (after an optional constant bias ``Add``); or ``None``
    and why not."""
    index = GraphIndex(model)
    tensor, spatial = name, True
    for _ in range(16):
        node = _sole_reader(index, tensor)
        if node is None:
            return None, f"'{tensor}' is read by several nodes (or none) before a linear layer"
        if not _affine_in(index, node, tensor):
            return None, f"{node.op_type} '{node.name}' is not affine in the input"
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            if node.op_type != "Conv":
                spatial = False
            break
        if node.op_type in FLATTENING_OPS:
            spatial = False
        elif node.op_type not in PREPROCESSING_OPS:
            return None, f"the input reaches {node.op_type} before any linear layer"
        tensor = node.output[0]
    else:
        return None, "no linear layer near the input"
    target = node.output[0]
    reader = _sole_reader(index, target)
    if reader is not None and reader.op_type == "Add" and _affine_in(index, reader, target):
        target = reader.output[0]
        reader = _sole_reader(index, target)
    bn = reader if reader is not None and reader.op_type == "BatchNormalization" else None
    return FirstLayer(node, target, bn, spatial), ""


def _free_input(model: onnx.ModelProto, name: str, channel_axis: int) -> onnx.TypeProto:
    """The type of input ``name`` with every dimension but the channels free (any batch and
    image size)."""
    free = onnx.TypeProto()
    free.CopyFrom(next(i for i in model.graph.input if i.name == name).type)
    for k, dim in enumerate(free.tensor_type.shape.dim):
        if k != channel_axis:
            dim.dim_param = f"d{k}"
    return free


def _moments(
    model: onnx.ModelProto,
    index: GraphIndex,
    spec: InputSpec,
    target: str,
    size: tuple[int, int],
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``E[G]`` (``O x F``) and ``E[G G^T]`` (``O x F x F``) over samples and positions, where
    ``target`` channel ``o`` is exactly ``[a, b, 1] . G_o`` for any per-channel map
    ``a * x + b`` of the synthetic images (``F = 2C + 1``): the path from the input is affine,
    so its response to the map is the sum of its responses to each channel's image, to each
    channel's constant 1, and to zero, all measured in onnxruntime (zero padding included)."""
    axis = 1 if spec.layout == "NCHW" else len(spec.shape) - 1
    frontier = {spec.name: _free_input(model, spec.name, axis)}  # the input, of any size
    probe = Recorder.cut(model, [target], frontier, index=index)  # the path from the input
    c = spec.channels
    h, w = size
    source = next(i for i in model.graph.input if i.name == spec.name)  # fed in its own dtype
    dtype = helper.tensor_dtype_to_np_dtype(source.type.tensor_type.elem_type)

    def run(batch_nchw: np.ndarray) -> np.ndarray:
        feed = to_layout(batch_nchw.astype(dtype), spec.layout)
        return probe.run({spec.name: feed})[target].astype(np.float64)

    zero = run(np.zeros((1, c, h, w)))
    units = []
    for k in range(c):
        basis = np.zeros((1, c, h, w))
        basis[0, k] = 1.0
        units.append(run(basis) - zero)
    fixed = np.concatenate([*units, zero])  # (C + 1, O, ...)
    fixed = fixed.reshape(c + 1, fixed.shape[1], -1).transpose(2, 1, 0)  # (P, O, C + 1)
    positions = fixed.shape[0]
    rng = np.random.default_rng(seed)
    images = synthetic_images(n, c, h, w, seed)
    first = 0.0
    second = 0.0
    count = 0
    for start in range(0, n, 8):
        chunk = images[start : start + 8]
        # a random subset of positions per chunk bounds time and memory
        subset = np.sort(rng.choice(positions, min(positions, MOMENT_POSITIONS), replace=False))
        responses = []
        for k in range(c):
            only = np.zeros_like(chunk)
            only[:, k] = chunk[:, k]
            out = run(only) - zero
            responses.append(out.reshape(out.shape[0], out.shape[1], -1)[:, :, subset])
        r = np.stack(responses, -1).transpose(0, 2, 1, 3)  # (B, P, O, C)
        g = np.concatenate(
            [r, np.broadcast_to(fixed[subset], (r.shape[0], len(subset), *fixed.shape[1:]))], -1
        )
        first = first + g.sum(axis=(0, 1))
        second = second + np.einsum("bpof,bpog->ofg", g, g)
        count += g.shape[0] * g.shape[1]
    return first / count, second / count


def _stats(theta: np.ndarray, mean_g: np.ndarray, second_g: np.ndarray):
    t = np.append(theta, 1.0)
    mean = mean_g @ t
    var = np.einsum("ofg,f,g->o", second_g, t, t) - mean**2
    return mean, var, t


def _fit_affine(
    mean_g: np.ndarray,
    second_g: np.ndarray,
    target_mean: np.ndarray,
    target_var: np.ndarray,
    channels: int,
    prior: float = 0.1,
) -> tuple[np.ndarray, dict[str, float]]:
    """``theta = (a_1..a_C, b_1..b_C)`` minimising, over the output channels ``o``,

    ``sum_o ((E[Y_o] - m_o) / sd_o)^2 + (log(sd(Y_o) / sd_o))^2``

    plus a weak pull (``prior``) of the channels' ``a`` and ``b`` toward their averages (so
    that correlated colour channels do not trade off freely). Levenberg-Marquardt, started
    from a map shared by all channels: ``a`` matching the median variance ratio, ``b`` the
    means by least squares. Channels with (near-)zero running variance are left out.
    """
    c = channels
    keep = target_var > 1e-6 * np.median(target_var)
    g, m2 = mean_g[keep], second_g[keep]
    m, v = target_mean[keep], target_var[keep]
    sd = np.sqrt(v)
    # start: shared a from the variances at (a=1, b=0), shared b from the means
    theta = np.concatenate([np.ones(c), np.zeros(c)])
    _, var1, _ = _stats(theta, g, m2)
    a0 = float(np.sqrt(np.median(v / np.maximum(var1, 1e-30))))
    theta[:c] = a0
    mean0, _, _ = _stats(theta, g, m2)
    slope = g[:, c : 2 * c].sum(1)
    b0 = float(np.sum(slope * (m - mean0) / v) / max(np.sum(slope**2 / v), 1e-30))
    theta[c:] = b0

    def residuals(th: np.ndarray):
        mean, var, t = _stats(th, g, m2)
        var = np.maximum(var, 1e-30)
        r_mean = (mean - m) / sd
        r_std = 0.5 * np.log(var / v)
        j_mean = g[:, : 2 * c] / sd[:, None]
        d_var = 2 * np.einsum("ofg,g->of", m2, t)[:, : 2 * c] - 2 * mean[:, None] * g[:, : 2 * c]
        j_std = 0.5 * d_var / var[:, None]
        scale = max(abs(float(np.mean(th[:c]))), 1e-12)
        weight = prior * np.sqrt(len(m))
        centre = np.eye(c) - 1.0 / c
        r_prior = weight * np.concatenate([centre @ th[:c], centre @ th[c:]]) / scale
        j_prior = np.zeros((2 * c, 2 * c))
        j_prior[:c, :c] = weight * centre / scale
        j_prior[c:, c:] = weight * centre / scale
        r = np.concatenate([r_mean, r_std, r_prior])
        jac = np.concatenate([j_mean, j_std, j_prior])
        return r, jac

    damping = 1e-3
    r, jac = residuals(theta)
    cost = float(r @ r)
    for _ in range(200):
        jtj = jac.T @ jac
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -jac.T @ r)
        candidate = theta + step
        r_new, jac_new = residuals(candidate)
        new_cost = float(r_new @ r_new)
        if new_cost < cost:
            converged = cost - new_cost < 1e-12 * max(cost, 1.0)
            theta, r, jac, cost = candidate, r_new, jac_new, new_cost
            damping = max(damping / 3, 1e-9)
            if converged:
                break
        else:
            damping *= 4
            if damping > 1e9:
                break
    mean, var, _ = _stats(theta, g, m2)
    fit = {
        "std_log_error": float(np.median(np.abs(0.5 * np.log(np.maximum(var, 1e-30) / v)))),
        "mean_error": float(np.mean(np.abs(mean - m) / sd)),
    }
    return theta, fit


def fit_normalisation(
    model: onnx.ModelProto,
    input_name: str | None = None,
    n: int = 32,
    seed: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    per_channel: bool = False,
) -> Normalisation:
    """The map ``scale * x + shift`` of ``[0, 1]`` synthetic images to the model's image input,
    chosen without data; one ``(scale, shift)`` shared by all channels unless
    ``per_channel``.

    **With a BatchNormalization after the first linear layer** (source ``batchnorm``): its
    ``running_mean``/``running_var`` are the mean and variance, per channel, of that layer's
    output over the training data. The path input -> layer (Transpose, constant
    Add/Sub/Mul/Div, Pad, Flatten/Reshape, the Conv/Gemm/MatMul and its bias) is affine, so
    for the map ``(a, b)`` output channel ``o`` is ``Y_o = sum_c a_c R_oc + sum_c b_c U_oc +
    K_o`` (responses to each channel's image, to a constant 1 in each channel, and to zero):
    its mean is linear and its variance quadratic in ``(a, b)``, exactly, from moments
    measured once on ``n`` synthetic images (zero padding included). ``(a, b)`` minimises the
    standardised errors of the means and the log ratios of the standard deviations over the
    output channels (:func:`_fit_affine`). Assumes the running statistics describe the layer's
    output on the training distribution, and that the synthetic images have the spatial
    structure of the training images: a conv output's variance depends on it, so a different
    structure biases ``a`` (and through the means, ``b``). A fully convolutional path is
    measured at most ``224 x 224`` (statistics per position do not depend on the image size).

    By default one ``(a, b)`` serves every channel: what tells the channels' maps apart is
    only the colour statistics of the images, and the synthetic ones are rough (measured
    with ``scripts/synthetic_study.py``: docs/benchmarks.md, "--synthetic-calibration").
    ``per_channel=True`` fits ``2C`` parameters, with a weak pull toward their averages.

    **Without one** (BN fused into the layer, or never there; source ``bias``): the scale
    is read from the first layer's bias, relative to its response to images. A trained
    layer places its bias on the scale of its filters' responses: with BN fused, the bias is
    ``beta - rho * E[w . x]`` and the response's spread is ``|gamma|``, so their ratio is of
    order ``|beta / gamma| + |E[w . x]| / sd(w . x)``, about 1; without BN, a bias orders of
    magnitude larger than the responses would make every unit constant, orders smaller would
    leave it no role. Of the :data:`CONVENTIONS`, the one whose median over channels of
    ``|K_o| / sd(Y_o)`` (response to a zero image over the spread of responses to images) is
    nearest 1 in log scale is chosen. It discriminates scale (``[0,255]`` against the rest)
    far better than offset. A layer without bias gives no information: :data:`FALLBACK`.
    """
    specs = [s for s in input_specs(model, input_shapes) if s.layout != "dense"]
    if input_name is not None:
        specs = [s for s in specs if s.name == input_name]
    if not specs:
        raise ValueError("the model has no image input")
    spec = specs[0]
    c = spec.channels
    layer, why = first_layer(model, spec.name)
    if layer is None:
        scale, shift = convention(FALLBACK, c)
        return Normalisation(scale, shift, "fallback", why, convention=FALLBACK)
    index = GraphIndex(model)
    h, w = spec.size
    if layer.spatial:
        h, w = min(h, IMAGE_SIDE), min(w, IMAGE_SIDE)
    mean_g, second_g = _moments(model, index, spec, layer.target, (h, w), n, seed)
    bn = layer.bn
    mean = index.value(bn.input[3]) if bn is not None and len(bn.input) > 4 else None
    var = index.value(bn.input[4]) if bn is not None and len(bn.input) > 4 else None
    if mean is not None and var is not None:
        return _fitted_to_batchnorm(mean_g, second_g, mean, var, c, per_channel)
    return _chosen_by_bias(mean_g, second_g, c)


def _fitted_to_batchnorm(
    mean_g: np.ndarray,
    second_g: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    c: int,
    per_channel: bool,
) -> Normalisation:
    """The map whose first-layer statistics best match the BatchNormalization's running
    statistics (:func:`fit_normalisation`, source ``batchnorm``); one ``(a, b)`` for all
    channels unless ``per_channel``: the shared fit uses the features summed over channels,
    ``G' = T^T G``."""
    target_mean = running_mean.astype(np.float64).ravel()
    target_var = running_var.astype(np.float64).ravel()
    if per_channel:
        theta, fit = _fit_affine(mean_g, second_g, target_mean, target_var, c)
        return Normalisation(theta[:c], theta[c:], "batchnorm", fit=fit)
    t = np.zeros((2 * c + 1, 3))
    t[:c, 0], t[c : 2 * c, 1], t[2 * c, 2] = 1.0, 1.0, 1.0
    shared_mean = mean_g @ t
    shared_second = np.einsum("ofg,fi,gj->oij", second_g, t, t)
    theta, fit = _fit_affine(shared_mean, shared_second, target_mean, target_var, 1)
    return Normalisation(theta[0] * np.ones(c), theta[1] * np.ones(c), "batchnorm", fit=fit)


def _chosen_by_bias(mean_g: np.ndarray, second_g: np.ndarray, c: int) -> Normalisation:
    """The convention whose median ``|bias| / sd`` of the first layer's outputs is nearest 1
    in log scale (:func:`fit_normalisation`, source ``bias``); :data:`FALLBACK` where the
    layer has no bias."""
    ratios = {}
    for name in CONVENTIONS:
        a, b = convention(name, c)
        _, var, _ = _stats(np.concatenate([a, b]), mean_g, second_g)
        sd = np.sqrt(np.maximum(var, 0.0))
        bias = np.abs(mean_g[:, -1])
        alive = sd > 0
        if not alive.any() or np.max(bias) <= 1e-12 * max(np.max(sd), 1e-30):
            scale, shift = convention(FALLBACK, c)
            return Normalisation(
                scale, shift, "fallback", "the first layer has no bias", convention=FALLBACK
            )
        ratios[name] = float(np.median(bias[alive] / sd[alive]))
    best = min(ratios, key=lambda k: abs(np.log(max(ratios[k], 1e-30))))
    scale, shift = convention(best, c)
    detail = ", ".join(f"{k} {v:.3g}" for k, v in ratios.items())
    return Normalisation(
        scale,
        shift,
        "bias",
        f"{best}: median |bias| / sd per convention: {detail}",
        fit={f"ratio {k}": v for k, v in ratios.items()},
        convention=best,
    )


def normalisations(
    model: onnx.ModelProto,
    input_shapes: dict[str, list[int]] | None = None,
    given: str | None = None,
) -> dict[str, Normalisation]:
    """The normalisation of every image input: the named convention ``given`` (one of
    :data:`CONVENTIONS`, source ``given``) for all of them, else :func:`fit_normalisation`."""
    out = {}
    for spec in input_specs(model, input_shapes):
        if spec.layout == "dense":
            continue
        if given is not None:
            scale, shift = convention(given, spec.channels)
            out[spec.name] = Normalisation(scale, shift, "given", convention=given)
        else:
            out[spec.name] = fit_normalisation(model, spec.name, input_shapes=input_shapes)
    return out


def input_normalisation(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale[C], shift[C])``: the model's image input is ``scale * x + shift`` for
    ``[0, 1]`` images ``x``, estimated without data (:func:`fit_normalisation`)."""
    norm = fit_normalisation(model, input_shapes=input_shapes)
    return norm.scale, norm.shift
