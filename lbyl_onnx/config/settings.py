"""The settings of a run: the options resolved against the facts of the model
(:func:`resolve`), each decision with its reason. Nothing here runs the model: the facts
that need onnxruntime are gathered by :mod:`lbyl_onnx.pipeline.resolve` and passed in as
plain values."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..methods.base import MethodOptions
from ..methods.calibrated import CALIBRATION_RIDGE, SEQUENTIAL_RIDGE
from ..methods.criteria import CRITERIA
from .options import (
    BUDGETS,
    RECONSTRUCTION_NEEDS,
    OptionError,
    PruneConfig,
    matches,
    validate_options,
)

NOT_MADE = "no synthetic inputs were made"
""":attr:`ModelFacts.synthetic` where synthetic calibration inputs were not tried."""


@dataclass(frozen=True)
class ModelFacts:
    """What the pipeline knows of the model before anything is solved, as plain values.
    Gathering them may run the model (:func:`lbyl_onnx.pipeline.resolve.model_facts`);
    :func:`resolve` only reads them."""

    calibration_data: bool = False
    """Calibration data was given, and fits the model's inputs."""
    units: bool = True
    """Units are left to prune (after ``exclude``)."""
    candidates: tuple[str, ...] = ()
    """The names ``exclude`` and ``ratio_for`` patterns match: units found and declined."""
    large: bool = False
    """The model is over 2 GB serialized."""
    synthetic: str = NOT_MADE
    """Why synthetic calibration inputs cannot be used: empty where they were made and the
    model runs on them in onnxruntime; :data:`NOT_MADE` where they were not tried
    (:func:`tries_synthetic`)."""


@dataclass(frozen=True)
class Budget:
    """A global budget: keep ``fraction`` of the model's ``kind`` (MACs, parameters,
    latency), given as the option ``name``."""

    name: str
    kind: str
    fraction: float

    @property
    def flag(self) -> str:
        """The command line's flag, which the budget's messages name (as they always did)."""
        return "--" + self.name.replace("_", "-")


Calibration = Literal["data", "synthetic", "closed form"]
"""What the compensation is solved from: calibration data, synthetic inputs, the weights."""

Policy = Literal["always", "never", "depthwise"]
"""Where a data-free correction applies: every unit, none, or depthwise groups only."""

CROSS_VALIDATED = "cross-validated"
""":attr:`Settings.sequential_ridge` chosen per unit from its own observations
(:func:`~lbyl_onnx.methods.calibrated.cross_validated_ridge`)."""


@dataclass(frozen=True)
class Settings:
    """One run's configuration: the options resolved against the model (:func:`resolve`).
    Nothing is left to decide; ``reasons`` says, per decided setting, why it has its value
    (``given`` where the caller set it)."""

    method: str
    """A method of :data:`~lbyl_onnx.methods.METHODS`, or ``auto`` (per unit)."""
    options: MethodOptions
    calibration: Calibration
    sequential: bool
    """Units solved in graph order (:mod:`lbyl_onnx.pipeline.sequential`)."""
    criterion: str
    """How the kept channels are chosen: a weight criterion, or ``reconstruction``."""
    ridge: float
    """The relative ridge of calibrated solves unit by unit (and of budgets' damage curves)."""
    sequential_ridge: float | Literal["cross-validated"]
    """The relative ridge of the sequential solve, or each unit's own (:data:`CROSS_VALIDATED`)."""
    bias_correction: Policy
    """Data-free bias correction (with statistics, every method's offsets are measured)."""
    judge: Policy
    """Data-free: replace a compensation the judge estimates worse than plain removal."""
    budget: Budget | None
    """None: widths from ``ratio`` and ``ratio_for``."""
    latency_limit: float | None
    """``target_latency`` where it limits a MAC or parameter budget; None: no limit."""
    ratio: float
    ratio_for: tuple[tuple[str, float], ...]
    exclude: tuple[str, ...]
    round_to: int
    min_keep: float
    prune_residual: bool
    check: bool
    check_n: int
    seed: int
    input_shapes: dict[str, list[int]] | None
    input_data: dict[str, np.ndarray] | None
    input_range: str | None
    """None: estimated from the model where synthetic images are made."""
    warnings: tuple[str, ...] = ()
    """What the report warns of the options: a default that fell back, an option that does
    nothing here."""
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def synthetic_calibration(self) -> bool:
        """Calibrated on synthetic inputs."""
        return self.calibration == "synthetic"

    @property
    def weight_criterion(self) -> str:
        """The criterion that ranks channels by the producer's filters alone (``l2`` where
        :attr:`criterion` chooses them from activations): what budgets compare widths with."""
        return self.criterion if self.criterion in CRITERIA else "l2"


