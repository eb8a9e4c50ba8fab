"""Load and save models: clear errors on bad input, atomic writes, never touch the input.

Models over the protobuf limit (2 GiB serialized) exist only with their weights as external
data. They take the *large-model path*: checked from their file (the checker would have to
serialize them), run in onnxruntime from a staged file (see ``check.session``) and saved
with external data even without ``--save-as-external-data``. Their weights are read once,
and never copied into a second ``ModelProto``: :func:`serialized_size` measures a model
without serializing it, and :func:`write_external` writes one without changing it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, EncodeError, Message
from onnx.external_data_helper import load_external_data_for_model

from ..errors import UsageError, size_problem
from .shapes import without_large_weights

log = logging.getLogger("lbyl_onnx")

PROTOBUF_LIMIT = 2**31 - 1
"""The largest serialized protobuf message, in bytes."""

LARGE_MODEL_BYTES = PROTOBUF_LIMIT
"""Serialized size from which a model takes the large-model path (read at call time: tests
lower it to send small models down that path)."""

EXTERNAL_MIN_BYTES = 1024
"""Tensors of at least this many bytes go to the data file when saving with external data."""

_ALIGN = 4096
"""Offsets of external tensors of a megabyte or more are aligned to pages (onnxruntime can
then map them instead of copying)."""

_RAW_BYTES = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT16: 2,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.UINT32: 4,
    onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.COMPLEX64: 8,
    onnx.TensorProto.COMPLEX128: 16,
    onnx.TensorProto.BFLOAT16: 2,
}
"""Bytes per element of the types whose ``raw_data`` is exactly ``elements * size`` long."""


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (with its external data), or raise :class:`UsageError` saying why.

    A model that is large with its external data (:data:`LARGE_MODEL_BYTES`) is checked from
    its file, before its weights are read; the weights are then read once.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"input file not found: {path}")
    if path.is_dir():
        raise UsageError(f"input is a directory, not an ONNX file: {path}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"input file is not readable: {path}")
    if path.stat().st_size == 0:
        raise UsageError(f"input file is empty: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{path} is not an ONNX model (cannot parse: {_first_line(error)})"
        ) from error
    except OSError as error:
        raise UsageError(f"cannot read {path}: {_first_line(error)}") from error
    if not model.graph.node or not model.opset_import:
        raise UsageError(f"{path} is not an ONNX model (no graph or no opset)")
    large = path.stat().st_size + _external_bytes(model, path.parent) >= LARGE_MODEL_BYTES
    if large:
        _check(path, path)  # from the file: the weights stay on disk
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as error:
        raise UsageError(
            f"cannot read {path} or its external data: {_first_line(error)}"
        ) from error
    if not large:
        _check(model, path)
    if problem := oversized_constant(model):
        raise UsageError(f"{path}: {problem}")
    return model


def _check(model: onnx.ModelProto | Path, path: Path) -> None:
    """The ONNX checker in full (strict shape and type inference included) on the input, once:
    a model it rejects (an output's declared shape or a ``value_info`` contradicting the
    graph, a sparse initializer where a node takes a tensor) is the input's problem, so that
    one it rejects after the rewrite is the tool's. A large model is checked from its file,
    whose weights are external references (read by neither check)."""
    try:
        onnx.checker.check_model(
            model if isinstance(model, onnx.ModelProto) else str(model), full_check=True
        )
    except (
        onnx.checker.ValidationError,
        onnx.shape_inference.InferenceError,
        ValueError,
        EncodeError,
    ) as error:
        raise UsageError(f"{path} fails the ONNX checker: {_first_line(error)}") from error


def _external_bytes(model: onnx.ModelProto, folder: Path) -> int:
    """Bytes of external data the model's tensors refer to (as recorded, or the file's size)."""
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        try:
            if "length" in info:
                total += int(info["length"])
            elif "location" in info and (folder / info["location"]).is_file():
                total += (folder / info["location"]).stat().st_size - int(info.get("offset", 0))
        except (OSError, ValueError):
            continue  # a bad entry is reported when the data is read
    return total


def external_data_files(path: str | os.PathLike) -> set[Path]:
    """The resolved paths of the external data files an ONNX file refers to (its weights
    are not read)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add((path.parent / entry.value).resolve())
    return files


