"""The user's options: :class:`PruneConfig` (the command line's flags, or a Python caller's
keywords, as a record; ``None``: "decide for me"), their one check
(:func:`validate_options`), and :class:`OptionError`, which names an option as the caller
spelled it."""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..inputs.images import CONVENTIONS
from ..methods import METHODS
from ..methods.base import MethodOptions
from ..methods.criteria import CRITERIA


@dataclass(frozen=True)
class PruneConfig:
    """Options of one run (the command line's flags, as a record); ``None``: decided by
    :func:`resolve`, as :class:`Settings` says.

    ``ratio_for`` maps producer names or globs to a ratio that overrides ``ratio``;
    ``exclude`` lists names or globs of producers left untouched.
    """

    ratio: float = 0.3
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    """Keep this share of the model's onnxruntime time, measured on this machine
    (:mod:`lbyl_onnx.runtime.timing`); with ``target_macs`` or ``target_params``, a limit
    the widths at that budget meet as well."""
    round_to: int = 1
    min_keep: float = 0.0
    method: str = "lbyl"
    criterion: str | None = None
    """Which channels stay: a weight criterion (:data:`~lbyl_onnx.methods.criteria.CRITERIA`),
    or ``reconstruction`` (chosen from the activations, in sequential calibration:
    :func:`~lbyl_onnx.methods.selection.reconstruction_keep`). None: :attr:`Settings.criterion`."""
    exclude: tuple[str, ...] = ()
    ratio_for: tuple[tuple[str, float], ...] = ()
    options: MethodOptions = field(default_factory=MethodOptions)
    check: bool = True
    check_n: int = 8
    seed: int = 0
    input_shapes: dict[str, list[int]] | None = None
    input_data: dict[str, np.ndarray] | None = None
    input_range: str | None = None
    """The image inputs' normalisation (one of ``CONVENTIONS``) for synthetic inputs; None:
    estimated from the model (:func:`lbyl_onnx.inputs.normalisation.fit_normalisation`)."""
    calibration_data: dict[str, np.ndarray] | None = None
    """Samples by input name; one array under :data:`ONLY_INPUT` stands for the model's only
    input (what the command line makes of a ``.npy`` file)."""
    synthetic_calibration: bool | None = None
    """Calibrate on synthetic inputs made for the model, as on ``calibration_data``; False:
    the methods' closed forms (unless ``calibration_data`` is given). None:
    :attr:`Settings.calibration`."""
    calibration_ridge: float | None = None
    """The calibrated solvers' relative ridge; None: :attr:`Settings.ridge` and
    :attr:`Settings.sequential_ridge`."""
    sequential: bool | None = None
    """Calibrated LBYL: solve units in graph order against the original's activations, the
    earlier units pruned (:mod:`lbyl_onnx.pipeline.sequential`); False: each unit on the
    original's activations alone. None: :attr:`Settings.sequential`."""
    bias_correction: bool | None = None
    """Data-free bias correction; None: :attr:`Settings.bias_correction`."""
    judge: bool | None = None
    """Replace a compensation the judge estimates worse than removal; None:
    :attr:`Settings.judge`."""
    prune_residual: bool = False

    def validated(self) -> PruneConfig:
        """``self``, checked by :func:`validate_options`."""
        return validate_options(self)


class OptionError(UsageError):
    """Options outside their domain, or that cannot apply to the model (exit 2).

    ``template`` names each option as ``{field}`` (``{ratio_for}``), or as
    ``{field=value}`` for an option set to a value (``{sequential=False}``); its other
    placeholders are filled from ``values``. ``str()`` spells the options as Python fields
    (``ratio_for``, ``sequential=False``), :meth:`spelled` as the caller's own names (the
    command line's flags)."""

    def __init__(self, template: str, **values: object) -> None:
        self.template, self.values = template, values
        super().__init__(self.spelled(python_name))

    @property
    def options(self) -> tuple[str, ...]:
        """The options the message names (``field`` or ``field=value``), in order."""
        named = (name for _, name, _, _ in string.Formatter().parse(self.template) if name)
        return tuple(name for name in named if name not in self.values)

    def spelled(self, name: Callable[[str], str]) -> str:
        """The message, each option named by ``name(option)``."""
        return string.Formatter().vformat(self.template, (), _Spelling(name, self.values))


class _Spelling(dict):
    """``values``, and any other key spelled by ``name``: what :meth:`OptionError.spelled`
    fills a template from."""

    def __init__(self, name: Callable[[str], str], values: dict[str, object]) -> None:
        super().__init__(values)
        self.name = name

    def __missing__(self, option: str) -> str:
        return self.name(option)


def python_name(option: str) -> str:
    """An option as a Python caller spells it: ``ratio_for``, ``sequential=False``,
    ``method='lbyl'``."""
    name, _, value = option.partition("=")
    if not value or value in ("True", "False"):
        return option
    return f"{name}={value!r}"


METHOD_NAMES = (*METHODS, "auto")
"""``method`` values: the methods, and ``auto`` (per unit, the method whose outputs move
least: :func:`~lbyl_onnx.pipeline.solve.choose_method`)."""

CRITERION_NAMES = (*CRITERIA, "reconstruction")
"""``criterion`` values: the weight criteria, and ``reconstruction`` (sequential only)."""

