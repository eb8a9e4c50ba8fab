"""The data-free judge (methods/judge.py): its Monte Carlo estimate against closed forms."""

from __future__ import annotations

import numpy as np

from lbyl_onnx.methods import BatchNormParams, LayerArrays
from lbyl_onnx.methods.judge import activation_errors, activation_samples
from lbyl_onnx.methods.moments import Activation


def activation_error(layer, activation, kept, scaling, offsets=None) -> float:
    samples = activation_samples(layer, activation)
    return activation_errors(samples, kept, [(scaling, offsets)])[0]


def layer(seed: int = 0, n: int = 6, d: int = 20) -> LayerArrays:
    rng = np.random.default_rng(seed)
    bn = BatchNormParams(
        gamma=rng.uniform(0.5, 1.5, n),
        beta=rng.normal(0, 0.5, n),
        mean=np.zeros(n),
        var=np.ones(n),
        eps=0.0,
    )
    return LayerArrays(rng.standard_normal((n, d)).astype(np.float32), np.zeros(n), bn)


def test_identity_activation_matches_the_closed_form():
    """With no activation, ``E|u - S u_P - e|^2 = tr(A C A^T) + |A beta - e|^2`` for
    ``A = I - S Pi`` (``Pi`` picks the kept channels)."""
    arrays = layer()
    kept = np.array([0, 2, 3, 5])
    rng = np.random.default_rng(1)
    scaling = np.zeros((6, 4))
    scaling[kept, np.arange(4)] = 1
    scaling[[1, 4]] = rng.normal(0, 0.7, (2, 4))
    offsets = rng.normal(0, 0.3, 6) * np.isin(np.arange(6), [1, 4])
    g = arrays.raw_gram
    norms = np.sqrt(np.diag(g))
    std = np.abs(arrays.bn.gamma)
    covariance = g / np.outer(norms, norms) * np.outer(std, std)
    pick = np.zeros((4, 6))
    pick[np.arange(4), kept] = 1
    a = np.eye(6) - scaling @ pick
    exact = np.trace(a @ covariance @ a.T) + np.sum((a @ arrays.bn.beta - offsets) ** 2)
    estimate = activation_error(arrays, Activation("identity"), kept, scaling, offsets)
    assert abs(estimate - exact) < 0.05 * exact, (estimate, exact)


def test_relu_of_a_mirrored_channel_is_judged_worse_than_removal():
    """Channel 1 mirrors channel 0 (``w_1 = -w_0``, beta 0): in filter space ``s = -1`` is
    exact, but after ReLU ``relu(-u) = -relu(u)`` is wrong: error ``E[u^2]`` against
    ``E[relu(-u)^2] = E[u^2] / 2`` for removal."""
    arrays = layer(n=3)
    weight = arrays.weight.copy()
    weight[1] = -weight[0]
    gamma = arrays.bn.gamma.copy()
    gamma[1] = gamma[0]
    bn = BatchNormParams(gamma, np.zeros(3), np.zeros(3), np.ones(3), 0.0)
    mirrored = LayerArrays(weight, np.zeros(3), bn)
    kept = np.array([0, 2])
    lbyl = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    removal = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    relu = Activation("relu")
    ours = activation_error(mirrored, relu, kept, lbyl)
    plain = activation_error(mirrored, relu, kept, removal)
    expected = gamma[0] ** 2
    assert abs(ours - expected) < 0.05 * expected and abs(plain - expected / 2) < 0.05 * expected
    identity = Activation("identity")
    # exact without the ReLU (up to the jitter that keeps the Cholesky factor defined)
    assert activation_error(mirrored, identity, kept, lbyl) < 1e-4 * expected
