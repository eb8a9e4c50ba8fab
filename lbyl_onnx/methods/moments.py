"""Moments of element-wise activations of Gaussian pre-activations, in closed form.

Means, for the bias correction. After a BatchNormalization whose running statistics
describe its input, channel ``i``'s pre-activation is modelled as ``z_i ~ N(beta_i,
gamma_i^2)`` (BN maps the input's mean and standard deviation to ``beta`` and ``|gamma|``).
Its mean after the activation, in closed form with ``a = beta / |gamma|``, the normal
density ``phi`` and distribution ``Phi``:

- identity:          ``E[z] = beta``
- ReLU:              ``E[relu(z)] = beta Phi(a) + |gamma| phi(a)``
- LeakyReLU/PRelu:   ``E[relu(z)] + alpha (beta - E[relu(z)])`` (``z > 0 ? z : alpha z``)
- Clip(0, c):        ``E[relu(z)] - E[relu(z - c)]``

Covariances (Mehler's series) are research code: ``scripts/research/mehler.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Activation:
    """An element-wise activation as the moment formulas need it."""

    kind: str  # identity, relu, leaky (slope per channel), clip (0, high)
    slope: np.ndarray | None = None
    high: float | None = None


def relu_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    std = np.maximum(std, 1e-12)
    a = mean / std
    return mean * norm.cdf(a) + std * norm.pdf(a)


def activation_means(beta: np.ndarray, gamma: np.ndarray, activation: Activation) -> np.ndarray:
    """``E[act(z)]`` per channel for ``z ~ N(beta, gamma^2)`` (module docstring)."""
    mean = beta.astype(np.float64)
    std = np.abs(gamma.astype(np.float64))
    if activation.kind == "identity":
        return mean
    positive = relu_mean(mean, std)
    if activation.kind == "relu":
        return positive
    if activation.kind == "leaky":
        return positive + activation.slope * (mean - positive)
    if activation.kind == "clip":
        high = np.inf if activation.high is None else activation.high
        return positive - (relu_mean(mean - high, std) if np.isfinite(high) else 0.0)
    raise ValueError(f"no mean for activation {activation.kind}")


def apply_activation(z: np.ndarray, activation: Activation) -> np.ndarray:
    """``act(z)`` for samples ``z`` (``... x N``, channels last)."""
    if activation.kind == "identity":
        return z
    if activation.kind == "relu":
        return np.maximum(z, 0.0)
    if activation.kind == "leaky":
        return np.where(z > 0, z, activation.slope * z)
    if activation.kind == "clip":
        return np.clip(z, 0.0, activation.high)
    raise ValueError(f"no function for activation {activation.kind}")
