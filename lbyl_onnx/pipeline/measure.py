"""Inputs on which the tool measures its choices in onnxruntime (a budget's damage,
``--method auto``): the calibration data, else synthetic inputs; and the synthetic inputs
that synthetic calibration (LBYL's default without calibration data) runs on."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from ..config import PruneConfig, Settings, settled
from ..errors import first_line
from ..graph.shapes import real_inputs
from ..graph.units import Unit
from ..inputs.normalisation import normalisations
from ..inputs.specs import input_specs
from ..inputs.synthetic import synthetic_inputs
from ..runtime import sessions
from ..runtime.sensitivity import OutputSensitivity

SYNTHETIC_SAMPLES = 64
"""Synthetic inputs on which a budget's damage is measured without calibration data."""

SENSITIVITY_SAMPLES = 16
"""Of those (or of the calibration data), the inputs on which each unit's effect on the
outputs is measured (one onnxruntime run over them per unit)."""

SYNTHETIC_CALIBRATION_SAMPLES = (16, 256)
"""The fewest and the most synthetic inputs ``--synthetic-calibration`` calibrates on."""

SYNTHETIC_CALIBRATION_BYTES = 512 << 20
"""What the synthetic calibration inputs may take together: as many as fit, within
:data:`SYNTHETIC_CALIBRATION_SAMPLES` (measured: docs/benchmarks.md, "--synthetic-calibration")."""


def synthetic_calibration_count(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None
) -> int:
    """How many synthetic inputs ``--synthetic-calibration`` makes: as many as
    :data:`SYNTHETIC_CALIBRATION_BYTES` holds in float32, within
    :data:`SYNTHETIC_CALIBRATION_SAMPLES`."""
    fewest, most = SYNTHETIC_CALIBRATION_SAMPLES
    sample = sum(4 * int(np.prod(s.shape[1:])) for s in input_specs(model, input_shapes))
    return max(fewest, min(most, SYNTHETIC_CALIBRATION_BYTES // max(sample, 1)))


def make_synthetic(
    model: onnx.ModelProto,
    n: int,
    seed: int,
    input_shapes: dict[str, list[int]] | None,
    input_range: str | None,
) -> tuple[dict[str, np.ndarray], str]:
    """``n`` synthetic inputs of the model's dtypes (:mod:`lbyl_onnx.inputs.synthetic`), at
    ``input_shapes``, images scaled by ``input_range`` when given, else by the normalisation
    estimated from the model (:func:`normalisations`); and how they were scaled, for the
    report. Raises ``ValueError`` for an input that synthetic data cannot stand for (not
    floating point)."""
    norms = normalisations(model, input_shapes, input_range)
    made = synthetic_inputs(
        model,
        n,
        seed,
        input_shapes,
        {name: (norm.scale, norm.shift) for name, norm in norms.items()},
    )
    scaling = "; ".join(
        (f"'{name}' " if len(norms) > 1 else "") + norm.describe() for name, norm in norms.items()
    )
    dtypes = {
        i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in real_inputs(model)
    }
    return {name: value.astype(dtypes[name]) for name, value in made.items()}, scaling


def loaded_session(model: onnx.ModelProto, what: str) -> Any:
    """The model's onnxruntime session (default optimisations), or ``ValueError`` saying why
    it does not load (an op or a type it has no kernel for: a custom op, ``Conv`` in float64
    or bfloat16 on the CPU), as not running on ``what``."""
    try:
        return sessions.session(model, optimised=True)
    except Exception as error:  # whatever onnxruntime raises: the reason, in one line
        raise ValueError(
            f"the model does not run on {what} in onnxruntime: {first_line(error)}"
        ) from error


class Measurement:
    """Inputs on which choices are measured in onnxruntime (a budget's damage, ``--method
    auto``): the calibration data, else :data:`SYNTHETIC_SAMPLES` synthetic inputs
    (:mod:`lbyl_onnx.inputs.synthetic`): the calibration inputs, synthetic or real, where the
    compensation is calibrated; else they choose widths and methods only. Built on first
    use. Options (rather than settings) are resolved by :func:`~lbyl_onnx.config.settled`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        units: list[Unit],
        settings: Settings | PruneConfig,
        calibration: dict[str, np.ndarray] | None,
    ):
        self.model, self.units, self.calibration = model, units, calibration
        self.settings = settled(settings)
        self._inputs: dict[str, np.ndarray] | None = None
        self._sensitivity: OutputSensitivity | None = None
        self.scaling = ""
        """How synthetic images were scaled (complete once :meth:`inputs` ran)."""
        self.failure = ""

    @property
    def source(self) -> str:
        """What the inputs are, for the report (complete once :meth:`inputs` ran): with
        synthetic images, the normalisation that scaled them and how it was chosen."""
        if self.calibration:
            return f"the {self.calibration_kind} data"
        return f"{SYNTHETIC_SAMPLES} {self.synthetic}"

    @property
    def synthetic(self) -> str:
        """``synthetic inputs``, with how they were scaled once known."""
        return f"synthetic inputs scaled as {self.scaling}" if self.scaling else "synthetic inputs"

    @property
    def calibration_kind(self) -> str:
        """What the calibration data is, for the report."""
        return "synthetic calibration" if self.settings.synthetic_calibration else "calibration"

    @property
    def sensitivity_source(self) -> str:
        kind = f"{self.calibration_kind} samples" if self.calibration else "synthetic inputs"
        return f"{SENSITIVITY_SAMPLES} {kind}"

    def inputs(self) -> dict[str, np.ndarray] | None:
        """The inputs, or None (with :attr:`failure` saying why) for a model that has an input
        synthetic data cannot stand for (not floating point)."""
        if self._inputs is None and not self.failure:
            self._inputs = self.calibration or self._synthetic()
        return self._inputs

    def _synthetic(self) -> dict[str, np.ndarray] | None:
        try:
            s = self.settings
            loaded_session(self.model, "synthetic inputs")  # a clear reason, before any run
            made, self.scaling = make_synthetic(
                self.model, SYNTHETIC_SAMPLES, s.seed, s.input_shapes, s.input_range
            )
        except ValueError as error:  # an input that is not floating point; no onnxruntime
            self.failure = str(error)
            return None
        return made

    def sensitivity(self) -> OutputSensitivity | None:
        """The outputs' response to each unit, on :data:`SENSITIVITY_SAMPLES` of the inputs."""
        if self._sensitivity is None and (inputs := self.inputs()) is not None:
            self._sensitivity = OutputSensitivity(
                self.model, self.units, inputs, SENSITIVITY_SAMPLES
            )
        return self._sensitivity