RECONSTRUCTION_NEEDS = (
    "{criterion=reconstruction} needs {method=lbyl} solved sequentially (calibrated: not "
    "{synthetic_calibration=False}, not {sequential=False})"
)
"""The :class:`OptionError` template of ``criterion="reconstruction"`` where units are not
solved in order."""

ONLY_INPUT = ""
"""The ``calibration_data`` key of an array that stands for the model's only input, whatever
its name (a ``.npy`` file): a model with several inputs refuses it."""

MAX_CHECK_N = 100_000
"""The most samples ``check_n`` may ask for: validation draws them at once (float64, as
NumPy draws normal samples: 8 bytes per element of a sample), and runs both models on them.
Within it, the batch must also fit :func:`lbyl_onnx.errors.size_problem`'s limit, as
:func:`lbyl_onnx.inputs.user.size_problems` checks against the model."""

INPUT_RANGES = {"0,1": "[0,1]", "-1,1": "[-1,1]", "imagenet": "imagenet", "0,255": "[0,255]"}
"""``--input-range`` values (free of shell glob brackets) and the conventions they name."""

BUDGETS = (("target_macs", "MACs"), ("target_params", "parameters"), ("target_latency", "latency"))
"""The budget options and what each counts."""


def validate_options(options: PruneConfig) -> PruneConfig:
    """``options``, or :class:`OptionError` for the first one outside its domain, or
    contradicting another, whatever the model. The one check of the options, once per run;
    :func:`resolve` adds those that depend on the model."""
    if not 0.0 <= options.ratio < 1.0:
        raise OptionError("ratio {value:g} for {ratio} is outside [0, 1)", value=options.ratio)
    for pattern, ratio in options.ratio_for:
        if not 0.0 <= ratio < 1.0:
            raise OptionError(
                "ratio {value:g} for {ratio_for} {pattern!r} is outside [0, 1)",
                value=ratio,
                pattern=pattern,
            )
    _check_names(options)
    if options.criterion == "reconstruction" and not _sequential_unless_refused(options):
        raise OptionError(RECONSTRUCTION_NEEDS)
    _check_budgets(options)
    if options.round_to < 1:
        raise OptionError("{round_to} must be at least 1")
    if not 0.0 <= options.min_keep <= 1.0:
        raise OptionError("{min_keep} {value:g} is outside [0, 1]", value=options.min_keep)
    if options.check_n < 1:
        raise OptionError("{check_n} must be at least 1")
    if options.check_n > MAX_CHECK_N:
        raise OptionError(
            "{check_n} {value} is over {limit}: validation draws that many samples at once",
            value=options.check_n,
            limit=MAX_CHECK_N,
        )
    if options.calibration_data is not None and options.synthetic_calibration:
        raise OptionError("give {calibration_data} or {synthetic_calibration=True}, not both")
    calibrated_lbyl = _calibrates_unless_refused(options) and options.method == "lbyl"
    if options.sequential is not None and not calibrated_lbyl:
        raise OptionError(
            "{sequential=" + str(options.sequential) + "} needs {method=lbyl}, calibrated (on "
            "{calibration_data}, or on synthetic inputs: not {synthetic_calibration=False})"
        )
    if options.input_range is not None and options.input_range not in CONVENTIONS:
        raise OptionError(  # named as on the command line, where the message was first written
            "unknown --input-range '{value}' (choose from {known})",
            value=options.input_range,
            known=", ".join(CONVENTIONS),
        )
    return options


def _check_names(options: PruneConfig) -> None:
    """The options that take a name from a list."""
    if options.method not in METHOD_NAMES:
        raise OptionError(
            "unknown {method} '{value}' (choose from {known})",
            value=options.method,
            known=", ".join(METHOD_NAMES),
        )
    if options.criterion is not None and options.criterion not in CRITERION_NAMES:
        raise OptionError(
            "unknown {criterion} '{value}' (choose from {known})",
            value=options.criterion,
            known=", ".join(CRITERION_NAMES),
        )


def _check_budgets(options: PruneConfig) -> None:
    """A budget's share in (0, 1], one of MACs and parameters, no ``ratio_for`` beside."""
    given = [name for name, _ in BUDGETS if getattr(options, name) is not None]
    if options.target_macs is not None and options.target_params is not None:
        raise OptionError("give one of {target_macs} and {target_params}, not both")
    for name in given:
        value = getattr(options, name)
        if not 0.0 < value <= 1.0:
            raise OptionError("{" + name + "} {value:g} is outside (0, 1]", value=value)
    if given and options.ratio_for:
        raise OptionError("{ratio_for} cannot be combined with {" + given[0] + "}")


def _calibrates_unless_refused(options: PruneConfig) -> bool:
    """Whether the compensation is calibrated where the model allows it (before
    :func:`resolve` knows whether it does)."""
    if options.calibration_data:
        return True
    if options.synthetic_calibration is None:
        return options.method == "lbyl"
    return options.synthetic_calibration


def _sequential_unless_refused(options: PruneConfig) -> bool:
    """Whether units are solved in order where the model allows calibration."""
    if options.sequential is not None:
        return options.sequential
    return _calibrates_unless_refused(options) and options.method == "lbyl"


def matches(name: str, pattern: str) -> bool:
    """``name`` is ``pattern``, or matches it as a glob."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)
