"""The options of one run, and their resolution into settings.

:class:`PruneConfig` is the user's options as a record: the command line's flags, or a Python
caller's keywords, where ``None`` means "decide for me". :func:`validate_options` checks them
(once per run, before the model is read). :func:`resolve` decides, against the facts of the
model (:class:`ModelFacts`: gathered by :mod:`lbyl_onnx.pipeline.resolve`, which may run the
model; nothing here runs anything), every choice the options left open, and returns
:class:`Settings`: the run's configuration with no decision left open, each setting with the
reason for its value.

Errors about options are :class:`OptionError`: they name the options as the caller spelled
them, the Python field (``ratio_for``) in the library, the flag (``--ratio-for``) on the
command line.
"""

from .options import (
    BUDGETS,
    CRITERION_NAMES,
    INPUT_RANGES,
    METHOD_NAMES,
    RECONSTRUCTION_NEEDS,
    OptionError,
    PruneConfig,
    matches,
    python_name,
    validate_options,
)
from .settings import (
    CROSS_VALIDATED,
    NOT_MADE,
    Budget,
    Calibration,
    ModelFacts,
    Policy,
    Settings,
    resolve,
    settled,
    tries_synthetic,
)

__all__ = [
    "BUDGETS",
    "CRITERION_NAMES",
    "CROSS_VALIDATED",
    "INPUT_RANGES",
    "METHOD_NAMES",
    "NOT_MADE",
    "RECONSTRUCTION_NEEDS",
    "Budget",
    "Calibration",
    "ModelFacts",
    "OptionError",
    "Policy",
    "PruneConfig",
    "Settings",
    "matches",
    "python_name",
    "resolve",
    "settled",
    "tries_synthetic",
    "validate_options",
]
