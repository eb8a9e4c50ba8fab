"""Hostile paths, sizes, files, write errors and interrupts (issue 28, classes 4, 8, 9, 10,
11): each is refused with one line and its documented exit code, leaves no file behind, and
never touches IN or an existing OUT.

Limits are simulated (a lowered memory limit, an injected ``ENOSPC``, ``RLIMIT_FSIZE`` in a
child process), so that no test allocates or writes much. Paths under ``/dev`` are guarded:
a regression that tried to replace one fails the test instead of replacing it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from models import conv_net
from onnx import TensorProto, helper, numpy_helper

import lbyl_onnx.errors
import lbyl_onnx.graph.io
import lbyl_onnx.pipeline.run
from lbyl_onnx.cli import main

ROOT = Path(__file__).resolve().parent.parent
REAL_REPLACE = os.replace
REAL_MKSTEMP = tempfile.mkstemp
REAL_WRITE_BYTES = Path.write_bytes


# ---------------------------------------------------------------------------- helpers


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result: Result, *needles: str, code: int = 2) -> str:
    """The one line of an error: exit ``code``, no traceback, every needle in it."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def names(folder: Path) -> list[str]:
    """Every entry of ``folder``, hidden (temporary) ones included."""
    return sorted(p.name for p in folder.iterdir())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def guard_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail, rather than replace a device, where a regression would write under /dev."""

    def replace(src, dst, *args, **kwargs):
        assert not os.path.abspath(dst).startswith("/dev/"), f"replacing {dst}"
        return REAL_REPLACE(src, dst, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        assert dir is None or not os.path.abspath(dir).startswith("/dev"), f"writing in {dir}"
        return REAL_MKSTEMP(*args, dir=dir, **kwargs)

    monkeypatch.setattr(lbyl_onnx.graph.io.os, "replace", replace)
    monkeypatch.setattr(lbyl_onnx.graph.io.tempfile, "mkstemp", mkstemp)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Conv(3->16) -> Relu -> Conv head, input ``x [N, 3, 6, 6]``: one unit; both weights
    go to external data, before and after pruning (over 1024 bytes)."""
    path = tmp_path / "in.onnx"
    onnx.save(conv_net((3, 16)), str(path))
    return path


def with_input_dims(model: onnx.ModelProto, dims: list[int | str]) -> onnx.ModelProto:
    shape = model.graph.input[0].type.tensor_type.shape
    for d, value in zip(shape.dim, dims, strict=True):
        d.Clear()
        if isinstance(value, str):
            d.dim_param = value
        else:
            d.dim_value = value
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------- 4. paths


def test_report_equal_to_outs_external_data_file_is_refused_up_front(tiny: Path) -> None:
    folder = tiny.parent
    for extra in (["--save-as-external-data"], []):  # also without: over 2 GB it is written
        result = run(tiny, folder / "out.onnx", "--report", folder / "out.onnx.data", *extra)
        refused(result, "--report", "is OUT's external data file (out.onnx.data)")
        assert names(folder) == ["in.onnx"]


def test_report_equal_to_outs_existing_data_file_through_a_link_is_refused(tiny: Path) -> None:
    folder = tiny.parent
    assert run(tiny, folder / "out.onnx", "--save-as-external-data").exit_code == 0
    before = digest(folder / "out.onnx.data")
    (folder / "r.json").hardlink_to(folder / "out.onnx.data")
    report = folder / "r.json"
    result = run(tiny, folder / "out.onnx", "--save-as-external-data", "--report", report)
    refused(result, "is OUT's external data file")
    assert digest(folder / "out.onnx.data") == before


