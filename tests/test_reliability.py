"""Nothing is ever half-written: failures injected mid-run leave no OUT, no temporary file,
and an untouched IN; the same input gives the same bytes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import lbyl_onnx.graph.io
import lbyl_onnx.pipeline.run
from lbyl_onnx.cli import main

ROOT = Path(__file__).resolve().parent.parent
VGG = ROOT / "sample_models" / "digits_vgg_bn.onnx"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copyfile(VGG, tmp_path / "in.onnx")
    return tmp_path


def boom(*args, **kwargs):
    raise RuntimeError("injected failure")


REAL_WRITE_BYTES = Path.write_bytes


def half_write_then_fail(self: Path, data: bytes) -> int:
    """Write half the bytes where asked, then fail: what a full disk or a kill looks like."""
    REAL_WRITE_BYTES(self, data[: len(data) // 2])
    raise RuntimeError("injected failure")


def half_save_then_fail(model, path, *args, **kwargs) -> None:
    Path(path).write_bytes(model.SerializeToString()[:100])
    Path(str(path) + ".data").write_bytes(b"partial")
    raise RuntimeError("injected failure")


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize(
    "target",
    [
        (lbyl_onnx.pipeline.run, "apply_plans"),  # in the middle of the rewrite
        (lbyl_onnx.graph.io.onnx, "save_model"),  # while writing external data
        (lbyl_onnx.graph.io.os, "replace"),  # at the final rename
    ],
    ids=["rewrite", "save", "rename"],
)
def test_injected_failure_leaves_no_output_and_input_untouched(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, target, external: bool
) -> None:
    module, name = target
    failure = boom
    if name == "save_model":
        failure = half_save_then_fail
        if not external:  # the inline write
            module, name, failure = lbyl_onnx.graph.io.Path, "write_bytes", half_write_then_fail
    before = digest(workdir / "in.onnx")
    monkeypatch.setattr(module, name, failure)
    args = [str(workdir / "in.onnx"), str(workdir / "out.onnx")]
    result = CliRunner().invoke(main, args + (["--save-as-external-data"] if external else []))
    assert result.exit_code == 1, result.output
    assert "internal error" in result.output and "injected failure" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["in.onnx"]
    assert digest(workdir / "in.onnx") == before


def test_existing_output_survives_a_failed_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure must not destroy the previous OUT either (the rename is the only write)."""
    out = workdir / "out.onnx"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(lbyl_onnx.graph.io.os, "replace", boom)
    result = CliRunner().invoke(main, [str(workdir / "in.onnx"), str(out)])
    assert result.exit_code == 1
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in workdir.iterdir()) == ["in.onnx", "out.onnx"]


@pytest.mark.parametrize("method", ["prune", "nm", "lbyl", "lbyl-nn"])
def test_same_input_gives_identical_bytes_and_report(workdir: Path, method: str) -> None:
    outputs = []
    for run in ("a", "b"):
        out, report = workdir / f"{run}.onnx", workdir / f"{run}.json"
        args = [str(workdir / "in.onnx"), str(out), "--method", method, "--report", str(report)]
        assert CliRunner().invoke(main, args).exit_code == 0
        outputs.append((out.read_bytes(), report.read_text()))
    assert outputs[0] == outputs[1]


def test_weights_with_nan_are_declined_not_propagated(tmp_path: Path) -> None:
    model = onnx.load(str(VGG))
    for init in model.graph.initializer:
        if init.name == "conv2.weight":
            array = onnx.numpy_helper.to_array(init).copy()
            array[0, 0, 0, 0] = np.nan
            init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    result = CliRunner().invoke(main, [str(path), "--list"])
    assert result.exit_code == 0
    assert "conv2 (Conv): weight 'conv2.weight' contains NaN or Inf" in result.output
    # conv1 reads into conv2, whose weight must absorb S: conv1 is declined too
    assert "conv1 (Conv): consumer weight 'conv2.weight' contains NaN or Inf" in result.output


