"""Statistics propagated through a graph: the moment formulas against independent oracles.

Oracles: the arc-cosine kernel (the exact covariance of two zero-mean rectified Gaussians),
numerical integration of the Hermite coefficients, Monte Carlo, and onnxruntime runs of
small graphs on Gaussian fields whose covariance is exactly the separable model the
propagation assumes (so every linear op's output moments are exact, up to sampling).
"""

from __future__ import annotations

import numpy as np
import pytest
from models import GraphBuilder, conv_net, ort_outputs
from research.mehler import activation_moments, hermite_coefficients, second_moments
from research.propagate import Moments, propagate, propagated_statistics
from scipy import integrate
from scipy.stats import norm

from lbyl_onnx.graph.shapes import infer_shapes
from lbyl_onnx.graph.units import find_units
from lbyl_onnx.methods.moments import Activation, apply_activation

ACTIVATIONS = [
    Activation("relu"),
    Activation("clip", high=1.0),
    Activation("leaky", slope=np.array([0.1, 0.3, 2.0])),
]


def _hermite(k: int, x: float) -> float:
    return float(np.polynomial.hermite_e.hermeval(x, [0] * k + [1]))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a.kind)
def test_hermite_coefficients_match_numerical_integration(activation):
    mean, std = np.array([-0.7, 0.2, 1.4]), np.array([0.5, 1.3, 2.0])
    coeffs = hermite_coefficients(mean, std, activation, terms=6)
    for i in range(3):
        single = Activation(
            activation.kind,
            None if activation.slope is None else activation.slope[i],
            activation.high,
        )

        def f(u, k, i=i, single=single):
            z = np.array([[mean[i] + std[i] * u]])
            return float(apply_activation(z, single)[0, 0]) * _hermite(k, u) * norm.pdf(u)

        kinks = [(-mean[i]) / std[i], (1.0 - mean[i]) / std[i]]
        for k in range(7):
            expected = integrate.quad(f, -12, 12, args=(k,), points=kinks, limit=200)[0]
            assert coeffs[i, k] == pytest.approx(expected, abs=1e-7), (i, k)
        second = integrate.quad(
            lambda u, i=i, single=single: (
                float(apply_activation(np.array([[mean[i] + std[i] * u]]), single)[0, 0] ** 2)
                * norm.pdf(u)
            ),
            -12,
            12,
            points=kinks,
            limit=200,
        )[0]
        assert second_moments(mean, std, activation)[i] == pytest.approx(second, rel=1e-7)


@pytest.mark.parametrize("rho", [-0.8, 0.0, 0.3, 0.7, 0.9])
def test_relu_covariance_is_the_arc_cosine_kernel(rho):
    """Zero means: ``E[relu(x) relu(y)] = s_x s_y (sin t + (pi - t) cos t) / (2 pi)``,
    ``t = arccos rho``, and ``E[relu(x)] = s_x / sqrt(2 pi)``."""
    sd = np.array([1.0, 2.5])
    cov = np.array([[1.0, rho * 2.5], [rho * 2.5, 6.25]])
    mean, out, _ = activation_moments(np.zeros(2), cov, Activation("relu"))
    t = np.arccos(rho)
    product = sd[0] * sd[1] * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    np.testing.assert_allclose(mean, sd / np.sqrt(2 * np.pi), rtol=1e-12)
    assert out[0, 1] == pytest.approx(product - mean[0] * mean[1], abs=1e-4 * sd.prod())
    assert out[0, 0] == pytest.approx(0.5 - 1 / (2 * np.pi), rel=1e-10)


def _hard_swish(z: np.ndarray) -> np.ndarray:
    return z * np.clip(z / 6 + 0.5, 0.0, 1.0)


@pytest.mark.parametrize(
    "function", [*ACTIVATIONS, _hard_swish], ids=["relu", "clip", "leaky", "hardswish"]
)
def test_activation_moments_match_monte_carlo(function):
    rng = np.random.default_rng(3)
    root = rng.standard_normal((3, 3))
    cov = root @ root.T + 0.3 * np.eye(3)
    mean = np.array([-0.5, 0.3, 1.0])
    z = rng.multivariate_normal(mean, cov, size=400_000)
    values = function(z) if callable(function) else apply_activation(z, function)
    new_mean, new_cov, _ = activation_moments(mean, cov, function)
    scale = np.sqrt(np.outer(np.diag(new_cov), np.diag(new_cov)))
    np.testing.assert_allclose(new_mean, values.mean(0), atol=0.01 * np.sqrt(cov.max()))
    assert np.abs(new_cov - np.cov(values.T)).max() < 0.01 * scale.max()