@pytest.mark.parametrize("role", ["OUT", "--report"])
def test_fifo_is_never_replaced(tiny: Path, role: str) -> None:
    folder = tiny.parent
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    args = [fifo] if role == "OUT" else [folder / "out.onnx", "--report", fifo]
    refused(run(tiny, *args), str(fifo), "is a FIFO (named pipe), not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert names(folder) == ["in.onnx", "pipe"]


@pytest.mark.parametrize("role", ["OUT", "--report", "OUT.data"])
def test_device_node_is_never_replaced(tiny: Path, role: str) -> None:
    """A character device like /dev/null (1, 3), made in the test's folder (root only)."""
    folder = tiny.parent
    device = folder / ("out.onnx.data" if role == "OUT.data" else "device")
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:  # not root: the path leads to the system's /dev/null instead
        device.symlink_to("/dev/null")
    args = {
        "OUT": [device],
        "--report": [folder / "out.onnx", "--report", device],
        "OUT.data": [folder / "out.onnx", "--save-as-external-data"],
    }[role]
    refused(run(tiny, *args), "is a character device")
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert names(folder) == sorted(["in.onnx", device.name])


@pytest.mark.parametrize("path", ["/dev/stdout", "/dev/stderr", "/dev/fd/1", "/proc/self/fd/2"])
def test_out_naming_a_standard_stream_is_refused(tiny: Path, path: str) -> None:
    refused(run(tiny, path), f"output {path} is a standard stream or file descriptor")
    assert names(tiny.parent) == ["in.onnx"]


@pytest.mark.parametrize("path", ["-", "/dev/stdout"])
def test_report_to_stdout_is_the_json_alone_and_the_summary_goes_to_stderr(
    tiny: Path, path: str
) -> None:
    out = tiny.parent / "out.onnx"
    result = run(tiny, out, "--closed-form", "--report", path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing else on stdout
    assert report["units"][0]["channels_before"] == 16
    assert "validation: passed" in result.stderr and f"wrote {out}" in result.stderr
    assert names(tiny.parent) == ["in.onnx", "out.onnx"]


def test_report_to_stderr_follows_the_summary(tiny: Path) -> None:
    result = run(tiny, tiny.parent / "out.onnx", "--closed-form", "--report", "/dev/stderr")
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.stdout
    assert json.loads(result.stderr)["method"] == "lbyl"


def test_report_to_dev_null_is_not_written_and_out_is(tiny: Path) -> None:
    result = run(tiny, tiny.parent / "out.onnx", "--closed-form", "--report", "/dev/null")
    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.stdout
    assert names(tiny.parent) == ["in.onnx", "out.onnx"]


def test_report_to_stdout_in_a_real_pipe_and_to_a_closed_one(tiny: Path) -> None:
    """The JSON parses from the pipe; a reader gone before it is written is no failure (OUT
    is written by then)."""
    command = [sys.executable, "-m", "lbyl_onnx", str(tiny), str(tiny.parent / "out.onnx")]
    command += ["--closed-form", "--report", "/dev/stdout"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ratio"] == 0.3
    assert "Traceback" not in done.stderr and "wrote" in done.stderr

    (tiny.parent / "out.onnx").unlink()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    child.stdout.close()  # the reader is gone
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert b"Traceback" not in err and b"Exception ignored" not in err
    assert names(tiny.parent) == ["in.onnx", "out.onnx"]


# ---------------------------------------------------------------------------- 8. sizes


@pytest.mark.parametrize("value", ["100001", "1000000000"])
def test_check_n_beyond_the_cap_is_refused(tiny: Path, value: str) -> None:
    refused(run(tiny, tiny.parent / "out.onnx", "--check-n", value), f"--check-n {value}", "100000")
    assert names(tiny.parent) == ["in.onnx"]


def test_check_n_within_the_cap_but_too_large_for_the_input_is_refused(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lbyl_onnx.errors, "memory_limit", lambda: 1 << 20)  # 1 MiB
    result = run(tiny, tiny.parent / "out.onnx", "--check-n", "2000")
    refused(result, "input 'x' (as declared, the batch from --check-n) [2000, 3, 6, 6]", "MiB")


def test_input_shape_too_large_is_refused(tmp_path: Path) -> None:
    path = save(with_input_dims(conv_net((3, 8)), ["N", 3, "H", "W"]), tmp_path / "in.onnx")
    for extra in ([], ["--no-check", "--closed-form"]):
        result = run(path, tmp_path / "out.onnx", "--input-shape", "x:1,3,100000,100000", *extra)
        refused(result, "--input-shape 'x' [1, 3, 100000, 100000]", "2^31 elements")
    assert names(tmp_path) == ["in.onnx"]


@pytest.mark.parametrize("batch", ["N", 1])
def test_declared_input_too_large_is_refused(tmp_path: Path, batch) -> None:
    model = with_input_dims(conv_net((3, 8)), [batch, 3, 100000, 100000])
    for output in model.graph.output:  # sizes declared for the small input would contradict
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):  # it (the checker's
            if axis != 1:  # refusal, up front, is another test's)
                dim.dim_param = f"d{axis}"
    del model.graph.value_info[:]
    path = save(model, tmp_path / "in.onnx")
    refused(run(path, tmp_path / "out.onnx"), "input 'x' (as declared", "100000, 100000]")
    # without validation, one sample must still fit (every run that draws inputs draws one)
    refused(run(path, tmp_path / "out.onnx", "--no-check"), "input 'x' (as declared) [1, 3")
    assert names(tmp_path) == ["in.onnx"]


def constant_of_shape_model(shape: list[int], nested: bool = False) -> onnx.ModelProto:
    """``x -> Conv(w) -> Relu -> Conv head``, ``w = ConstantOfShape(shape)`` (``nested``:
    the shape itself made by ``ConstantOfShape([len(shape)], value=shape[0])``)."""
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01])
    nodes = [helper.make_node("ConstantOfShape", ["wshape"], ["w"], "cos", value=fill)]
    channels = 8 if nested else shape[0]  # a nested shape is unknown to shape inference
    inits = [numpy_helper.from_array(np.ones((5, channels, 1, 1), np.float32), "w2")]
    if nested:
        size = helper.make_tensor("s", TensorProto.INT64, [1], [shape[0]])
        inits.append(numpy_helper.from_array(np.array([len(shape)], np.int64), "rank"))
        nodes.insert(0, helper.make_node("ConstantOfShape", ["rank"], ["wshape"], value=size))
    else:
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), "wshape"))
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["z"], "conv0"),
        helper.make_node("Relu", ["z"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], "head"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, None, None])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("shape", "nested"),
    [([1000, 3, 1000, 333334], False), ([1000000, 1000000, 1000000, 1000000], True)],
    ids=["10^12", "nested"],
)
@pytest.mark.parametrize("listing", [False, True])
def test_constant_of_shape_weight_too_large_is_refused(
    tmp_path: Path, shape: list[int], nested: bool, listing: bool
) -> None:
    path = save(constant_of_shape_model(shape, nested), tmp_path / "in.onnx")
    args = ["--list"] if listing else [tmp_path / "out.onnx"]
    refused(run(path, *args), "the tensor of ConstantOfShape node 'cos'", "2^31 elements")
    assert names(tmp_path) == ["in.onnx"]