def tries_synthetic(options: PruneConfig, facts: ModelFacts) -> bool:
    """Whether the pipeline should make synthetic calibration inputs and run the model on
    them (for :attr:`ModelFacts.synthetic`): where synthetic calibration is asked for, or is
    the default (LBYL without calibration data) and the model is not large, and there are
    units to prune."""
    wanted = _wants_synthetic(options, facts)
    return wanted and facts.units and (options.synthetic_calibration is True or not facts.large)


def resolve(options: PruneConfig, facts: ModelFacts) -> Settings:
    """The settings of a run with ``options`` (checked by :func:`validate_options`) on a
    model with ``facts``. Raises :class:`OptionError` for options the model cannot honour:
    synthetic calibration asked for where it cannot run, ``reconstruction`` where the
    compensation fell back to the closed form."""
    reasons: dict[str, str] = {}
    calibration, fallback = _calibration(options, facts, reasons)
    sequential = _sequential(options, calibration, bool(fallback), reasons)
    budget, limit = _budget(options, reasons)
    return Settings(
        method=options.method,
        options=options.options,
        calibration=calibration,
        sequential=sequential,
        criterion=_criterion(options, calibration, sequential, reasons),
        ridge=_ridge(options, reasons),
        sequential_ridge=_sequential_ridge(options, calibration, reasons),
        bias_correction=_policy(options.bias_correction, "bias_correction", reasons),
        judge=_policy(options.judge, "judge", reasons),
        budget=budget,
        latency_limit=limit,
        ratio=options.ratio,
        ratio_for=options.ratio_for,
        exclude=options.exclude,
        round_to=options.round_to,
        min_keep=options.min_keep,
        prune_residual=options.prune_residual,
        check=options.check,
        check_n=options.check_n,
        seed=options.seed,
        input_shapes=options.input_shapes,
        input_data=options.input_data,
        input_range=options.input_range,
        warnings=(
            *([fallback] if fallback else []),
            *_unmatched_patterns(options, facts.candidates),
            *_unused_input_range(options, calibration, budget, reasons),
        ),
        reasons=reasons,
    )


def settled(options: PruneConfig | Settings) -> Settings:
    """Settings as they are; options validated and resolved as for a model with units, its
    calibration data if given and no synthetic inputs (so the closed form otherwise): for the
    pipeline's parts called on their own, outside a run."""
    if isinstance(options, Settings):
        return options
    facts = ModelFacts(calibration_data=bool(options.calibration_data))
    return resolve(validate_options(options), facts)


def _wants_synthetic(options: PruneConfig, facts: ModelFacts) -> bool:
    if options.synthetic_calibration is not None:
        return options.synthetic_calibration
    return options.method == "lbyl" and not facts.calibration_data


def _calibration(
    options: PruneConfig, facts: ModelFacts, reasons: dict[str, str]
) -> tuple[Calibration, str]:
    """What the compensation is solved from, and the warning of a default that fell back to
    the closed form (empty where none did)."""
    asked = options.synthetic_calibration
    why, fallback = "", ""
    if facts.calibration_data:
        value, why = "data", "calibration_data given"
    elif not _wants_synthetic(options, facts):
        value = "closed form"
        why = "given" if asked is False else f"default for {options.method}: its closed form"
    elif not facts.units:
        value, why = "closed form", "no unit to prune: nothing synthesised"
    elif asked is None and facts.large:
        value, why = "closed form", "the model is over 2 GB, and calibration copies it per layer"
        fallback = f"closed-form LBYL, not synthetic calibration: {why}"
    elif facts.synthetic:
        if asked:
            raise OptionError("{synthetic_calibration=True}: {why}", why=facts.synthetic)
        value, why = "closed form", facts.synthetic
        fallback = f"closed-form LBYL, not synthetic calibration: {why}"
    else:
        value = "synthetic"
        why = "given" if asked else "default for LBYL without calibration data"
        why += "" if asked else " (docs/benchmarks.md, --synthetic-calibration)"
    reasons["calibration"] = why
    return value, fallback


def _sequential(
    options: PruneConfig, calibration: Calibration, fell_back: bool, reasons: dict[str, str]
) -> bool:
    """Units solved in graph order: as given, unless the default calibration fell back to the
    closed form; by default wherever LBYL is calibrated (docs/benchmarks.md, Sequential
    calibration)."""
    if options.sequential is not None and not fell_back:
        reasons["sequential"] = "given"
        return options.sequential
    applies = calibration != "closed form" and options.method == "lbyl"
    reasons["sequential"] = (
        "default where LBYL is calibrated (docs/benchmarks.md, Sequential calibration)"
        if applies
        else "only calibrated LBYL is solved in order"
    )
    return applies