def check_output_path(
    input_path: str | os.PathLike, output_path: str | os.PathLike, what: str = "output"
) -> None:
    """Refuse an output that is the input (even through a link) or cannot be written, and
    one that would overwrite the input's external data: OUT itself, or for the model output
    the ``OUT.data`` that saving with external data writes (which must not be the input
    either).

    Only a regular file is ever replaced: an existing output that is a directory, a FIFO, a
    device or a socket is refused, as is a path that names a standard stream or a file
    descriptor (``/dev/stdout``, ``/dev/fd/3``), whatever it is connected to."""
    out = Path(output_path)
    src = Path(input_path)
    same = out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src))
    if same:
        raise UsageError(f"{what} {out} is the input file; choose another path")
    if is_stream_path(out):
        raise UsageError(f"{what} {out} is a standard stream or file descriptor, not a file")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{what} folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} folder is not writable: {folder}")
    if out.is_dir():
        raise UsageError(f"{what} is a directory: {out}")
    if kind := not_regular(out):
        raise UsageError(f"{what} {out} is {kind}, not a regular file: it is never replaced")
    data = folder / f"{out.name}.data"
    if what == "output" and (
        data == src.resolve() or (data.exists() and src.exists() and data.samefile(src))
    ):
        raise UsageError(
            f"{what} {out} would write its external data to {data.name}, the input file; "
            "choose another name"
        )
    candidates = [out.resolve(), *([data.resolve()] if what == "output" else [])]
    existing = [c for c in candidates if c.exists()]
    if existing and src.is_file():  # only then can the input's data be at stake
        try:
            inputs = external_data_files(src)
        except (DecodeError, OSError, RuntimeError, ValueError, UnicodeDecodeError):
            inputs = set()  # an unreadable input is reported when it is loaded
        for candidate in existing:
            if candidate in inputs or any(candidate.samefile(f) for f in inputs if f.exists()):
                raise UsageError(
                    f"{what} {out} would overwrite {candidate.name}, the input's external "
                    "data; choose another name"
                )


_STREAM_PATH = re.compile(r"/dev/(stdin|stdout|stderr|fd/\d+)|/proc/(self|thread-self|\d+)/fd/\d+")
"""Paths that name a standard stream or a file descriptor (Linux, macOS)."""


