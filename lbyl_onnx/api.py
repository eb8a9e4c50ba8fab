"""The library's entry points: :func:`prune`, :func:`prune_file`, :func:`list_units`.

>>> import lbyl_onnx
>>> model, report = lbyl_onnx.prune("in.onnx", ratio=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable

import onnx

from .config import PruneConfig, validate_options
from .graph.io import check_output_path, load_model, save_model, write_text_atomic
from .graph.shapes import infer_shapes
from .graph.units import Declined, Unit, find_units
from .pipeline.run import prune, prune_validated
from .report import Report

__all__ = ["PruneConfig", "check_writable", "list_units", "prune", "prune_file", "write_report"]


def list_units(
    model: onnx.ModelProto | str | os.PathLike, prune_residual: bool = False
) -> tuple[list[Unit], list[Declined]]:
    """The prunable units of a model and the declined candidates, with reasons."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return find_units(model, infer_shapes(model), prune_residual)


def prune_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: PruneConfig | None = None,
    save_as_external_data: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """:func:`prune` from file to file; OUT is written atomically, and only on success. The
    options are checked first (once), then the output path, before any work is done."""
    options = validate_options(config or PruneConfig())
    check_output_path(input_path, output_path)
    model, report = prune_validated(input_path, options, progress)
    save_model(model, output_path, external_data=save_as_external_data)
    return report


def check_writable(
    input_path: str | os.PathLike, output_path: str | os.PathLike, what: str = "output"
) -> None:
    """Raise :class:`~lbyl_onnx.errors.UsageError` where ``output_path`` cannot be written
    (:func:`lbyl_onnx.graph.io.check_output_path`): before any work is done."""
    check_output_path(input_path, output_path, what)


def write_report(path: str | os.PathLike, report: Report) -> None:
    """The report as JSON, written atomically."""
    write_text_atomic(path, report.to_json())
