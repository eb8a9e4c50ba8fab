"""LBYL with non-negative coefficients: each removed channel is approximated by a
non-negative combination of the kept channels.

On folded filters, for each removed channel ``j`` (the LBYL objective, LBYL.md 3.3, with a
sign constraint)::

    minimise over s >= 0:   |wt_j - Wt_P^T s|^2 + lam1 (bt_j - bt_P^T s)^2 + lam2 |s|^2

Why the sign matters: the consumers read ``act(z)``, not ``z``. Let the activation be linear
with slope 1 for ``z >= 0`` and slope ``a`` for ``z < 0`` (ReLU: ``a = 0``; LeakyReLU, PRelu)
and let ``z_j = s^T z_P`` hold exactly. If ``s >= 0``, then on every input where the kept
channels in the support of ``s`` share a sign, ``z_j`` has that sign too and both sides are
in the same linear piece: ``act(z_j) = s^T act(z_P)`` (all active: ``s^T z_P``; all
inactive: ``a s^T z_P``). With mixed signs ``z_j`` can take the other sign on either kind of
input (all kept channels positive, ``s^T z_P < 0``: ``relu(z_j) = 0`` but ``s^T relu(z_P)
< 0``), so the identity holds only on part of each. A non-negative combination is therefore
exact on both orthants where the kept channels agree, a mixed-sign one on neither as a
whole (tested in ``tests/test_methods.py``).

Neuron Merging is the special case of a single non-negative coefficient, so its
coefficients are feasible here and this objective is never above Neuron Merging's (with the
same ``lam1, lam2``), nor above plain removal's, and never below LBYL's, which drops the
constraint.

The problem is a strictly convex quadratic programme when ``lam2 > 0``; all removed
channels share its matrix, and :func:`nonnegative_quadratic` solves it exactly.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
from threadpoolctl import threadpool_limits

from .base import (
    LayerArrays,
    MethodOptions,
    Solution,
    identity_rows,
    regularisers,
    relative_residual,
    removed_channels,
)
from .lbyl import lbyl_system

TOLERANCE = 1e-10
"""Relative size of a negative gradient entry that frees a variable (round-off below it)."""

WARM_START_ITERATIONS = 50
"""ADMM iterations that estimate which coefficients are positive before the exact solve."""

SOLVE_ACCURACY = 1e-6
"""Relative gradient left on the free set above which a solve is taken as inaccurate (an
ill-conditioned block)."""

MAX_ACTIVE_SET_CHANGES = 100


def nonnegative_quadratic(a: np.ndarray, b: np.ndarray, tolerance: float = TOLERANCE) -> np.ndarray:
    """``argmin over s >= 0 of 1/2 s^T A s - b^T s`` for every column ``b`` of ``B``.

    ``A`` (``m x m``) is symmetric positive semi-definite. The minimiser is characterised by
    the Karush-Kuhn-Tucker conditions: with ``g = A s - b``, ``s_i > 0`` and ``g_i = 0`` on a
    free set ``F``, ``s_i = 0`` and ``g_i >= 0`` off it. Two stages:

    1. A warm start shared by every column: ADMM on the split ``s = z, z >= 0`` (Boyd et al.,
       "Distributed Optimization and Statistical Learning via the Alternating Direction
       Method of Multipliers", 2011, section 5.2), ``s <- (A + rho I)^-1 (b + rho (z - u))``,
       ``z <- max(0, s + u)``, ``u <- u + s - z`` with ``rho = trace(A) / m``, for
       :data:`WARM_START_ITERATIONS` iterations; ``F`` starts as the positive entries of ``z``.
    2. Per column, the primal-dual active set method (Hintermüller, Ito and Kunisch, SIAM J.
       Optim. 13, 2002): solve ``A_FF s_F = b_F`` with ``s = 0`` off ``F``, then keep in ``F``
       the entries with ``s_i > 0`` and add those off ``F`` with ``g_i < 0``; when ``F`` no
       longer changes, ``s`` meets the conditions exactly (up to the linear solve).

    The method converges in a few rounds when ``A`` is positive definite (LBYL's ridge makes
    it so); a column whose free set still changes after :data:`MAX_ACTIVE_SET_CHANGES`
    rounds, which can happen when ``A`` is singular, is solved by SciPy's Lawson-Hanson
    NNLS on a square root of ``A`` instead (:func:`_lawson_hanson`). Returns the solutions
    (``m x columns``).
    """
    m = a.shape[0]
    rho = float(np.trace(a)) / m if m else 0.0
    if m == 0 or b.size == 0 or rho <= 0.0:  # no kept channel, or every kept filter is zero
        return np.zeros_like(b)
    inverse = scipy.linalg.inv(a + rho * np.eye(m))
    start = inverse @ b
    z = np.maximum(start, 0.0)
    u = np.zeros_like(b)
    for _ in range(WARM_START_ITERATIONS):
        s = start + rho * (inverse @ (z - u))
        z = np.maximum(s + u, 0.0)
        u += s - z
    solutions = np.empty_like(b)
    # many small factorisations, each between Python steps: BLAS threads would spend more
    # time waking than working
    with threadpool_limits(limits=1, user_api="blas"):
        for column in range(b.shape[1]):
            solution = _active_set(a, b[:, column], z[:, column], tolerance)
            solutions[:, column] = (
                solution if solution is not None else _lawson_hanson(a, b[:, column])
            )
    return solutions


def _active_set(
    a: np.ndarray, b: np.ndarray, warm: np.ndarray, tolerance: float
) -> np.ndarray | None:
    """Stage 2 of :func:`nonnegative_quadratic` for one column, from the warm start; None
    if the free set has not settled or a block of ``A`` is singular."""
    size = max(float(np.linalg.norm(b)), 1e-300)
    threshold = tolerance * size
    free = warm > 0.0
    for _ in range(MAX_ACTIVE_SET_CHANGES):
        s = np.zeros_like(b)
        if free.any():
            try:
                factor = scipy.linalg.cho_factor(a[np.ix_(free, free)], check_finite=False)
            except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):  # not positive definite
                return None
            s[free] = scipy.linalg.cho_solve(factor, b[free], check_finite=False)
        gradient = a @ s - b
        if np.abs(gradient[free]).max(initial=0.0) > SOLVE_ACCURACY * size:
            return None
        updated = (free & (s > 0.0)) | (~free & (gradient < -threshold))
        if np.array_equal(updated, free):
            return s
        free = updated
    return None


def _lawson_hanson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The same minimiser by ``scipy.optimize.nnls``: with ``A = Q diag(l) Q^T``,
    ``L = diag(sqrt l) Q^T`` and ``y = diag(1 / sqrt l) Q^T b`` (over ``l > 0``),
    ``|L s - y|^2 = s^T A s - 2 b^T s + const`` for ``b`` in the range of ``A`` (as LBYL's
    right-hand sides are)."""
    values, vectors = np.linalg.eigh(a)
    keep = values > values.max() * len(values) * np.finfo(float).eps
    root = np.sqrt(values[keep])
    factor = root[:, None] * vectors[:, keep].T
    target = (vectors[:, keep].T @ b) / root
    return scipy.optimize.nnls(factor, target, maxiter=50 * (len(b) + 1))[0]


def solve_lbyl_nn(layer: LayerArrays, kept: np.ndarray, options: MethodOptions) -> Solution:
    """``S`` whose removed rows are the non-negative LBYL coefficients (module docstring),
    with LBYL's scale-relative regularisers."""
    scaling = identity_rows(layer.channels, kept)
    removed = removed_channels(layer.channels, kept)
    lam1, lam2 = regularisers(layer, kept, options)
    if len(removed):
        gram, rhs = lbyl_system(layer.gram, layer.folded_bias, kept, removed, lam1, lam2)
        scaling[removed] = nonnegative_quadratic(gram, rhs).T
    return Solution(scaling, relative_residual(layer, kept, scaling, lam1))
