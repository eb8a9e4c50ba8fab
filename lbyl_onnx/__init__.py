"""lbyl-onnx: remove convolution channels from ONNX models and restore accuracy without data.

>>> import lbyl_onnx
>>> model, report = lbyl_onnx.prune("in.onnx", ratio=0.3, method="lbyl")  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that importing the package (as
``python -m lbyl_onnx`` and the ``lbyl-onnx`` command do first) loads neither NumPy nor
ONNX: the command can then handle an interrupt during those imports
(:mod:`lbyl_onnx.__main__`).
"""

from __future__ import annotations

from .version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up

if TYPE_CHECKING:
    from .api import PruneConfig, list_units, prune, prune_file
    from .methods import MethodOptions

__all__ = ["MethodOptions", "PruneConfig", "__version__", "list_units", "prune", "prune_file"]

_LAZY = {
    "MethodOptions": ".methods",
    "PruneConfig": ".api",
    "list_units": ".api",
    "prune": ".api",
    "prune_file": ".api",
}


def __getattr__(name: str) -> object:
    """The public names, and the subpackages (``lbyl_onnx.graph``), imported on first use."""
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