def test_identity_keeps_the_moments_exactly():
    cov = np.array([[2.0, -0.6], [-0.6, 1.0]])
    mean, out, lag = activation_moments(np.array([0.5, -1.0]), cov, Activation("identity"), 0.6)
    np.testing.assert_allclose(out, cov, rtol=1e-12)
    np.testing.assert_allclose(mean, [0.5, -1.0])
    assert lag == pytest.approx(0.6)


# ------------------------------------------------------------------- graph, on Gaussian fields


def _ar1(rho: float, n: int) -> np.ndarray:
    idx = np.arange(n)
    return rho ** np.abs(idx[:, None] - idx[None, :])


def gaussian_field(rng, moments: Moments, count: int, h: int, w: int) -> np.ndarray:
    """Samples ``count x C x h x w`` with ``Cov(x_c(p), x_d(q)) = C_cd rho^|p - q|_1``."""
    lc = np.linalg.cholesky(moments.cov)
    lh, lw = np.linalg.cholesky(_ar1(moments.rho, h)), np.linalg.cholesky(_ar1(moments.rho, w))
    z = rng.standard_normal((count, len(moments.mean), h, w))
    x = np.einsum("cd,hi,wj,ndij->nchw", lc, lh, lw, z, optimize=True)
    return (x + moments.mean[None, :, None, None]).astype(np.float32)


