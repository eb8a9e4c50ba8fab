"""The facts of the model that the options are resolved against (:func:`lbyl_onnx.config.
resolve`), gathered before anything is solved: the user's inputs checked against the model,
and synthetic calibration inputs made and run where they may be wanted."""

from __future__ import annotations

import numpy as np
import onnx

from ..config import ModelFacts, PruneConfig, tries_synthetic
from ..config.options import ONLY_INPUT
from ..errors import UsageError, first_line
from ..graph.io import is_large
from ..graph.shapes import real_inputs
from ..graph.units import Declined, Unit
from ..inputs.user import input_problems, only_input, size_problems
from ..runtime import sessions
from ..runtime.sessions import batch_slices
from .measure import make_synthetic, synthetic_calibration_count


def checked_inputs(model: onnx.ModelProto, options: PruneConfig) -> dict[str, np.ndarray] | None:
    """Raise :class:`UsageError` for user inputs that do not fit the model; return the
    calibration arrays of the model's inputs (others in the file are ignored)."""
    problems = input_problems(model, options.input_data, options.input_shapes)
    if options.check:
        problems += size_problems(model, options.input_shapes, options.check_n, "--check-n")
    else:
        problems += size_problems(model, options.input_shapes)
    calibration = None
    if options.calibration_data:
        names = [i.name for i in real_inputs(model)]
        data = only_input(options.calibration_data, model, ONLY_INPUT, "--calibration-data")
        missing = [n for n in names if n not in data]
        if missing:
            raise UsageError(f"--calibration-data has no array named '{missing[0]}' (an input)")
        calibration = {n: data[n] for n in names}
        problems += input_problems(model, calibration, None, "--calibration-data", True)
    if problems:
        raise UsageError(problems[0])
    return calibration


def model_facts(
    model: onnx.ModelProto,
    options: PruneConfig,
    calibration: dict[str, np.ndarray] | None,
    units: list[Unit],
    declined: list[Declined],
) -> tuple[ModelFacts, dict[str, np.ndarray] | None, str]:
    """What :func:`~lbyl_onnx.config.resolve` needs to know of the model, and the synthetic
    calibration inputs (with how they were scaled) where they were made and the model runs
    on them, else None and "".

    Synthetic inputs are made where :func:`~lbyl_onnx.config.tries_synthetic` says (never
    without ``units`` to prune); they cannot stand for an input that is not floating point,
    and the model must run on them in onnxruntime (no unknown custom op, dimensions the
    guessed sizes fit)."""
    known = dict(
        calibration_data=calibration is not None,
        units=bool(units),
        candidates=tuple(u.name for u in units) + tuple(d.name for d in declined),
        large=bool(units) and calibration is None and is_large(model),
    )
    if not tries_synthetic(options, ModelFacts(**known)):
        return ModelFacts(**known), None, ""
    try:
        count = synthetic_calibration_count(model, options.input_shapes)
        inputs, scaling = make_synthetic(
            model, count, options.seed, options.input_shapes, options.input_range
        )
        run_first(model, inputs)
    except (ValueError, UsageError) as error:
        return ModelFacts(**known, synthetic=str(error)), None, ""
    return ModelFacts(**known, synthetic=""), inputs, scaling


def run_first(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` where the model does not run in onnxruntime on the first batch of
    ``inputs`` (one sample, or the model's fixed batch)."""
    try:
        session = sessions.session(model, optimised=True)
        count = len(next(iter(inputs.values())))
        first = batch_slices(session, count, 1)[0]
        names = [o.name for o in session.get_outputs()]
        session.run(names, {name: value[first] for name, value in inputs.items()})
    except Exception as error:  # whatever onnxruntime raises: the reason, in one line
        raise ValueError(
            f"the model does not run on synthetic inputs in onnxruntime: {first_line(error)}"
        ) from error
