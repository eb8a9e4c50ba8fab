"""The facts of the model that the options are resolved against (:func:`lbyl_onnx.config.
resolve`), gathered before anything is solved: the user's inputs checked against the model,
and synthetic calibration inputs made and run where they may be wanted."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..config import ModelFacts, PruneConfig, tries_synthetic
from ..config.options import ONLY_INPUT
from ..errors import UsageError, first_line
from ..graph.io import is_large
from ..graph.shapes import real_inputs
from ..graph.units import Declined, Unit
from ..inputs.specs import input_specs
from ..inputs.user import input_problems, only_input, size_problems
from ..runtime.sessions import batch_slices
from .measure import loaded_session, make_synthetic, synthetic_calibration_count


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
    if calibration is not None and units:
        try:
            run_first(loaded_session(model, "it"), calibration, "it")
        except ValueError as error:
            raise UsageError(f"--calibration-data: {error}") from error
    if not tries_synthetic(options, ModelFacts(**known)):
        return ModelFacts(**known), None, ""
    try:
        input_specs(model, options.input_shapes)  # floating-point inputs, before any session
        session = loaded_session(model, "synthetic inputs")
        count = synthetic_calibration_count(model, options.input_shapes)
        inputs, scaling = make_synthetic(
            model, count, options.seed, options.input_shapes, options.input_range
        )
        run_first(session, inputs, "synthetic inputs", finite=True)
    except ValueError as error:
        return ModelFacts(**known, synthetic=str(error)), None, ""
    except UsageError as error:  # fewer synthetic inputs than the model's fixed batch
        reason = f"the model does not run on synthetic inputs in onnxruntime: {error}"
        return ModelFacts(**known, synthetic=reason), None, ""
    return ModelFacts(**known, synthetic=""), inputs, scaling


def run_first(session: Any, inputs: dict[str, np.ndarray], what: str, finite: bool = False) -> None:
    """Raise ``ValueError`` where the model (its onnxruntime ``session``) does not run on the
    first batch of ``inputs`` (one sample, or the model's fixed batch), called ``what``, or
    with ``finite``, computes NaN or Inf there (synthetic inputs outside the model's domain:
    a logarithm or a square root of the input); a :class:`UsageError` where ``inputs`` has
    fewer samples than that batch."""
    first = batch_slices(session, len(next(iter(inputs.values()))), 1)[0]
    names = [o.name for o in session.get_outputs()]
    try:
        outputs = session.run(names, {name: value[first] for name, value in inputs.items()})
    except Exception as error:  # whatever onnxruntime raises: the reason, in one line
        raise ValueError(
            f"the model does not run on {what} in onnxruntime: {first_line(error)}"
        ) from error
    for name, value in zip(names, outputs, strict=True):
        value = np.asarray(value)
        if finite and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"the model computes NaN or Inf in output '{name}' on {what}")