def test_constant_of_shape_weight_of_a_sane_size_still_prunes(tmp_path: Path) -> None:
    path = save(constant_of_shape_model([8, 3, 3, 3]), tmp_path / "in.onnx")
    result = run(path, tmp_path / "out.onnx", "--closed-form")
    assert result.exit_code == 0, result.output


def test_initializer_claiming_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    model = conv_net((3, 8))
    weight = next(t for t in model.graph.initializer if t.name == "conv0.W")
    weight.dims[0] = 10**9  # 10^9 filters declared, 8 stored
    path = save(model, tmp_path / "in.onnx")
    refused(run(path, tmp_path / "out.onnx"), "fails the ONNX checker", "raw_data")


def npy_header_only(path: Path, shape: tuple[int, ...], extra: bytes = b"\0" * 64) -> Path:
    """A ``.npy`` whose header claims ``shape`` (float32) and whose data is ``extra``."""
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        stream.write(extra)
    return path


@pytest.mark.parametrize("flag", ["--input-data", "--calibration-data"])
def test_npy_header_claiming_more_than_the_file_holds_is_refused(tiny: Path, flag: str) -> None:
    data = npy_header_only(tiny.parent / "huge.npy", (10**12, 3, 6, 6))
    value = f"x:{data}" if flag == "--input-data" else data
    refused(run(tiny, tiny.parent / "out.onnx", flag, value), "claims [1000000000000, 3, 6, 6]")
    assert names(tiny.parent) == ["huge.npy", "in.onnx"]


def test_npz_member_claiming_more_than_it_holds_is_refused(tiny: Path) -> None:
    data = tiny.parent / "c.npz"
    fake = npy_header_only(tiny.parent / "x.npy", (10**12, 3, 6, 6))
    with zipfile.ZipFile(data, "w") as archive:
        archive.write(fake, "x.npy")
    result = run(tiny, tiny.parent / "out.onnx", "--calibration-data", data)
    refused(result, "array 'x' claims [1000000000000, 3, 6, 6]", "truncated or corrupt")


