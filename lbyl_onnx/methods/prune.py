"""Plain removal: the removed channels simply disappear (LBYL.md 3.1)."""

from __future__ import annotations

import numpy as np

from .base import (
    LayerArrays,
    MethodOptions,
    Solution,
    identity_rows,
    regularisers,
    relative_residual,
)


def solve_prune(layer: LayerArrays, kept: np.ndarray, options: MethodOptions) -> Solution:
    """``S`` with ``S[P[t], t] = 1`` and zero rows for the removed channels."""
    scaling = identity_rows(layer.channels, kept)
    lam1, _ = regularisers(layer, kept, options)
    return Solution(scaling, relative_residual(layer, kept, scaling, lam1))
