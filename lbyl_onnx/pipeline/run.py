"""The pipeline, top to bottom: load -> find units -> choose kept channels -> solve S ->
rewrite -> ONNX checker -> validate in onnxruntime -> report (-> save, for files)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import onnx

from ..config import PruneConfig, matches
from ..errors import RewriteError, UsageError, ValidationFailed
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
from ..methods.base import Solution
from ..methods.calibrated import ActivationStats
from ..methods.criteria import keep_best, kept_count
from ..report import ModelSummary, Report, UnitRecord
from ..runtime import sessions
from ..runtime.record import record_statistics
from ..runtime.timing import LatencyCosts, latency_costs
from ..runtime.validate import Validation, validate
from ..version import __version__
from .budget import Measured, budget_counts
from .measure import Measurement
from .resolve import checked_inputs, resolved_criterion, resolved_synthetic
from .sequential import SequentialCalibration
from .solve import (
    CURVES_BY_LBYL,
    JudgeSamples,
    choose_method,
    sequential_ridge,
    solve_unit,
    unit_notes,
)


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
    Returns the new model and the report; raises :class:`ValidationFailed` (with the report)
    when validation fails.
    """
    config = (config or PruneConfig(**options)).validated()
    owned = not isinstance(model, onnx.ModelProto)
    original = load_model(model) if owned else model
    calibration = checked_inputs(original, config)
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
    excluded = [u for u in units if any(matches(u.name, p) for p in config.exclude)]
    declined += [Declined(u.name, u.producer.op_type, "excluded by --exclude") for u in excluded]
    units = [u for u in units if u not in excluded]
    config, synthetic, scaling, fallback = resolved_synthetic(work, config, calibration, units)
    config = resolved_criterion(config, real_calibration=calibration is not None)
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
            sequential_ridge(config),
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
            method, solution = choose_method(unit, kept, config, recorded, measurement)
        elif sequential is not None:
            method = config.method
            kept, solution = sequential.solve(unit, count, plans, kept)
        else:
            method, solution = config.method, solve_unit(unit, kept, config, recorded)
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
                notes=[*unit_notes(unit, calibration is not None), *solution.notes],
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
    judge_samples = JudgeSamples()
    solver = replace(config, method="lbyl") if config.method in CURVES_BY_LBYL else config
    fitted = statistics if statistics and not config.synthetic_calibration else {}

    def solve(unit: Unit, kept: np.ndarray) -> Solution:
        return solve_unit(unit, kept, solver, fitted.get(unit.name), judge_samples)

    def measure() -> Measured | None:
        if not units or (inputs := measurement.inputs()) is None:
            return None
        recorded = statistics or record_statistics(model, units, inputs)
        return Measured(recorded, measurement.sensitivity())

    def timed() -> LatencyCosts:
        if unfixed := unfixed_inputs(model, config.input_shapes):
            raise UsageError(
                f"--target-latency needs --input-shape for input '{unfixed[0]}': its size "
                "(other than the batch) is not fixed, and the time depends on it"
            )
        feeds = sessions.random_inputs(model, 1, config.seed, config.input_shapes)
        return latency_costs(model, units, feeds, config.round_to, config.prune_residual)

    before = summarize(model, config.input_shapes)
    counts, text = budget_counts(model, units, config, before, solve, measure, timed)
    if measurement.failure:
        return counts, f"{text}; damage in filter space ({measurement.failure})"
    return counts, f"{text}; damage measured on {measurement.source}"


def _ratio_count(unit: Unit, config: PruneConfig) -> int:
    """Channels a unit keeps under ``--ratio``/``--ratio-for``, rounded down to a multiple of
    ``--round-to`` (a unit smaller than that is left whole)."""
    ratio = next((r for p, r in config.ratio_for if matches(unit.name, p)), config.ratio)
    m = max(kept_count(unit.channels, ratio), math.ceil(config.min_keep * unit.channels - 1e-9))
    if config.round_to > 1 and m < unit.channels:
        m = max(config.round_to, m // config.round_to * config.round_to)
    return min(m, unit.channels)


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
        if not any(matches(n, pattern) for n in names)
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