def test_npy_over_the_memory_limit_is_refused_before_it_is_read(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny.parent / "big.npy"
    np.save(data, np.zeros((1000, 3, 6, 6), np.float32))  # 432 KB
    monkeypatch.setattr(lbyl_onnx.errors, "memory_limit", lambda: 100_000)
    monkeypatch.setattr(np, "load", None)  # never reached
    result = run(tiny, tiny.parent / "out.onnx", "--calibration-data", data)
    refused(result, "--calibration-data", "[1000, 3, 6, 6] would take 421.9 KiB", "97.7 KiB")


def test_synthetic_inputs_too_large_fall_back_to_the_closed_form(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lbyl_onnx.errors, "memory_limit", lambda: 100_000)
    result = run(tiny, tiny.parent / "out.onnx")
    assert result.exit_code == 0, result.output
    assert "warning: closed-form LBYL, not synthetic calibration: 256 synthetic samples of " in (
        result.output
    )
    asked = run(tiny, tiny.parent / "o2.onnx", "--synthetic-calibration")
    refused(asked, "--synthetic-calibration", "256 synthetic samples of 'x' [256, 3, 6, 6]")


def test_a_memory_error_nothing_foresaw_is_one_line_and_exit_2(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.64 TiB")

    monkeypatch.setattr(lbyl_onnx.pipeline.run, "apply_plans", exhausted)
    result = run(tiny, tiny.parent / "out.onnx", "--closed-form")
    refused(result, "out of memory (Unable to allocate 3.64 TiB)", "too large for this machine")
    assert names(tiny.parent) == ["in.onnx"]


# ---------------------------------------------------------------------------- 9. file forms


def test_plain_npy_calibrates_a_single_input_model(tiny: Path) -> None:
    data = tiny.parent / "samples.npy"
    np.save(data, np.random.default_rng(0).random((32, 3, 6, 6), np.float32))
    result = run(tiny, tiny.parent / "out.onnx", "--calibration-data", data)
    assert result.exit_code == 0, result.output
    assert "calibrated on 32 samples" in result.stdout
    named = tiny.parent / "samples.npz"
    np.savez(named, x=np.load(data))
    again = run(tiny, tiny.parent / "o2.onnx", "--calibration-data", named)
    assert (tiny.parent / "o2.onnx").read_bytes() == (tiny.parent / "out.onnx").read_bytes()
    assert again.exit_code == 0


def two_input_model() -> onnx.ModelProto:
    """``Add(a, b) -> Conv -> Relu -> Conv``, inputs ``a`` and ``b``."""
    model = conv_net((3, 8))
    graph = model.graph
    graph.input[0].name = "a"
    second = onnx.ValueInfoProto()
    second.CopyFrom(graph.input[0])
    second.name = "b"
    graph.input.append(second)
    graph.node.insert(0, helper.make_node("Add", ["a", "b"], ["x"], "add"))
    return model


def test_plain_npy_for_a_model_with_several_inputs_is_refused(tmp_path: Path) -> None:
    path = save(two_input_model(), tmp_path / "in.onnx")
    data = tmp_path / "samples.npy"
    np.save(data, np.zeros((32, 3, 6, 6), np.float32))
    result = run(path, tmp_path / "out.onnx", "--calibration-data", data)
    refused(result, "--calibration-data is one array (a .npy file)", "this model has 2 (a, b)")


ARRAYS = {
    "0-d": (np.float32(3.0), "is a single value (a 0-d array), not samples"),
    "empty": (np.zeros((0, 3, 6, 6), np.float32), "is empty (shape [0, 3, 6, 6]): no sample"),
    "objects": (np.array([{"a": 1}], dtype=object), "holds Python objects (a pickle)"),
}


@pytest.mark.parametrize("form", [".npy", ".npz"])
@pytest.mark.parametrize("flag", ["--input-data", "--calibration-data"])
@pytest.mark.parametrize("case", list(ARRAYS))
def test_arrays_that_are_not_samples_are_refused_naming_the_file(
    tiny: Path, case: str, flag: str, form: str
) -> None:
    array, needle = ARRAYS[case]
    data = tiny.parent / f"d{form}"
    if form == ".npy":
        np.save(data, array, allow_pickle=True)
    else:
        np.savez(data, x=array)
    value = f"x:{data}" if flag == "--input-data" else data
    line = refused(run(tiny, tiny.parent / "out.onnx", flag, value), f"{flag} {data}", needle)
    assert ("array 'x'" in line) == (form == ".npz")
    assert names(tiny.parent) == ["d" + form, "in.onnx"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"hello world\n", "is not a NumPy file (.npy or .npz)"),
        (b"PK\x03\x04 not a zip", "is not a readable NumPy file"),
        (b"\x93NUMPY\x01\x00garbage", "is not a readable NumPy file"),
    ],
    ids=["text", "bad-zip", "bad-header"],
)
def test_calibration_file_that_is_not_numpy_is_refused(
    tiny: Path, content: bytes, needle: str
) -> None:
    data = tiny.parent / "c.npz"
    data.write_bytes(content)
    refused(run(tiny, tiny.parent / "out.onnx", "--calibration-data", data), needle)


