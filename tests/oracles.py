"""Test oracles: reference formulations the methods' results are checked against."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from lbyl_onnx.methods.base import (
    BatchNormParams,
)


def lbyl_objective(
    wt: np.ndarray,
    bt: np.ndarray,
    kept: np.ndarray,
    j: int,
    s: np.ndarray,
    lam1: float,
    lam2: float,
) -> float:
    """The LBYL objective of removed channel ``j`` at coefficients ``s``."""
    dw = wt[j] - wt[kept].T @ s
    db = bt[j] - bt[kept] @ s
    return float(dw @ dw + lam1 * db * db + lam2 * s @ s)


def lbyl_bn_aware_coefficients(
    weight: np.ndarray,
    bias: np.ndarray,
    bn: BatchNormParams,
    kept: np.ndarray,
    j: int,
    lam1: float,
    lam2: float,
) -> np.ndarray:
    """The paper's BN-aware form on raw filters, returned as folded coefficients ``K o c``.

    With ``rho_k = gamma_k / sigma_k``, ``a_k = mean_k - b_k - beta_k / rho_k`` (so that
    ``bt_k = -rho_k a_k``) and ``K_k = rho_j / rho_k``, the folded objective divided by
    ``rho_j^2`` reads, in raw coefficients ``c`` with ``s = K o c``::

        |w_j - W_P^T c|^2 + lam1 (a_j - a_P^T c)^2 + (lam2 / rho_j^2) sum_k K_k^2 c_k^2

    It is minimised here on its own terms; the result must equal the folded solution.
    """
    rho = bn.rho
    w = weight.astype(np.float64)
    a = bn.mean - bias.astype(np.float64) - bn.beta / rho
    k = rho[j] / rho[kept]
    wp, ap = w[kept], a[kept]
    gram = wp @ wp.T + lam1 * np.outer(ap, ap) + (lam2 / rho[j] ** 2) * np.diag(k**2)
    rhs = wp @ w[j] + lam1 * a[j] * ap
    c = scipy.linalg.solve(gram, rhs, assume_a="pos")
    return k * c
