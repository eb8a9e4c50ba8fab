"""Decisions taken against the model before anything is solved: the user's inputs checked,
synthetic calibration decided (and its inputs made), the channel criterion decided."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from ..config import RECONSTRUCTION_NEEDS, PruneConfig
from ..errors import UsageError, first_line
from ..graph.io import is_large
from ..graph.shapes import real_inputs
from ..graph.units import Unit
from ..inputs.user import input_problems
from ..runtime import sessions
from ..runtime.sessions import batch_slices
from .measure import make_synthetic, synthetic_calibration_count


def checked_inputs(model: onnx.ModelProto, config: PruneConfig) -> dict[str, np.ndarray] | None:
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


def resolved_synthetic(
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
        run_first(model, inputs)
    except (ValueError, UsageError) as error:
        if config.synthetic_calibration:
            raise UsageError(f"--synthetic-calibration: {error}") from error
        return closed, None, "", [f"closed-form LBYL, not synthetic calibration: {error}"]
    return replace(config, synthetic_calibration=True), inputs, scaling, []


def resolved_criterion(config: PruneConfig, real_calibration: bool) -> PruneConfig:
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
