"""Kept counts per unit from a budget (``--target-macs``, ``--target-params``).

Builds the exact cost model of the graph (:class:`CostTerm` per Conv/Gemm/MatMul) and each
unit's data-free damage curve, then lets :func:`lbyl_onnx.methods.allocation.allocate`
choose. The mathematics of the allocation lives in ``methods/allocation.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .graph.shapes import infer_shapes, node_macs, static_input_dims
from .graph.units import Unit
from .methods import METHODS
from .methods.allocation import CostTerm, allocate, candidate_counts, total_cost
from .methods.base import layer_damage, regularisers
from .methods.criteria import keep_best
from .report import ModelSummary

if TYPE_CHECKING:
    from .api import PruneConfig

DAMAGE_POINTS = 16
"""Kept counts per unit at which the damage curve is solved (linear in between)."""


def budget_counts(
    model: onnx.ModelProto, units: list[Unit], config: PruneConfig, before: ModelSummary
) -> tuple[dict[str, int], str]:
    """Kept counts that meet ``--target-macs``/``--target-params`` with the least damage.

    Costs: every Conv/Gemm/MatMul's MACs (or weights) scale with the kept fraction of its
    input channels (when it consumes a unit) and of its output channels (when it produces
    one). Damage: the method's data-free residual as a fraction of the layer's filter energy
    (:func:`layer_damage`), solved at up to ``DAMAGE_POINTS`` kept counts per unit.
    """
    kind = "MACs" if config.target_macs is not None else "parameters"
    fraction = config.target_macs if config.target_macs is not None else config.target_params
    shapes = infer_shapes(model, {**static_input_dims(model, 1), **(config.input_shapes or {})})
    index = {u.name: i for i, u in enumerate(units)}
    producer_of = {p.output[0]: index[u.name] for u in units for p in u.producers}
    consumer_of = {c.node.output[0]: index[u.name] for u in units for c in u.consumers}
    values = {t.name: t.dims for t in model.graph.initializer}
    terms = []
    for node in model.graph.node:
        if kind == "MACs":
            base = node_macs(node, shapes)
        elif node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            base = int(np.prod(values.get(node.input[1], [0])))
        else:
            base = 0
        if base:
            out = node.output[0]
            terms.append(CostTerm(float(base), consumer_of.get(out), producer_of.get(out)))
    counted = {t.output_unit for t in terms}
    frozen = [index[u.name] not in counted for u in units]
    total = float(before.macs if kind == "MACs" else before.parameters)
    damage = [_damage_curve(u, config) for u in units]
    channels = [u.channels for u in units]
    kept = allocate(
        channels, damage, terms, fraction * total, config.round_to, config.min_keep, frozen
    )
    fixed = total - sum(t.base for t in terms)
    reached = (fixed + total_cost(terms, kept, channels)) / total if total else 1.0
    text = f"{kind} {reached:.1%} of the original (target {fraction:.1%})"
    skipped = [u.name for u, f in zip(units, frozen, strict=True) if f]
    if skipped:
        text += f"; kept whole, {kind} unknown (pass --input-shape): {', '.join(skipped)}"
    return {u.name: m for u, m in zip(units, kept, strict=True)}, text


def _damage_curve(unit: Unit, config: PruneConfig) -> Callable[[int], float]:
    """Damage of keeping ``m`` channels, solved on a coarse grid, linear in between."""
    grid = candidate_counts(unit.channels, config.round_to, config.min_keep)
    picks = sorted(
        set(np.linspace(0, len(grid) - 1, min(DAMAGE_POINTS, len(grid))).round().astype(int))
    )
    points = {}
    for i in picks:
        m = grid[i]
        kept = keep_best(unit.arrays.weight, m, config.criterion)
        solution = METHODS[config.method](unit.arrays, kept, config.options)
        lam1, lam2 = regularisers(unit.arrays, kept, config.options)
        points[m] = layer_damage(unit.arrays, kept, solution.scaling, lam1, lam2)
    xs = sorted(points)
    ys = [points[x] for x in xs]
    return lambda m: float(np.interp(m, xs, ys))
