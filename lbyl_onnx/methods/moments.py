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
    ``(0, high)``)."""

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
