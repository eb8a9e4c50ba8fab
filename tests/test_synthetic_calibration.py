"""``--synthetic-calibration``: calibration mode on synthetic inputs made for the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from models import conv_net, dense_net, weights_of, with_integer_input
from onnx import TensorProto, helper

from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.errors import UsageError
from lbyl_onnx.inputs.images import convention
from lbyl_onnx.inputs.normalisation import fit_normalisation
from lbyl_onnx.inputs.synthetic import synthetic_inputs
from lbyl_onnx.pipeline.measure import synthetic_calibration_count
from lbyl_onnx.runtime.sessions import session

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
VGG = SAMPLES / "digits_vgg_bn.onnx"
DIGITS = SAMPLES / "digits_test.npz"


def _same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


@pytest.mark.parametrize("independent", [False, True])
def test_it_is_calibration_on_the_synthetic_inputs_of_the_estimated_normalisation(
    independent: bool,
) -> None:
    """The oracle: calibration mode on 256 synthetic images (seed 0) scaled by the
    normalisation fitted to the model's first BatchNormalization, built here by hand."""
    model = onnx.load(VGG)
    norm = fit_normalisation(model)
    data = synthetic_inputs(model, 256, 0, None, {"input": (norm.scale, norm.shift)})
    options = {
        "ratio": 0.3,
        "check": False,
        "sequential": False if independent else None,
        "calibration_ridge": 1e-2,  # as given: no cross-validation (tested in test_sequential)
        "criterion": "l2",  # the default on synthetic inputs; on real data it is reconstruction
    }
    ours, report = prune(model, synthetic_calibration=True, **options)
    reference, _ = prune(model, calibration_data=data, **options)
    _same_weights(ours, reference)
    order = "independent" if independent else "sequential"
    assert report.mode == (
        f"calibrated on 256 synthetic inputs scaled as {norm.describe()}: "
        f"{order} activation-space least squares + bias correction"
    )
    plain, _ = prune(model, ratio=0.3, check=False)  # data-free: the flag changes the result
    free, calibrated = weights_of(plain), weights_of(ours)
    assert any(
        not np.allclose(free[k], calibrated[k])
        for k in free.keys() & calibrated.keys()
        if free[k].shape == calibrated[k].shape and free[k].size > 1
    )


