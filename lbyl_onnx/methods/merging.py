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
    removed = removed_channels(layer.channels, kept)
    lam1, _ = regularisers(layer, kept, options)
    if len(removed) == 0:
        return Solution(scaling, 0.0)
    g, bt = layer.gram, layer.folded_bias
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    kept_norms, removed_norms = norms[kept], norms[removed]
    usable = kept_norms > 0  # a zero filter cannot stand in for anything
    safe_kept = np.where(usable, kept_norms, 1.0)
    safe_removed = np.where(removed_norms > 0, removed_norms, 1.0)
    cos = g[np.ix_(removed, kept)] / (safe_removed[:, None] * safe_kept[None, :])
    ratio = removed_norms[:, None] / safe_kept[None, :]
    mismatch = np.abs(bt[removed][:, None] - ratio * bt[kept][None, :])
    masked = np.where(usable[None, :], mismatch, np.nan)
    low = np.nanmin(masked, axis=1, keepdims=True) if usable.any() else 0.0
    spread = (np.nanmax(masked, axis=1, keepdims=True) - low) if usable.any() else 1.0
    normalised = np.where(spread > 0, (mismatch - low) / np.where(spread > 0, spread, 1.0), 0.0)
    cost = options.nm_lambda * (1.0 - cos) + (1.0 - options.nm_lambda) * normalised
    cost[:, ~usable] = np.inf
    partner = np.argmin(cost, axis=1)
    rows = np.arange(len(removed))
    merge = usable.any() & (removed_norms > 0) & (cos[rows, partner] >= options.nm_threshold)
    scaling[removed[merge], partner[merge]] = ratio[rows, partner][merge]
    notes = [f"merged {int(merge.sum())} of {len(removed)} removed channels"]
    return Solution(scaling, relative_residual(layer, kept, scaling, lam1), notes)
