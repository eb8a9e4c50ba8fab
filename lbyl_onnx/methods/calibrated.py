"""Activation-space least squares from measured statistics (calibration mode).

With real inputs, the channels ``r`` that the consumers read can be observed. For each removed
channel ``j`` the best affine stand-in from the kept channels minimises the mean squared
error in activation space::

    minimise over s, e:   E[(r_j - s^T r_P - e)^2] + lam |s|^2
    s_j = (C_PP + lam I)^-1 C_Pj,      e_j = mu_j - s_j^T mu_P

where ``mu`` and ``C`` are the mean and covariance of ``r`` over samples and positions. The
constant ``e_j`` is what the kept channels cannot carry; it is folded into the consumer's
bias (the *bias correction*). ``lam = ridge * trace(C_PP) / m`` is relative to the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .base import Solution, identity_rows, removed_channels


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


def solve_calibrated(stats: ActivationStats, kept: np.ndarray, ridge: float = 1e-3) -> Solution:
    """``S`` and the offsets ``e`` of the activation-space least squares (module docstring).

    ``residual`` is ``sum_j E[(r_j - s_j^T r_P - e_j)^2]`` over the removed channels, relative
    to plain removal's ``sum_j E[r_j^2]``.
    """
    n = stats.total.shape[0]
    scaling = identity_rows(n, kept)
    offsets = np.zeros(n)
    removed = removed_channels(n, kept)
    if len(removed) == 0:
        return Solution(scaling, 0.0, offsets=offsets)
    cov, mu = stats.covariance, stats.mean
    cpp = cov[np.ix_(kept, kept)]
    lam = ridge * max(float(np.trace(cpp)) / len(kept), 1e-12)
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
