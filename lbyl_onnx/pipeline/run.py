"""The pipeline, top to bottom: validate the options -> load -> check the inputs -> find
units -> resolve the settings -> record statistics -> widths -> solve -> rewrite -> ONNX
checker -> validate in onnxruntime -> report (-> save, for files: :mod:`lbyl_onnx.api`)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from ..config import (
    CROSS_VALIDATED,
    PruneConfig,
    Settings,
    matches,
    resolve,
    validate_options,
)
from ..errors import RewriteError, UsageError, ValidationFailed, first_line
from ..graph.finite import weight_problems
from ..graph.io import check_model, load_model, serialized_size
from ..graph.rewrite import Plan, apply_plans
from ..graph.shapes import (
    batch_one_dims,
    count_macs,
    count_parameters,
    infer_shapes,
    op_counts,
    unfixed_inputs,
    without_large_weights,
)
from ..graph.units import Declined, Unit, find_units
from ..methods.base import NonFiniteStatistics, Solution
from ..methods.calibrated import ActivationStats
from ..methods.criteria import keep_best, kept_count
from ..report import ModelSummary, Report, UnitRecord
from ..runtime import sessions
from ..runtime.record import record_statistics
from ..runtime.timing import LatencyCosts, latency_costs
from ..runtime.validate import Validation, validate
from ..version import __version__
from .budget import Measured, budget_counts
from .measure import Measurement, loaded_session
from .resolve import checked_inputs, model_facts
from .sequential import SequentialCalibration
from .solve import JudgeSamples, choose_method, curves_method, solve_unit, unit_notes

CalibrationInputs = dict[str, np.ndarray] | None
"""Calibration inputs by input name (the user's, or synthetic ones), or None: the closed
form."""


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


def prune(
    model: onnx.ModelProto | str | os.PathLike,
    config: PruneConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> tuple[onnx.ModelProto, Report]:
    """Remove channels from every prunable unit and fold the compensation into its readers.

    ``model`` is a ``ModelProto`` (left unchanged) or a path. Options are the fields of
    :class:`PruneConfig`, given as a config or as keywords (``ratio=0.3, method="lbyl"``).
    Returns the new model and the report; raises :class:`~lbyl_onnx.config.OptionError` for
    options outside their domain, and :class:`ValidationFailed` (with the report) when
    validation fails.
    """
    return prune_validated(model, validate_options(config or PruneConfig(**options)), progress)


def prune_validated(
    model: onnx.ModelProto | str | os.PathLike,
    options: PruneConfig,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[onnx.ModelProto, Report]:
    """:func:`prune` with ``options`` already checked by
    :func:`~lbyl_onnx.config.validate_options` (the one check per run)."""
    source, calibration = _load(model, options)
    edit = _edit(source.work, options, calibration, progress)
    _check_rewrite(source.work, source.recorded_shapes)
    validation = _validate(source, edit.settings)
    report = _report(source, edit, validation)
    if validation is not None and validation.status == "failed":
        raise ValidationFailed(f"validation failed: {validation.message}", report)
    return source.work, report


@dataclass
class _Source:
    """The model a run prunes: ``work`` is edited in place (the loaded file, or a copy of the
    caller's model); ``reference`` is what validation compares with (the file, rerun, or the
    caller's model); ``original`` gives the summary before (for a loaded file, its structure
    without the large weights, whose ``weights`` (parameters, bytes) were counted first)."""

    work: onnx.ModelProto
    reference: onnx.ModelProto | str
    original: onnx.ModelProto
    weights: tuple[int, int] | None
    recorded_shapes: set[str]
    """The shape records the rewrite may clear (:func:`_check_rewrite` restores them)."""


def _load(
    model: onnx.ModelProto | str | os.PathLike, options: PruneConfig
) -> tuple[_Source, CalibrationInputs]:
    """The model, its calibration inputs checked against it (before any copy is made)."""
    if isinstance(model, onnx.ModelProto):
        _checked(model)  # a loaded file was checked by load_model
        calibration = checked_inputs(model, options)
        work = onnx.ModelProto()
        work.CopyFrom(model)
        source = _Source(work, model, model, None, set())
    else:  # loaded here: edited in place, so the weights are never held twice
        work = load_model(model)
        calibration = checked_inputs(work, options)
        weights = (count_parameters(work), serialized_size(work))
        source = _Source(work, os.fspath(model), without_large_weights(work), weights, set())
    if problems := weight_problems(work):
        where = "the model" if isinstance(model, onnx.ModelProto) else os.fspath(model)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"{where}: {problems[0]}{more}")
    source.recorded_shapes.update(v.name for v in work.graph.value_info)
    return source, calibration


def _checked(model: onnx.ModelProto) -> None:
    """The ONNX checker in full on the caller's model, before anything is done: a model it
    rejects is the caller's problem (:class:`UsageError`), as a file's is
    (:func:`~lbyl_onnx.graph.io.load_model`)."""
    try:
        check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise UsageError(f"the model fails the ONNX checker: {first_line(error)}") from error


@dataclass
class _Edit:
    """What editing the model left for the report (the weights as arrays are freed)."""

    settings: Settings
    records: list[UnitRecord]
    declined: list[Declined]
    budget: str | None
    mode: str
    found_units: bool
    calibrated: bool
    """Calibrated on data or synthetic inputs."""
    depthwise: int
    """Depthwise groups pruned."""


def _edit(
    work: onnx.ModelProto,
    options: PruneConfig,
    calibration: CalibrationInputs,
    progress: Callable[[int, int], None] | None,
) -> _Edit:
    """Find the units, resolve the settings, choose widths and solve each unit, and rewrite
    ``work`` in place. The units' arrays and statistics live only here."""
    units, declined = _find(work, options)
    facts, synthetic, scaling = model_facts(work, options, calibration, units, declined)
    settings = resolve(options, facts)
    calibration = calibration or synthetic
    statistics = (  # sequential calibration records its own, unit by unit; budgets need these
        record_statistics(work, units, calibration)
        if calibration and units and (settings.budget is not None or not settings.sequential)
        else None
    )
    measurement = Measurement(work, units, settings, calibration)
    try:
        counts, budget = _widths(work, units, settings, statistics, measurement)
        plans, records = _solve(
            work, units, counts, settings, calibration, statistics, measurement, progress
        )
    except NonFiniteStatistics as error:
        data = (
            "synthetic calibration inputs" if settings.synthetic_calibration else "calibration data"
        )
        raise UsageError(
            f"calibration: {error} on the {data} (the model overflows, or leaves its domain, "
            "before it); prune from the weights alone with --closed-form"
        ) from error
    apply_plans(work, plans)
    return _Edit(
        settings=settings,
        records=records,
        declined=declined,
        budget=budget,
        mode=_mode(settings, calibration, scaling, measurement),
        found_units=bool(units),
        calibrated=bool(calibration),
        depthwise=sum(
            bool(u.regroup) and len(p.kept) < u.channels for u, p in zip(units, plans, strict=True)
        ),
    )


def _find(work: onnx.ModelProto, options: PruneConfig) -> tuple[list[Unit], list[Declined]]:
    """The units to prune, and the candidates declined (with those ``exclude`` names)."""
    units, declined = find_units(work, infer_shapes(work), options.prune_residual)
    excluded = [u for u in units if any(matches(u.name, p) for p in options.exclude)]
    declined += [Declined(u.name, u.producer.op_type, "excluded by --exclude") for u in excluded]
    return [u for u in units if u not in excluded], declined


def _widths(
    model: onnx.ModelProto,
    units: list[Unit],
    settings: Settings,
    statistics: dict[str, ActivationStats] | None,
    measurement: Measurement,
) -> tuple[dict[str, int], str | None]:
    """Channels each unit keeps, from the budget (and what it reached, for the report) or
    from the ratios (and None)."""
    if settings.budget is None:
        return {u.name: _ratio_count(u, settings) for u in units}, None
    return _budget_counts(model, units, settings, statistics, measurement)


def _budget_counts(
    model: onnx.ModelProto,
    units: list[Unit],
    settings: Settings,
    statistics: dict[str, ActivationStats] | None,
    measurement: Measurement,
) -> tuple[dict[str, int], str]:
    """:func:`budget_counts` with this pipeline's solver (:func:`curves_method`'s), its damage
    measured on the measurement's inputs.

    On synthetic inputs the curves are the closed form's, measured on them; the compensation
    is still the calibrated one. Solved and measured on the same synthetic statistics, a
    calibrated compensation looks cheap where synthetic features are easy to rebuild and
    real ones are not, and the widths follow that illusion (docs/benchmarks.md, Budgets)."""
    judge_samples = JudgeSamples()
    method = curves_method(settings)
    fitted = statistics if statistics and not settings.synthetic_calibration else {}

    def solve(unit: Unit, kept: np.ndarray) -> Solution:
        return solve_unit(unit, kept, settings, fitted.get(unit.name), judge_samples, method)

    def measure() -> Measured | None:
        if not units or (inputs := measurement.inputs()) is None:
            return None
        recorded = statistics or record_statistics(model, units, inputs)
        return Measured(recorded, measurement.sensitivity())

    def timed() -> LatencyCosts:
        if unfixed := unfixed_inputs(model, settings.input_shapes):
            raise UsageError(
                f"--target-latency needs --input-shape for input '{unfixed[0]}': its size "
                "(other than the batch) is not fixed, and the time depends on it"
            )
        try:
            feeds = sessions.random_inputs(model, 1, settings.seed, settings.input_shapes)
            loaded_session(model, "random inputs")
        except ValueError as error:  # no input can be made, or onnxruntime cannot load it
            raise UsageError(f"--target-latency: {error}") from error
        return latency_costs(model, units, feeds, settings.round_to)

    before = summarize(model, settings.input_shapes)
    counts, text = budget_counts(model, units, settings, before, solve, measure, timed)
    if measurement.failure:
        return counts, f"{text}; damage in filter space ({measurement.failure})"
    return counts, f"{text}; damage measured on {measurement.source}"


def _ratio_count(unit: Unit, settings: Settings) -> int:
    """Channels a unit keeps under ``ratio``/``ratio_for``, rounded down to a multiple of
    ``round_to`` (a unit smaller than that is left whole)."""
    ratio = next((r for p, r in settings.ratio_for if matches(unit.name, p)), settings.ratio)
    m = max(kept_count(unit.channels, ratio), math.ceil(settings.min_keep * unit.channels - 1e-9))
    if settings.round_to > 1 and m < unit.channels:
        m = max(settings.round_to, m // settings.round_to * settings.round_to)
    return min(m, unit.channels)


def _solve(
    work: onnx.ModelProto,
    units: list[Unit],
    counts: dict[str, int],
    settings: Settings,
    calibration: CalibrationInputs,
    statistics: dict[str, ActivationStats] | None,
    measurement: Measurement,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Plan], list[UnitRecord]]:
    """Each unit's kept channels and compensation, in graph order, with its record."""
    sequential = None
    if settings.sequential:
        ridge = settings.sequential_ridge
        sequential = SequentialCalibration(
            work,
            [u for u in units if counts[u.name] < u.channels],
            calibration,
            None if ridge == CROSS_VALIDATED else ridge,
        )
    plans: list[Plan] = []
    records: list[UnitRecord] = []
    for done, unit in enumerate(units):
        if progress:
            progress(done, len(units))
        try:
            kept, method, solution = _solve_one(
                unit, counts[unit.name], settings, statistics, measurement, sequential, plans
            )
        except NonFiniteStatistics as error:
            raise NonFiniteStatistics(f"unit '{unit.name}': {error}") from error
        plans.append(Plan(unit, kept, solution.scaling, solution.offsets))
        records.append(_record(unit, kept, method, solution, calibration is not None))
    if progress:
        progress(len(units), len(units))
    return plans, records


def _solve_one(
    unit: Unit,
    count: int,
    settings: Settings,
    statistics: dict[str, ActivationStats] | None,
    measurement: Measurement,
    sequential: SequentialCalibration | None,
    plans: list[Plan],
) -> tuple[np.ndarray, str, Solution]:
    """One unit's kept channels, method and solution (the plans of the units before it
    given, for the sequential solve)."""
    kept = None  # chosen by the sequential solve from the activations
    if settings.criterion != "reconstruction":
        kept = keep_best(unit.arrays.weight, count, settings.criterion)
    recorded = statistics.get(unit.name) if statistics else None
    if settings.method == "auto":
        method, solution = choose_method(unit, kept, settings, recorded, measurement)
    elif sequential is not None:
        method = settings.method
        kept, solution = sequential.solve(unit, count, plans, kept)
    else:
        method, solution = settings.method, solve_unit(unit, kept, settings, recorded)
    return kept, method, solution


def _record(
    unit: Unit, kept: np.ndarray, method: str, solution: Solution, calibrated: bool
) -> UnitRecord:
    """The report's line of one unit."""
    return UnitRecord(
        name=unit.name,
        op_type=unit.producer.op_type,
        channels_before=unit.channels,
        channels_after=len(kept),
        method=method,
        residual=round(solution.residual, 6),
        consumers=[c.node.name or c.node.output[0] for c in unit.consumers],
        notes=[*unit_notes(unit, calibrated), *solution.notes],
    )


def _mode(
    settings: Settings, calibration: CalibrationInputs, scaling: str, measurement: Measurement
) -> str:
    """The report's mode line: the closed form (from the weights alone), or what the
    compensation was calibrated on (for synthetic inputs, how they were scaled) and how it
    was solved."""
    if not calibration:
        if settings.method == "auto":
            return f"closed form, methods chosen on {measurement.synthetic}"
        return "closed form"
    count = len(next(iter(calibration.values())))
    samples = f"{count} samples"
    if settings.synthetic_calibration:  # images say how they were scaled; dense: N(0, 1)
        samples = f"{count} synthetic inputs" + (f" scaled as {scaling}" if scaling else "")
    solved = {"lbyl": "activation-space least squares", "auto": "the best method per unit"}
    solved = solved.get(settings.method, settings.method)
    if settings.sequential:
        solved = f"sequential {solved}"
    elif settings.method == "lbyl":
        solved = f"independent {solved}"
    return f"calibrated on {samples}: {solved} + bias correction"


def _check_rewrite(work: onnx.ModelProto, recorded_shapes: set[str]) -> None:
    """Restore the shape records the rewrite cleared, and run the ONNX checker (a failure is
    a :class:`RewriteError`: a bug)."""
    _restore_recorded_shapes(work, recorded_shapes)
    try:
        check_model(work, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RewriteError(f"the rewritten model fails the ONNX checker: {first}") from error


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


def _validate(source: _Source, settings: Settings) -> Validation | None:
    """The pruned model against the original in onnxruntime (:func:`validate`), unless
    ``check`` is off."""
    if not settings.check:
        return None
    return validate(
        source.reference,
        source.work,
        settings.check_n,
        settings.seed,
        settings.input_shapes,
        settings.input_data,
    )


def _report(source: _Source, edit: _Edit, validation: Validation | None) -> Report:
    """The run's report: the settings, each unit, the summaries before and after (at the
    input shapes given, else those validation ran at), and the warnings."""
    settings = edit.settings
    measured_shapes = settings.input_shapes or (validation.input_shapes if validation else None)
    return Report(
        tool_version=__version__,
        method=settings.method,
        mode=edit.mode,
        criterion=settings.criterion,
        ratio=settings.ratio,
        units=edit.records,
        declined=edit.declined,
        before=_before(source.original, source.weights, measured_shapes),
        after=summarize(source.work, measured_shapes),
        validation=validation,
        warnings=[*settings.warnings, *_warnings(edit)],
        budget=edit.budget,
    )


def _warnings(edit: _Edit) -> list[str]:
    """What the report warns of the result: nothing pruned, depthwise groups pruned without
    real data, or to widths that may run slower (docs/benchmarks.md, onnxruntime latency)."""
    warnings = []
    if not edit.found_units:
        warnings.append("no prunable unit found: the model is unchanged")
    if edit.depthwise and (not edit.calibrated or edit.settings.synthetic_calibration):
        without = "real calibration data" if edit.calibrated else "calibration data"
        warnings.append(
            f"{edit.depthwise} depthwise group(s) pruned without {without}: data-free "
            "compensation there is weak (docs/benchmarks.md); validate with --input-data, and "
            "prefer --calibration-data or a small --ratio"
        )
    if edit.depthwise and edit.settings.round_to == 1:
        warnings.append(
            "depthwise convs whose channel counts are not multiples of 8 can run slower than "
            "the original in onnxruntime (docs/benchmarks.md, onnxruntime latency); "
            "--round-to 8 avoids it"
        )
    return warnings


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
    return ModelSummary(weights[0], summary.macs, weights[1], summary.op_counts)