def measured(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Channel mean and covariance over samples and positions; neighbour correlation along
    the width (variance-weighted over channels)."""
    channels = np.moveaxis(values, 1, -1).reshape(-1, values.shape[1]).astype(np.float64)
    centred = values - channels.mean(0)[None, :, None, None]
    lag = np.mean(centred[..., 1:] * centred[..., :-1], axis=(0, 2, 3))
    variance = np.mean(centred**2, axis=(0, 2, 3))
    return channels.mean(0), np.cov(channels, rowvar=False), float(lag.sum() / variance.sum())


def start_moments(rng, channels: int, rho: float) -> Moments:
    root = rng.standard_normal((channels, channels))
    return Moments(rng.standard_normal(channels), root @ root.T + 0.5 * np.eye(channels), rho)


def one_conv(rng, channels, out, kernel, group=1, **attrs):
    g = GraphBuilder()
    x = g.input("x", ["N", channels, 14, 14])
    weight = g.const("W", rng.standard_normal((out, channels // group, kernel, kernel)).astype("f"))
    bias = g.const("B", rng.standard_normal(out).astype("f"))
    y = g.op("Conv", [x, weight, bias], "y", group=group, **attrs)
    g.output(y)
    return g


@pytest.mark.parametrize(
    "case",
    [
        {"channels": 3, "out": 5, "kernel": 3},
        {"channels": 3, "out": 4, "kernel": 3, "strides": [2, 2], "dilations": [2, 2]},
        {"channels": 4, "out": 8, "kernel": 3, "group": 4},  # depthwise, multiplier 2
        {"channels": 4, "out": 6, "kernel": 1, "group": 2},
    ],
    ids=["dense", "strided-dilated", "depthwise", "grouped"],
)
def test_conv_moments_are_exact_on_separable_fields(case):
    rng = np.random.default_rng(7)
    start = start_moments(rng, case["channels"], 0.6)
    model = one_conv(rng, **case).build()
    x = gaussian_field(rng, start, 3000, 14, 14)
    (y,) = ort_outputs(model, {"x": x})
    mean, cov, lag = measured(y)
    predicted = propagate(model, {"x": start})["y"]
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(predicted.mean, mean, atol=0.02 * sd.max())
    assert np.abs(predicted.cov - cov).max() < 0.03 * cov.max()
    assert predicted.rho == pytest.approx(lag, abs=0.02)


def test_conv_relu_global_average_gemm_chain():
    """Conv output is Gaussian, so its activation's moments are exact (Mehler); a 1 x 1 conv
    leaves every channel the same neighbour correlation, which the one ``rho`` then holds
    exactly (a wider kernel gives each channel its own, and one ``rho`` is their average: an
    approximation). Averaging a separable field over a map and a dense layer are linear."""
    rng = np.random.default_rng(11)
    start = start_moments(rng, 3, 0.7)
    g = one_conv(rng, 3, 4, 1)
    g.outputs.clear()
    act = g.op("Relu", ["y"], "act")
    g.output(act)
    model = g.build()
    x = gaussian_field(rng, start, 3000, 14, 14)
    (values,) = ort_outputs(model, {"x": x})
    mean, cov, lag = measured(values)
    predicted = propagate(model, {"x": start})["act"]
    np.testing.assert_allclose(predicted.mean, mean, rtol=0.03, atol=0.01 * np.sqrt(cov.max()))
    assert np.abs(predicted.cov - cov).max() < 0.03 * cov.max()
    assert predicted.rho == pytest.approx(lag, abs=0.02)

    g = GraphBuilder()
    x_name = g.input("x", ["N", 3, 14, 14])
    pooled = g.op("GlobalAveragePool", [x_name], "pooled")
    flat = g.op("Flatten", [pooled], "flat", axis=1)
    weight = rng.standard_normal((5, 3)).astype("f")
    bias = g.const("C", np.ones(5, "f"))
    dense = g.op("Gemm", [flat, g.const("W", weight), bias], "dense", transB=1)
    g.output(dense)
    model = g.build()
    x = gaussian_field(rng, start, 20000, 14, 14)  # one sample per pooled value
    (values,) = ort_outputs(model, {"x": x})
    predicted = propagate(model, {"x": start}, {"x": [1, 3, 14, 14]})["dense"]
    np.testing.assert_allclose(predicted.mean, values.mean(0), atol=0.05)
    reference = np.cov(values.astype(np.float64), rowvar=False)
    assert np.abs(predicted.cov - reference).max() < 0.05 * reference.max()


def test_batch_normalization_re_anchors_means_and_variances():
    rng = np.random.default_rng(5)
    g = one_conv(rng, 3, 4, 3)
    g.outputs.clear()
    gamma, beta = np.array([1.0, -2.0, 0.5, 3.0]), np.array([0.1, 0.2, -0.3, 1.0])
    running_mean, running_var = np.array([5.0, 0.0, -1.0, 2.0]), np.array([4.0, 1.0, 0.25, 9.0])
    values = (gamma, beta, running_mean, running_var)
    params = [g.const(n, v.astype("f")) for n, v in zip("gbmv", values, strict=True)]
    g.op("BatchNormalization", ["y", *params], "bn", epsilon=1e-3)
    g.op("Sin", ["x"], "unknown")  # not modelled: unknown downstream
    g.op("Conv", ["unknown", "W", "B"], "after_unknown")
    g.op("BatchNormalization", ["after_unknown", *params], "bn_unknown", epsilon=1e-3)
    for name in ("bn", "bn_unknown"):
        g.output(name)
    model = g.build()
    start = start_moments(rng, 3, 0.5)
    moments = propagate(model, {"x": start})
    conv = moments["y"]
    variance = gamma**2 * running_var / (running_var + 1e-3)
    for name in ("bn", "bn_unknown"):
        np.testing.assert_allclose(moments[name].mean, beta, rtol=1e-6)
        np.testing.assert_allclose(np.diag(moments[name].cov), variance, rtol=1e-6)
    sd = np.sqrt(np.diag(conv.cov))
    corr = conv.cov / np.outer(sd, sd)
    np.testing.assert_allclose(
        moments["bn"].cov, corr * np.sqrt(np.outer(variance, variance)), rtol=1e-6
    )
    assert moments["unknown"] is None and moments["after_unknown"] is None
    off = moments["bn_unknown"].cov - np.diag(np.diag(moments["bn_unknown"].cov))
    assert not off.any()  # nothing known upstream: independent channels


def test_every_unit_of_a_batch_normalized_net_gets_statistics():
    model = conv_net((3, 8, 8, 6), heads=("flatten_gemm",), bn="kept", between=("MaxPool",))
    units, _ = find_units(model, infer_shapes(model))
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((16, 3, 6, 6)).astype("f")}
    stats = propagated_statistics(model, units, inputs)
    assert set(stats) == {u.name for u in units}
    for unit in units:
        cov = stats[unit.name].covariance
        assert cov.shape == (unit.channels, unit.channels)
        assert np.all(np.linalg.eigvalsh(cov) > -1e-9 * np.trace(cov))


def test_flatten_of_a_small_map_keeps_the_spatial_correlations():
    """Flatten orders features channel-major, so ``C kron R_H kron R_W`` is their exact
    covariance: a dense layer on them gets exact moments (the spatial part matters: with
    independent positions the output variance would be far off)."""
    rng = np.random.default_rng(13)
    start = start_moments(rng, 2, 0.8)
    g = GraphBuilder()
    x = g.input("x", ["N", 2, 4, 4])
    flat = g.op("Flatten", [x], "flat", axis=1)
    weight = np.abs(rng.standard_normal((3, 32))).astype("f")  # one sign: correlations add up
    dense = g.op("Gemm", [flat, g.const("W", weight)], "dense", transB=1)
    g.output(dense)
    model = g.build()
    (values,) = ort_outputs(model, {"x": gaussian_field(rng, start, 20000, 4, 4)})
    predicted = propagate(model, {"x": start}, {"x": [1, 2, 4, 4]})["dense"]
    reference = np.cov(values.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(predicted.mean, values.mean(0), atol=0.05 * np.sqrt(reference.max()))
    assert np.abs(predicted.cov - reference).max() < 0.05 * reference.max()
