"""Inputs on which the tool measures its choices in onnxruntime (a budget's damage,
``--method auto``): the calibration data, else synthetic inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx.helper import tensor_dtype_to_np_dtype

from .check import real_inputs
from .graph.sensitivity import OutputSensitivity
from .graph.units import Unit
from .synthetic import normalisations, synthetic_inputs

if TYPE_CHECKING:
    from .api import PruneConfig

SYNTHETIC_SAMPLES = 64
"""Synthetic inputs on which a budget's damage is measured without calibration data."""

SENSITIVITY_SAMPLES = 16
"""Of those (or of the calibration data), the inputs on which each unit's effect on the
outputs is measured (one onnxruntime run over them per unit)."""


class Measurement:
    """Inputs on which choices are measured in onnxruntime (a budget's damage, ``--method
    auto``): the calibration data, else :data:`SYNTHETIC_SAMPLES` synthetic inputs
    (:mod:`lbyl_onnx.synthetic`). They choose widths and methods only; the compensation stays
    data-free unless calibration data is given. Built on first use."""

    def __init__(
        self,
        model: onnx.ModelProto,
        units: list[Unit],
        config: PruneConfig,
        calibration: dict[str, np.ndarray] | None,
    ):
        self.model, self.units, self.config, self.calibration = model, units, config, calibration
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
            return "the calibration data"
        return f"{SYNTHETIC_SAMPLES} {self.synthetic}"

    @property
    def synthetic(self) -> str:
        """``synthetic inputs``, with how they were scaled once known."""
        return f"synthetic inputs scaled as {self.scaling}" if self.scaling else "synthetic inputs"

    @property
    def sensitivity_source(self) -> str:
        kind = "calibration samples" if self.calibration else "synthetic inputs"
        return f"{SENSITIVITY_SAMPLES} {kind}"

    def inputs(self) -> dict[str, np.ndarray] | None:
        """The inputs, or None (with :attr:`failure` saying why) for a model that has an input
        synthetic data cannot stand for (not floating point)."""
        if self._inputs is None and not self.failure:
            self._inputs = self.calibration or self._synthetic()
        return self._inputs

    def _synthetic(self) -> dict[str, np.ndarray] | None:
        """Synthetic images scaled by ``--input-range`` when given, else by the normalisation
        estimated from the model (:func:`normalisations`)."""
        config = self.config
        try:
            norms = normalisations(self.model, config.input_shapes, config.input_range)
            made = synthetic_inputs(
                self.model,
                SYNTHETIC_SAMPLES,
                config.seed,
                config.input_shapes,
                {name: (norm.scale, norm.shift) for name, norm in norms.items()},
            )
        except ValueError as error:  # an input that is not floating point
            self.failure = str(error)
            return None
        self.scaling = "; ".join(
            (f"'{name}' " if len(norms) > 1 else "") + norm.describe()
            for name, norm in norms.items()
        )
        dtypes = {
            i.name: tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            for i in real_inputs(self.model)
        }
        return {name: value.astype(dtypes[name]) for name, value in made.items()}

    def sensitivity(self) -> OutputSensitivity | None:
        """The outputs' response to each unit, on :data:`SENSITIVITY_SAMPLES` of the inputs."""
        if self._sensitivity is None and (inputs := self.inputs()) is not None:
            self._sensitivity = OutputSensitivity(
                self.model, self.units, inputs, SENSITIVITY_SAMPLES
            )
        return self._sensitivity
