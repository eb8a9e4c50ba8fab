"""Activation-space least squares from measured statistics (calibration mode).

With real inputs, the channels ``r`` that the consumers read can be observed. For each removed
channel ``j`` the best affine stand-in from the kept channels minimises the mean squared
error in activation space::

    minimise over s, e:   E[(r_j - s^T r_P - e)^2] + lam |s|^2
    s_j = (C_PP + lam I)^-1 C_Pj,      e_j = mu_j - s_j^T mu_P

where ``mu`` and ``C`` are the mean and covariance of ``r`` over samples and positions. The
constant ``e_j`` is what the kept channels cannot carry; it is folded into the consumer's
bias (the *bias correction*). ``lam = ridge * trace(C_PP) / m`` is relative to the layer
(at least ``ridge * 1e-6 E|r_P|^2 / m``, for channels nearly constant over the samples).

The sequential solve (:func:`solve_sequential`) fits every row of ``S`` from the kept
channels as the model pruned so far computes them; :func:`cross_validated_ridge` chooses
its ridge for one unit from two halves of that unit's observations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .base import Solution, identity_rows, removed_channels, require_finite


@dataclass
class ActivationStats:
    """Running first and second moments of ``N`` channels over ``count`` observations."""

    total: np.ndarray  # (N,)
    outer: np.ndarray  # (N, N)
    count: int = 0

    @classmethod
    def empty(cls, channels: int) -> ActivationStats:
        return cls(np.zeros(channels), np.zeros((channels, channels)), 0)

    def add(self, samples: np.ndarray) -> None:
        """Accumulate observations given as rows (``k x N``)."""
        x = samples.astype(np.float64)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def covariance(self) -> np.ndarray:
        mu = self.mean
        return self.outer / max(self.count, 1) - np.outer(mu, mu)


CALIBRATION_RIDGE = 1e-3
"""Relative ridge of :func:`solve_calibrated`."""


def solve_calibrated(
    stats: ActivationStats, kept: np.ndarray, ridge: float = CALIBRATION_RIDGE
) -> Solution:
    """``S`` and the offsets ``e`` of the activation-space least squares (module docstring).

    ``residual`` is ``sum_j E[(r_j - s_j^T r_P - e_j)^2]`` over the removed channels, relative
    to plain removal's ``sum_j E[r_j^2]``.
    """
    require_finite(stats.total, stats.outer)
    n = stats.total.shape[0]
    scaling = identity_rows(n, kept)
    offsets = np.zeros(n)
    removed = removed_channels(n, kept)
    if len(removed) == 0:
        return Solution(scaling, 0.0, offsets=offsets)
    cov, mu = stats.covariance, stats.mean
    cpp = cov[np.ix_(kept, kept)]
    raw = float(np.trace(stats.outer[np.ix_(kept, kept)])) / max(stats.count, 1)
    lam = ridge * max(float(np.trace(cpp)), 1e-6 * raw, 1e-12) / len(kept)
    gram = cpp + lam * np.eye(len(kept))
    coeffs = scipy.linalg.solve(gram, cov[np.ix_(kept, removed)], assume_a="pos")
    scaling[removed] = coeffs.T
    offsets[removed] = mu[removed] - coeffs.T @ mu[kept]
    # E[(r_j - s^T r_P - e_j)^2] = C_jj - 2 s^T C_Pj + s^T C_PP s (the offset removes the mean)
    error = sum(
        cov[j, j] - 2 * s @ cov[kept, j] + s @ cpp @ s
        for j, s in zip(removed, coeffs.T, strict=True)
    )
    baseline = float(np.sum(cov[removed, removed] + mu[removed] ** 2))
    residual = float(max(error, 0.0) / baseline) if baseline > 0 else 0.0
    return Solution(scaling, residual, offsets=offsets)


@dataclass
class CrossStats:
    """Running moments of a unit's kept channels ``x`` (``m``), observed with the earlier
    units already pruned, and of all its channels ``r`` (``N``) in the original model, on the
    same samples and positions."""

    x_total: np.ndarray  # (m,)
    r_total: np.ndarray  # (N,)
    xx: np.ndarray  # (m, m)
    xr: np.ndarray  # (m, N)
    rr: np.ndarray  # (N,): the diagonal of sum r r^T
    count: int = 0

    @classmethod
    def empty(cls, kept: int, channels: int) -> CrossStats:
        return cls(
            np.zeros(kept),
            np.zeros(channels),
            np.zeros((kept, kept)),
            np.zeros((kept, channels)),
            np.zeros(channels),
        )

    def __add__(self, other: CrossStats) -> CrossStats:
        """The moments of both sets of observations together."""
        return CrossStats(
            self.x_total + other.x_total,
            self.r_total + other.r_total,
            self.xx + other.xx,
            self.xr + other.xr,
            self.rr + other.rr,
            self.count + other.count,
        )

    def of_kept(self, kept: np.ndarray) -> CrossStats:
        """The moments of the channels ``kept`` of ``x`` only (``x`` observed with all the
        unit's channels, before choosing which stay)."""
        return CrossStats(
            self.x_total[kept],
            self.r_total,
            self.xx[np.ix_(kept, kept)],
            self.xr[kept],
            self.rr,
            self.count,
        )

    def covariances(self) -> tuple[np.ndarray, np.ndarray]:
        """``C_xx`` and ``C_xr`` over the observations."""
        count = max(self.count, 1)
        mu_x, mu_r = self.x_total / count, self.r_total / count
        return self.xx / count - np.outer(mu_x, mu_x), self.xr / count - np.outer(mu_x, mu_r)

    def add(self, x: np.ndarray, r: np.ndarray) -> None:
        """Accumulate paired observations given as rows (``k x m`` and ``k x N``)."""
        x, r = x.astype(np.float64), r.astype(np.float64)
        self.x_total += x.sum(axis=0)
        self.r_total += r.sum(axis=0)
        self.xx += x.T @ x
        self.xr += x.T @ r
        self.rr += np.einsum("ki,ki->i", r, r)
        self.count += x.shape[0]


SEQUENTIAL_RIDGE = 1e-2
"""Relative weight of the pull toward plain pass-through in :func:`solve_sequential` on
real calibration data (and on synthetic inputs where :func:`cross_validated_ridge` cannot
run: a single sample). Why pass-through and not zero, and why this weight:
docs/benchmarks.md, "Sequential calibration"."""

RIDGE_CHOICES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The relative ridges :func:`cross_validated_ridge` chooses from."""


def solve_sequential(
    stats: CrossStats, kept: np.ndarray, ridge: float = SEQUENTIAL_RIDGE
) -> Solution:
    """``S`` (every row, the kept channels' too) and offsets ``e`` that rebuild the original
    channels from the kept ones as the pruned model computes them::

        minimise over S, e:   E[|r - S x - e|^2] + lam |S - P^T|^2
        S^T = (C_xx + lam I)^-1 (C_xr + lam P),      e = mu_r - S mu_x

    with ``C`` the (cross-)covariances over samples and positions, ``P^T`` plain
    pass-through (the identity on the kept rows, zero on the removed ones) and ``lam = ridge
    * trace(C_xx) / m`` (at least ``ridge * 1e-6 E|x|^2 / m``: channels nearly constant
    across samples, whose covariance is rounding error, stay solvable). Where nothing
    upstream was pruned (``x = r_P``) the removed rows are :func:`solve_calibrated`'s with
    the same ridge and the kept rows the identity; otherwise the kept rows also undo what
    the earlier units' removal changed in them, as far as the data supports it: the pull
    keeps them near the identity where it does not (calibration data unlike the deployment
    data).

    ``residual`` is the error ``E[|r - S x - e|^2]`` relative to plain removal's
    ``E[|r - P^T x|^2]`` (kept channels passed on as they are, removed ones dropped).
    """
    require_finite(stats.x_total, stats.r_total, stats.xx, stats.xr, stats.rr)
    m = len(kept)
    count = max(stats.count, 1)
    mu_x, mu_r = stats.x_total / count, stats.r_total / count
    cxx, cxr = stats.covariances()
    raw = float(np.trace(stats.xx)) / count  # E|x|^2: a floor where C_xx cancels to ~0
    lam = ridge * max(float(np.trace(cxx)), 1e-6 * raw, 1e-12) / max(m, 1)
    passthrough = np.zeros_like(cxr)  # P: m x N
    passthrough[np.arange(m), kept] = 1.0
    coefficients = scipy.linalg.solve(
        cxx + lam * np.eye(m), cxr + lam * passthrough, assume_a="pos"
    )  # m x N
    scaling = coefficients.T
    offsets = mu_r - scaling @ mu_x
    crr = stats.rr / count - mu_r**2
    # E[(r_i - s_i^T x - e_i)^2] = C_rr,ii - 2 s_i^T C_xr,i + s_i^T C_xx s_i
    error = (
        np.sum(crr) - 2 * np.sum(coefficients * cxr) + np.sum(coefficients * (cxx @ coefficients))
    )
    raw_rr, raw_xx, raw_xr = stats.rr / count, np.diag(stats.xx) / count, stats.xr / count
    removal = np.sum(raw_rr) - 2 * np.sum(raw_xr[np.arange(m), kept]) + np.sum(raw_xx)
    residual = float(max(error, 0.0) / removal) if removal > 0 else 0.0
    return Solution(scaling, residual, offsets=offsets)


def held_out_error(stats: CrossStats, scaling: np.ndarray, offsets: np.ndarray) -> float:
    """``E|r - S x - e|^2`` over the observations ``stats`` holds, from its raw moments::

    E|r|^2 - 2 tr(S E[x r^T]) - 2 e^T E[r] + tr(S E[x x^T] S^T) + 2 e^T S E[x] + |e|^2
    """
    count = max(stats.count, 1)
    coefficients = scaling.T  # m x N
    mean_x, mean_r = stats.x_total / count, stats.r_total / count
    error = (
        np.sum(stats.rr) / count
        - 2 * np.sum(coefficients * stats.xr) / count
        - 2 * offsets @ mean_r
        + np.sum(coefficients * (stats.xx @ coefficients)) / count
        + 2 * offsets @ (scaling @ mean_x)
        + offsets @ offsets
    )
    return float(error)


def cross_validated_ridge(
    folds: tuple[CrossStats, CrossStats], kept: np.ndarray, choices=RIDGE_CHOICES
) -> float:
    """The ridge of :func:`solve_sequential`, chosen for one unit from its own observations
    by two-fold cross-validation: fitted on one half of the calibration samples, the error
    :func:`held_out_error` on the other half, summed over both directions; the smallest of
    ``choices`` that minimises it. A layer whose kept channels carry little of the removed
    ones (or that many channels fit from few samples) gets a strong pull toward
    pass-through; one that they rebuild reliably, a weak one."""
    errors = []
    for ridge in choices:
        error = 0.0
        for train, test in (folds, folds[::-1]):
            fitted = solve_sequential(train, kept, ridge)
            error += held_out_error(test, fitted.scaling, fitted.offsets)
        errors.append(error)
    return choices[int(np.argmin(errors))]
