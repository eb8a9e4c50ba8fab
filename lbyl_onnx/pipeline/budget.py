"""Kept counts per unit from a budget (``target_macs``, ``target_params``, ``target_latency``).

Builds the exact cost model of the graph (:class:`CostTerm` per Conv/Gemm/MatMul) and each
unit's damage curve (measured after the activation and scaled by the outputs' response, or
the filter-space residual where nothing can be measured), then lets
:func:`lbyl_onnx.methods.allocation.allocate` choose. The mathematics of the allocation
and of the damage lives in ``methods/allocation.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..config import PruneConfig, Settings, settled
from ..errors import UsageError
from ..graph.rewrite import consumer_column_gram
from ..graph.shapes import batch_one_dims, infer_shapes, node_macs
from ..graph.units import Unit, units_by_tensor
from ..methods.allocation import (
    CostTerm,
    Limit,
    activation_damage,
    allocate,
    allocate_within,
    candidate_counts,
    total_cost,
)
from ..methods.base import Solution, layer_damage, regularisers
from ..methods.calibrated import ActivationStats
from ..methods.criteria import keep_best
from ..report import ModelSummary
from ..runtime.sensitivity import OutputSensitivity
from ..runtime.timing import LatencyCosts

DAMAGE_POINTS = 16
"""Kept counts per unit at which the damage curve is solved (linear in between)."""

REFERENCE_KEEPS = (0.7, 0.4)
"""The kept shares at which a unit's effect on the outputs is measured (the gain is
interpolated between them, constant beyond)."""


@dataclass
class Measured:
    """What the budget's damage is measured with: the units' activation statistics, and the
    outputs' response to each unit's compensation (None where the outputs were not run)."""

    statistics: dict[str, ActivationStats]
    sensitivity: OutputSensitivity | None = None


def budget_counts(
    model: onnx.ModelProto,
    units: list[Unit],
    settings: Settings | PruneConfig,
    before: ModelSummary,
    solve: Callable[[Unit, np.ndarray], Solution],
    measure: Callable[[], Measured | None] = lambda: None,
    timed: Callable[[], LatencyCosts] | None = None,
) -> tuple[dict[str, int], str]:
    """Kept counts that meet :attr:`Settings.budget` (and :attr:`Settings.latency_limit`)
    with the least damage, and what they reach, for the report; options (rather than
    settings) are resolved by :func:`~lbyl_onnx.config.settled`.

    Costs: every Conv/Gemm/MatMul's MACs (or weights) scale with the kept fraction of its
    input channels (when it consumes a unit) and of its output channels (when it produces
    one); for latency, each kernel's variable time does (``timed()``:
    :func:`~lbyl_onnx.runtime.timing.latency_costs`). Damage (:func:`_damage_curve`): with
    activation statistics, ``-log(1 - d)`` for the share ``d`` of the consumers' output
    signal lost; without, the method's residual as a fraction of the layer's filter energy.
    ``measure()`` gives the statistics, called only once the budget is known to be
    reachable. Solved at up to ``DAMAGE_POINTS`` kept counts per unit. A latency limit
    beside a MAC or parameter budget is met by the widths at that budget as well
    (:func:`~lbyl_onnx.methods.allocation.allocate_within`). Raises :class:`UsageError` when
    even the smallest allowed counts miss the budget or the limit (the model would be
    destroyed, not made to fit), or when no widths at the budget meet the limit.
    """
    settings = settled(settings)
    target = settings.budget
    latency = timed() if target.kind == "latency" or settings.latency_limit is not None else None
    budget, frozen = _budget_cost(model, units, settings, before, latency)
    channels = [u.channels for u in units]
    smallest = [
        n if f else candidate_counts(n, settings.round_to, settings.min_keep)[-1]
        for n, f in zip(channels, frozen, strict=True)
    ]
    budget.reachable(target.fraction, smallest, channels, target.flag, target.kind, settings)
    limit = None
    if settings.latency_limit is not None:
        limit = _Cost(latency.terms, latency.total)
        limit.reachable(
            settings.latency_limit, smallest, channels, "--target-latency", "latency", settings
        )
    measured = measure()
    damage = [_damage_curve(u, settings, solve, measured) for u in units]
    kept = _allocated(channels, damage, budget, limit, frozen, settings)
    text = _reached(kept, channels, budget, limit, latency, settings)
    skipped = [
        u.name
        for u, f in zip(units, frozen, strict=True)
        if f and len(candidate_counts(u.channels, settings.round_to, settings.min_keep)) > 1
    ]
    if skipped:
        why = (
            "no time measured to fall with their channels"
            if target.kind == "latency"
            else f"{target.kind} unknown (pass --input-shape)"
        )
        text += f"; kept whole, {why}: {', '.join(skipped)}"
    return {u.name: m for u, m in zip(units, kept, strict=True)}, text


def _budget_cost(
    model: onnx.ModelProto,
    units: list[Unit],
    settings: Settings,
    before: ModelSummary,
    latency: LatencyCosts | None,
) -> tuple[_Cost, list[bool]]:
    """The cost model of the budget's kind, and which units it leaves whole (no cost of
    theirs falls with their channels)."""
    kind = settings.budget.kind
    if kind == "latency":
        terms, total = latency.terms, latency.total
        # a unit's channels save time wherever a kernel reads or writes them
        counted = {u for t in terms if t.base > 0 for u in (t.input_unit, t.output_unit)}
    else:
        terms = cost_terms(model, units, kind, settings)
        total = float(before.macs if kind == "MACs" else before.parameters)
        counted = {t.output_unit for t in terms}  # a unit whose own cost is unknown stays whole
    return _Cost(terms, total), [i not in counted for i in range(len(units))]


def _allocated(
    channels: list[int],
    damage: list[Callable[[int], float]],
    budget: _Cost,
    limit: _Cost | None,
    frozen: list[bool],
    settings: Settings,
) -> list[int]:
    """The kept counts of least damage within the budget (and the latency limit); a
    :class:`UsageError` where no widths at the budget meet the limit."""
    target, limit_at = settings.budget, settings.latency_limit
    common = (settings.round_to, settings.min_keep, frozen)
    if limit is None:
        return allocate(channels, damage, budget.terms, budget.absolute(target.fraction), *common)
    within = Limit(limit.terms, limit.absolute(limit_at))
    kept = allocate_within(
        channels, damage, budget.terms, budget.absolute(target.fraction), within, *common
    )
    if (fastest := limit.share(kept, channels)) > limit_at + 1e-9:
        raise UsageError(
            f"--target-latency {limit_at:g} cannot be met with {target.flag} "
            f"{target.fraction:g}: at that budget, the widths that save the most time keep an "
            f"estimated {fastest:.1%} of the latency"
        )
    return kept


def _reached(
    kept: list[int],
    channels: list[int],
    budget: _Cost,
    limit: _Cost | None,
    latency: LatencyCosts | None,
    settings: Settings,
) -> str:
    """What the widths reach, for the report, and what the latency was measured at."""
    target = settings.budget
    estimated = "estimated " if target.kind == "latency" else ""
    reached = budget.share(kept, channels)
    text = f"{target.kind} {estimated}{reached:.1%} of the original (target {target.fraction:.1%})"
    if limit is not None:
        text += (
            f", latency estimated {limit.share(kept, channels):.1%} "
            f"(target {settings.latency_limit:.1%})"
        )
    if latency is not None:
        text += (
            f"; latency {latency.total / 1000:.3g} ms at {latency.inputs} (onnxruntime, one "
            f"thread, this machine), {latency.resolved} of its {latency.kernels} kernels "
            "matched to units"
        )
    return text


@dataclass(frozen=True)
class _Cost:
    """A budget's cost model: the terms that scale with the kept counts, and the whole
    model's cost."""

    terms: list[CostTerm]
    total: float

    @property
    def fixed(self) -> float:
        """The part of the total no width changes."""
        return self.total - sum(t.base for t in self.terms)

    def share(self, kept: list[int], channels: list[int]) -> float:
        """The cost of ``kept`` as a share of the original's."""
        if not self.total:
            return 1.0
        return (self.fixed + total_cost(self.terms, kept, channels)) / self.total

    def absolute(self, fraction: float) -> float:
        """What the terms may cost for the model to keep ``fraction`` of its cost."""
        return fraction * self.total - self.fixed

    def reachable(
        self,
        fraction: float,
        smallest: list[int],
        channels: list[int],
        flag: str,
        kind: str,
        settings: Settings,
    ) -> None:
        """Raise :class:`UsageError` where even the smallest widths keep more than
        ``fraction`` (the model would be destroyed, not made to fit)."""
        lowest = self.share(smallest, channels)
        if fraction >= lowest - 1e-9:
            return
        limits = [f"--round-to {settings.round_to}"] if settings.round_to > 1 else []
        limits += [f"--min-keep {settings.min_keep:g}"] if settings.min_keep > 0 else []
        raise UsageError(
            f"{flag} {fraction:g} cannot be reached: with every prunable unit at its smallest "
            f"allowed width ({', '.join(limits) or 'one channel'}) the model keeps "
            f"{lowest:.1%} of its {kind} (the rest is in those widths and in layers the tool "
            "cannot prune)"
        )


