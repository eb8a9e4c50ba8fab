"""The solving policy: which method's solution a unit gets, with which corrections.

Data-free, a method solves from the unit's filters (:mod:`lbyl_onnx.methods`); with
activation statistics, LBYL becomes the activation-space least squares and the other
methods gain the bias correction; ``--method auto`` keeps the solution whose outputs move
least.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Policy, PruneConfig, Settings, settled
from ..graph.units import Unit
from ..methods import METHODS
from ..methods.base import Solution, offsets_from_means
from ..methods.calibrated import ActivationStats, solve_calibrated
from ..methods.judge import activation_errors, activation_samples, judged
from ..methods.moments import activation_means
from ..methods.prune import solve_prune
from .measure import Measurement


@dataclass
class JudgeSamples:
    """The judge's samples of the last unit asked for: drawn once while one unit is solved
    for several kept sets (a budget's damage curve), and only one unit's held at a time."""

    name: str = ""
    samples: np.ndarray | None = None

    def of(self, unit: Unit) -> np.ndarray:
        if self.samples is None or unit.name != self.name:
            self.name = unit.name
            self.samples = activation_samples(unit.arrays, unit.activation_model)
        return self.samples


def solve_unit(
    unit: Unit,
    kept: np.ndarray,
    settings: Settings | PruneConfig,
    statistics: ActivationStats | None,
    judge_samples: JudgeSamples | None = None,
    method: str | None = None,
) -> Solution:
    """``method``'s solution (None: the settings' method); with calibration statistics, LBYL
    becomes the activation-space least squares, and the other methods gain the bias
    correction. Options (rather than settings) are resolved by
    :func:`~lbyl_onnx.config.settled`.

    Data-free, the bias correction applies where :func:`corrects_bias` says so, and where the
    judge runs (:attr:`Settings.judge`; it needs BatchNormalization statistics) a
    compensation it estimates worse than plain removal after the activation is replaced by
    removal, with a note (:mod:`lbyl_onnx.methods.judge`)."""
    settings = settled(settings)
    method = method or settings.method
    if statistics is not None:
        if method == "lbyl":
            return solve_calibrated(statistics, kept, settings.ridge)
        solution = METHODS[method](unit.arrays, kept, settings.options)
        solution.offsets = offsets_from_means(statistics.mean, solution.scaling, kept)
        return solution
    candidates = [METHODS[method](unit.arrays, kept, settings.options)]
    if in_effect(settings.judge, unit) and method != "prune" and judged(unit.arrays):
        candidates.append(solve_prune(unit.arrays, kept, settings.options))
    if corrects_bias(unit, settings):
        bn = unit.arrays.bn
        means = activation_means(bn.beta, bn.gamma, unit.activation_model)
        for solution in candidates:
            solution.offsets = offsets_from_means(means, solution.scaling, kept)
            solution.notes.append("bias correction from BatchNormalization statistics")
    if len(candidates) == 1:
        return candidates[0]
    samples = (judge_samples or JudgeSamples()).of(unit)
    ours, removal = activation_errors(samples, kept, [(s.scaling, s.offsets) for s in candidates])
    if ours <= removal:
        return candidates[0]
    candidates[1].notes.append(
        f"{method} estimated worse than removal after the activation "
        f"({ours:.3g} vs {removal:.3g}, from BatchNormalization statistics): removed plainly"
    )
    return candidates[1]


CURVES_BY_LBYL = ("auto", "lbyl-nn")
"""Methods whose budget damage curves are solved with LBYL (:func:`curves_method`)."""


def curves_method(settings: Settings) -> str:
    """The method a budget's damage curves are solved with: the curves solve each unit at
    up to 18 widths, which costs ``auto`` three methods each time and ``lbyl-nn`` a
    quadratic programme per removed channel, so theirs are LBYL's (docs/benchmarks.md,
    Budgets)."""
    return "lbyl" if settings.method in CURVES_BY_LBYL else settings.method


AUTO_METHODS = ("prune", "nm", "lbyl")
"""What ``--method auto`` chooses from, per unit."""


def choose_method(
    unit: Unit,
    kept: np.ndarray,
    settings: Settings,
    statistics: ActivationStats | None,
    measurement: Measurement,
) -> tuple[str, Solution]:
    """``--method auto``: each method's solution for the unit, and the one whose outputs move
    least with the unit compensated alone (:class:`OutputSensitivity`, on the measurement's
    inputs); LBYL where nothing can be measured."""
    sensitivity = measurement.sensitivity()
    if sensitivity is None:
        solution = solve_unit(unit, kept, settings, statistics, method="lbyl")
        solution.notes.append(f"auto: lbyl, nothing measured ({measurement.failure})")
        return "lbyl", solution
    errors, solutions = {}, {}
    for method in AUTO_METHODS:
        solutions[method] = solve_unit(unit, kept, settings, statistics, method=method)
        errors[method] = sensitivity.error(
            unit, kept, solutions[method].scaling, solutions[method].offsets
        )
    best = min(AUTO_METHODS, key=errors.__getitem__)
    measured = ", ".join(f"{m} {errors[m]:.3g}" for m in AUTO_METHODS)
    solutions[best].notes.append(
        f"auto: {best}, the outputs' relative error on {measurement.sensitivity_source} being "
        f"{measured}"
    )
    return best, solutions[best]


def corrects_bias(unit: Unit, settings: Settings) -> bool:
    """Data-free bias correction: where :attr:`Settings.bias_correction` applies
    (:func:`in_effect`), always under :func:`trusted_means`."""
    return in_effect(settings.bias_correction, unit) and trusted_means(unit)


def in_effect(policy: Policy, unit: Unit) -> bool:
    """Whether a data-free correction with ``policy`` applies to ``unit``: always, never, or
    where the unit is a depthwise group."""
    return policy == "always" or (policy == "depthwise" and bool(unit.regroup))


def trusted_means(unit: Unit) -> bool:
    """The data-free bias correction's trust rule: the unit keeps a BatchNormalization with
    running statistics (so its channels' means are known without data), and no max-pool
    sits between the activation and the consumers (a max does not preserve means)."""
    bn = unit.arrays.bn
    return bn is not None and bn.statistics and not unit.approximate


def unit_notes(unit: Unit, calibrated: bool) -> list[str]:
    """The unit's notes; calibration observes the channels after any pooling, so the note
    that folding through a max-pool is approximate does not apply to it."""
    if not calibrated:
        return unit.notes
    return list(unit.remarks)
