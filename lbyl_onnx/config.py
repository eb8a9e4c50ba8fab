"""The options of one run: the command line's flags as a record, and their validation."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from .errors import UsageError
from .inputs.images import CONVENTIONS
from .methods import METHODS
from .methods.base import MethodOptions
from .methods.criteria import CRITERIA


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
    (:func:`resolved_criterion`)."""
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
    (:func:`resolved_synthetic`)."""
    calibration_ridge: float | None = None
    """The calibrated solvers' relative ridge; None: 1e-3 independent, and sequentially
    :data:`~lbyl_onnx.methods.calibrated.SEQUENTIAL_RIDGE` on calibration data, or each
    unit's own, cross-validated on the synthetic inputs, with ``synthetic_calibration``
    (:func:`sequential_ridge`)."""
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


def matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


METHOD_NAMES = (*METHODS, "auto")
"""``--method`` values: the methods, and ``auto`` (:func:`choose_method`)."""


CRITERION_NAMES = (*CRITERIA, "reconstruction")
"""``--criterion`` values: the weight criteria, and ``reconstruction`` (sequential only)."""


RECONSTRUCTION_NEEDS = (
    "--criterion reconstruction needs --method lbyl solved sequentially (calibrated: not "
    "--closed-form, not --independent)"
)


INPUT_RANGES = {"0,1": "[0,1]", "-1,1": "[-1,1]", "imagenet": "imagenet", "0,255": "[0,255]"}
"""``--input-range`` values (free of shell glob brackets) and the conventions they name."""
