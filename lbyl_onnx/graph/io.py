"""Load and save models: clear errors on bad input, atomic writes, never touch the input."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import UsageError


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (with its external data), or raise :class:`UsageError` saying why."""
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
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{path} is not an ONNX model (cannot parse: {_first_line(error)})"
        ) from error
    except OSError as error:
        raise UsageError(
            f"cannot read {path} or its external data: {_first_line(error)}"
        ) from error
    if not model.graph.node or not model.opset_import:
        raise UsageError(f"{path} is not an ONNX model (no graph or no opset)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise UsageError(f"{path} fails the ONNX checker: {_first_line(error)}") from error
    return model


def check_output_path(
    input_path: str | os.PathLike, output_path: str | os.PathLike, what: str = "output"
) -> None:
    """Refuse an output that is the input (even through a link) or cannot be written."""
    out = Path(output_path)
    src = Path(input_path)
    same = out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src))
    if same:
        raise UsageError(f"{what} {out} is the input file; choose another path")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{what} folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{what} folder is not writable: {folder}")
    if out.is_dir():
        raise UsageError(f"{what} is a directory: {out}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    target = Path(path).resolve()
    handle, staged = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(staged, target)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def save_model(
    model: onnx.ModelProto, output_path: str | os.PathLike, external_data: bool = False
) -> None:
    """Write ``model`` atomically: into a temporary folder beside OUT, then rename.

    With ``external_data`` the weights go to ``OUT.data`` beside OUT (never over the input's
    data file); both files appear only once both are complete.
    """
    out = Path(output_path).resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = staging / out.name
        if external_data:
            data_name = f"{out.name}.data"
            onnx.save_model(
                model,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            os.replace(staging / data_name, out.parent / data_name)
        else:
            staged.write_bytes(model.SerializeToString())
        os.replace(staged, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
