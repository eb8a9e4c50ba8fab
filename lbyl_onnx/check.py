"""Validation in onnxruntime: the original and the pruned model on the same inputs.

Both run on the CPU with graph optimisations disabled, so that the runtime's own fusions
hide nothing (as onnxsim's model checking does). Pruning is lossy, so the gate is not
equivalence: validation fails when the pruned model does not load or run, changes an
output's shape or dtype, or produces NaN/Inf where the original did not. The metrics say
how far the outputs moved.

A model over the protobuf limit cannot be handed to onnxruntime (or the ONNX checker) as
bytes: :func:`session` runs it from a file with external data, staged in a temporary folder
(or the original's own file, when :func:`validate` is given its path), and
:func:`check_model` checks it without its weights' bytes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .graph import io
from .graph.shapes import declared_dims, without_large_weights

_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}

GUESSED_DIMS = (1, 32, 224)
"""Values tried, in order, for unknown non-batch input dimensions until the original runs."""


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


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs)."""
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def random_inputs(
    model: onnx.ModelProto,
    batch: int,
    seed: int = 0,
    shapes: dict[str, list[int]] | None = None,
    guess: int = 1,
) -> dict[str, np.ndarray]:
    """Seeded inputs: standard normal for floats, zeros for integers and booleans.

    A dimension comes from ``shapes`` when given; otherwise a fixed one is kept, an unknown
    first dimension becomes ``batch`` and any other unknown dimension ``guess``.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for entry in real_inputs(model):
        elem = entry.type.tensor_type.elem_type
        dtype = _NUMPY_TYPES.get(elem)
        if dtype is None:
            raise ValueError(f"input '{entry.name}' has an unsupported element type {elem}")
        if shapes and entry.name in shapes:
            dims = list(shapes[entry.name])
        else:
            declared = declared_dims(entry.type) or []
            dims = [
                d if isinstance(d, int) and d > 0 else (batch if axis == 0 else guess)
                for axis, d in enumerate(declared)
            ]
        if np.issubdtype(dtype, np.floating):
            feeds[entry.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[entry.name] = np.zeros(dims, dtype=dtype)
    return feeds


def session(
    model: onnx.ModelProto | bytes | str | os.PathLike,
    optimised: bool = False,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """A CPU session with every graph optimisation disabled (``optimised``: onnxruntime's
    defaults, for measurements where speed matters more than seeing the graph as written;
    ``profile_prefix``: a timed session, as deployed: default optimisations, one thread,
    onnxruntime's profiler writing to files that start with it).

    Idle threads sleep instead of spinning: the tool runs NumPy between its onnxruntime
    runs, and spinning threads would take the cores from it.

    ``model`` is a ``ModelProto``, its bytes, or a path. A large ``ModelProto``
    (:func:`io.is_large`) is written with external data into a temporary folder, without
    changing it, and run from there; the folder goes with the session.
    """
    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
        options.intra_op_num_threads = options.inter_op_num_threads = 1
    elif not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 4  # fatal only: failures surface as exceptions, once
    staging = None
    if isinstance(model, onnx.ModelProto):
        if io.is_large(model):
            staging = tempfile.TemporaryDirectory(prefix="lbyl-onnx-")
            path = Path(staging.name) / "model.onnx"
            io.write_external(model, path)
            model = str(path)
        else:
            model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    try:
        created = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except BaseException:
        if staging is not None:
            staging.cleanup()
        raise
    if staging is not None:
        created._lbyl_staging = staging  # removed when the session is
    return created


def check_model(model: onnx.ModelProto, full_check: bool = True) -> None:
    """The ONNX checker (raising its errors). A large model (:func:`io.is_large`) is checked
    on a copy whose large floating-point weights are typed graph inputs: every node, type
    and shape is checked, only the weights' bytes are not (serializing them would fail)."""
    if io.is_large(model):
        model = without_large_weights(model)
    onnx.checker.check_model(model, full_check=full_check)


def shapes_text(feeds: dict[str, np.ndarray]) -> str:
    """The inputs' shapes as ``--input-shape`` writes them (``name:1x3x224x224, ...``)."""
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items())


def describe(feeds: dict[str, np.ndarray], source: str) -> str:
    return f"{source} ({shapes_text(feeds)})"


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


def unfixed_inputs(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None) -> list[str]:
    """The inputs with a dimension other than the batch that is neither declared nor given
    in ``input_shapes``."""
    unfixed = []
    for entry in real_inputs(model):
        if input_shapes and entry.name in input_shapes:
            continue
        dims = declared_dims(entry.type) or []
        if any(not (isinstance(d, int) and d > 0) for d in dims[1:]):
            unfixed.append(entry.name)
    return unfixed


def first_line(error: BaseException | None) -> str:
    """The first line of an error's message (at most 300 characters), else its type."""
    text = str(error).strip().splitlines() if error else []
    return text[0][:300] if text else type(error).__name__


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
    the caller feeds in batches); shapes must have the input's rank and fixed dimensions.
    """
    declared = {entry.name: entry for entry in real_inputs(model)}
    known = ", ".join(declared) or "none"
    problems = []
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
        expected = _NUMPY_TYPES.get(entry.type.tensor_type.elem_type)
        if dtype is not None and expected is not None and np.dtype(dtype) != np.dtype(expected):
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
