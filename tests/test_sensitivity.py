"""The outputs' response to one unit's compensation, measured with inserted linear maps,
against the oracle: the model pruned at that unit alone, run in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from models import conv_net, ort_outputs
from onnx import helper

from lbyl_onnx import list_units, prune
from lbyl_onnx.api import PruneConfig
from lbyl_onnx.graph.io import load_model
from lbyl_onnx.methods.criteria import keep_best
from lbyl_onnx.pipeline.solve import solve_unit
from lbyl_onnx.runtime.sensitivity import OutputSensitivity

ROOT = Path(__file__).resolve().parent.parent / "sample_models"


def _pruned_at(model, unit, ratio: float):
    """The model pruned (closed form) at ``unit`` alone, the channels kept and the pipeline's
    solution for them."""
    pruned, report = prune(
        model,
        ratio=0.0,
        ratio_for=((unit.name, ratio),),
        synthetic_calibration=False,
        check=False,
    )
    (record,) = [r for r in report.units if r.name == unit.name]
    kept = keep_best(unit.arrays.weight, record.channels_after, "l2")
    return pruned, kept, solve_unit(unit, kept, PruneConfig(), None)


@pytest.mark.parametrize("name", ["digits_vgg_bn", "digits_mbv2", "digits_mlp"])
def test_one_unit_compensated_matches_the_model_pruned_at_that_unit(name: str) -> None:
    model = load_model(ROOT / f"{name}.onnx")
    before = model.SerializeToString()
    units, _ = list_units(model)
    rng = np.random.default_rng(0)
    shape = [d.dim_value or 5 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {model.graph.input[0].name: rng.uniform(0, 1, shape).astype(np.float32)}
    sensitivity = OutputSensitivity(model, units, feeds, samples=5)
    assert model.SerializeToString() == before  # the maps were only there for the session
    reference = ort_outputs(model, feeds)
    for unit in units:
        pruned, kept, solution = _pruned_at(model, unit, 0.4)
        out = ort_outputs(pruned, feeds)
        direct = sum(np.sum((a - b) ** 2) for a, b in zip(out, reference, strict=True))
        direct /= sum(np.sum(b**2) for b in reference)
        measured = sensitivity.error(unit, kept, solution.scaling, solution.offsets)
        assert direct > 1e-6  # the unit's removal moves the outputs: a test that can fail
        assert measured == pytest.approx(direct, rel=1e-4)


def test_nothing_removed_measures_no_error() -> None:
    model = load_model(ROOT / "digits_vgg_bn.onnx")
    units, _ = list_units(model)
    feeds = {"input": np.random.default_rng(1).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)}
    sensitivity = OutputSensitivity(model, units, feeds, samples=3)
    for unit in units:
        everything = np.arange(unit.channels)
        assert sensitivity.error(unit, everything, np.eye(unit.channels), None) < 1e-10


def test_a_fixed_batch_is_run_whole() -> None:
    """A model whose batch is fixed at 4 gets at least one whole batch, and a remainder that
    does not fill one is dropped (as the calibration recorder does)."""
    model = conv_net((3, 8, 8), batch=4)
    units, _ = list_units(model)
    feeds = {"x": np.random.default_rng(2).standard_normal((9, 3, 6, 6)).astype(np.float32)}
    assert len(OutputSensitivity(model, units, feeds, samples=2).inputs["x"]) == 4
    sensitivity = OutputSensitivity(model, units, feeds, samples=9)
    assert [len(o) for o in sensitivity.reference] == [8]
    unit = units[0]
    kept = np.arange(unit.channels - 2)
    solution = solve_unit(unit, kept, PruneConfig(), None)
    assert sensitivity.error(unit, kept, solution.scaling, solution.offsets) > 0


def test_a_final_softmax_is_measured_at_its_logits() -> None:
    """With a Softmax appended, the error measured is the logits' error of the model pruned
    at one unit (the oracle runs the model without the Softmax), not the probabilities'."""
    logits_model = load_model(ROOT / "digits_vgg_bn.onnx")
    model = load_model(ROOT / "digits_vgg_bn.onnx")
    graph = model.graph
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph.output[0].name = "probabilities"
    before = model.SerializeToString()
    units, _ = list_units(model)
    feeds = {"input": np.random.default_rng(3).uniform(0, 16, (6, 1, 8, 8)).astype(np.float32)}
    sensitivity = OutputSensitivity(model, units, feeds, samples=6)
    assert model.SerializeToString() == before
    unit = units[1]
    pruned, kept, solution = _pruned_at(logits_model, unit, 0.5)
    (reference,) = ort_outputs(logits_model, feeds)
    (out,) = ort_outputs(pruned, feeds)
    logits_error = np.sum((out - reference) ** 2) / np.sum(reference**2)
    probabilities_error = np.sum((_softmax(out) - _softmax(reference)) ** 2)
    probabilities_error /= np.sum(_softmax(reference) ** 2)
    assert abs(logits_error - probabilities_error) > 1e-3 * logits_error  # they differ here
    measured = sensitivity.error(unit, kept, solution.scaling, solution.offsets)
    assert measured == pytest.approx(logits_error, rel=1e-4)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
