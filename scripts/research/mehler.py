"""Covariances of element-wise activations of Gaussian pre-activations, by Mehler's series.

Research code for :mod:`scripts.research.propagate` (data-free statistics propagated through
a graph); the tool itself uses only the closed-form means of :mod:`lbyl_onnx.methods.moments`.

Write ``z = mu + sigma u`` with ``u ~ N(0, 1)`` and ``g(u) = f(mu + sigma u)``. Its Hermite
coefficients ``a_k = E[g(u) He_k(u)] = E[g^(k)(u)]`` (Gaussian integration by parts; ``He_k``
the probabilists' Hermite polynomials) are, for ReLU, with ``a = mu / sigma``::

    a_0 = mu Phi(a) + sigma phi(a),   a_1 = sigma Phi(a),   a_k = sigma phi(a) He_{k-2}(-a)

(``g'`` is ``sigma`` times a step at ``u = -a``, ``g''`` a Dirac there, and
``E[delta^(m)(u + a)] = He_m(-a) phi(a)``); Clip(0, c) and LeakyReLU are the same sums of
ReLUs and the identity. For two unit Gaussians of correlation ``rho``, Mehler's formula
gives, exactly::

    Cov(f_i(z_i), f_j(z_j)) = sum_{k >= 1} rho^k a_k(i) a_k(j) / k!

(:func:`activation_moments` truncates it at :data:`HERMITE_TERMS`; the variances are exact).
Other element-wise functions (HardSwish, Sigmoid, ...) get their ``a_k`` by Gauss-Hermite
quadrature.
"""

from __future__ import annotations

from collections.abc import Callable
from math import factorial

import numpy as np
from numpy.polynomial import hermite_e
from scipy.stats import norm

from lbyl_onnx.methods.moments import Activation, apply_activation, relu_mean

_NODES, _WEIGHTS = hermite_e.hermegauss(96)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


HERMITE_TERMS = 24
"""Terms of Mehler's series kept. For ReLU at zero mean the truncated series is within
``1e-4 sigma_i sigma_j`` of the exact arc-cosine kernel up to correlation 0.9 and within
``6e-4`` at 0.99 (``tests/test_propagate.py`` checks it)."""


def _hermite_table(x: np.ndarray, terms: int) -> np.ndarray:
    """``He_k(x)`` for ``k = 0..terms`` (rows), by the recurrence
    ``He_{k+1}(x) = x He_k(x) - k He_{k-1}(x)``."""
    table = np.empty((terms + 1, *np.shape(x)))
    table[0] = 1.0
    if terms >= 1:
        table[1] = x
    for k in range(1, terms):
        table[k + 1] = x * table[k] - k * table[k - 1]
    return table


def _relu_coefficients(mean: np.ndarray, std: np.ndarray, terms: int) -> np.ndarray:
    """``a_k`` of ``relu(mean + std u)`` (module docstring), ``(N, terms + 1)``."""
    a = mean / std
    coeffs = np.empty((len(mean), terms + 1))
    coeffs[:, 0] = relu_mean(mean, std)
    coeffs[:, 1] = std * norm.cdf(a)
    if terms >= 2:
        coeffs[:, 2:] = (std * norm.pdf(a) * _hermite_table(-a, terms - 2)).T
    return coeffs


Function = Activation | Callable[[np.ndarray], np.ndarray]
"""An element-wise function: an :class:`Activation` (closed forms) or any NumPy callable."""


def hermite_coefficients(
    mean: np.ndarray, std: np.ndarray, function: Function, terms: int = HERMITE_TERMS
) -> np.ndarray:
    """``a_k = E[f(mean + std u) He_k(u)]``, ``k = 0..terms``, per channel (``N x (terms+1)``):
    in closed form for an :class:`Activation`, by quadrature for a callable."""
    mean = np.asarray(mean, np.float64)
    std = np.maximum(np.asarray(std, np.float64), 1e-12 * np.maximum(np.abs(mean), 1.0))
    if callable(function):
        values = _evaluate(function, mean[:, None] + std[:, None] * _NODES)
        return (values * _WEIGHTS) @ _hermite_table(_NODES, terms).T
    linear = np.zeros((len(mean), terms + 1))
    linear[:, 0], linear[:, 1] = mean, std
    if function.kind == "identity":
        return linear
    positive = _relu_coefficients(mean, std, terms)
    if function.kind == "relu":
        return positive
    if function.kind == "leaky":
        slope = np.broadcast_to(np.asarray(function.slope, np.float64), mean.shape)[:, None]
        return (1 - slope) * positive + slope * linear
    if function.kind == "clip":
        if function.high is None:
            return positive
        return positive - _relu_coefficients(mean - function.high, std, terms)
    raise ValueError(f"no coefficients for activation {function.kind}")


