"""The solving policy: which method's solution a unit gets, with which corrections.

Data-free, a method solves from the unit's filters (:mod:`lbyl_onnx.methods`); with
activation statistics, LBYL becomes the activation-space least squares and the other
methods gain the bias correction; ``--method auto`` keeps the solution whose outputs move
least.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..config import PruneConfig
from ..graph.units import Unit
from ..methods import METHODS
from ..methods.base import Solution, offsets_from_means
from ..methods.calibrated import (
    CALIBRATION_RIDGE,
    SEQUENTIAL_RIDGE,
    ActivationStats,
    solve_calibrated,
)
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
    config: PruneConfig,
    statistics: ActivationStats | None,
    judge_samples: JudgeSamples | None = None,
) -> Solution:
    """The method's solution; with calibration statistics, LBYL becomes the activation-space
    least squares, and the other methods gain the bias correction.

    Data-free, the bias correction applies where :func:`corrects_bias` says so, and where the
    judge runs (``config.judge``; it needs BatchNormalization statistics) a compensation it
    estimates worse than plain removal after the activation is replaced by removal, with a
    note (:mod:`lbyl_onnx.methods.judge`)."""
    if statistics is not None:
        if config.method == "lbyl":
            ridge = config.calibration_ridge
            return solve_calibrated(statistics, kept, CALIBRATION_RIDGE if ridge is None else ridge)
        solution = METHODS[config.method](unit.arrays, kept, config.options)
        solution.offsets = offsets_from_means(statistics.mean, solution.scaling, kept)
        return solution
    candidates = [METHODS[config.method](unit.arrays, kept, config.options)]
    judge = bool(unit.regroup) if config.judge is None else config.judge
    if judge and config.method != "prune" and judged(unit.arrays):
        candidates.append(solve_prune(unit.arrays, kept, config.options))
    if corrects_bias(unit, config):
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
        f"{config.method} estimated worse than removal after the activation "
        f"({ours:.3g} vs {removal:.3g}, from BatchNormalization statistics): removed plainly"
    )
    return candidates[1]


CURVES_BY_LBYL = ("auto", "lbyl-nn")
"""Methods whose budget damage curves are solved with LBYL (:func:`_budget_counts`)."""


AUTO_METHODS = ("prune", "nm", "lbyl")
"""What ``--method auto`` chooses from, per unit."""


def choose_method(
    unit: Unit,
    kept: np.ndarray,
    config: PruneConfig,
    statistics: ActivationStats | None,
    measurement: Measurement,
) -> tuple[str, Solution]:
    """``--method auto``: each method's solution for the unit, and the one whose outputs move
    least with the unit compensated alone (:class:`OutputSensitivity`, on the measurement's
    inputs); LBYL where nothing can be measured."""
    sensitivity = measurement.sensitivity()
    if sensitivity is None:
        solution = solve_unit(unit, kept, replace(config, method="lbyl"), statistics)
        solution.notes.append(f"auto: lbyl, nothing measured ({measurement.failure})")
        return "lbyl", solution
    errors, solutions = {}, {}
    for method in AUTO_METHODS:
        solutions[method] = solve_unit(unit, kept, replace(config, method=method), statistics)
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


def corrects_bias(unit: Unit, config: PruneConfig) -> bool:
    """Data-free bias correction: where ``--bias-correction`` asks for it, and by default in
    depthwise groups (measured: docs/benchmarks.md), always under :func:`trusted_means`."""
    wanted = config.bias_correction
    return (bool(unit.regroup) if wanted is None else wanted) and trusted_means(unit)


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


def sequential_ridge(config: PruneConfig) -> float | None:
    """The sequential solve's ridge: as given, else None (cross-validated per unit) on
    synthetic inputs and the fixed :data:`SEQUENTIAL_RIDGE` on real ones. Measured
    (docs/benchmarks.md, "--synthetic-calibration"): cross-validation removed synthetic
    calibration's one loss (EfficientNet-Lite0 at 0.2: 0.027 -> 0.090 against LBYL's 0.059)
    and cost real calibration much of EfficientNet-Lite0 (0.852 -> 0.766 at 0.1)."""
    if config.calibration_ridge is not None:
        return config.calibration_ridge
    return None if config.synthetic_calibration else SEQUENTIAL_RIDGE