def _custom_op_model() -> onnx.ModelProto:
    """The digits VGG whose logits go through a custom-domain op onnxruntime does not know."""
    model = onnx.load(str(VGG))
    graph = model.graph
    for node in graph.node:
        if node.name == "fc2":
            node.output[0] = "raw_logits"
    graph.node.append(
        onnx.helper.make_node("Scale", ["raw_logits"], ["logits"], "custom", domain="com.example")
    )
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    return model


def test_custom_op_outside_units_still_prunes_and_exits_4(tmp_path: Path) -> None:
    path, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(_custom_op_model(), str(path))
    result = CliRunner().invoke(main, [str(path), str(out)])
    assert result.exit_code == 4, result.output
    assert "validation could not run" in result.output
    pruned = onnx.load(str(out))
    assert next(n for n in pruned.graph.node if n.domain == "com.example").input == ["raw_logits"]
    weights = {t.name: t.dims for t in pruned.graph.initializer}
    assert any(name.startswith("conv1.weight") and dims[0] == 11 for name, dims in weights.items())
    # the default's synthetic calibration cannot run it: the closed form, with a warning
    assert (
        "warning: closed-form LBYL, not synthetic calibration: the model does not run on "
        "synthetic inputs in onnxruntime: " in result.output
    )
    assert "method lbyl [closed form]" in result.output
    closed = tmp_path / "closed.onnx"
    assert CliRunner().invoke(main, [str(path), str(closed), "--closed-form"]).exit_code == 4
    assert closed.read_bytes() == out.read_bytes()


def test_synthetic_calibration_asked_for_on_a_model_onnxruntime_cannot_run_exits_2(
    tmp_path: Path,
) -> None:
    path, out = tmp_path / "custom.onnx", tmp_path / "out.onnx"
    onnx.save(_custom_op_model(), str(path))
    result = CliRunner().invoke(main, [str(path), str(out), "--synthetic-calibration"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        "error: --synthetic-calibration: the model does not run on synthetic inputs in "
        "onnxruntime: "
    )
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_model_failing_the_checker_is_a_usage_error(tmp_path: Path) -> None:
    model = onnx.load(str(VGG))
    model.graph.node[1].input[0] = "no_such_tensor"  # bn1 reads a tensor nothing produces
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    result = CliRunner().invoke(main, [str(path), str(tmp_path / "out.onnx")])
    assert result.exit_code == 2
    assert "fails the ONNX checker" in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_read_only_output_folder_is_a_usage_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests may run as root, which ignores permissions: the access check is simulated."""
    real_access = lbyl_onnx.graph.io.os.access
    folder = workdir / "locked"
    folder.mkdir()

    def access(path, mode):
        if Path(path) == folder and mode == lbyl_onnx.graph.io.os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(lbyl_onnx.graph.io.os, "access", access)
    result = CliRunner().invoke(main, [str(workdir / "in.onnx"), str(folder / "out.onnx")])
    assert result.exit_code == 2
    assert "not writable" in result.output
    assert list(folder.iterdir()) == []


def test_nothing_prunable_writes_the_model_unchanged_with_a_warning(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["z"], "conv"),
        onnx.helper.make_node("Sigmoid", ["z"], ["s"], "sigmoid"),
        onnx.helper.make_node("Mul", ["z", "s"], ["y"], "silu"),
    ]
    graph = onnx.helper.make_graph(nodes, "silu", [x], [y], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    path, out = tmp_path / "silu.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(path))
    result = CliRunner().invoke(main, [str(path), str(out)])
    assert result.exit_code == 0
    assert "no prunable unit found: the model is unchanged" in result.output
    assert onnx.load(str(out)) == onnx.load(str(path))


def test_unreadable_input_is_a_usage_error(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated like the read-only folder: root reads everything."""
    source = workdir / "in.onnx"
    real_access = lbyl_onnx.graph.io.os.access

    def access(path, mode):
        if Path(path) == source and mode == lbyl_onnx.graph.io.os.R_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(lbyl_onnx.graph.io.os, "access", access)
    result = CliRunner().invoke(main, [str(source), str(workdir / "out.onnx")])
    assert result.exit_code == 2
    assert "not readable" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["in.onnx"]
