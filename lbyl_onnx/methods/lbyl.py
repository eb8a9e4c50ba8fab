"""LBYL, "Leave Before You Leave": each removed channel is approximated by a linear
combination of all kept channels, in closed form (LBYL.md 3.3).

On folded filters (kept filters as rows of ``Wt_P``, ``m x d``; biases ``bt_P``), for each
removed channel ``j``::

    minimise   |wt_j - Wt_P^T s|^2 + lam1 (bt_j - bt_P^T s)^2 + lam2 |s|^2
    s_j = (Wt_P Wt_P^T + lam1 bt_P bt_P^T + lam2 I)^-1 (Wt_P wt_j + lam1 bt_j bt_P)

The matrix does not depend on ``j``, so all removed channels share one Cholesky
factorisation; a least-squares solve takes over if it is singular.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from .base import (
    LayerArrays,
    MethodOptions,
    Solution,
    identity_rows,
    regularisers,
    relative_residual,
    removed_channels,
)


def lbyl_system(
    g: np.ndarray, bt: np.ndarray, kept: np.ndarray, removed: np.ndarray, lam1: float, lam2: float
) -> tuple[np.ndarray, np.ndarray]:
    """The LBYL objective of every removed channel as ``1/2 s^T A s - b_j^T s`` (plus a
    constant): ``A = Wt_P Wt_P^T + lam1 bt_P bt_P^T + lam2 I`` (``m x m``, shared) and the
    columns ``b_j = Wt_P wt_j + lam1 bt_j bt_P``, from the folded filters' Gram matrix
    ``g``."""
    bp = bt[kept]
    gram = g[np.ix_(kept, kept)] + lam1 * np.outer(bp, bp) + lam2 * np.eye(len(kept))
    rhs = g[np.ix_(kept, removed)] + lam1 * np.outer(bp, bt[removed])
    return gram, rhs


def lbyl_coefficients(
    g: np.ndarray, bt: np.ndarray, kept: np.ndarray, removed: np.ndarray, lam1: float, lam2: float
) -> tuple[np.ndarray, bool]:
    """Coefficients ``s_j`` (rows, ``len(removed) x m``) of the folded closed form, from the
    folded filters' Gram matrix ``g`` (``Wt_P Wt_P^T = g[P, P]``, ``Wt_P wt_j = g[P, j]``).

    Returns the coefficients and whether the Cholesky solve succeeded (False: least squares).
    """
    gram, rhs = lbyl_system(g, bt, kept, removed, lam1, lam2)
    try:
        with warnings.catch_warnings():  # an ill-conditioned solve warns instead of raising
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            solution = scipy.linalg.solve(gram, rhs, assume_a="pos")
        cholesky = True
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
        solution = scipy.linalg.lstsq(gram, rhs, lapack_driver="gelsy")[0]
        cholesky = False
    return solution.T, cholesky


def solve_lbyl(layer: LayerArrays, kept: np.ndarray, options: MethodOptions) -> Solution:
    """``S`` whose removed rows are the LBYL coefficients, with scale-relative regularisers."""
    scaling = identity_rows(layer.channels, kept)
    removed = removed_channels(layer.channels, kept)
    lam1, lam2 = regularisers(layer, kept, options)
    notes: list[str] = []
    if len(removed):
        coeffs, cholesky = lbyl_coefficients(
            layer.gram, layer.folded_bias, kept, removed, lam1, lam2
        )
        scaling[removed] = coeffs
        if not cholesky:
            notes.append("singular system: least-squares solve")
    return Solution(scaling, relative_residual(layer, kept, scaling, lam1), notes)
