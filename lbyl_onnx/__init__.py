"""lbyl-onnx: remove convolution channels from ONNX models and restore accuracy without data.

>>> import lbyl_onnx
>>> model, report = lbyl_onnx.prune("in.onnx", ratio=0.3, method="lbyl")  # doctest: +SKIP
"""

from __future__ import annotations

from .api import PruneConfig, list_units, prune, prune_file
from .methods import MethodOptions
from .version import __version__

__all__ = ["MethodOptions", "PruneConfig", "__version__", "list_units", "prune", "prune_file"]
