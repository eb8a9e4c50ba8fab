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

import lbyl_onnx.api
import lbyl_onnx.graph.io
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
        (lbyl_onnx.api, "apply_plans"),  # in the middle of the rewrite
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


@pytest.mark.parametrize("method", ["prune", "nm", "lbyl"])
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