def cost_terms(
    model: onnx.ModelProto, units: list[Unit], kind: str, settings: Settings | PruneConfig
) -> list[CostTerm]:
    """One :class:`CostTerm` per node with MACs (``kind`` "MACs", at the settings'
    ``input_shapes`` with batch 1, as the report counts them) or weights (Conv/Gemm/MatMul),
    placed between the units it reads and writes."""
    shapes = infer_shapes(model, batch_one_dims(model, settled(settings).input_shapes))
    producer_of, consumer_of = units_by_tensor(units)
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
    return terms


def _damage_curve(
    unit: Unit,
    settings: Settings,
    solve: Callable[[Unit, np.ndarray], Solution],
    measured: Measured | None,
) -> Callable[[int], float]:
    """Damage of keeping ``m`` channels, solved on a coarse grid, linear in between.

    Measured (``measured`` given): ``g * -log(1 - d(m))`` for the share ``d`` of the
    consumers' output signal lost (:func:`activation_damage`). If every unit passes on
    ``1 - d_u`` of its signal, the network keeps about ``prod_u (1 - d_u)``, and summing
    ``-log(1 - d_u)`` maximises that product. How much of a unit's loss reaches the model's
    outputs differs by orders of magnitude between units, so the gain ``g`` scales the curve
    to the outputs' relative error measured with the unit compensated alone at the
    reference counts (:data:`REFERENCE_KEEPS`; :class:`OutputSensitivity`). Without
    measurements: the filter-space residual (:func:`layer_damage`)."""
    grid = candidate_counts(unit.channels, settings.round_to, settings.min_keep)
    picks = set(np.linspace(0, len(grid) - 1, min(DAMAGE_POINTS, len(grid))).round().astype(int))
    references = {
        min(range(len(grid)), key=lambda i, k=keep: abs(grid[i] - k * unit.channels))
        for keep in REFERENCE_KEEPS
    }
    picks |= references
    stats = measured.statistics.get(unit.name) if measured else None
    if stats is not None:
        columns = consumer_column_gram(unit)
        second = stats.outer / max(stats.count, 1)
    points, gains = {}, {}
    for i in sorted(picks):
        m = grid[i]
        kept = keep_best(unit.arrays.weight, m, settings.weight_criterion)
        solution = solve(unit, kept)
        if stats is None:
            lam1, lam2 = regularisers(unit.arrays, kept, settings.options)
            points[m] = layer_damage(unit.arrays, kept, solution.scaling, lam1, lam2)
            continue
        lost = activation_damage(
            columns, second, stats.mean, kept, solution.scaling, solution.offsets
        )
        points[m] = -np.log(max(1.0 - lost, 1e-6))
        if i in references and points[m] > 1e-9 and measured.sensitivity is not None:
            error = measured.sensitivity.error(unit, kept, solution.scaling, solution.offsets)
            gains[m] = error / points[m]
    xs = sorted(points)
    at = sorted(gains)
    ys = [points[x] * (float(np.interp(x, at, [gains[g] for g in at])) if at else 1.0) for x in xs]
    return lambda m: float(np.interp(m, xs, ys))