def is_stream_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` (made absolute, links not followed) names a standard stream or a
    file descriptor: replacing what it resolves to would replace whatever file the stream
    is connected to."""
    return _STREAM_PATH.fullmatch(os.path.abspath(path)) is not None


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is (links followed) where it exists and is not a regular file ("a
    FIFO (named pipe)", "a character device"...); None for a regular file or no file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` of the block (disk full, file size limit, read-only or missing
    folder, a directory in the way) into a :class:`UsageError` naming ``path``."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or _first_line(error)
        raise UsageError(f"cannot write {path}: {reason}") from error


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``; a
    failed write (:func:`writing`: exit 2, naming ``path``) leaves neither."""
    target = Path(path).resolve()
    with writing(path):
        handle, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                if hasattr(os, "fchmod"):
                    os.fchmod(stream.fileno(), _new_file_mode(target))
                stream.write(text)
            os.replace(staged, target)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise


def _new_file_mode(target: Path) -> int:
    """The permissions of the file replacing ``target``: its own, else those ``open`` gives
    a new file (``0o666`` less the umask; ``mkstemp`` would give ``0o600``)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def save_model(
    model: onnx.ModelProto, output_path: str | os.PathLike, external_data: bool = False
) -> None:
    """Write ``model`` atomically: into a temporary folder beside OUT, then rename.

    With ``external_data``, or when the model is over the protobuf limit
    (:func:`is_large`; a one-line message is logged then), the weights go to ``OUT.data``
    beside OUT; both files appear only once both are complete. ``model`` is not changed.
    A write that fails (disk full, file size limit, read-only folder, a directory where
    ``OUT.data`` goes) is a :class:`UsageError` naming the path; the temporary folder is
    removed, and an existing OUT is left as it was.
    """
    out = Path(output_path).resolve()
    automatic = not external_data and is_large(model)
    data = out.parent / f"{out.name}.data"
    shown = Path(output_path)  # as the caller named it, in messages
    with writing(shown):
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = staging / out.name
        if external_data or automatic:
            with writing(f"{shown} and its external data {data.name}"):
                has_data = write_external(model, staged, data.name)
            if has_data:
                if kind := not_regular(data):
                    raise UsageError(f"cannot write {shown.parent / data.name}: it is {kind}")
                with writing(shown.parent / data.name):
                    os.replace(staging / data.name, data)
            if automatic:
                log.warning(
                    "%s is over 2 GB: its weights are saved as external data in %s beside it",
                    out.name,
                    data.name,
                )
        else:
            with writing(shown):
                staged.write_bytes(model.SerializeToString())
        with writing(shown):
            os.replace(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_external(
    model: onnx.ModelProto, path: str | os.PathLike, data_name: str | None = None
) -> bool:
    """Write ``model`` to ``path`` with every initializer of at least
    :data:`EXTERNAL_MIN_BYTES` (subgraphs' included) in one data file ``data_name`` beside it
    (default ``PATH.data``); returns whether any went there (if none, there is no data file).

    Unlike ``onnx.save_model(..., save_as_external_data=True)``, ``model`` is not changed
    (that one empties the tensors it writes): a skeleton without the weights' bytes is
    written, each weight's bytes being copied to the data file one at a time. ``Constant``
    node tensors stay in the model, as with onnx's default.
    """
    path = Path(path)
    data_name = data_name or f"{path.name}.data"
    with open(path.parent / data_name, "wb") as stream:
        skeleton = onnx.ModelProto()
        _copy_fields(model, skeleton, skip=("graph",))
        if model.HasField("graph"):
            _skeleton_graph(model.graph, skeleton.graph, stream, data_name)
        written = stream.tell() > 0
    if not written:
        (path.parent / data_name).unlink()
    onnx.save_model(skeleton, str(path))
    return written


def _skeleton_graph(graph: onnx.GraphProto, into: onnx.GraphProto, stream, data_name) -> None:
    _copy_fields(graph, into, skip=("node", "initializer"))
    for tensor in graph.initializer:
        into.initializer.append(_external_tensor(tensor, stream, data_name))
    for node in graph.node:
        copy = into.node.add()
        if not any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            copy.CopyFrom(node)
            continue
        _copy_fields(node, copy, skip=("attribute",))
        for attr in node.attribute:
            new = copy.attribute.add()
            _copy_fields(attr, new, skip=("g", "graphs"))
            if attr.HasField("g"):
                _skeleton_graph(attr.g, new.g, stream, data_name)
            for sub in attr.graphs:
                _skeleton_graph(sub, new.graphs.add(), stream, data_name)


def _external_tensor(tensor: onnx.TensorProto, stream, data_name: str) -> onnx.TensorProto:
    """The tensor's metadata pointing into ``stream`` (its bytes appended there), or a copy of
    it when it is small or keeps its values in typed fields (``float_data``...: how no
    exporter writes a large tensor, and how none is read from external data)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ValueError(f"tensor '{tensor.name}' refers to external data that is not loaded")
    raw = tensor.HasField("raw_data") and tensor.data_type in _RAW_BYTES
    if not raw or _data_bytes(tensor) < EXTERNAL_MIN_BYTES:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        return copy
    meta = _tensor_metadata(tensor)
    data = tensor.raw_data
    offset = stream.tell()
    if len(data) >= 2**20 and offset % _ALIGN:
        stream.write(b"\0" * (_ALIGN - offset % _ALIGN))
        offset = stream.tell()
    stream.write(data)
    meta.data_location = onnx.TensorProto.EXTERNAL
    del meta.external_data[:]
    for key, value in (("location", data_name), ("offset", offset), ("length", len(data))):
        entry = meta.external_data.add()
        entry.key, entry.value = key, str(value)
    return meta


def _tensor_metadata(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of every field but ``raw_data`` (reading that field copies the bytes)."""
    meta = onnx.TensorProto()
    for field in onnx.TensorProto.DESCRIPTOR.fields:
        if field.name == "raw_data":
            continue
        value = getattr(tensor, field.name)
        if hasattr(value, "extend"):
            if len(value):
                getattr(meta, field.name).extend(value)
        elif tensor.HasField(field.name):
            if isinstance(value, Message):
                getattr(meta, field.name).CopyFrom(value)
            else:
                setattr(meta, field.name, value)
    return meta


def _copy_fields(source: Message, target: Message, skip: tuple[str, ...]) -> None:
    """Copy every set field of ``source`` but ``skip`` into ``target`` (same type)."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if hasattr(value, "extend"):
            getattr(target, field.name).extend(value)
        elif isinstance(value, Message):
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, from its dims and type where ``raw_data`` is exact (reading
    ``raw_data`` would copy it), else from its serialized size."""
    if tensor.HasField("raw_data") and tensor.data_type in _RAW_BYTES:
        return int(np.prod(tensor.dims, dtype=np.int64)) * _RAW_BYTES[tensor.data_type]
    return tensor.ByteSize()


def serialized_size(model: onnx.ModelProto) -> int:
    """``len(model.SerializeToString())``, without serializing the initializers' bytes.

    ``ByteSize()`` encodes the whole message (a second copy of every weight, for a moment)
    and fails over 2 GiB; this sums the parts instead, taking each initializer's data length
    from its dims and type (which is what every writer stores).
    """
    top = onnx.ModelProto()
    _copy_fields(model, top, skip=("graph",))
    size = top.ByteSize()
    if model.HasField("graph"):
        size += _field_bytes(_GRAPH_FIELD, _graph_bytes(model.graph))
    return size


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to serialize as one message (:data:`LARGE_MODEL_BYTES`)."""
    return serialized_size(model) >= LARGE_MODEL_BYTES


def _graph_bytes(graph: onnx.GraphProto) -> int:
    rest = onnx.GraphProto()
    _copy_fields(graph, rest, skip=("node", "initializer"))
    size = rest.ByteSize()
    size += sum(_field_bytes(_NODE_FIELD, node.ByteSize()) for node in graph.node)
    return size + sum(_field_bytes(_INIT_FIELD, _tensor_bytes(t)) for t in graph.initializer)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if not tensor.HasField("raw_data") or tensor.data_type not in _RAW_BYTES:
        return tensor.ByteSize()
    return _tensor_metadata(tensor).ByteSize() + _field_bytes(_RAW_FIELD, _data_bytes(tensor))


def _field_bytes(number: int, length: int) -> int:
    """Serialized bytes of a length-delimited field: key, length, payload."""
    return _varint_bytes(number << 3 | 2) + _varint_bytes(length) + length


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_NODE_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["node"].number
_INIT_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and attribute tensors, subgraphs included."""

    def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for sub in attr.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(model.graph)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def oversized_constant(model: onnx.ModelProto) -> str | None:
    """Why a ``ConstantOfShape`` node of the main graph is refused where its shape is a
    constant (the tool evaluates such weights, as onnxruntime does): the tensor it makes
    would be over :func:`lbyl_onnx.errors.size_problem`'s limit. None if none is."""
    values = _small_values(model)
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        dims = values.get(node.input[0]) if node.input else None
        if dims is None or any(d < 0 for d in dims):
            continue
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        itemsize = _RAW_BYTES.get(fill.data_type, 8) if fill is not None else 4
        what = f"the tensor of ConstantOfShape node '{node.name or node.output[0]}'"
        if problem := size_problem(what, dims, itemsize):
            return problem
    return None


_SMALL = 64
"""Elements of the constants :func:`_small_values` reads (a shape has one per axis)."""


def _small_values(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The values (as integers) of the main graph's small constant tensors: initializers,
    ``Constant`` nodes, and ``Identity`` and ``ConstantOfShape`` nodes of such tensors, in
    graph order (nothing large is evaluated)."""
    values = {
        t.name: _integers(t)
        for t in model.graph.initializer
        if math.prod(t.dims) <= _SMALL and t.data_location != onnx.TensorProto.EXTERNAL
    }
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        attrs = {a.name: a for a in node.attribute}
        known = values.get(node.input[0]) if node.input else None
        value = None
        if node.op_type == "Identity":
            value = known
        elif node.op_type == "Constant" and "value" in attrs:
            value = (
                _integers(attrs["value"].t) if math.prod(attrs["value"].t.dims) <= _SMALL else None
            )
        elif node.op_type == "Constant" and "value_ints" in attrs:
            value = [int(v) for v in attrs["value_ints"].ints][:_SMALL]
        elif node.op_type == "ConstantOfShape" and known is not None and _small_shape(known):
            fill = _integers(attrs["value"].t) if "value" in attrs else [0]
            value = fill[:1] * math.prod(known) if fill else None
        if value is not None:
            values[node.output[0]] = value
    return {name: value for name, value in values.items() if value is not None}


def _small_shape(dims: list[int]) -> bool:
    return all(d >= 0 for d in dims) and math.prod(dims) <= _SMALL


def _integers(tensor: onnx.TensorProto) -> list[int] | None:
    """A small tensor's values as integers (floats truncated, as a shape would be), or None
    where they are not all finite numbers."""
    try:
        array = onnx.numpy_helper.to_array(tensor).reshape(-1)
        if not np.isfinite(array).all():
            return None
        return [int(v) for v in array]
    except (TypeError, ValueError, OverflowError):
        return None


def check_model(model: onnx.ModelProto, full_check: bool = True) -> None:
    """The ONNX checker (raising its errors). A large model (:func:`is_large`) is checked
    on a copy whose large floating-point weights are typed graph inputs: every node, type
    and shape is checked, only the weights' bytes are not (serializing them would fail)."""
    if is_large(model):
        model = without_large_weights(model)
    onnx.checker.check_model(model, full_check=full_check)
