"""Pure NumPy/SciPy mathematics of channel removal and compensation.

Nothing here knows about ONNX. A prunable unit is seen as arrays (:class:`LayerArrays`),
the kept channels are chosen by a criterion (:mod:`.criteria`), and a method returns the
scaling matrix ``S`` (``N x m``) that the consumers of the unit absorb (LBYL.md section 3).
"""

from __future__ import annotations

from .base import BatchNormParams, LayerArrays, MethodOptions, Solution
from .criteria import CRITERIA, choose_kept, kept_count
from .lbyl import solve_lbyl
from .lbyl_nn import solve_lbyl_nn
from .merging import solve_merging
from .prune import solve_prune

METHODS = {
    "prune": solve_prune,
    "nm": solve_merging,
    "lbyl": solve_lbyl,
    "lbyl-nn": solve_lbyl_nn,
}
"""Registry of methods: name -> ``solve(layer, kept, options) -> Solution``."""

__all__ = [
    "CRITERIA",
    "METHODS",
    "BatchNormParams",
    "LayerArrays",
    "MethodOptions",
    "Solution",
    "choose_kept",
    "kept_count",
    "solve_lbyl",
    "solve_lbyl_nn",
    "solve_merging",
    "solve_prune",
]
