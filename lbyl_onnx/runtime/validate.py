"""Validation in onnxruntime: the original and the pruned model on the same inputs.

Both run on the CPU with graph optimisations disabled, so that the runtime's own fusions
hide nothing (as onnxsim's model checking does). Pruning is lossy, so the gate is not
equivalence: validation fails when the pruned model does not load or run, changes an
output's shape or dtype, or produces NaN/Inf where the original did not. The metrics say
how far the outputs moved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import first_line
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
    2-D ``[batch, classes]`` with more than one class.
    """
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
    """
    try:
        reference_session = session(original)
    except Exception as error:
        return Validation(
            "unavailable", "", f"the original model does not load: {first_line(error)}"
        )
    if not isinstance(original, onnx.ModelProto):
        original = pruned  # pruning never changes the real inputs: their declarations
    names = [o.name for o in reference_session.get_outputs()]
    feeds, reference, source, error = None, None, "", None
    guesses = (1,) if input_data else GUESSED_DIMS
    for guess in guesses:
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
    inputs = describe(feeds or {}, source)
    if reference is None:
        message = f"the original model does not run on these inputs: {first_line(error)}"
        return Validation("unavailable", inputs, message)
    del reference_session  # one model in onnxruntime at a time: bounded memory
    try:
        outputs = session(pruned).run(names, feeds)
    except Exception as caught:
        return Validation("failed", inputs, f"the pruned model does not run: {first_line(caught)}")
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
        if np.issubdtype(ref.dtype, np.floating) and np.any(~np.isfinite(out) & np.isfinite(ref)):
            return Validation("failed", inputs, f"output '{name}' has NaN or Inf")
        metrics.append(compare(name, ref, out))
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    return Validation("passed", inputs, "", metrics, shapes)
