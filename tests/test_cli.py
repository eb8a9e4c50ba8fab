"""The command line's contract (DESIGN.md, "The command line"): effects, exit codes, messages.

Every run goes through ``click.testing.CliRunner`` on ``lbyl_onnx.cli.main`` except one, which
starts a real Python process. Effects are checked on the files written: the output model is
loaded with onnx, passes the full checker, runs in onnxruntime on the digits test split, and
its channel counts are read from its weights; parameters are counted here from initializers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

from lbyl_onnx import __version__
from lbyl_onnx.cli import main
from lbyl_onnx.runtime.validate import Validation

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
VGG = SAMPLES / "digits_vgg_bn.onnx"
TEST_SPLIT = SAMPLES / "digits_test.npz"
VGG_UNITS = ["conv1", "conv2", "conv3", "conv4", "fc1"]
VGG_CHANNELS = {"conv1": 16, "conv2": 32, "conv3": 32, "conv4": 64, "fc1": 64}


# ---------------------------------------------------------------------------- helpers


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def digits_inputs() -> np.ndarray:
    return np.load(TEST_SPLIT)["input"]


def count_parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def weight_of(model: onnx.ModelProto, node_name: str) -> np.ndarray:
    """The weight (second input) of the named Conv/Gemm node, as an array."""
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    return numpy_helper.to_array(init)


def out_channels(model: onnx.ModelProto, node_name: str) -> int:
    """Output channels of a Conv (weight ``[C_out, ...]``) or Gemm (``transB=1``: ``[N, K]``)."""
    node = next(n for n in model.graph.node if n.name == node_name)
    weight = weight_of(model, node_name)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    if node.op_type == "Gemm" and not trans_b:
        return weight.shape[1]
    return weight.shape[0]


def run_in_ort(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def listing(folder: Path) -> dict[str, bytes | str]:
    """Every entry of a folder (hidden ones included): file bytes, link targets, 'dir'."""
    entries: dict[str, bytes | str] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            entries[entry.name] = "link->" + os.readlink(entry)
        elif entry.is_dir():
            entries[entry.name] = "dir"
        else:
            entries[entry.name] = entry.read_bytes()
    return entries


@pytest.fixture
def vgg(tmp_path: Path) -> Path:
    """A private copy of the VGG sample, so that a test can prove it was left untouched."""
    copy = tmp_path / "in.onnx"
    shutil.copyfile(VGG, copy)
    return copy


# ---------------------------------------------------------------------------- 1. happy path


@pytest.mark.parametrize("method", ["prune", "nm", "lbyl", "lbyl-nn"])
def test_each_method_writes_a_smaller_valid_model_that_runs(vgg: Path, method: str) -> None:
    original_bytes = vgg.read_bytes()
    out = vgg.parent / "out.onnx"

    result = run(vgg, out, "--ratio", "0.3", "--method", method)

    assert result.exit_code == 0, result.output
    assert "validation: passed" in result.output
    assert "Traceback" not in result.output
    assert vgg.read_bytes() == original_bytes
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    pruned, original = onnx.load(str(out)), onnx.load(str(vgg))
    assert count_parameters(pruned) < count_parameters(original)
    for name in VGG_UNITS:
        assert out_channels(pruned, name) < out_channels(original, name)
    assert out_channels(pruned, "fc2") == 10  # the declined classifier keeps its classes
    x = digits_inputs()
    logits = run_in_ort(out, x)
    assert logits.shape == (len(x), 10)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    # only OUT was added to the folder: no staging leftovers
    assert sorted(p.name for p in vgg.parent.iterdir()) == ["in.onnx", "out.onnx"]


def test_ratio_zero_leaves_the_function_unchanged(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--ratio", "0")
    assert result.exit_code == 0, result.output
    x = digits_inputs()
    np.testing.assert_allclose(run_in_ort(out, x), run_in_ort(vgg, x), rtol=1e-4, atol=1e-4)
    assert count_parameters(onnx.load(str(out))) == count_parameters(onnx.load(str(vgg)))


# ---------------------------------------------------------------------------- 2. --list


def test_list_prints_units_and_declined_and_writes_nothing(vgg: Path) -> None:
    before = listing(vgg.parent)
    result = run(vgg, "--list")
    assert result.exit_code == 0, result.output
    for name in VGG_UNITS:
        assert f"  {name} (" in result.stdout
        assert f"{VGG_CHANNELS[name]} channels" in result.stdout
    assert "1 declined" in result.stdout
    assert "fc2 (Gemm): 'logits' is a graph output" in result.stdout
    assert listing(vgg.parent) == before


def test_list_with_out_given_still_writes_nothing(vgg: Path) -> None:
    before = listing(vgg.parent)
    result = run(vgg, vgg.parent / "out.onnx", "--list")
    assert result.exit_code == 0, result.output
    assert "5 prunable unit(s)" in result.stdout
    assert listing(vgg.parent) == before


def test_list_of_an_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model\n")
    result = run(bad, "--list")
    assert result.exit_code == 2
    assert "error:" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- 3. --report


def test_report_json_has_the_documented_keys_and_channel_counts(vgg: Path) -> None:
    out, report = vgg.parent / "out.onnx", vgg.parent / "r.json"
    ratio = 0.3
    result = run(vgg, out, "--ratio", ratio, "--report", report)
    assert result.exit_code == 0, result.output

    data = json.loads(report.read_text())
    assert {"units", "declined", "before", "after", "validation"} <= set(data)
    assert data["after"]["parameters"] < data["before"]["parameters"]
    assert data["before"]["parameters"] == count_parameters(onnx.load(str(vgg)))
    pruned = onnx.load(str(out))
    assert data["after"]["parameters"] == count_parameters(pruned)
    assert [u["name"] for u in data["units"]] == VGG_UNITS
    for unit in data["units"]:
        assert unit["channels_before"] == VGG_CHANNELS[unit["name"]]
        assert unit["channels_after"] == int(unit["channels_before"] * (1 - ratio))
        assert out_channels(pruned, unit["name"]) == unit["channels_after"]
    assert [d["name"] for d in data["declined"]] == ["fc2"]
    assert data["validation"]["status"] == "passed"
    assert "random" in data["validation"]["inputs"]


# ---------------------------------------------------------------------------- 4. selection


def test_ratio_for_zero_keeps_conv1_and_prunes_the_rest(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--ratio", "0.3", "--ratio-for", "conv1=0")
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(out))
    assert weight_of(pruned, "conv1").shape == (16, 1, 3, 3)
    assert weight_of(pruned, "conv2").shape == (22, 16, 3, 3)
    for name in ["conv2", "conv3", "conv4", "fc1"]:
        assert out_channels(pruned, name) == int(VGG_CHANNELS[name] * 0.7)


def test_exclude_glob_prunes_only_fc1(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    original = onnx.load(str(vgg))
    result = run(vgg, out, "--exclude", "conv*")
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(out))
    for name in ["conv1", "conv2", "conv3", "conv4"]:
        np.testing.assert_array_equal(weight_of(pruned, name), weight_of(original, name))
    assert weight_of(pruned, "fc1").shape == (44, 256)
    assert weight_of(pruned, "fc2").shape == (10, 44)


def test_exclude_matching_nothing_warns_with_the_pattern(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--exclude", "nothing_like_this*")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert any("nothing_like_this*" in line for line in warnings), result.output
    assert out.is_file()


# ---------------------------------------------------------------------------- 5. inputs


def test_input_data_npy_is_used_for_validation(vgg: Path) -> None:
    data = vgg.parent / "digits.npy"
    np.save(data, digits_inputs())
    out, report = vgg.parent / "out.onnx", vgg.parent / "r.json"
    result = run(vgg, out, "--input-data", f"input:{data}", "--report", report)
    assert result.exit_code == 0, result.output
    assert "validation: passed on user data" in result.output
    assert "input:540x1x8x8" in result.output
    inputs = json.loads(report.read_text())["validation"]["inputs"]
    assert "user data" in inputs
    assert "random" not in inputs


def test_input_shape_sets_the_validation_batch(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--input-shape", "input:4,1,8,8")
    assert result.exit_code == 0, result.output
    assert "input:4x1x8x8" in result.output
    assert "input:8x1x8x8" not in result.output  # the default batch (--check-n 8) is not used


def test_no_check_skips_validation(vgg: Path) -> None:
    out, report = vgg.parent / "out.onnx", vgg.parent / "r.json"
    result = run(vgg, out, "--no-check", "--report", report)
    assert result.exit_code == 0, result.output
    assert "validation:" not in result.output
    assert json.loads(report.read_text())["validation"] is None
    assert out.is_file()


# ---------------------------------------------------------------------------- 6. errors


@dataclass
class Case:
    """One bad command: ``make(folder, IN)`` prepares files and returns the arguments."""

    id: str
    make: Callable[[Path, Path], list[object]]
    click_usage: bool = False


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _symlink(folder: Path, src: Path) -> Path:
    link = folder / "link.onnx"
    link.symlink_to(src.name)
    return link


ERROR_CASES = [
    Case("missing-input", lambda d, i: [d / "absent.onnx", d / "out.onnx"]),
    Case("empty-input", lambda d, i: [_write(d / "empty.onnx", b""), d / "out.onnx"]),
    Case(
        "random-bytes",
        lambda d, i: [
            _write(d / "rand.onnx", np.random.default_rng(0).bytes(4096)),
            d / "out.onnx",
        ],
    ),
    Case(
        "truncated-onnx",
        lambda d, i: [
            _write(d / "trunc.onnx", i.read_bytes()[: len(i.read_bytes()) // 2]),
            d / "out.onnx",
        ],
    ),
    Case("text-file", lambda d, i: [_write(d / "t.onnx", b"hello\nworld\n"), d / "out.onnx"]),
    Case("input-is-directory", lambda d, i: [d, d / "out.onnx"]),
    Case("missing-out", lambda d, i: [i]),
    Case("out-equals-in", lambda d, i: [i, i]),
    Case("out-equals-in-via-dotdot", lambda d, i: [i, d / "sub" / ".." / i.name]),
    Case("out-symlink-to-in", lambda d, i: [i, _symlink(d, i)]),
    Case("out-in-missing-folder", lambda d, i: [i, d / "nowhere" / "out.onnx"]),
    Case("out-is-directory", lambda d, i: [i, d]),
    Case("ratio-one", lambda d, i: [i, d / "out.onnx", "--ratio", "1.0"]),
    Case("ratio-negative", lambda d, i: [i, d / "out.onnx", "--ratio", "-0.1"]),
    Case("ratio-nan", lambda d, i: [i, d / "out.onnx", "--ratio", "nan"]),
    Case("ratio-for-out-of-range", lambda d, i: [i, d / "out.onnx", "--ratio-for", "conv1=1.5"]),
    Case("ratio-for-malformed", lambda d, i: [i, d / "out.onnx", "--ratio-for", "conv1"]),
    Case("ratio-for-not-a-number", lambda d, i: [i, d / "out.onnx", "--ratio-for", "conv1=x"]),
    Case("check-n-zero", lambda d, i: [i, d / "out.onnx", "--check-n", "0"]),
    Case("input-shape-no-colon", lambda d, i: [i, d / "out.onnx", "--input-shape", "x"]),
    Case("input-shape-not-ints", lambda d, i: [i, d / "out.onnx", "--input-shape", "input:a,b"]),
    Case("input-shape-zero", lambda d, i: [i, d / "out.onnx", "--input-shape", "input:0,1,8,8"]),
    Case(
        "input-data-missing-file",
        lambda d, i: [i, d / "out.onnx", "--input-data", f"input:{d / 'absent.npy'}"],
    ),
    Case(
        "input-data-txt-file",
        lambda d, i: [
            i,
            d / "out.onnx",
            "--input-data",
            f"input:{_write(d / 'data.txt', b'1 2 3')}",
        ],
    ),
    Case(
        "input-data-corrupt-npy",
        lambda d, i: [
            i,
            d / "out.onnx",
            "--input-data",
            f"input:{_write(d / 'data.npy', b'not numpy')}",
        ],
    ),
    Case("input-data-no-name", lambda d, i: [i, d / "out.onnx", "--input-data", "data.npy"]),
    Case("unknown-method", lambda d, i: [i, d / "out.onnx", "--method", "magic"], True),
    Case("unknown-criterion", lambda d, i: [i, d / "out.onnx", "--criterion", "l3"], True),
    Case("unknown-option", lambda d, i: [i, d / "out.onnx", "--frobnicate"], True),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_user_errors_exit_2_with_one_line_and_leave_the_folder_alone(vgg: Path, case: Case) -> None:
    folder = vgg.parent
    (folder / "sub").mkdir()
    args = case.make(folder, vgg)
    before = listing(folder)

    result = run(*args)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    if case.click_usage:
        assert "Error:" in result.stderr
    else:
        assert result.stderr.startswith("error: "), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
        assert result.stdout == ""
    assert not (folder / "out.onnx").exists()
    assert not (folder / "nowhere").exists()
    assert listing(folder) == before  # IN unchanged, no OUT, no temporary files


def test_verbose_error_keeps_the_exit_code(tmp_path: Path) -> None:
    result = run(tmp_path / "absent.onnx", tmp_path / "out.onnx", "-v")
    assert result.exit_code == 2
    assert "error: input file not found" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- 7. --version, --help


def test_version_prints_the_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout
    assert "lbyl-onnx" in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_documents_examples_and_exit_codes(flag: str) -> None:
    result = run(flag)
    assert result.exit_code == 0
    assert "Examples" in result.stdout
    assert "Exit codes" in result.stdout
    for code in ["0", "1", "2", "3", "4"]:
        assert f"  {code}  " in result.stdout


# ---------------------------------------------------------------------------- 8. validation


def test_failed_validation_exits_3_and_writes_nothing(
    vgg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "lbyl_onnx.pipeline.run.validate", lambda *a, **k: Validation("failed", "x", "boom")
    )
    out, report = vgg.parent / "out.onnx", vgg.parent / "r.json"
    before = listing(vgg.parent)
    result = run(vgg, out, "--report", report)
    assert result.exit_code == 3, result.output
    assert "boom" in result.stderr
    assert "OUT not written" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not report.exists()
    assert listing(vgg.parent) == before


def test_unavailable_validation_exits_4_and_writes_out(
    vgg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "lbyl_onnx.pipeline.run.validate",
        lambda *a, **k: Validation("unavailable", "x", "custom op"),
    )
    out = vgg.parent / "out.onnx"
    result = run(vgg, out)
    assert result.exit_code == 4, result.output
    assert "warning: validation could not run: custom op" in result.stderr
    assert out.is_file()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


# ---------------------------------------------------------------------------- 9. -q


def test_quiet_prints_nothing_on_success(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == ""
    assert out.is_file()


def test_quiet_still_prints_warnings_to_stderr(vgg: Path) -> None:
    result = run(vgg, vgg.parent / "out.onnx", "-q", "--exclude", "zz*")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "warning:" in result.stderr
    assert "zz*" in result.stderr


# ---------------------------------------------------------------------------- 10. determinism


@pytest.mark.parametrize("method", ["nm", "lbyl"])
def test_two_runs_give_identical_files_and_reports(vgg: Path, method: str) -> None:
    folder = vgg.parent
    for tag in "ab":
        result = run(
            vgg, folder / f"{tag}.onnx", "--method", method, "--report", folder / f"{tag}.json"
        )
        assert result.exit_code == 0, result.output
    assert (folder / "a.onnx").read_bytes() == (folder / "b.onnx").read_bytes()
    assert (folder / "a.json").read_text() == (folder / "b.json").read_text()


# ---------------------------------------------------------------------------- --report paths


def test_report_path_equal_to_in_is_refused(vgg: Path) -> None:
    original = vgg.read_bytes()
    result = run(vgg, vgg.parent / "out.onnx", "--report", vgg)
    assert vgg.read_bytes() == original
    assert result.exit_code == 2


def test_report_path_equal_to_out_is_refused(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--report", out)
    assert result.exit_code == 2
    assert not out.exists()


def test_report_in_missing_folder_is_a_usage_error_before_any_write(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--report", vgg.parent / "nowhere" / "r.json")
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------- real process


def test_console_entry_point_in_a_real_process(vgg: Path) -> None:
    """The installed entry point (``lbyl_onnx.cli:main``) in a fresh interpreter."""
    command = [sys.executable, "-c", "from lbyl_onnx.cli import main; main()"]
    out, report = vgg.parent / "out.onnx", vgg.parent / "r.json"
    done = subprocess.run(
        [*command, str(vgg), str(out), "--method", "nm", "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "validation: passed" in done.stdout
    assert f"wrote {out}" in done.stdout
    assert "Traceback" not in done.stderr
    assert json.loads(report.read_text())["method"] == "nm"
    assert np.isfinite(run_in_ort(out, digits_inputs())).all()

    failed = subprocess.run(
        [*command, str(vgg.parent / "absent.onnx"), str(vgg.parent / "o.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: input file not found")
    assert "Traceback" not in failed.stderr


# ---------------------------------------------------------------------------- --input-data checks


@pytest.mark.parametrize(
    ("name", "array", "needle"),
    [
        ("foo", np.zeros((2, 1, 8, 8), np.float32), "not an input"),
        ("input", np.zeros((2, 1, 8, 8), np.float64), "float64"),
        ("input", np.zeros((2, 8, 8), np.float32), "rank 4"),
        ("input", np.zeros((2, 3, 8, 8), np.float32), "axis 1"),
    ],
)
def test_input_data_that_does_not_fit_the_model_is_a_usage_error(
    vgg: Path, name: str, array: np.ndarray, needle: str
) -> None:
    data = vgg.parent / "x.npy"
    np.save(data, array)
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--input-data", f"{name}:{data}")
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------- external data


def test_save_as_external_data_writes_weights_beside_out(vgg: Path) -> None:
    out = vgg.parent / "out.onnx"
    result = run(vgg, out, "--save-as-external-data", "--method", "prune")
    assert result.exit_code == 0, result.output
    data = vgg.parent / "out.onnx.data"
    assert data.is_file() and data.stat().st_size > out.stat().st_size
    model = onnx.load(str(out), load_external_data=False)
    locations = {
        entry.value
        for init in model.graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    assert locations == {"out.onnx.data"}
    # the pair is a valid, runnable model, equal to the one written without external data
    inline = vgg.parent / "inline.onnx"
    assert run(vgg, inline, "--method", "prune").exit_code == 0
    x = digits_inputs()[:16]
    np.testing.assert_array_equal(run_in_ort(out, x), run_in_ort(inline, x))
    assert sorted(p.name for p in vgg.parent.iterdir()) == [
        "in.onnx",
        "inline.onnx",
        "out.onnx",
        "out.onnx.data",
    ]