def test_npz_member_that_is_not_an_array_is_refused(tiny: Path) -> None:
    data = tiny.parent / "c.npz"
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("notes.txt", "hello")
    result = run(tiny, tiny.parent / "out.onnx", "--calibration-data", data)
    refused(result, "member 'notes.txt' is not an array (.npy)")


# ---------------------------------------------------------------------------- 10. write errors


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_then_disk_full(self: Path, data: bytes) -> int:
    REAL_WRITE_BYTES(self, data[: len(data) // 2])
    disk_full()


class FullStream:
    """A file whose writes fail as on a full disk (after writing half the first time)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data[: len(data) // 2])
        disk_full()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def __enter__(self) -> FullStream:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_on_out_exits_2_and_leaves_in_and_old_out(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    out = tiny.parent / "out.onnx"
    if existing:
        out.write_bytes(b"previous result")
    before = digest(tiny)
    monkeypatch.setattr(lbyl_onnx.graph.io.Path, "write_bytes", half_then_disk_full)
    refused(run(tiny, out, "--closed-form"), f"cannot write {out}: No space left on device")
    assert digest(tiny) == before
    assert names(tiny.parent) == ["in.onnx", *(["out.onnx"] if existing else [])]
    if existing:
        assert out.read_bytes() == b"previous result"


def test_disk_full_on_external_data_exits_2_and_leaves_nothing(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_open(file, mode="r", *args, **kwargs):
        stream = open(file, mode, *args, **kwargs)  # noqa: SIM115
        return FullStream(stream) if "w" in mode and str(file).endswith(".data") else stream

    monkeypatch.setattr(lbyl_onnx.graph.io, "open", full_open, raising=False)
    out = tiny.parent / "out.onnx"
    result = run(tiny, out, "--closed-form", "--save-as-external-data")
    refused(result, f"cannot write {out} and its external data out.onnx.data", "No space left")
    assert names(tiny.parent) == ["in.onnx"]


def test_file_size_limit_exits_2_naming_out(tiny: Path) -> None:
    """RLIMIT_FSIZE in a child process (Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    import resource

    out = tiny.parent / "out.onnx"
    out.write_bytes(b"previous")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # OUT is 3.6 KB

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for extra in ([], ["--save-as-external-data"]):
        done = subprocess.run(
            [sys.executable, "-m", "lbyl_onnx", str(tiny), str(out), "--closed-form", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=limit,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: cannot write {out}")
        assert done.stderr.strip().endswith("File too large")
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert names(tiny.parent) == ["in.onnx", "out.onnx"]
        assert out.read_bytes() == b"previous"


def test_outs_data_path_being_a_directory_is_refused_up_front(tiny: Path) -> None:
    (tiny.parent / "out.onnx.data").mkdir()
    result = run(tiny, tiny.parent / "out.onnx", "--save-as-external-data")
    refused(result, "OUT's external data file is a directory", "out.onnx.data")
    assert names(tiny.parent) == ["in.onnx", "out.onnx.data"]
    assert list((tiny.parent / "out.onnx.data").iterdir()) == []


def test_outs_data_path_being_a_directory_when_saved_over_2_gb(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """External data without the flag (the model "over 2 GB": the limit lowered)."""
    (tiny.parent / "out.onnx.data").mkdir()
    monkeypatch.setattr(lbyl_onnx.graph.io, "is_large", lambda model: True)
    result = run(tiny, tiny.parent / "out.onnx", "--closed-form", "--no-check")
    refused(result, "cannot write", "out.onnx.data: it is a directory")
    assert names(tiny.parent) == ["in.onnx", "out.onnx.data"]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_folder_refusing_the_temporary_file_exits_2(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A read-only folder or file system, as root sees it only when writing (simulated)."""

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lbyl_onnx.graph.io.tempfile, "mkdtemp", refuse)
    out = tiny.parent / "out.onnx"
    refused(run(tiny, out, "--closed-form"), f"cannot write {out}: {os.strerror(code)}")
    assert names(tiny.parent) == ["in.onnx"]


def test_report_that_cannot_be_written_says_out_was(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lbyl_onnx.graph.io.tempfile, "mkstemp", disk_full)
    report = tiny.parent / "r.json"
    result = run(tiny, tiny.parent / "out.onnx", "--closed-form", "--report", report)
    refused(result, f"cannot write {report}: No space left on device (OUT was written)")
    assert names(tiny.parent) == ["in.onnx", "out.onnx"]


def test_write_errors_from_the_library_are_usage_errors(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbyl_onnx import PruneConfig, prune_file
    from lbyl_onnx.errors import UsageError

    monkeypatch.setattr(lbyl_onnx.graph.io.Path, "write_bytes", half_then_disk_full)
    config = PruneConfig(synthetic_calibration=False, check=False)
    with pytest.raises(UsageError, match="No space left on device"):
        prune_file(tiny, tiny.parent / "out.onnx", config)
    assert names(tiny.parent) == ["in.onnx"]


# ---------------------------------------------------------------------------- 11. interrupts


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def interrupted(result: Result) -> None:
    assert result.exit_code == 130, result.output
    assert result.stderr == "interrupted\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "target",
    [
        (lbyl_onnx.pipeline.run, "apply_plans"),  # during the run
        (lbyl_onnx.graph.io, "write_external"),  # while writing OUT, the staging folder made
        (lbyl_onnx.graph.io.os, "replace"),  # at the final rename
    ],
    ids=["run", "save", "rename"],
)
def test_interrupt_exits_130_and_leaves_nothing(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, target
) -> None:
    monkeypatch.setattr(*target, interrupt)
    interrupted(run(tiny, tiny.parent / "out.onnx", "--closed-form", "--save-as-external-data"))
    assert names(tiny.parent) == ["in.onnx"]


def test_interrupt_while_parsing_the_options_exits_130(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(click.Command, "parse_args", interrupt)
    interrupted(run(tiny, tiny.parent / "out.onnx"))


CHILD = """
import pathlib, sys, time
import lbyl_onnx.graph.io as io
flag = pathlib.Path(sys.argv[1])
real = io.write_external if sys.argv[2] == "save" else None

def slow(*args, **kwargs):
    if real is not None:
        real(*args, **kwargs)  # the staged files exist: the interrupt must remove them
    flag.touch()
    time.sleep(60)

if sys.argv[2] == "save":
    io.write_external = slow
else:
    import lbyl_onnx.pipeline.run as run
    run.apply_plans = slow
sys.argv = ["lbyl-onnx", *sys.argv[3:]]
from lbyl_onnx.__main__ import main
main()
"""


@pytest.mark.parametrize("when", ["run", "save"])
def test_real_sigint_during_a_run_exits_130_and_leaves_nothing(tmp_path: Path, when: str) -> None:
    work, flags = tmp_path / "work", tmp_path / "flags"
    work.mkdir()
    flags.mkdir()
    source = save(conv_net((3, 8)), work / "in.onnx")
    flag = flags / "ready"
    args = [str(source), str(work / "out.onnx"), "--closed-form", "--save-as-external-data"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(flag), when, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists(), child.communicate()
    if when == "save":
        assert any(p.name.startswith(".out.onnx.") for p in work.iterdir())  # staged
    os.kill(child.pid, signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert err == "interrupted\n" and out == ""
    assert names(work) == ["in.onnx"]


STARTUP = """
import os, signal, sys

class InterruptOnOnnx:
    def find_spec(self, name, path=None, target=None):
        if name == "onnx":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the heavy modules load
        return None

sys.meta_path.insert(0, InterruptOnOnnx())
sys.argv = ["lbyl-onnx", *sys.argv[1:]]
from lbyl_onnx.__main__ import main
main()
"""


def test_real_sigint_during_start_up_imports_exits_130_without_traceback(tiny: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STARTUP, str(tiny), str(tiny.parent / "out.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n" and done.stdout == ""
    assert names(tiny.parent) == ["in.onnx"]


def test_entry_point_imports_nothing_heavy_before_its_handler() -> None:
    probe = (
        "import sys, lbyl_onnx.__main__, lbyl_onnx\n"
        "heavy = ('numpy', 'onnx', 'onnxruntime', 'click', 'scipy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print(lbyl_onnx.__version__, callable(lbyl_onnx.prune))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1].endswith(" True")


def test_entry_point_of_the_package_is_the_interrupt_safe_one() -> None:
    import tomllib

    import lbyl_onnx.__main__

    assert lbyl_onnx.__main__.EXIT_INTERRUPTED == lbyl_onnx.errors.EXIT_INTERRUPTED == 130
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lbyl-onnx"] == "lbyl_onnx.__main__:main"
    done = subprocess.run(
        [sys.executable, "-m", "lbyl_onnx", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0 and "lbyl-onnx" in done.stdout
