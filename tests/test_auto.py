"""``--method auto``: per unit, the method whose compensation moves the outputs least."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from models import conv_net, ort_outputs, with_integer_input

from lbyl_onnx import list_units, prune
from lbyl_onnx.cli import main
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.inputs.normalisation import fit_normalisation
from lbyl_onnx.inputs.synthetic import synthetic_inputs
from lbyl_onnx.pipeline.measure import SENSITIVITY_SAMPLES, SYNTHETIC_SAMPLES
from lbyl_onnx.pipeline.solve import AUTO_METHODS

ROOT = Path(__file__).resolve().parent.parent / "sample_models"


def _error(model, reference, feeds) -> float:
    out = ort_outputs(model, feeds)
    lost = sum(np.sum((a - b) ** 2) for a, b in zip(out, reference, strict=True))
    return float(lost / sum(np.sum(b**2) for b in reference))


@pytest.mark.parametrize("name", ["digits_vgg_bn", "digits_mbv2"])
def test_auto_picks_per_unit_the_method_whose_pruned_model_moves_least(name: str) -> None:
    """Oracle: for every unit and method, the model pruned at that unit alone, run in
    onnxruntime on the same synthetic inputs; auto's choice is the argmin."""
    model = load_model(ROOT / f"{name}.onnx")
    _, report = prune(model, ratio=0.3, method="auto", check=False)
    inputs = synthetic_inputs(model, SYNTHETIC_SAMPLES, 0)
    feeds = {k: v[:SENSITIVITY_SAMPLES] for k, v in inputs.items()}
    reference = ort_outputs(model, feeds)
    chosen = {u.name: u.method for u in report.units}
    for unit in list_units(model)[0]:
        errors = {
            method: _error(
                prune(
                    model,
                    ratio=0.0,
                    ratio_for=((unit.name, 0.3),),
                    method=method,
                    synthetic_calibration=False,  # auto chooses among the closed forms
                    check=False,
                )[0],
                reference,
                feeds,
            )
            for method in AUTO_METHODS
        }
        best = min(errors, key=errors.__getitem__)
        assert chosen[unit.name] == best, (unit.name, errors)
    scaled = fit_normalisation(model).describe()
    assert report.mode == f"closed form, methods chosen on synthetic inputs scaled as {scaled}"
    assert len(set(chosen.values())) > 1  # the choice matters on these models


def test_auto_measures_on_the_calibration_data_when_given() -> None:
    model = load_model(ROOT / "digits_vgg_bn.onnx")
    data = dict(np.load(ROOT / "digits_calibration.npz"))
    _, report = prune(model, ratio=0.3, method="auto", calibration_data=data, check=False)
    notes = [n for u in report.units for n in u.notes if n.startswith("auto:")]
    assert len(notes) == len(report.units)
    assert all(f"on {SENSITIVITY_SAMPLES} calibration samples" in n for n in notes)
    assert "the best method per unit" in report.mode


def test_auto_without_measurable_inputs_is_lbyl_and_says_why() -> None:
    model = with_integer_input(conv_net((3, 8, 8)))
    _, report = prune(model, ratio=0.3, method="auto", check=False)
    assert {u.method for u in report.units} == {"lbyl"}
    assert all("not floating point" in " ".join(u.notes) for u in report.units)


def test_auto_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    args = [str(ROOT / "digits_vgg_bn.onnx"), str(out), "--method", "auto", "--no-check"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "method auto" in result.output and "auto: " in result.output
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
