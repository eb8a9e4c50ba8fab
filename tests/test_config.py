"""The options resolved into settings (:func:`lbyl_onnx.config.resolve`): every default
decided against the model's facts, with its reason; the options checked once per run; errors
that name the options as the caller spelled them (Python fields in the library, flags on the
command line)."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import lbyl_onnx
from lbyl_onnx import config, prune, prune_file
from lbyl_onnx.cli import FLAGS, flag, main
from lbyl_onnx.config import (
    CROSS_VALIDATED,
    ModelFacts,
    OptionError,
    PruneConfig,
    Settings,
    resolve,
    settled,
    tries_synthetic,
    validate_options,
)
from lbyl_onnx.methods.calibrated import CALIBRATION_RIDGE, SEQUENTIAL_RIDGE
from lbyl_onnx.pipeline import run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
VGG = SAMPLES / "digits_vgg_bn.onnx"

DECIDED = (
    "calibration",
    "sequential",
    "criterion",
    "ridge",
    "sequential_ridge",
    "bias_correction",
    "judge",
    "budget",
    "latency_limit",
    "input_range",
)
"""The settings whose value :func:`resolve` decides, each with a reason."""

MADE = ModelFacts(units=True, synthetic="")  # synthetic inputs made, and the model runs


@pytest.mark.parametrize(
    ("options", "facts", "expected"),
    [
        (PruneConfig(), MADE, ("synthetic", True, "l2", CROSS_VALIDATED)),
        (
            PruneConfig(),
            ModelFacts(calibration_data=True),
            ("data", True, "reconstruction", SEQUENTIAL_RIDGE),
        ),
        (
            PruneConfig(sequential=False),
            ModelFacts(calibration_data=True),
            ("data", False, "l2", SEQUENTIAL_RIDGE),
        ),
        (PruneConfig(method="nm"), MADE, ("closed form", False, "l2", SEQUENTIAL_RIDGE)),
        (
            PruneConfig(method="nm", synthetic_calibration=True),
            MADE,
            ("synthetic", False, "l2", CROSS_VALIDATED),
        ),
        (
            PruneConfig(synthetic_calibration=False),
            MADE,
            ("closed form", False, "l2", SEQUENTIAL_RIDGE),
        ),
        (PruneConfig(), ModelFacts(units=False), ("closed form", False, "l2", SEQUENTIAL_RIDGE)),
        (
            PruneConfig(sequential=True),
            ModelFacts(large=True),
            ("closed form", False, "l2", SEQUENTIAL_RIDGE),
        ),
        (
            PruneConfig(calibration_ridge=0.5, criterion="l1"),
            ModelFacts(calibration_data=True),
            ("data", True, "l1", 0.5),
        ),
    ],
)
def test_every_default_is_decided_with_its_reason(options, facts, expected) -> None:
    """Calibration source, solving order, criterion and ridge as the pipeline decided them
    before settings existed; no decided setting is None, and each has a reason."""
    settings = resolve(validate_options(options), facts)
    calibration, sequential, criterion, sequential_ridge = expected
    assert settings.calibration == calibration
    assert settings.sequential is sequential
    assert settings.criterion == criterion
    assert settings.sequential_ridge == sequential_ridge
    given_ridge = options.calibration_ridge
    assert settings.ridge == (CALIBRATION_RIDGE if given_ridge is None else given_ridge)
    assert settings.bias_correction == settings.judge == "depthwise"
    assert set(DECIDED) <= set(settings.reasons), settings.reasons
    assert all(settings.reasons[name] for name in DECIDED)
    for name in DECIDED[:-3]:  # budget, limit (None: none) and input_range (None: estimated)
        assert getattr(settings, name) is not None


def test_given_options_are_kept_and_say_so() -> None:
    options = PruneConfig(
        bias_correction=True, judge=False, sequential=False, criterion="l1", input_range="[0,1]"
    )
    settings = resolve(validate_options(options), ModelFacts(calibration_data=True))
    assert (settings.bias_correction, settings.judge) == ("always", "never")
    assert (settings.sequential, settings.criterion, settings.input_range) == (False, "l1", "[0,1]")
    for name in ("bias_correction", "judge", "sequential", "criterion", "input_range"):
        assert settings.reasons[name] == "given"


@pytest.mark.parametrize(
    ("options", "budget", "limit"),
    [
        (PruneConfig(target_macs=0.7), ("target_macs", "MACs", 0.7), None),
        (PruneConfig(target_params=0.6), ("target_params", "parameters", 0.6), None),
        (PruneConfig(target_latency=0.8), ("target_latency", "latency", 0.8), None),
        (PruneConfig(target_macs=0.7, target_latency=0.9), ("target_macs", "MACs", 0.7), 0.9),
    ],
)
def test_the_budget_and_the_latency_limit(options, budget, limit) -> None:
    """``target_latency`` is the budget alone, a limit beside a MAC or parameter budget."""
    settings = resolve(validate_options(options), MADE)
    assert dataclasses.astuple(settings.budget) == budget
    assert settings.budget.flag == "--" + budget[0].replace("_", "-")
    assert settings.latency_limit == limit


def test_a_default_that_falls_back_warns_and_an_explicit_request_is_an_error() -> None:
    failed = ModelFacts(synthetic="input 'x' is not floating point: cannot synthesise it")
    settings = resolve(PruneConfig(), failed)
    assert settings.calibration == "closed form" and not settings.sequential
    assert settings.warnings[0] == (
        "closed-form LBYL, not synthetic calibration: input 'x' is not floating point: "
        "cannot synthesise it"
    )
    assert settings.reasons["calibration"] == failed.synthetic
    with pytest.raises(OptionError) as error:
        resolve(PruneConfig(synthetic_calibration=True), failed)
    assert str(error.value) == (
        "synthetic_calibration=True: input 'x' is not floating point: cannot synthesise it"
    )
    with pytest.raises(OptionError, match="here the compensation is the closed form"):
        resolve(PruneConfig(criterion="reconstruction"), failed)


@pytest.mark.parametrize(
    ("options", "facts", "tries"),
    [
        (PruneConfig(), ModelFacts(), True),
        (PruneConfig(), ModelFacts(large=True), False),  # the default: not on a large model
        (PruneConfig(synthetic_calibration=True), ModelFacts(large=True), True),
        (PruneConfig(), ModelFacts(units=False), False),
        (PruneConfig(), ModelFacts(calibration_data=True), False),
        (PruneConfig(method="nm"), ModelFacts(), False),
        (PruneConfig(synthetic_calibration=False), ModelFacts(), False),
    ],
)
def test_synthetic_inputs_are_made_only_where_they_may_be_used(options, facts, tries) -> None:
    assert tries_synthetic(options, facts) is tries


def test_options_that_do_nothing_and_patterns_that_match_nothing_are_warned_of() -> None:
    options = PruneConfig(
        method="nm", input_range="[0,1]", exclude=("conv9",), ratio_for=(("conv*", 0.2),)
    )
    settings = resolve(options, ModelFacts(candidates=("conv1", "fc1")))
    assert settings.warnings[0] == "--exclude 'conv9' matches no Conv/Gemm/MatMul node"
    assert settings.warnings[1].startswith("--input-range has no effect")
    assert len(settings.warnings) == 2


def test_settled_resolves_bare_options_for_a_data_free_run() -> None:
    settings = settled(PruneConfig(target_macs=0.5))
    assert isinstance(settings, Settings) and settings.calibration == "closed form"
    assert settings.budget.kind == "MACs"
    assert settled(settings) is settings


# ---------------------------------------------------------------------------- how errors name

BAD = [
    (dict(ratio=1.5), "ratio 1.5 for {ratio} is outside [0, 1)"),
    (dict(ratio_for=(("conv1", 1.0),)), "ratio 1 for {ratio_for} 'conv1' is outside [0, 1)"),
    (dict(target_macs=0.5, target_params=0.5), "give one of {target_macs} and {target_params}"),
    (dict(target_macs=0.0), "{target_macs} 0 is outside (0, 1]"),
    (dict(target_macs=0.5, ratio_for=(("c", 0.2),)), "{ratio_for} cannot be combined with"),
    (dict(round_to=0), "{round_to} must be at least 1"),
    (dict(min_keep=1.5), "{min_keep} 1.5 is outside [0, 1]"),
    (dict(check_n=0), "{check_n} must be at least 1"),
    (dict(sequential=True, method="nm"), "{sequential=True} needs {method=lbyl}, calibrated"),
    (dict(criterion="reconstruction", synthetic_calibration=False), "{criterion=reconstruction}"),
]


@pytest.mark.parametrize(("options", "template"), BAD)
def test_a_python_callers_error_names_the_fields(options, template: str) -> None:
    with pytest.raises(OptionError) as error:
        prune(str(VGG), check=False, **options)
    message = str(error.value)
    assert "--" not in message
    python = {"{sequential=True}": "sequential=True", "{method=lbyl}": "method='lbyl'"}
    python["{criterion=reconstruction}"] = "criterion='reconstruction'"
    expected = template
    for placeholder, spelled in python.items():
        expected = expected.replace(placeholder, spelled)
    assert expected.replace("{", "").replace("}", "") in message
    assert error.value.options  # the error carries the fields it names


def test_ratio_for_is_named_as_a_field() -> None:
    with pytest.raises(OptionError) as error:
        lbyl_onnx.prune(str(VGG), target_macs=0.5, ratio_for=(("conv1", 0.2),))
    assert str(error.value) == "ratio_for cannot be combined with target_macs"
    assert error.value.options == ("ratio_for", "target_macs")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio-for", "conv1=1.5"], "ratio 1.5 for --ratio-for 'conv1' is outside [0, 1)"),
        (
            ["--target-macs", "0.5", "--ratio-for", "conv1=0.2"],
            "--ratio-for cannot be combined with --target-macs",
        ),
        (["--round-to", "0"], "--round-to must be at least 1"),
        (
            ["--closed-form", "--sequential"],
            "--sequential needs --method lbyl, calibrated (on --calibration-data, or on synthetic "
            "inputs: not --closed-form)",
        ),
    ],
)
def test_the_command_line_names_the_flags(tmp_path: Path, args, message: str) -> None:
    result = CliRunner().invoke(main, [str(VGG), str(tmp_path / "out.onnx"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {message}"


@pytest.mark.parametrize(("options", "template"), BAD)
def test_every_option_an_error_names_has_a_flag(options, template: str) -> None:
    with pytest.raises(OptionError) as error:
        validate_options(PruneConfig(**options))
    spelled = error.value.spelled(flag)
    assert all(name not in spelled for name in ("ratio_for", "target_macs", "round_to"))
    assert spelled.startswith(template.split("{")[0])


def test_every_option_the_command_line_sets_has_a_flag() -> None:
    """The fields a user can set on the command line (all but the research ones)."""
    research = {"options", "seed", "calibration_ridge", "judge"}
    fields = {f.name for f in dataclasses.fields(PruneConfig)} - research
    assert fields <= {key.partition("=")[0] for key in FLAGS}
    assert flag("method=lbyl") == "--method lbyl"
    assert flag("synthetic_calibration=False") == "--closed-form"


# ---------------------------------------------------------------------------- once per run


def _count_validations(monkeypatch: pytest.MonkeyPatch) -> list[PruneConfig]:
    """Every call of :func:`validate_options`, wherever the package imported it from."""
    calls: list[PruneConfig] = []
    real = config.validate_options

    def spy(options: PruneConfig) -> PruneConfig:
        calls.append(options)
        return real(options)

    for name, module in list(sys.modules.items()):
        if name.startswith("lbyl_onnx") and getattr(module, "validate_options", None) is real:
            monkeypatch.setattr(module, "validate_options", spy)
    return calls


FAST = dict(method="prune", synthetic_calibration=False, check=False)


def test_prune_validates_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_validations(monkeypatch)
    prune(str(VGG), **FAST)
    assert len(calls) == 1


def test_prune_file_validates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_validations(monkeypatch)
    prune_file(VGG, tmp_path / "out.onnx", PruneConfig(**FAST))
    assert len(calls) == 1


def test_the_command_line_validates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_validations(monkeypatch)
    args = [str(VGG), str(tmp_path / "out.onnx"), "--method", "prune", "--closed-form"]
    result = CliRunner().invoke(main, [*args, "--no-check"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1


def test_bad_options_are_refused_before_the_model_is_read(tmp_path: Path) -> None:
    """Checked first: a missing model is not even looked for."""
    with pytest.raises(OptionError, match="round_to must be at least 1"):
        prune(str(tmp_path / "absent.onnx"), round_to=0)


def test_the_pipeline_resolves_once_against_the_models_facts() -> None:
    """The facts the pipeline gathers for digits_vgg_bn: units, no calibration data, synthetic
    inputs made and run; the settings resolved from them are the ones the report shows."""
    seen = []

    def spy(options, facts):
        seen.append(facts)
        return resolve(options, facts)

    calibration = {"input": np.load(SAMPLES / "digits_calibration.npz")["input"][:16]}
    with mock.patch.object(run, "resolve", spy):
        _, synthetic = prune(str(VGG), ratio=0.3, check=False)
        _, real = prune(onnx.load(VGG), ratio=0.3, check=False, calibration_data=calibration)
    assert len(seen) == 2
    assert seen[0].units and not seen[0].calibration_data and seen[0].synthetic == ""
    assert seen[1].calibration_data and not tries_synthetic(PruneConfig(), seen[1])
    assert "conv1" in seen[0].candidates
    assert synthetic.criterion == "l2" and real.criterion == "reconstruction"


def test_the_pipeline_never_rewrites_its_configuration() -> None:
    """No ``dataclasses.replace`` in pipeline/: the settings are resolved once and read."""
    for path in (ROOT / "lbyl_onnx" / "pipeline").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dataclasses":
                assert "replace" not in {alias.name for alias in node.names}, path.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) != ("dataclasses", "replace"), path.name
