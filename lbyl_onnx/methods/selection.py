"""Which channels stay, chosen from measured activations: the kept set whose channels best
rebuild what the consumers compute (the ``reconstruction`` criterion).

The consumers read ``y = V^T r`` (``V``: their weights, one row per channel of the unit, with
output channels and kernel taps as columns). A calibrated solve rebuilds ``r`` from the kept
channels ``x_P`` with the best affine map, so the consumers' error left by a kept set ``P`` is::

    E|V^T (r - S x_P - e)|^2  at the best S, e  =  tr(V^T C_rr V) - tr(H_P^T A H_P)

with ``C`` the (cross-)covariances over samples and positions, ``H = C_xr V`` and ``A =
C_PP^-1``. Choosing ``P`` is a column-subset selection, solved greedily backward: starting
from every channel, remove one at a time the channel whose removal raises the error least.
With ``beta = A H_P`` the best rebuild's coefficients, removing ``k`` costs (the drop-one
formula of least squares)::

    cost_k = |beta_k|^2 / A_kk = Q_kk / A_kk,       Q = beta beta^T = A B A,  B = H H^T

(``B = C_xr M C_rx`` with ``M = V V^T``, the consumers' column Gram, so ``V`` is never
formed). Removing ``k`` updates both by rank-one terms, ``a = A[:, k]``, ``q = Q[:, k]``::

    A <- A - a a^T / A_kk,      Q <- Q - w t^T - t w^T,   t = a / A_kk,  w = q - t Q_kk / 2

Only the diagonals and the removed channels' columns are ever read, so the updates are kept
as factors and applied lazily: ``O(N^3)`` to start, ``O(N (N - m))`` per channel removed.

The plain-weight criteria (:mod:`.criteria`) look only at the producer's filters; this one
sees what the data makes of them: channels that copy others, that barely vary, or whose
consumers ignore them go first, whatever their norms.
"""

from __future__ import annotations

import numpy as np

from .base import require_finite

RIDGE = 1e-6
"""Relative ridge on ``C_xx`` (times its mean diagonal): channels that are constant over the
samples, or exact copies of others, stay invertible (and cost nothing to remove)."""


def reconstruction_keep(
    cxx: np.ndarray, cxr: np.ndarray, consumer_gram: np.ndarray, m: int
) -> np.ndarray:
    """Sorted indices of the ``m`` channels left by greedy backward elimination (module
    docstring). ``cxx``: ``N x N`` covariance of the channels ``x`` the pruned model computes;
    ``cxr``: ``N x N`` their covariance with the original's channels ``r`` (``cxx`` itself
    where ``x = r``); ``consumer_gram``: ``M = V V^T``."""
    require_finite(cxx, cxr)
    n = cxx.shape[0]
    if m >= n:
        return np.arange(n)
    gram = cxx + RIDGE * max(float(np.trace(cxx)) / n, 1e-300) * np.eye(n)
    a0 = np.linalg.inv(gram)
    a0 = (a0 + a0.T) / 2
    q0 = a0 @ (cxr @ consumer_gram @ cxr.T) @ a0
    q0 = (q0 + q0.T) / 2
    removals = n - m
    p = np.zeros((n, removals))  # A = A0 - p p^T
    w = np.zeros((n, removals))  # Q = Q0 - w t^T - t w^T
    t = np.zeros((n, removals))
    diag_a, diag_q = np.diag(a0).copy(), np.diag(q0).copy()
    removed = np.zeros(n, dtype=bool)
    for step in range(removals):
        cost = diag_q / np.maximum(diag_a, 1e-300)
        cost[removed] = np.inf
        k = int(np.argmin(cost))
        removed[k] = True
        a = a0[:, k] - p[:, :step] @ p[k, :step]
        q = q0[:, k] - w[:, :step] @ t[k, :step] - t[:, :step] @ w[k, :step]
        akk = max(float(a[k]), 1e-300)
        p[:, step] = a / np.sqrt(akk)
        t[:, step] = a / akk
        w[:, step] = q - t[:, step] * q[k] / 2
        diag_a -= p[:, step] ** 2
        diag_q -= 2 * w[:, step] * t[:, step]
    return np.flatnonzero(~removed)