def _criterion(
    options: PruneConfig, calibration: Calibration, sequential: bool, reasons: dict[str, str]
) -> str:
    """``reconstruction`` by default where LBYL is solved in order on calibration data, ``l2``
    elsewhere (docs/benchmarks.md, Choosing channels from the activations)."""
    if options.criterion == "reconstruction" and not sequential:
        raise OptionError(RECONSTRUCTION_NEEDS + "; here the compensation is the closed form")
    if options.criterion is not None:
        reasons["criterion"] = "given"
        return options.criterion
    if sequential and calibration == "data":
        reasons["criterion"] = (
            "default for LBYL solved in order on calibration data (docs/benchmarks.md, "
            "Choosing channels from the activations)"
        )
        return "reconstruction"
    reasons["criterion"] = "default: the filters' L2 norms, without sequential calibration data"
    return "l2"


def _ridge(options: PruneConfig, reasons: dict[str, str]) -> float:
    if options.calibration_ridge is not None:
        reasons["ridge"] = "given"
        return options.calibration_ridge
    reasons["ridge"] = f"default: CALIBRATION_RIDGE, {CALIBRATION_RIDGE:g}"
    return CALIBRATION_RIDGE


def _sequential_ridge(
    options: PruneConfig, calibration: Calibration, reasons: dict[str, str]
) -> float | Literal["cross-validated"]:
    """As given; else cross-validated per unit on synthetic inputs, and the fixed
    ``SEQUENTIAL_RIDGE`` on real ones (docs/benchmarks.md, "--synthetic-calibration")."""
    if options.calibration_ridge is not None:
        reasons["sequential_ridge"] = "given"
        return options.calibration_ridge
    if calibration == "synthetic":
        reasons["sequential_ridge"] = "default on synthetic inputs: each unit's own"
        return CROSS_VALIDATED
    reasons["sequential_ridge"] = (
        f"default off synthetic inputs: SEQUENTIAL_RIDGE, {SEQUENTIAL_RIDGE:g}"
    )
    return SEQUENTIAL_RIDGE


def _policy(given: bool | None, name: str, reasons: dict[str, str]) -> Policy:
    """True: always; False: never; None: in depthwise groups only, where data-free
    compensation is weakest (docs/benchmarks.md, the depthwise table of coverage_study)."""
    if given is not None:
        reasons[name] = "given"
        return "always" if given else "never"
    reasons[name] = "default: depthwise groups only (docs/benchmarks.md)"
    return "depthwise"


def _budget(options: PruneConfig, reasons: dict[str, str]) -> tuple[Budget | None, float | None]:
    """The budget given (with ``target_latency`` and a MAC or parameter budget, the
    latter), and ``target_latency`` where it is a limit besides it."""
    given = [
        Budget(name, kind, getattr(options, name))
        for name, kind in BUDGETS
        if getattr(options, name) is not None
    ]
    if not given:
        reasons["budget"] = "none given: widths from ratio and ratio_for"
        reasons["latency_limit"] = "no budget"
        return None, None
    reasons["budget"] = "given"
    if given[0].name == "target_latency":
        reasons["latency_limit"] = "target_latency is the budget"
        return given[0], None
    reasons["latency_limit"] = "given" if options.target_latency is not None else "none given"
    return given[0], options.target_latency


def _unmatched_patterns(options: PruneConfig, candidates: Iterable[str]) -> list[str]:
    names = list(candidates)
    patterns = [("--exclude", p) for p in options.exclude]
    patterns += [("--ratio-for", p) for p, _ in options.ratio_for]
    return [
        f"{flag} {pattern!r} matches no Conv/Gemm/MatMul node"
        for flag, pattern in patterns
        if not any(matches(n, pattern) for n in names)
    ]


def _unused_input_range(
    options: PruneConfig, calibration: Calibration, budget: Budget | None, reasons: dict
) -> list[str]:
    """The warning of an ``input_range`` given where nothing is synthesised: synthetic
    images are made to calibrate on, and without calibration data to measure a budget's
    damage and ``auto``'s choices on."""
    reasons["input_range"] = "given" if options.input_range else "estimated from the model"
    synthesised = calibration == "synthetic" or (
        calibration == "closed form" and (budget is not None or options.method == "auto")
    )
    if options.input_range is None or synthesised:
        return []
    return [
        "--input-range has no effect: it scales synthetic inputs, which are used without "
        "--calibration-data to calibrate LBYL (unless --closed-form), by "
        "--synthetic-calibration, and by --target-macs, --target-params and --method auto"
    ]
