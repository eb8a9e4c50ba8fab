"""Checks of user-given inputs (``--input-data``, ``--calibration-data``, ``--input-shape``)
against the model's declared inputs, and of the sizes of the inputs the tool draws."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import UsageError, size_problem
from ..graph.shapes import NUMPY_TYPES, declared_dims, real_inputs

DRAWN_ITEMSIZE = 8
"""Bytes per element of an input the tool draws: NumPy draws normal samples in float64."""


def input_problems(
    model: onnx.ModelProto,
    input_data: dict[str, np.ndarray] | None,
    input_shapes: dict[str, list[int]] | None,
    data_flag: str = "--input-data",
    any_batch: bool = False,
) -> list[str]:
    """What is wrong with user-given inputs or shapes for this model (empty if nothing).

    Names must be real graph inputs; data must have the input's element type and rank, and
    its fixed dimensions (with ``any_batch``, the first may be any number of samples, which
    the caller feeds in batches), and floating-point data only finite values (NaN or Inf
    would make every statistic and comparison NaN); shapes must have the input's rank and
    fixed dimensions.
    """
    declared = {entry.name: entry for entry in real_inputs(model)}
    known = ", ".join(declared) or "none"
    problems = [
        problem
        for name, value in (input_data or {}).items()
        if name in declared and (problem := non_finite(value, f"{data_flag} '{name}'"))
    ]
    given = [
        (name, value.shape, value.dtype, data_flag) for name, value in (input_data or {}).items()
    ]
    given += [
        (name, tuple(dims), None, "--input-shape") for name, dims in (input_shapes or {}).items()
    ]
    for name, shape, dtype, flag in given:
        entry = declared.get(name)
        if entry is None:
            problems.append(f"{flag} names '{name}', which is not an input (inputs: {known})")
            continue
        expected = NUMPY_TYPES.get(entry.type.tensor_type.elem_type)
        if dtype is not None and expected is not None and not _same_type(dtype, expected):
            problems.append(
                f"{flag} '{name}' is {np.dtype(dtype)}, the model expects {np.dtype(expected)}"
            )
        dims = declared_dims(entry.type)
        if dims is None:
            continue
        if len(dims) != len(shape):
            problems.append(
                f"{flag} '{name}' has shape {list(shape)}, the model expects rank {len(dims)}"
            )
            continue
        for axis, (want, have) in enumerate(zip(dims, shape, strict=True)):
            if any_batch and axis == 0 and flag == data_flag:
                continue
            if isinstance(want, int) and want > 0 and want != have:
                problems.append(
                    f"{flag} '{name}' has shape {list(shape)}, "
                    f"the model expects {want} on axis {axis}"
                )
                break
    return problems


def non_finite(value: np.ndarray, what: str) -> str:
    """``what`` holds NaN or Inf (how many, and the first's index), or "" where it does not
    (or is not floating point)."""
    if value.dtype.kind not in "fc" and value.dtype.name != "bfloat16":
        return ""
    bad = ~np.isfinite(value)
    if not bad.any():
        return ""
    first = [int(i) for i in np.unravel_index(int(np.argmax(bad)), value.shape)]
    nan = int(np.count_nonzero(np.isnan(value)))
    kinds = " and ".join(
        f"{count} {kind}" for count, kind in ((nan, "NaN"), (int(bad.sum()) - nan, "Inf")) if count
    )
    return f"{what} holds {kinds} (the first at index {first}): the inputs must be finite"


def _same_type(given: np.dtype, expected: type) -> bool:
    """Whether data of NumPy type ``given`` is what an input of ``expected`` takes (a string
    input: text arrays, as ``np.load`` reads them, or ``object`` arrays)."""
    if expected is np.object_:
        return np.dtype(given).kind in "UO"
    return np.dtype(given) == np.dtype(expected)


def size_problems(
    model: onnx.ModelProto,
    input_shapes: dict[str, list[int]] | None,
    batch: int = 1,
    batch_flag: str = "",
) -> list[str]:
    """The inputs too large to draw (:func:`lbyl_onnx.errors.size_problem`, at
    :data:`DRAWN_ITEMSIZE` bytes per element), each at its ``--input-shape``, else at its
    declared shape with a free batch of ``batch`` (validation's, from ``batch_flag``) and
    every other free dimension 1 (the first size validation tries). A run that draws inputs
    draws one sample of each at least: at ``batch`` 1, only inputs too large for that."""
    problems = []
    for entry in real_inputs(model):
        given = (input_shapes or {}).get(entry.name)
        if given is not None:
            dims, what = list(given), f"--input-shape '{entry.name}'"
        else:
            declared = declared_dims(entry.type) or []
            dims = [
                d if isinstance(d, int) and d > 0 else (batch if axis == 0 else 1)
                for axis, d in enumerate(declared)
            ]
            free = declared and not (isinstance(declared[0], int) and declared[0] > 0)
            source = f", the batch from {batch_flag}" if free and batch_flag else ""
            what = f"input '{entry.name}' (as declared{source})"
        if problem := size_problem(what, dims, DRAWN_ITEMSIZE):
            problems.append(problem)
    return problems


def only_input(
    data: dict[str, np.ndarray], model: onnx.ModelProto, only: str, flag: str
) -> dict[str, np.ndarray]:
    """``data`` with the array under ``only`` (one array for the model's only input, from a
    ``.npy``) named as that input; :class:`UsageError` for a model with several inputs."""
    if only not in data:
        return data
    names = [entry.name for entry in real_inputs(model)]
    if len(names) != 1:
        raise UsageError(
            f"{flag} is one array (a .npy file), which stands for a model's only input; this "
            f"model has {len(names)} ({', '.join(names)}): give a .npz with an array named "
            "like each"
        )
    return {names[0]: data[only]}
