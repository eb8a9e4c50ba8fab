"""Neuron Merging: each removed channel is replaced by its most similar kept one (LBYL.md 3.2).

On folded filters: if ``wt_j = s * wt_k`` and ``bt_j = s * bt_k`` with ``s > 0``, then
``z_j = s z_k`` and, for a positively homogeneous activation, ``r_j = s r_k``; so
``S[j, k] = |wt_j| / |wt_k|``. The partner ``k`` minimises
``lam * (1 - cos(wt_j, wt_k)) + (1 - lam) * d_k``, where ``d_k = |bt_j - S[j,k] bt_k|`` (the
constant mismatch left by the merge) min-max normalised over the kept channels. Nothing is
merged when the best partner's cosine is below the threshold ``t``.

(The BN-aware form of the paper, with raw filters and ``K_jk = s (gamma_j/gamma_k)
(sigma_k/sigma_j)``, gives the same ``S[j, k]`` for ``rho > 0``: it is the folded ratio.)
"""

from __future__ import annotations

import numpy as np

from .base import (
    LayerArrays,
    MethodOptions,
    Solution,
    identity_rows,
    regularisers,
    relative_residual,
    removed_channels,
)


def solve_merging(layer: LayerArrays, kept: np.ndarray, options: MethodOptions) -> Solution:
    """``S`` with one non-zero ``S[j, partner(j)] = |wt_j| / |wt_partner|`` per merged ``j``."""
    scaling = identity_rows(layer.channels, kept)
    wt, bt = layer.folded_weight, layer.folded_bias
    norms = np.sqrt(np.sum(wt**2, axis=1))
    kept_norms = norms[kept]
    usable = kept_norms > 0
    merged = 0
    removed = removed_channels(layer.channels, kept)
    for j in removed:
        if norms[j] == 0 or not np.any(usable):
            continue
        cos = np.full(len(kept), -np.inf)
        cos[usable] = (wt[kept][usable] @ wt[j]) / (kept_norms[usable] * norms[j])
        ratio = np.zeros(len(kept))
        ratio[usable] = norms[j] / kept_norms[usable]
        mismatch = np.abs(bt[j] - ratio * bt[kept])
        spread = mismatch[usable].max() - mismatch[usable].min()
        normalised = (mismatch - mismatch[usable].min()) / spread if spread > 0 else 0 * mismatch
        cost = options.nm_lambda * (1.0 - cos) + (1.0 - options.nm_lambda) * normalised
        cost[~usable] = np.inf
        partner = int(np.argmin(cost))
        if cos[partner] < options.nm_threshold:
            continue
        scaling[j, partner] = ratio[partner]
        merged += 1
    lam1, _ = regularisers(layer, kept, options)
    notes = [f"merged {merged} of {len(removed)} removed channels"] if len(removed) else []
    return Solution(scaling, relative_residual(layer, kept, scaling, lam1), notes)