def _upper_square(mean: np.ndarray, std: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """``E[z^2 1(z > t)]`` for ``z ~ N(mean, std^2)``:
    ``(mean^2 + std^2)(1 - Phi(b)) + std (mean + t) phi(b)``, ``b = (t - mean) / std``."""
    b = (t - mean) / std
    return (mean**2 + std**2) * norm.sf(b) + std * (mean + t) * norm.pdf(b)


def second_moments(mean: np.ndarray, std: np.ndarray, function: Function) -> np.ndarray:
    """``E[f(z)^2]`` per channel for ``z ~ N(mean, std^2)``: closed forms for an
    :class:`Activation` (ReLU ``E[z^2 1(z>0)]``; Clip(0, c) adds ``c^2 P(z > c)`` to
    ``E[z^2 1(0<z<c)]``; LeakyReLU ``alpha^2 E[z^2] + (1 - alpha^2) E[z^2 1(z>0)]``), else
    quadrature."""
    mean = np.asarray(mean, np.float64)
    std = np.maximum(np.asarray(std, np.float64), 1e-12 * np.maximum(np.abs(mean), 1.0))
    if callable(function):
        return _evaluate(function, mean[:, None] + std[:, None] * _NODES) ** 2 @ _WEIGHTS
    if function.kind == "identity":
        return mean**2 + std**2
    positive = _upper_square(mean, std, 0.0)
    if function.kind == "relu" or (function.kind == "clip" and function.high is None):
        return positive
    if function.kind == "leaky":
        slope = np.broadcast_to(np.asarray(function.slope, np.float64), mean.shape)
        return slope**2 * (mean**2 + std**2) + (1 - slope**2) * positive
    if function.kind == "clip":
        high = function.high
        return positive - _upper_square(mean, std, high) + high**2 * norm.sf((high - mean) / std)
    raise ValueError(f"no second moment for activation {function.kind}")


def _evaluate(function: Function, z: np.ndarray) -> np.ndarray:
    """``f(z)`` for ``z`` of shape ``N x k`` (channels first)."""
    return function(z) if callable(function) else apply_activation(z.T, function).T


def activation_moments(
    mean: np.ndarray,
    cov: np.ndarray,
    function: Function,
    lag_correlation: float = 0.0,
    terms: int = HERMITE_TERMS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, covariance and neighbour correlation of ``f(z)`` for ``z ~ N(mean, cov)``.

    Mehler's series (module docstring) on the correlations of ``cov`` gives the covariance
    off the diagonal; the variances are ``E[f(z)^2] - E[f(z)]^2`` (:func:`second_moments`).
    ``lag_correlation`` is the correlation of each channel with itself at the neighbouring
    position; the same series maps it through ``f`` (returned averaged over channels,
    weighted by their variances).
    """
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    coeffs = hermite_coefficients(mean, std, function, terms)
    safe = np.where(std > 0, std, 1.0)
    rho = np.clip(cov / safe[:, None] / safe[None, :], -1.0, 1.0)
    scaled = coeffs[:, 1:] / np.sqrt([float(factorial(k)) for k in range(1, terms + 1)])
    out = np.zeros_like(rho)
    power = np.ones_like(rho)
    for k in range(terms):
        power *= rho
        out += power * np.outer(scaled[:, k], scaled[:, k])
    new_mean = coeffs[:, 0]
    variance = np.maximum(second_moments(mean, std, function) - new_mean**2, 0.0)
    np.fill_diagonal(out, variance)
    lag = (lag_correlation ** np.arange(1, terms + 1)) @ (scaled**2).T
    total = float(variance.sum())
    new_lag = float(np.clip(lag.sum() / total, 0.0, 1.0)) if total > 0 else 0.0
    return new_mean, out, new_lag
