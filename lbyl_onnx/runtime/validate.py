"""Validation in onnxruntime: the original and the pruned model on the same inputs.

Both run on the CPU with graph optimisations disabled, so that the runtime's own fusions
hide nothing (as onnxsim's model checking does). Pruning is lossy, so the gate is not
equivalence: validation fails when the pruned model does not load or run, changes an
output's shape or dtype, or produces NaN/Inf. The metrics say how far the outputs moved.
An original that computes NaN/Inf itself leaves nothing to compare with: validation could
not run on random inputs (which may lie outside the model's domain), and user inputs it
computes NaN/Inf on are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import UsageError, first_line
from ..graph.shapes import unfixed_inputs
from .sessions import GUESSED_DIMS, describe, random_inputs, session


@dataclass
class OutputMetrics:
    """How far one output of the pruned model is from the original's."""

    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None = None


@dataclass
class Validation:
    """The outcome: ``passed``, ``failed`` or ``unavailable`` (the original itself cannot run)."""

    status: str
    inputs: str
    message: str = ""
    outputs: list[OutputMetrics] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    """The shapes the original ran on (reused to count MACs of dynamic models)."""


def compare(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputMetrics:
    """Max and mean absolute error, relative L2 error, cosine similarity, top-1 agreement.

    Top-1 agreement is reported for outputs that look like class scores: floating point,
    2-D ``[batch, classes]`` with more than one class. Outputs that are not numbers
    (strings) count the elements that differ: the max 1 where any does, the mean and the
    relative error the fraction that do, the cosine 1 minus it.
    """
    if reference.dtype.kind not in "biuf":
        differ = float(np.mean(reference != candidate)) if reference.size else 0.0
        return OutputMetrics(
            name, list(reference.shape), float(differ > 0), differ, differ, 1.0 - differ
        )
    a = reference.astype(np.float64).reshape(-1)
    b = candidate.astype(np.float64).reshape(-1)
    diff = np.abs(a - b)
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    rel = float(np.linalg.norm(a - b) / norm_a) if norm_a > 0 else float(np.linalg.norm(b))
    if norm_a > 0 and norm_b > 0:
        cosine = float(a @ b / (norm_a * norm_b))
    else:
        cosine = 1.0 if norm_a == norm_b else 0.0
    top1 = None
    if (
        reference.ndim == 2
        and reference.shape[1] > 1
        and np.issubdtype(reference.dtype, np.floating)
    ):
        top1 = float(np.mean(reference.argmax(1) == candidate.argmax(1)))
    return OutputMetrics(
        name,
        list(reference.shape),
        float(diff.max()) if diff.size else 0.0,
        float(diff.mean()) if diff.size else 0.0,
        rel,
        cosine,
        top1,
    )


def validate(
    original: onnx.ModelProto | str | os.PathLike,
    pruned: onnx.ModelProto,
    check_n: int = 8,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    input_data: dict[str, np.ndarray] | None = None,
) -> Validation:
    """Run both models on the same inputs and compare every output.

    ``original`` may be the path of the original's file (a large model then runs from it,
    not from a staged copy); its inputs are then read from ``pruned``, which has the same.

    ``unavailable`` where the original does not load, no input can be made for one of its
    inputs (:func:`random_inputs`), it does not run on them, or it computes NaN or Inf on
    random inputs (which may lie outside its domain: a logarithm of the input). On
    ``input_data``, an original that computes NaN or Inf is the input's problem: a
    :class:`UsageError`.
    """
    source = "user data (--input-data)" if input_data else f"{check_n} seeded random normal samples"
    try:
        reference_session = session(original)
    except Exception as error:
        return Validation(
            "unavailable", source, f"the original model does not load: {first_line(error)}"
        )
    if not isinstance(original, onnx.ModelProto):
        original = pruned  # pruning never changes the real inputs: their declarations
    names = [o.name for o in reference_session.get_outputs()]
    try:
        feeds, reference, source, error = _run_original(
            reference_session, original, names, check_n, seed, input_shapes, input_data
        )
    except ValueError as error:  # an input no feed can be made for
        return Validation("unavailable", source, str(error))
    inputs = describe(feeds or {}, source)
    if reference is None:
        message = f"the original model does not run on these inputs: {first_line(error)}"
        return Validation("unavailable", inputs, message)
    del reference_session  # one model in onnxruntime at a time: bounded memory
    if broken := _non_finite(names, reference):
        message = (
            f"the original model computes NaN or Inf in output '{broken}' on these inputs: "
            "there is nothing to compare the pruned model with"
        )
        if input_data:
            raise UsageError(f"--input-data: {message}")
        return Validation("unavailable", inputs, f"{message} (pass --input-data with real ones)")
    try:
        outputs = session(pruned).run(names, feeds)
    except Exception as caught:
        return Validation("failed", inputs, f"the pruned model does not run: {first_line(caught)}")
    return _compared(names, reference, outputs, feeds, inputs)


def _run_original(
    reference_session,
    original: onnx.ModelProto,
    names: list[str],
    check_n: int,
    seed: int,
    input_shapes: dict[str, list[int]] | None,
    input_data: dict[str, np.ndarray] | None,
) -> tuple[dict[str, np.ndarray] | None, list | None, str, Exception | None]:
    """The feeds, the original's outputs on them (None where it ran on none), what the feeds
    are, and the last error: ``input_data`` (completed by random inputs), else random inputs
    with each of :data:`GUESSED_DIMS` for unknown dimensions until the original runs.
    Raises ``ValueError`` where no input can be made for one of the model's inputs."""
    feeds, reference, source, error = None, None, "", None
    for guess in (1,) if input_data else GUESSED_DIMS:
        if input_data:
            feeds = dict(input_data)
            missing = random_inputs(original, check_n, seed, input_shapes, guess)
            for key, value in missing.items():
                feeds.setdefault(key, value)
            source = "user data (--input-data)"
        else:
            feeds = random_inputs(original, check_n, seed, input_shapes, guess)
            source = f"{check_n} seeded random normal samples"
            if guess != 1 or unfixed_inputs(original, input_shapes):
                source += f", unknown dimensions set to {guess} (pass --input-shape)"
        try:
            reference = reference_session.run(names, feeds)
            break
        except Exception as caught:
            error = caught
            if input_shapes:
                break
    return feeds, reference, source, error


def _non_finite(names: list[str], outputs: list) -> str:
    """The first output holding NaN or Inf, or ""."""
    for name, value in zip(names, outputs, strict=True):
        value = np.asarray(value)
        if _is_numeric(value) and not np.all(np.isfinite(value)):
            return name
    return ""


def _is_numeric(value: np.ndarray) -> bool:
    return value.dtype.kind in "fc"


def _compared(
    names: list[str],
    reference: list,
    outputs: list,
    feeds: dict[str, np.ndarray],
    inputs: str,
) -> Validation:
    """``failed`` where an output changed its shape or dtype or became NaN or Inf, else
    ``passed`` with the metrics of every output."""
    metrics = []
    for name, ref, out in zip(names, reference, outputs, strict=True):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.shape != out.shape or ref.dtype != out.dtype:
            return Validation(
                "failed",
                inputs,
                f"output '{name}' changed from {ref.dtype}{list(ref.shape)} "
                f"to {out.dtype}{list(out.shape)}",
            )
        if _is_numeric(ref) and not np.all(np.isfinite(out)):
            return Validation("failed", inputs, f"output '{name}' has NaN or Inf")
        metrics.append(compare(name, ref, out))
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    return Validation("passed", inputs, "", metrics, shapes)
