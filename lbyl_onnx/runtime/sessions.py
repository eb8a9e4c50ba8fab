"""onnxruntime sessions, batching and seeded feeds: the only module that creates sessions.

Sessions run on the CPU. A model over the protobuf limit cannot be handed to onnxruntime as
bytes: :func:`session` runs it from a file with external data, staged in a temporary folder
(or from the original's own file, when given its path).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UsageError
from ..graph import io
from ..graph.shapes import NUMPY_TYPES, declared_dims, real_inputs, type_name

GUESSED_DIMS = (1, 32, 224)
"""Values tried, in order, for unknown non-batch input dimensions until the original runs."""


def random_inputs(
    model: onnx.ModelProto,
    batch: int,
    seed: int = 0,
    shapes: dict[str, list[int]] | None = None,
    guess: int = 1,
) -> dict[str, np.ndarray]:
    """Seeded inputs: standard normal for floats, zeros for integers and booleans, ``"0"``
    for strings (a number too, for a model that casts its text to one).

    A dimension comes from ``shapes`` when given; otherwise a fixed one is kept, an unknown
    first dimension becomes ``batch`` and any other unknown dimension ``guess``. Raises
    ``ValueError`` naming the input where none can be made: an element type onnxruntime
    takes no NumPy array of (:data:`~lbyl_onnx.graph.shapes.NUMPY_TYPES`), or an input that
    is not a tensor (a sequence, a map, an optional).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for entry in real_inputs(model):
        if entry.type.WhichOneof("value") != "tensor_type":
            kind = (entry.type.WhichOneof("value") or "value of no type").removesuffix("_type")
            raise ValueError(f"input '{entry.name}' is a {kind}, not a tensor: {_NO_FEEDS}")
        elem = entry.type.tensor_type.elem_type
        dtype = NUMPY_TYPES.get(elem)
        if dtype is None:
            raise ValueError(
                f"input '{entry.name}' has element type {type_name(elem)}, which onnxruntime "
                f"cannot take from Python (NumPy): {_NO_FEEDS}"
            )
        if shapes and entry.name in shapes:
            dims = list(shapes[entry.name])
        else:
            declared = declared_dims(entry.type) or []
            dims = [
                d if isinstance(d, int) and d > 0 else (batch if axis == 0 else guess)
                for axis, d in enumerate(declared)
            ]
        if np.issubdtype(dtype, np.floating):
            feeds[entry.name] = np.asarray(rng.standard_normal(dims), dtype=dtype)
        elif dtype is np.object_:
            feeds[entry.name] = np.full(dims, "0", dtype=object)
        else:
            feeds[entry.name] = np.zeros(dims, dtype=dtype)
    return feeds


_NO_FEEDS = "no input can be made for it"


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


def shapes_text(feeds: dict[str, np.ndarray]) -> str:
    """The inputs' shapes as ``--input-shape`` writes them (``name:1x3x224x224, ...``)."""
    return ", ".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items())


def describe(feeds: dict[str, np.ndarray], source: str) -> str:
    return f"{source} ({shapes_text(feeds)})"


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch the model fixes (its first input's first dimension), or None when free."""
    fixed = session.get_inputs()[0].shape[0]
    return fixed if isinstance(fixed, int) and fixed > 0 else None


def batch_slices(session: ort.InferenceSession, count: int, batch: int) -> list[slice]:
    """``count`` samples in slices of ``batch`` (the model's own batch when it is fixed,
    :func:`fixed_batch`, whose remainder is dropped): the one place that batches inputs."""
    fixed = fixed_batch(session)
    step = fixed or batch
    if count < step:
        raise UsageError(f"calibration data has {count} samples; the model's batch is {step}")
    last = count - step + 1 if fixed else count  # a fixed batch drops the remainder
    return [slice(start, min(start + step, count)) for start in range(0, last, step)]