def test_input_range_scales_the_synthetic_inputs(tmp_path: Path) -> None:
    """The API, with a given ridge, against calibration on hand-built [0, 1] images; the
    command (the ridge cross-validated) against the API with the same options."""
    model = onnx.load(VGG)
    data = synthetic_inputs(model, 256, 0, None, {"input": convention("[0,1]", 1)})
    options = {"ratio": 0.3, "check": False}
    reference, _ = prune(
        model, calibration_data=data, calibration_ridge=1e-2, criterion="l2", **options
    )
    given = {"synthetic_calibration": True, "input_range": "[0,1]"}
    _same_weights(prune(model, calibration_ridge=1e-2, **given, **options)[0], reference)
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    args = [str(VGG), str(out), "--synthetic-calibration", "--input-range", "0,1", "--no-check"]
    result = CliRunner().invoke(main, [*args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "--input-range has no effect" not in result.output
    _same_weights(onnx.load(out), prune(model, **given, **options)[0])
    mode = json.loads(report.read_text())["mode"]
    assert mode.startswith("calibrated on 256 synthetic inputs scaled as [0,1], as given: ")


def test_it_beats_both_data_free_compensations_on_the_digits_models() -> None:
    """Held-out digits accuracy at 0.3 (benchmark: VGG-BN 0.930 against nm's 0.752, ResNet
    0.900 against nm's 0.604); no real input is used to prune."""
    data = np.load(DIGITS)
    x, labels = data["input"], data["label"]

    def accuracy(model: onnx.ModelProto) -> float:
        return float(np.mean(session(model).run(None, {"input": x})[0].argmax(1) == labels))

    for name in ("digits_vgg_bn", "digits_resnet"):
        path = str(SAMPLES / f"{name}.onnx")
        synthetic = accuracy(prune(path, ratio=0.3, synthetic_calibration=True, check=False)[0])
        for method in ("nm", "lbyl"):
            closed = prune(path, ratio=0.3, method=method, synthetic_calibration=False, check=False)
            data_free = accuracy(closed[0])
            assert synthetic > data_free + 0.05, (name, method, synthetic, data_free)


def _input_only(shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ([1, 1, 8, 8], 256),  # small inputs: the most
        ([1, 3, 640, 640], (512 << 20) // (4 * 3 * 640 * 640)),  # 109: what 512 MiB holds
        ([1, 3, 4096, 4096], 16),  # huge inputs: never fewer than 16
        (["batch", 3, 512, 512], (512 << 20) // (4 * 3 * 512 * 512)),  # 170, batch free
    ],
)
def test_the_number_of_synthetic_inputs_is_bounded_by_memory(shape, expected: int) -> None:
    assert synthetic_calibration_count(_input_only(shape)) == expected


def test_a_given_input_shape_sets_the_number() -> None:
    model = _input_only(["batch", 3, "h", "w"])
    count = synthetic_calibration_count(model, {"x": [1, 3, 512, 512]})
    assert count == (512 << 20) // (4 * 3 * 512 * 512)


@pytest.mark.parametrize(
    "build, args, message",
    [
        (
            lambda: onnx.load(VGG),
            ["--calibration-data", str(SAMPLES / "digits_calibration.npz")],
            "give --calibration-data or --synthetic-calibration, not both",
        ),
        (
            lambda: with_integer_input(conv_net((3, 8, 8))),
            [],
            "--synthetic-calibration: input 'x' is not floating point: cannot synthesise it",
        ),
    ],
)
def test_unusable_requests_exit_2_in_one_line(tmp_path: Path, build, args, message) -> None:
    source = tmp_path / "in.onnx"
    onnx.save(build(), source)
    before = source.read_bytes()
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, [str(source), str(out), "--synthetic-calibration", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message}"
    assert not out.exists() and source.read_bytes() == before


def test_the_api_rejects_both_sources() -> None:
    with pytest.raises(UsageError, match="not both"):
        prune(str(VGG), synthetic_calibration=True, calibration_data={"input": np.zeros(1)})


def test_depthwise_groups_still_warn_that_real_data_is_better() -> None:
    _, report = prune(
        str(SAMPLES / "digits_mbv2.onnx"), ratio=0.3, synthetic_calibration=True, check=False
    )
    assert any("pruned without real calibration data" in w for w in report.warnings)
    _, real = prune(
        str(SAMPLES / "digits_mbv2.onnx"),
        ratio=0.3,
        calibration_data=dict(np.load(SAMPLES / "digits_calibration.npz")),
        check=False,
    )
    assert not any("depthwise group(s) pruned without" in w for w in real.warnings)


def test_dense_inputs_are_standard_normal_and_the_report_says_synthetic() -> None:
    model = dense_net((12, 16, 8), seed=2)  # input x: [batch, 12], no image to scale
    data = synthetic_inputs(model, 256, 0)
    assert data["x"].shape == (256, 12) and abs(float(data["x"].std()) - 1.0) < 0.05
    options = {"ratio": 0.3, "check": False, "calibration_ridge": 1e-2, "criterion": "l2"}
    ours, report = prune(model, synthetic_calibration=True, **options)
    _same_weights(ours, prune(model, calibration_data=data, **options)[0])
    assert report.mode.startswith("calibrated on 256 synthetic inputs: sequential ")


def test_it_is_the_default_for_lbyl_and_only_for_lbyl() -> None:
    model = onnx.load(VGG)
    default, report = prune(model, ratio=0.3, check=False)
    asked, _ = prune(model, ratio=0.3, synthetic_calibration=True, check=False)
    _same_weights(default, asked)
    assert report.mode.startswith("calibrated on 256 synthetic inputs scaled as ")
    closed, closed_report = prune(model, ratio=0.3, synthetic_calibration=False, check=False)
    assert closed_report.mode == "closed form"
    assert any(
        not np.array_equal(v, weights_of(closed)[k])
        for k, v in weights_of(default).items()
        if k in weights_of(closed)
    )
    for method in ("prune", "nm", "lbyl-nn"):  # the baselines stay as published
        plain, plain_report = prune(model, ratio=0.3, method=method, check=False)
        _same_weights(
            plain,
            prune(model, ratio=0.3, method=method, synthetic_calibration=False, check=False)[0],
        )
        assert plain_report.mode == "closed form"


def test_the_default_falls_back_to_the_closed_form_for_an_input_it_cannot_synthesise() -> None:
    model = with_integer_input(conv_net((3, 8, 8)))
    default, report = prune(model, ratio=0.3, check=False)
    _same_weights(default, prune(model, ratio=0.3, synthetic_calibration=False, check=False)[0])
    assert report.mode == "closed form"
    assert report.warnings[0] == (
        "closed-form LBYL, not synthetic calibration: input 'x' is not floating point: "
        "cannot synthesise it"
    )


def test_closed_form_and_calibration_data_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    calibration = str(SAMPLES / "digits_calibration.npz")
    args = [str(VGG), str(out), "--closed-form", "--calibration-data", calibration]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: give --calibration-data or --closed-form, not both"
    assert not out.exists()


def test_nothing_is_synthesised_for_a_model_without_units() -> None:
    """YOLOv8n has no unit (its convs feed residual Adds): the default spent 15 s making
    synthetic inputs for it and calibrating nothing."""
    for asked in (None, True):
        _, report = prune(
            conv_net((3, 8, 8), act="Sigmoid"), ratio=0.3, synthetic_calibration=asked, check=False
        )
        assert report.units == []
        assert report.mode == "closed form"
