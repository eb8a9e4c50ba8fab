"""Moments of element-wise activations of Gaussian pre-activations.

Means, for the bias correction. After a BatchNormalization whose running statistics
describe its input, channel ``i``'s pre-activation is modelled as ``z_i ~ N(beta_i,
gamma_i^2)`` (BN maps the input's mean and standard deviation to ``beta`` and ``|gamma|``).
Its mean after the activation, with ``a = beta / |gamma|``, the normal density ``phi`` and
distribution ``Phi``:

- identity:          ``E[z] = beta``
- ReLU:              ``E[relu(z)] = beta Phi(a) + |gamma| phi(a)``
- LeakyReLU/PRelu:   ``E[relu(z)] + alpha (beta - E[relu(z)])`` (``z > 0 ? z : alpha z``)
- Clip(0, c):        ``E[relu(z)] - E[relu(z - c)]``
- tanh:              no closed form; by quadrature (:func:`tanh_mean`)

Each activation kind is one entry of :data:`ACTIVATION_FUNCTIONS`: its mean and the
function itself; the ONNX op table (``lbyl_onnx.graph.ops``) names the kind each
activation op is modelled as.

Covariances (Mehler's series) are research code: ``scripts/research/mehler.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Activation:
    """An element-wise activation as the moment formulas need it: ``kind`` is a key of
    :data:`ACTIVATION_FUNCTIONS` (identity, relu, leaky with a slope per channel, clip to
    ``(0, high)``, tanh)."""

    kind: str
    slope: np.ndarray | None = None
    high: float | None = None


MeanFunction = Callable[[np.ndarray, np.ndarray, Activation], np.ndarray]
"""``E[act(z)]`` per channel from the means and (positive) standard deviations of ``z``."""

ApplyFunction = Callable[[np.ndarray, Activation], np.ndarray]
"""``act(z)`` for samples ``z`` (``... x N``, channels last)."""


@dataclass(frozen=True)
class ActivationFunctions:
    """What the methods know of one activation kind: its Gaussian mean and its values."""

    mean: MeanFunction
    apply: ApplyFunction


def relu_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    std = np.maximum(std, 1e-12)
    a = mean / std
    return mean * norm.cdf(a) + std * norm.pdf(a)


TANH_SPLIT = 0.7
"""The spread ``|gamma|`` up to which :func:`tanh_mean` uses Gauss-Hermite quadrature."""

_HERMITE = np.polynomial.hermite.hermgauss(64)
_LAGUERRE = np.polynomial.laguerre.laggauss(64)


def tanh_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``E[tanh(z)]`` for ``z ~ N(mean, std^2)``, elementwise, by quadrature.

    With ``s = std`` and ``(x_k, w_k)`` the 64 Gauss-Hermite nodes and weights for the
    weight ``exp(-x^2)``, where ``s <= TANH_SPLIT``::

        E[tanh(z)] ~ pi^(-1/2) sum_k w_k tanh(mean + sqrt(2) s x_k)

    A wider Gaussian sees tanh as a step, which those nodes resolve poorly (off by about
    1e-2 at ``s = 10``). There the step's mean is taken in closed form and the rest,
    ``tanh(y) - sign(y)`` (odd, decaying like ``2 exp(-2|y|)``), by Gauss-Laguerre with
    the 64 nodes and weights ``(t_k, v_k)`` for the weight ``exp(-t)``; with ``a = mean / s``
    and ``u_k = t_k / (2 s)``::

        E[tanh(z)] = 2 Phi(a) - 1
                     + (1/s) int_0^inf exp(-t) [phi(a + u) - phi(a - u)] / (1 + exp(-t)) dt
                   ~ 2 Phi(a) - 1 + (1/s) sum_k v_k [phi(a + u_k) - phi(a - u_k)] / (1 + exp(-t_k))

    Both agree with adaptive quadrature to about 1e-12 (tests/test_ops.py).
    """
    mean, std = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(std, np.float64))
    out = np.empty(mean.shape)
    narrow = std <= TANH_SPLIT
    x, w = _HERMITE
    spread = np.sqrt(2.0) * std[narrow, None] * x
    out[narrow] = np.tanh(mean[narrow, None] + spread) @ w / np.sqrt(np.pi)
    t, v = _LAGUERRE
    s = std[~narrow, None]
    a = mean[~narrow, None] / s
    u = t / (2.0 * s)
    rest = (norm.pdf(a + u) - norm.pdf(a - u)) / (1.0 + np.exp(-t)) @ v
    out[~narrow] = 2.0 * norm.cdf(a[:, 0]) - 1.0 + rest / s[:, 0]
    return out


def _leaky_mean(mean: np.ndarray, std: np.ndarray, activation: Activation) -> np.ndarray:
    positive = relu_mean(mean, std)
    return positive + activation.slope * (mean - positive)


def _clip_mean(mean: np.ndarray, std: np.ndarray, activation: Activation) -> np.ndarray:
    high = np.inf if activation.high is None else activation.high
    return relu_mean(mean, std) - (relu_mean(mean - high, std) if np.isfinite(high) else 0.0)


ACTIVATION_FUNCTIONS: dict[str, ActivationFunctions] = {
    "identity": ActivationFunctions(lambda mean, std, _: mean, lambda z, _: z),
    "relu": ActivationFunctions(
        lambda mean, std, _: relu_mean(mean, std), lambda z, _: np.maximum(z, 0.0)
    ),
    "leaky": ActivationFunctions(_leaky_mean, lambda z, a: np.where(z > 0, z, a.slope * z)),
    "clip": ActivationFunctions(_clip_mean, lambda z, a: np.clip(z, 0.0, a.high)),
    "tanh": ActivationFunctions(lambda mean, std, _: tanh_mean(mean, std), lambda z, _: np.tanh(z)),
}
"""Every activation kind the methods model, by :attr:`Activation.kind`."""


def activation_means(beta: np.ndarray, gamma: np.ndarray, activation: Activation) -> np.ndarray:
    """``E[act(z)]`` per channel for ``z ~ N(beta, gamma^2)`` (module docstring)."""
    functions = ACTIVATION_FUNCTIONS.get(activation.kind)
    if functions is None:
        raise ValueError(f"no mean for activation {activation.kind}")
    return functions.mean(beta.astype(np.float64), np.abs(gamma.astype(np.float64)), activation)


def apply_activation(z: np.ndarray, activation: Activation) -> np.ndarray:
    """``act(z)`` for samples ``z`` (``... x N``, channels last)."""
    functions = ACTIVATION_FUNCTIONS.get(activation.kind)
    if functions is None:
        raise ValueError(f"no function for activation {activation.kind}")
    return functions.apply(z, activation)
