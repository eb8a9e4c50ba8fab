"""The pipeline, top to bottom: load -> find units -> choose kept channels -> solve S ->
rewrite -> ONNX checker -> validate in onnxruntime -> report (-> save, for files)."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from . import __version__, check
from .budget import Measured, budget_counts
from .check import Validation, check_model, input_problems, real_inputs, validate
from .errors import RewriteError, UsageError, ValidationFailed
from .graph.io import check_output_path, is_large, load_model, save_model, serialized_size
from .graph.record import batch_slices, record_statistics
from .graph.rewrite import Plan, apply_plans
from .graph.sequential import SequentialCalibration
from .graph.shapes import (
    batch_one_dims,
    count_macs,
    count_parameters,
    infer_shapes,
    op_counts,
    without_large_weights,
)
from .graph.timing import LatencyCosts, latency_costs
from .graph.units import Declined, Unit, find_units
from .measure import Measurement, make_synthetic, synthetic_calibration_count
from .methods import CRITERIA, METHODS, MethodOptions, Solution, kept_count, solve_prune
from .methods.base import offsets_from_means
from .methods.calibrated import (
    CALIBRATION_RIDGE,
    SEQUENTIAL_RIDGE,
    ActivationStats,
    solve_calibrated,
)
from .methods.criteria import keep_best
from .methods.judge import activation_errors, activation_samples, judged
from .methods.moments import activation_means
from .report import ModelSummary, Report, UnitRecord
from .synthetic import CONVENTIONS


@dataclass(frozen=True)
class PruneConfig:
    """Options of one run (the command line's flags, as a record).

    ``ratio_for`` maps producer names or globs to a ratio that overrides ``ratio``;
    ``exclude`` lists names or globs of producers left untouched.
    """

    ratio: float = 0.3
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    """Keep this share of the model's onnxruntime time, measured on this machine
    (:mod:`lbyl_onnx.graph.timing`)."""
    round_to: int = 1
    min_keep: float = 0.0
    method: str = "lbyl"
    criterion: str | None = None
    """Which channels stay: a weight criterion (:data:`~lbyl_onnx.methods.CRITERIA`), or
    ``reconstruction`` (chosen from the activations, in sequential calibration:
    :func:`~lbyl_onnx.methods.selection.reconstruction_keep`). None: ``reconstruction``
    where LBYL is calibrated sequentially on ``calibration_data``, else ``l2``
    (:func:`_resolved_criterion`)."""
    exclude: tuple[str, ...] = ()
    ratio_for: tuple[tuple[str, float], ...] = ()
    options: MethodOptions = field(default_factory=MethodOptions)
    check: bool = True
    check_n: int = 8
    seed: int = 0
    input_shapes: dict[str, list[int]] | None = None
    input_data: dict[str, np.ndarray] | None = None
    input_range: str | None = None
    """The image inputs' normalisation (one of ``synthetic.CONVENTIONS``) for synthetic
    inputs; None: estimated from the model (:func:`lbyl_onnx.synthetic.fit_normalisation`)."""
    calibration_data: dict[str, np.ndarray] | None = None
    synthetic_calibration: bool | None = None
    """Calibrate on synthetic inputs (:func:`~lbyl_onnx.measure.make_synthetic`, as many as
    :func:`~lbyl_onnx.measure.synthetic_calibration_count` allows) as on ``calibration_data``:
    no user data, the statistics measured in onnxruntime. None: for LBYL without
    ``calibration_data``, where the model's inputs can be synthesised and it runs on them
    (else the closed form, with a warning); False: the methods' closed forms
    (:func:`_resolved_synthetic`)."""
    calibration_ridge: float | None = None
    """The calibrated solvers' relative ridge; None: 1e-3 independent, and sequentially
    :data:`~lbyl_onnx.methods.calibrated.SEQUENTIAL_RIDGE` on calibration data, or each
    unit's own, cross-validated on the synthetic inputs, with ``synthetic_calibration``
    (:func:`_sequential_ridge`)."""
    sequential: bool | None = None
    """With calibration data and LBYL: solve units in graph order against the original's
    activations, the earlier units pruned (:mod:`lbyl_onnx.graph.sequential`); False: each
    unit on the original's activations alone. None: wherever it applies."""
    bias_correction: bool | None = None
    """None: in depthwise groups only (:func:`corrects_bias`)."""
    judge: bool | None = None
    """Replace a compensation the judge estimates worse than removal; None: in depthwise
    groups only (measured: docs/benchmarks.md; elsewhere it misjudged as often as not)."""
    prune_residual: bool = False

    def validated(self) -> PruneConfig:
        """Raise :class:`UsageError` for an option outside its domain."""
        for pattern, ratio in [("--ratio", self.ratio), *self.ratio_for]:
            if not 0.0 <= ratio < 1.0:
                raise UsageError(f"ratio {ratio:g} for {pattern} is outside [0, 1)")
        if self.method not in METHOD_NAMES:
            known = ", ".join(METHOD_NAMES)
            raise UsageError(f"unknown method '{self.method}' (choose from {known})")
        if self.criterion is not None and self.criterion not in CRITERION_NAMES:
            known = ", ".join(CRITERION_NAMES)
            raise UsageError(f"unknown criterion '{self.criterion}' (choose from {known})")
        if self.criterion == "reconstruction" and not self.solves_sequentially:
            raise UsageError(RECONSTRUCTION_NEEDS)
        given = [(flag, value) for flag, _, value in self.budgets if value is not None]
        if self.target_macs is not None and self.target_params is not None:
            raise UsageError("give one of --target-macs and --target-params, not both")
        for flag, value in given:
            if not 0.0 < value <= 1.0:
                raise UsageError(f"{flag} {value:g} is outside (0, 1]")
        if given and self.ratio_for:
            raise UsageError("--ratio-for cannot be combined with a --target budget")
        if self.round_to < 1:
            raise UsageError("--round-to must be at least 1")
        if not 0.0 <= self.min_keep <= 1.0:
            raise UsageError(f"--min-keep {self.min_keep:g} is outside [0, 1]")
        if self.check_n < 1:
            raise UsageError("--check-n must be at least 1")
        if self.calibration_data is not None and self.synthetic_calibration:
            raise UsageError("give --calibration-data or --synthetic-calibration, not both")
        if self.sequential is not None and (not self.calibrates or self.method != "lbyl"):
            flag = "--sequential" if self.sequential else "--independent"
            raise UsageError(
                f"{flag} needs --method lbyl, calibrated (on --calibration-data, or on synthetic "
                "inputs: not --closed-form)"
            )
        if self.input_range is not None and self.input_range not in CONVENTIONS:
            known = ", ".join(CONVENTIONS)
            raise UsageError(f"unknown --input-range '{self.input_range}' (choose from {known})")
        return self

    @property
    def budgets(self) -> list[tuple[str, str, float | None]]:
        """Each budget option: its flag, what it counts, its value (None: not given)."""
        return [
            ("--target-macs", "MACs", self.target_macs),
            ("--target-params", "parameters", self.target_params),
            ("--target-latency", "latency", self.target_latency),
        ]

    @property
    def budget(self) -> tuple[str, str, float] | None:
        """The budget given (flag, what it counts, value), or None for ratios; with
        ``--target-latency`` and a MAC or parameter budget, the latter."""
        return next((b for b in self.budgets if b[2] is not None), None)

    @property
    def latency_limit(self) -> float | None:
        """``--target-latency`` where it is a limit besides a MAC or parameter budget."""
        if self.target_latency is None or self.budget[1] == "latency":
            return None
        return self.target_latency

    @property
    def calibrates(self) -> bool:
        """Whether the compensation is solved from measured activations (real or synthetic
        inputs); before :func:`prune` resolves ``synthetic_calibration``, whether it will be
        where the model allows."""
        if self.calibration_data:
            return True
        if self.synthetic_calibration is None:
            return self.method == "lbyl"
        return self.synthetic_calibration

    @property
    def weight_criterion(self) -> str:
        """The criterion that ranks channels by the producer's filters alone (``l2`` where
        :attr:`criterion` chooses them from activations): what budgets compare widths with."""
        return self.criterion if self.criterion in CRITERIA else "l2"

    @property
    def solves_sequentially(self) -> bool:
        """Whether units are solved in graph order (:attr:`sequential`, resolved)."""
        applies = self.calibrates and self.method == "lbyl"
        return applies if self.sequential is None else self.sequential


def summarize(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> ModelSummary:
    """Parameters, MACs (at ``input_shapes`` with batch 1, else every unknown dimension 1),
    serialized bytes and op counts."""
    shapes = infer_shapes(model, batch_one_dims(model, input_shapes))
    return ModelSummary(
        parameters=count_parameters(model),
        macs=count_macs(model, shapes),
        size_bytes=serialized_size(model),
        op_counts=op_counts(model),
    )


def list_units(
    model: onnx.ModelProto | str | os.PathLike, prune_residual: bool = False
) -> tuple[list[Unit], list[Declined]]:
    """The prunable units of a model and the declined candidates, with reasons."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return find_units(model, infer_shapes(model), prune_residual)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def prune(
    model: onnx.ModelProto | str | os.PathLike,
    config: PruneConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> tuple[onnx.ModelProto, Report]:
    """Remove channels from every prunable unit and fold the compensation into its readers.

    ``model`` is a ``ModelProto`` (left unchanged) or a path. Options are the fields of
    :class:`PruneConfig`, given as a config or as keywords (``ratio=0.3, method="lbyl"``).
    Returns the new model and the report; raises :class:`ValidationFailed` (with the report)
    when validation fails.
    """
    config = (config or PruneConfig(**options)).validated()
    owned = not isinstance(model, onnx.ModelProto)
    original = load_model(model) if owned else model
    calibration = _checked_inputs(original, config)
    if owned:  # loaded here: edited in place, so the weights are never held twice
        work, reference = original, os.fspath(model)  # validation reruns the file
        original = without_large_weights(work)  # the structure, for the summary
        weights = (count_parameters(work), serialized_size(work))
    else:
        work, reference, weights = onnx.ModelProto(), original, None
        work.CopyFrom(original)
    recorded_shapes = {v.name for v in work.graph.value_info}

    units, declined = find_units(work, infer_shapes(work), config.prune_residual)
    warnings = _unmatched_patterns(config, units, declined)
    excluded = [u for u in units if any(_matches(u.name, p) for p in config.exclude)]
    declined += [Declined(u.name, u.producer.op_type, "excluded by --exclude") for u in excluded]
    units = [u for u in units if u not in excluded]
    config, synthetic, scaling, fallback = _resolved_synthetic(work, config, calibration, units)
    config = _resolved_criterion(config, real_calibration=calibration is not None)
    calibration = calibration or synthetic
    warnings[:0] = fallback
    budgeted = config.budget is not None
    synthesised = config.synthetic_calibration or (
        not calibration and (budgeted or config.method == "auto")
    )
    if config.input_range and not synthesised:
        warnings.append(
            "--input-range has no effect: it scales synthetic inputs, which are used without "
            "--calibration-data to calibrate LBYL (unless --closed-form), by "
            "--synthetic-calibration, and by --target-macs, --target-params and --method auto"
        )
    statistics = (  # sequential calibration records its own, unit by unit; budgets need these
        record_statistics(work, units, calibration)
        if calibration and units and (budgeted or not config.solves_sequentially)
        else None
    )
    measurement = Measurement(work, units, config, calibration)
    budget = None
    if budgeted:
        counts, budget = _budget_counts(work, units, config, statistics, measurement)
    else:
        counts = {u.name: _ratio_count(u, config) for u in units}

    sequential = (
        SequentialCalibration(
            work,
            [u for u in units if counts[u.name] < u.channels],
            calibration,
            config.prune_residual,
            _sequential_ridge(config),
        )
        if config.solves_sequentially
        else None
    )
    plans: list[Plan] = []
    records: list[UnitRecord] = []
    for done, unit in enumerate(units):
        if progress:
            progress(done, len(units))
        count = counts[unit.name]
        kept = None  # chosen by the sequential solve from the activations
        if config.criterion != "reconstruction":
            kept = keep_best(unit.arrays.weight, count, config.criterion)
        recorded = statistics.get(unit.name) if statistics else None
        if config.method == "auto":
            method, solution = _choose(unit, kept, config, recorded, measurement)
        elif sequential is not None:
            method = config.method
            kept, solution = sequential.solve(unit, count, plans, kept)
        else:
            method, solution = config.method, _solve(unit, kept, config, recorded)
        plans.append(Plan(unit, kept, solution.scaling, solution.offsets))
        records.append(
            UnitRecord(
                name=unit.name,
                op_type=unit.producer.op_type,
                channels_before=unit.channels,
                channels_after=len(kept),
                method=method,
                residual=round(solution.residual, 6),
                consumers=[c.node.name or c.node.output[0] for c in unit.consumers],
                notes=[*_unit_notes(unit, calibration is not None), *solution.notes],
            )
        )
    if progress:
        progress(len(units), len(units))

    apply_plans(work, plans)
    found_units = bool(units)
    depthwise = sum(
        bool(u.regroup) and len(p.kept) < u.channels for u, p in zip(units, plans, strict=True)
    )
    mode = _mode(config, calibration, scaling, measurement)
    del plans, units, statistics, measurement, sequential  # the weights as arrays: free them
    _restore_recorded_shapes(work, recorded_shapes)
    try:
        check_model(work, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RewriteError(f"the rewritten model fails the ONNX checker: {first}") from error

    validation: Validation | None = None
    if config.check:
        validation = validate(
            reference, work, config.check_n, config.seed, config.input_shapes, config.input_data
        )
    if not found_units:
        warnings.append("no prunable unit found: the model is unchanged")
    if depthwise and (not calibration or config.synthetic_calibration):
        without = "real calibration data" if calibration else "calibration data"
        warnings.append(
            f"{depthwise} depthwise group(s) pruned without {without}: data-free "
            "compensation there is weak (docs/benchmarks.md); validate with --input-data, and "
            "prefer --calibration-data or a small --ratio"
        )
    if depthwise and config.round_to == 1:
        warnings.append(
            "depthwise convs whose channel counts are not multiples of 8 can run slower than "
            "the original (EfficientNet-Lite0 at 0.3 in onnxruntime: 8.0 -> 12.8 ms; with "
            "--round-to 8: 4.9 ms)"
        )
    measured_shapes = config.input_shapes or (validation.input_shapes if validation else None)
    report = Report(
        tool_version=__version__,
        method=config.method,
        mode=mode,
        criterion=config.criterion,
        ratio=config.ratio,
        units=records,
        declined=declined,
        before=_before(original, weights, measured_shapes),
        after=summarize(work, measured_shapes),
        validation=validation,
        warnings=warnings,
        budget=budget,
    )
    if validation is not None and validation.status == "failed":
        raise ValidationFailed(f"validation failed: {validation.message}", report)
    return work, report


def _before(
    original: onnx.ModelProto,
    weights: tuple[int, int] | None,
    input_shapes: dict[str, list[int]] | None,
) -> ModelSummary:
    """The original's summary; ``weights`` (parameters, bytes) were counted before an
    in-place rewrite, ``original`` is then its structure without the large weights."""
    summary = summarize(original, input_shapes)
    if weights is None:
        return summary
    return replace(summary, parameters=weights[0], size_bytes=weights[1])


def prune_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: PruneConfig | None = None,
    save_as_external_data: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """:func:`prune` from file to file; OUT is written atomically, and only on success."""
    config = (config or PruneConfig()).validated()
    check_output_path(input_path, output_path)
    model, report = prune(input_path, config, progress)
    save_model(model, output_path, external_data=save_as_external_data)
    return report


def _checked_inputs(model: onnx.ModelProto, config: PruneConfig) -> dict[str, np.ndarray] | None:
    """Raise :class:`UsageError` for user inputs that do not fit the model; return the
    calibration arrays of the model's inputs (others in the file are ignored)."""
    problems = input_problems(model, config.input_data, config.input_shapes)
    calibration = None
    if config.calibration_data:
        names = [i.name for i in real_inputs(model)]
        missing = [n for n in names if n not in config.calibration_data]
        if missing:
            raise UsageError(f"--calibration-data has no array named '{missing[0]}' (an input)")
        calibration = {n: config.calibration_data[n] for n in names}
        problems += input_problems(model, calibration, None, "--calibration-data", True)
    if problems:
        raise UsageError(problems[0])
    return calibration


@dataclass
class _JudgeSamples:
    """The judge's samples of the last unit asked for: drawn once while one unit is solved
    for several kept sets (a budget's damage curve), and only one unit's held at a time."""

    name: str = ""
    samples: np.ndarray | None = None

    def of(self, unit: Unit) -> np.ndarray:
        if self.samples is None or unit.name != self.name:
            self.name = unit.name
            self.samples = activation_samples(unit.arrays, unit.activation_model)
        return self.samples


METHOD_NAMES = (*METHODS, "auto")
"""``--method`` values: the methods, and ``auto`` (:func:`_choose`)."""

CRITERION_NAMES = (*CRITERIA, "reconstruction")
"""``--criterion`` values: the weight criteria, and ``reconstruction`` (sequential only)."""

RECONSTRUCTION_NEEDS = (
    "--criterion reconstruction needs --method lbyl solved sequentially (calibrated: not "
    "--closed-form, not --independent)"
)


def _solve(
    unit: Unit,
    kept: np.ndarray,
    config: PruneConfig,
    statistics: ActivationStats | None,
    judge_samples: _JudgeSamples | None = None,
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
    samples = (judge_samples or _JudgeSamples()).of(unit)
    ours, removal = activation_errors(samples, kept, [(s.scaling, s.offsets) for s in candidates])
    if ours <= removal:
        return candidates[0]
    candidates[1].notes.append(
        f"{config.method} estimated worse than removal after the activation "
        f"({ours:.3g} vs {removal:.3g}, from BatchNormalization statistics): removed plainly"
    )
    return candidates[1]


def _budget_counts(
    model: onnx.ModelProto,
    units: list[Unit],
    config: PruneConfig,
    statistics: dict[str, ActivationStats] | None,
    measurement: Measurement,
) -> tuple[dict[str, int], str]:
    """:func:`budget_counts` with this pipeline's solver, its damage measured on the
    measurement's inputs. The curves of ``--method auto`` and ``lbyl-nn`` are LBYL's: the
    curves solve each unit at up to 18 widths, which costs ``auto`` three methods each time
    and ``lbyl-nn`` a quadratic programme per removed channel (EfficientNet-Lite0: minutes).

    On synthetic inputs the curves are the closed form's, measured on them; the
    compensation is still the calibrated one. Solved and measured on the same synthetic
    statistics, a calibrated compensation looks cheap where synthetic features are easy to
    rebuild and real ones are not: EfficientNet-Lite0 at ``--target-macs 0.9`` cut its
    head conv from 1,280 channels to 342 and kept 0.117 top-1 agreement (the uniform ratio:
    0.406); with the closed form's curves, 0.766 (docs/benchmarks.md, Budgets)."""
    judge_samples = _JudgeSamples()
    solver = replace(config, method="lbyl") if config.method in CURVES_BY_LBYL else config
    fitted = statistics if statistics and not config.synthetic_calibration else {}

    def solve(unit: Unit, kept: np.ndarray) -> Solution:
        return _solve(unit, kept, solver, fitted.get(unit.name), judge_samples)

    def measure() -> Measured | None:
        if not units or (inputs := measurement.inputs()) is None:
            return None
        recorded = statistics or record_statistics(model, units, inputs)
        return Measured(recorded, measurement.sensitivity())

    def timed() -> LatencyCosts:
        if unfixed := check.unfixed_inputs(model, config.input_shapes):
            raise UsageError(
                f"--target-latency needs --input-shape for input '{unfixed[0]}': its size "
                "(other than the batch) is not fixed, and the time depends on it"
            )
        feeds = check.random_inputs(model, 1, config.seed, config.input_shapes)
        return latency_costs(model, units, feeds, config.round_to, config.prune_residual)

    before = summarize(model, config.input_shapes)
    counts, text = budget_counts(model, units, config, before, solve, measure, timed)
    if measurement.failure:
        return counts, f"{text}; damage in filter space ({measurement.failure})"
    return counts, f"{text}; damage measured on {measurement.source}"


CURVES_BY_LBYL = ("auto", "lbyl-nn")
"""Methods whose budget damage curves are solved with LBYL (:func:`_budget_counts`)."""

AUTO_METHODS = ("prune", "nm", "lbyl")
"""What ``--method auto`` chooses from, per unit."""


def _choose(
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
        solution = _solve(unit, kept, replace(config, method="lbyl"), statistics)
        solution.notes.append(f"auto: lbyl, nothing measured ({measurement.failure})")
        return "lbyl", solution
    errors, solutions = {}, {}
    for method in AUTO_METHODS:
        solutions[method] = _solve(unit, kept, replace(config, method=method), statistics)
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
    return bn is not None and bn.statistics and not any("approximate" in n for n in unit.notes)


def _ratio_count(unit: Unit, config: PruneConfig) -> int:
    """Channels a unit keeps under ``--ratio``/``--ratio-for``, rounded down to a multiple of
    ``--round-to`` (a unit smaller than that is left whole)."""
    ratio = next((r for p, r in config.ratio_for if _matches(unit.name, p)), config.ratio)
    m = max(kept_count(unit.channels, ratio), math.ceil(config.min_keep * unit.channels - 1e-9))
    if config.round_to > 1 and m < unit.channels:
        m = max(config.round_to, m // config.round_to * config.round_to)
    return min(m, unit.channels)


def _unit_notes(unit: Unit, calibrated: bool) -> list[str]:
    """The unit's notes; calibration observes the channels after any pooling, so the note
    that folding through a max-pool is approximate does not apply to it."""
    if not calibrated:
        return unit.notes
    return [note for note in unit.notes if "approximate" not in note]


def _sequential_ridge(config: PruneConfig) -> float | None:
    """The sequential solve's ridge: as given, else None (cross-validated per unit) on
    synthetic inputs and the fixed :data:`SEQUENTIAL_RIDGE` on real ones. Measured
    (docs/benchmarks.md, "--synthetic-calibration"): cross-validation removed synthetic
    calibration's one loss (EfficientNet-Lite0 at 0.2: 0.027 -> 0.090 against LBYL's 0.059)
    and cost real calibration much of EfficientNet-Lite0 (0.852 -> 0.766 at 0.1)."""
    if config.calibration_ridge is not None:
        return config.calibration_ridge
    return None if config.synthetic_calibration else SEQUENTIAL_RIDGE


def _resolved_synthetic(
    model: onnx.ModelProto,
    config: PruneConfig,
    calibration: dict[str, np.ndarray] | None,
    units: list[Unit],
) -> tuple[PruneConfig, dict[str, np.ndarray] | None, str, list[str]]:
    """``config`` with ``synthetic_calibration`` decided; the synthetic inputs (or None), how
    they were scaled, and the warning of a default that fell back to the closed form. Nothing
    is synthesised for a model without ``units`` to prune.

    Asked for, inputs the model cannot be calibrated on are a :class:`UsageError`; by default
    (LBYL without calibration data) they make it the closed form, with a warning: an input
    that is not floating point, or a model that does not run on its synthetic inputs in
    onnxruntime (custom ops, shapes the guessed dimensions do not fit), or one over 2 GB
    (each layer's calibration runs a copy of the model)."""
    wanted = config.synthetic_calibration
    if wanted is None:
        wanted = config.method == "lbyl" and calibration is None
    if not wanted or not units:
        return replace(config, synthetic_calibration=False), None, "", []
    closed = replace(config, synthetic_calibration=False, sequential=None)
    if config.synthetic_calibration is None and is_large(model):
        reason = "the model is over 2 GB, and calibration copies it per layer"
        return closed, None, "", [f"closed-form LBYL, not synthetic calibration: {reason}"]
    try:
        count = synthetic_calibration_count(model, config.input_shapes)
        inputs, scaling = make_synthetic(model, config, count)
        _run_first(model, inputs)
    except (ValueError, UsageError) as error:
        if config.synthetic_calibration:
            raise UsageError(f"--synthetic-calibration: {error}") from error
        return closed, None, "", [f"closed-form LBYL, not synthetic calibration: {error}"]
    return replace(config, synthetic_calibration=True), inputs, scaling, []


def _resolved_criterion(config: PruneConfig, real_calibration: bool) -> PruneConfig:
    """``config`` with ``criterion`` decided (after ``synthetic_calibration``): by default
    ``reconstruction`` where LBYL is calibrated sequentially on real data, ``l2`` elsewhere.
    Measured (docs/benchmarks.md, "Choosing channels from the activations"): on real data it
    won 28 of 45 cells against l2 and lost 6; on synthetic inputs it lost on digits_vgg_fused
    and PP-OCRv4 at 0.3. Asked for where the default fell back to the closed form: a
    :class:`UsageError`."""
    if config.criterion == "reconstruction" and not config.solves_sequentially:
        raise UsageError(f"{RECONSTRUCTION_NEEDS}; here the compensation is the closed form")
    if config.criterion is not None:
        return config
    chooses = config.solves_sequentially and real_calibration and not config.synthetic_calibration
    return replace(config, criterion="reconstruction" if chooses else "l2")


def _run_first(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` where the model does not run in onnxruntime on the first batch of
    ``inputs`` (one sample, or the model's fixed batch)."""
    try:
        session = check.session(model, optimised=True)
        count = len(next(iter(inputs.values())))
        first = batch_slices(session, count, 1)[0]
        names = [o.name for o in session.get_outputs()]
        session.run(names, {name: value[first] for name, value in inputs.items()})
    except Exception as error:  # whatever onnxruntime raises: the reason, in one line
        raise ValueError(
            f"the model does not run on synthetic inputs in onnxruntime: {check.first_line(error)}"
        ) from error


def _mode(
    config: PruneConfig,
    calibration: dict[str, np.ndarray] | None,
    scaling: str,
    measurement: Measurement,
) -> str:
    """The report's mode line: the closed form (from the weights alone), or what the
    compensation was calibrated on (for synthetic inputs, how they were scaled) and how it
    was solved."""
    if not calibration:
        if config.method == "auto":
            return f"closed form, methods chosen on {measurement.synthetic}"
        return "closed form"
    count = len(next(iter(calibration.values())))
    samples = f"{count} samples"
    if config.synthetic_calibration:  # images say how they were scaled; dense inputs are N(0, 1)
        samples = f"{count} synthetic inputs" + (f" scaled as {scaling}" if scaling else "")
    solved = {"lbyl": "activation-space least squares", "auto": "the best method per unit"}
    solved = solved.get(config.method, config.method)
    if config.solves_sequentially:
        solved = f"sequential {solved}"
    elif config.method == "lbyl":
        solved = f"independent {solved}"
    return f"calibrated on {samples}: {solved} + bias correction"


def _unmatched_patterns(
    config: PruneConfig, units: Sequence[Unit], declined: Sequence[Declined]
) -> list[str]:
    names = [u.name for u in units] + [d.name for d in declined]
    patterns = [("--exclude", p) for p in config.exclude]
    patterns += [("--ratio-for", p) for p, _ in config.ratio_for]
    return [
        f"{flag} {pattern!r} matches no Conv/Gemm/MatMul node"
        for flag, pattern in patterns
        if not any(_matches(n, pattern) for n in names)
    ]


def _restore_recorded_shapes(model: onnx.ModelProto, recorded: set[str]) -> None:
    """Re-add, from shape inference, the shape records the rewrite had to clear."""
    present = {v.name for v in model.graph.value_info}
    missing = recorded - present
    if not missing:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(
            without_large_weights(model), strict_mode=False
        )
    except (onnx.shape_inference.InferenceError, RuntimeError):
        return
    for info in inferred.graph.value_info:
        if info.name in missing:
            model.graph.value_info.append(info)
