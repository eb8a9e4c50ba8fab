"""Sequential calibration (``--sequential``): units solved in graph order against the
original's activations, with the earlier units already pruned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from models import conv_net, dense_net, ort_outputs, two_branches
from onnx import helper, numpy_helper

from lbyl_onnx import list_units, prune
from lbyl_onnx.cli import main
from lbyl_onnx.graph.rewrite import Plan
from lbyl_onnx.methods import kept_count
from lbyl_onnx.methods.calibrated import (
    RIDGE_CHOICES,
    CrossStats,
    cross_validated_ridge,
    held_out_error,
    solve_calibrated,
    solve_sequential,
)
from lbyl_onnx.methods.criteria import keep_best
from lbyl_onnx.pipeline import sequential as sequential_module
from lbyl_onnx.pipeline.sequential import SequentialCalibration
from lbyl_onnx.runtime import sessions
from lbyl_onnx.runtime.record import record_statistics

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
CALIBRATION = SAMPLES / "digits_calibration.npz"
TEST_SPLIT = SAMPLES / "digits_test.npz"


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 10), st.integers(1, 9))
def test_solution_is_the_least_squares_fit_pulled_toward_pass_through(seed, n, m) -> None:
    """Oracle: NumPy lstsq on the centred samples stacked over ``sqrt(lam) I`` against
    ``sqrt(lam) P`` (the pull toward pass-through), the offsets from the means; the residual
    recomputed on the samples."""
    m = min(m, n)
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((300, n)) @ rng.standard_normal((n, n)) + rng.normal(size=n)
    kept = np.sort(rng.permutation(n)[:m])
    x = r[:, kept] @ (np.eye(m) + 0.3 * rng.standard_normal((m, m))) + rng.normal(size=m)
    stats = CrossStats.empty(m, n)
    stats.add(x[:170], r[:170])
    stats.add(x[170:], r[170:])  # accumulating in pieces gives the same moments
    ridge = 0.05
    solution = solve_sequential(stats, kept, ridge)

    xc, rc = x - x.mean(0), r - r.mean(0)
    lam = ridge * np.trace(xc.T @ xc / len(x)) / m
    passthrough = np.eye(n)[kept]  # m x N
    design = np.vstack([xc / np.sqrt(len(x)), np.sqrt(lam) * np.eye(m)])
    target = np.vstack([rc / np.sqrt(len(x)), np.sqrt(lam) * passthrough])
    expected = np.linalg.lstsq(design, target, rcond=None)[0].T
    np.testing.assert_allclose(solution.scaling, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(solution.offsets, r.mean(0) - expected @ x.mean(0), atol=1e-8)
    error = np.sum((r - x @ expected.T - solution.offsets) ** 2)
    placed = np.zeros_like(r)
    placed[:, kept] = x
    assert solution.residual == pytest.approx(error / np.sum((r - placed) ** 2), rel=1e-6)


def _calibration() -> dict[str, np.ndarray]:
    return dict(np.load(CALIBRATION))


def test_the_first_unit_gets_calibration_modes_solution() -> None:
    """Nothing before it is pruned, so ``x = r_P``: the removed rows and their offsets are
    those of the independent activation-space least squares with the same ridge, the kept
    rows the identity (the pull toward pass-through costs them nothing)."""
    model = onnx.load(SAMPLES / "digits_vgg_bn.onnx")
    data = _calibration()
    units, _ = list_units(model)
    first = units[0]
    kept = keep_best(first.arrays.weight, kept_count(first.channels, 0.3), "l2")
    removed = np.setdiff1d(np.arange(first.channels), kept)
    _, solution = SequentialCalibration(model, [first], data, 0.01).solve(
        first, len(kept), [], kept
    )
    stats = record_statistics(model, [first], data)[first.name]
    independent = solve_calibrated(stats, kept, 0.01)
    np.testing.assert_allclose(
        solution.scaling[removed], independent.scaling[removed], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(solution.offsets[removed], independent.offsets[removed], atol=1e-4)
    np.testing.assert_allclose(
        solution.scaling[kept], np.eye(first.channels)[kept][:, kept], atol=0.02
    )


def test_a_linear_network_is_rebuilt_exactly() -> None:
    """Without activations every layer's channels are an affine function of the 3 inputs, so
    3 kept channels of each unit determine all of them, whatever was pruned before: the
    pruned network computes the original's outputs."""
    model = dense_net((3, 8, 8), act=None, seed=3)
    data = {"x": np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)}
    pruned, report = prune(
        model, ratio=0.6, calibration_data=data, sequential=True, calibration_ridge=1e-9
    )
    assert [u.channels_after for u in report.units] == [3, 3]
    assert all(u.residual < 1e-6 for u in report.units)
    feeds = {"x": np.random.default_rng(1).standard_normal((16, 3)).astype(np.float32)}
    for got, want in zip(ort_outputs(pruned, feeds), ort_outputs(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("name", ["digits_vgg_bn", "digits_resnet", "digits_mbv2"])
def test_sequential_keeps_more_agreement_than_independent_calibration(name: str) -> None:
    """On the digits test split (not the calibration data), at 30%: the pruned models' top-1
    agreement with the original (measured 0.935 -> 0.974, 0.848 -> 0.985, 0.956 -> 0.974)."""
    model = onnx.load(SAMPLES / f"{name}.onnx")
    data = _calibration()
    feeds = {"input": np.load(TEST_SPLIT)["input"]}
    labels = ort_outputs(model, feeds)[0].argmax(1)
    agreement = {}
    for sequential in (False, True):
        pruned, report = prune(model, ratio=0.3, calibration_data=data, sequential=sequential)
        agreement[sequential] = float(np.mean(ort_outputs(pruned, feeds)[0].argmax(1) == labels))
        assert ("sequential" in report.mode) == sequential
    assert agreement[True] >= agreement[False] + 0.01, agreement


@pytest.mark.parametrize(
    "args",
    [
        ["--sequential", "--closed-form"],
        ["--independent", "--closed-form"],
        ["--sequential", "--calibration-data", str(CALIBRATION), "--method", "nm"],
        ["--independent", "--calibration-data", str(CALIBRATION), "--method", "auto"],
    ],
)
def test_the_solving_order_needs_calibration_data_and_lbyl(tmp_path: Path, args) -> None:
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, [str(SAMPLES / "digits_vgg_bn.onnx"), str(out), *args])
    assert result.exit_code == 2, result.output
    assert f"{args[0]} needs --method lbyl, calibrated (on --calibration-data, or on " in (
        result.output
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, mode",
    [
        ([], "sequential activation-space least squares"),
        (["--independent"], "independent activation-space least squares"),
        (["--method", "nm"], "calibrated on 256 samples: nm + bias correction"),
    ],
)
def test_calibration_mode_is_sequential_unless_told(tmp_path: Path, args, mode: str) -> None:
    """The report's mode line names the solution; the JSON report carries it."""
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    paths = [str(SAMPLES / "digits_vgg_bn.onnx"), str(out), "--report", str(report)]
    result = CliRunner().invoke(main, [*paths, "--calibration-data", str(CALIBRATION), "-q", *args])
    assert result.exit_code == 0, result.output
    assert mode in json.loads(report.read_text())["mode"]


def test_under_a_budget_the_widths_are_calibration_modes() -> None:
    """The budget's damage curves come from the independent calibrated solution (one pass
    for all units); ``--sequential`` changes the coefficients, not the widths."""
    model = onnx.load(SAMPLES / "digits_resnet.onnx")
    widths = {}
    for sequential in (False, True):
        _, report = prune(
            model, target_macs=0.7, calibration_data=_calibration(), sequential=sequential
        )
        widths[sequential] = [u.channels_after for u in report.units]
        assert "damage measured on the calibration data" in report.budget
    assert widths[True] == widths[False]
    assert sum(widths[True]) < sum(u.channels for u in list_units(model)[0])


def _solve_all(
    model: onnx.ModelProto, data: dict[str, np.ndarray], monkeypatch, **options
) -> tuple[list[Plan], list[int]]:
    """Every unit solved in order at 30%, as ``prune`` does; and how many nodes each
    onnxruntime session held."""
    held = []
    session = sessions.session
    monkeypatch.setattr(
        sessions, "session", lambda m, **kw: held.append(len(m.graph.node)) or session(m, **kw)
    )
    units, _ = list_units(model)
    calibration = SequentialCalibration(model, units, data, **options)
    plans: list[Plan] = []
    for unit in units:
        kept = keep_best(unit.arrays.weight, kept_count(unit.channels, 0.3), "l2")
        _, solution = calibration.solve(unit, len(kept), plans, kept)
        plans.append(Plan(unit, kept, solution.scaling, solution.offsets))
    monkeypatch.setattr(sessions, "session", session)
    return plans, held


def _if_appended(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with an ``If`` node passing its first output on (control flow: a subgraph
    may read any outer tensor)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    name = graph.output[0].name
    branch = helper.make_graph(
        [helper.make_node("Identity", [name], ["passed"])],
        "branch",
        [],
        [helper.make_empty_tensor_value_info("passed")],
    )
    graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    graph.node.append(
        helper.make_node("If", ["cond"], ["routed"], then_branch=branch, else_branch=branch)
    )
    graph.output.append(helper.make_empty_tensor_value_info("routed"))
    return model


FRONTIER_CASES = {  # the model, and whether the frontier makes its passes smaller
    "residual": (lambda: onnx.load(SAMPLES / "digits_resnet.onnx"), True),
    "depthwise": (lambda: onnx.load(SAMPLES / "digits_mbv2.onnx"), True),
    "listed initializers": (
        lambda: conv_net(channels=(3, 8, 8, 8), bn="kept", list_initializers=True),
        True,
    ),
    "two branches": (lambda: two_branches(False, False), False),
    "weights in Constant nodes": (  # edited in place by a plan: never held
        lambda: conv_net(channels=(3, 8, 8, 8), act=None, bias=False, storage="constant"),
        True,
    ),
    "weights behind Identity nodes": (
        lambda: conv_net(channels=(3, 8, 8, 8), storage="constant_identity"),
        True,
    ),
}


@pytest.mark.parametrize("case", FRONTIER_CASES)
def test_starting_from_the_frontier_changes_nothing(case: str, monkeypatch) -> None:
    """Oracle: the same solutions computed with nothing held between passes (every pass
    from the model's inputs, one unit's originals per pass); on chains, the frontier makes
    the passes smaller. On 64 random inputs."""
    build, saves = FRONTIER_CASES[case]
    model = build()
    first = model.graph.input[0]
    dims = [64, *(d.dim_value for d in first.type.tensor_type.shape.dim[1:])]
    data = {first.name: np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
    plans, held = _solve_all(model, data, monkeypatch)
    alone, held_alone = _solve_all(model, data, monkeypatch, recorded_bytes=0, frontier_bytes=0)
    for plan, expected in zip(plans, alone, strict=True):  # float32 passes cut differently
        np.testing.assert_allclose(plan.scaling, expected.scaling, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(plan.offsets, expected.offsets, rtol=1e-4, atol=1e-5)
    assert (sum(held) < sum(held_alone)) == saves, (held, held_alone)


def test_with_control_flow_every_pass_starts_from_the_inputs(monkeypatch) -> None:
    """A subgraph may read any tensor, so nothing is cut or held; the solutions are those of
    the same model without the ``If`` node."""
    model = onnx.load(SAMPLES / "digits_resnet.onnx")
    plans, _ = _solve_all(model, _calibration(), monkeypatch)
    routed, held = _solve_all(_if_appended(model), _calibration(), monkeypatch)
    assert set(held) == {len(model.graph.node) + 1}
    for plan, expected in zip(routed, plans, strict=True):
        np.testing.assert_allclose(plan.scaling, expected.scaling, rtol=1e-5, atol=1e-6)


def test_both_models_are_observed_at_the_same_sampled_positions(monkeypatch) -> None:
    """With 5 of the 16 positions of digits_vgg_bn's first unit sampled per image: nothing
    before it is pruned, so ``x = r_P`` at every observed row exactly when the rows pair up,
    and the kept rows of ``S`` are the identity; the solver sees samples x 5 rows."""
    model = onnx.load(SAMPLES / "digits_vgg_bn.onnx")
    data = _calibration()
    first = list_units(model)[0][0]
    seen = []
    solve = sequential_module.solve_sequential
    monkeypatch.setattr(
        sequential_module,
        "solve_sequential",
        lambda stats, kept, ridge: seen.append(stats.count) or solve(stats, kept, ridge),
    )
    kept = keep_best(first.arrays.weight, kept_count(first.channels, 0.3), "l2")
    calibration = SequentialCalibration(model, [first], data, positions=5)
    _, solution = calibration.solve(first, len(kept), [], kept)
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(helper.make_empty_tensor_value_info(first.record))
    record = ort_outputs(probe, {"input": data["input"][:1]})[-1]
    assert record[0, 0].size > 5
    assert seen == [len(data["input"]) * 5]
    np.testing.assert_allclose(solution.scaling[kept], np.eye(len(kept)), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(1, 8))
def test_held_out_error_is_the_mean_squared_error_over_the_rows(seed, n, m) -> None:
    m = min(m, n)
    rng = np.random.default_rng(seed)
    x, r = rng.normal(size=(50, m)) + 1.0, rng.normal(size=(50, n)) - 0.5
    scaling, offsets = rng.normal(size=(n, m)), rng.normal(size=n)
    stats = CrossStats.empty(m, n)
    stats.add(x, r)
    expected = np.mean(np.sum((r - x @ scaling.T - offsets) ** 2, axis=1))
    assert held_out_error(stats, scaling, offsets) == pytest.approx(expected, rel=1e-9)


def _folds(x: np.ndarray, r: np.ndarray) -> tuple[CrossStats, CrossStats]:
    folds = (CrossStats.empty(x.shape[1], r.shape[1]), CrossStats.empty(x.shape[1], r.shape[1]))
    folds[0].add(x[0::2], r[0::2])
    folds[1].add(x[1::2], r[1::2])
    return folds


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 2.0))
def test_the_ridge_chosen_has_the_least_error_on_the_other_half(seed, noise) -> None:
    """Oracle: every choice fitted on one half and its squared error measured on the rows of
    the other half with NumPy, both ways; the choice is the first argmin."""
    rng = np.random.default_rng(seed)
    n, m = 6, 4
    kept = np.sort(rng.permutation(n)[:m])
    x = rng.normal(size=(40, m))
    r = x @ rng.normal(size=(m, n)) + noise * rng.normal(size=(40, n))
    folds = _folds(x, r)
    halves = [(x[0::2], r[0::2]), (x[1::2], r[1::2])]
    errors = []
    for ridge in RIDGE_CHOICES:
        error = 0.0
        for (train, _), (tx, tr) in ((folds, halves[1]), (folds[::-1], halves[0])):
            fitted = solve_sequential(train, kept, ridge)
            error += np.mean(np.sum((tr - tx @ fitted.scaling.T - fitted.offsets) ** 2, axis=1))
        errors.append(error)
    assert cross_validated_ridge(folds, kept) == RIDGE_CHOICES[int(np.argmin(errors))]


def test_noise_gets_the_strongest_pull_and_an_exact_relation_the_weakest() -> None:
    """Removed channels independent of the kept ones: any fit only learns the noise of its
    half, so pass-through (the largest ridge) predicts the other half best. Removed channels
    an exact combination of the kept ones: the least shrinkage predicts best."""
    rng = np.random.default_rng(0)
    n, m, rows = 12, 8, 40
    kept = np.arange(m)
    x = rng.normal(size=(rows, m))
    noise = np.hstack([x, rng.normal(size=(rows, n - m))])
    exact = np.hstack([x, x @ rng.normal(size=(m, n - m))])
    assert cross_validated_ridge(_folds(x, noise), kept) == max(RIDGE_CHOICES)
    assert cross_validated_ridge(_folds(x, exact), kept) == min(RIDGE_CHOICES)


def test_the_folds_are_the_even_and_the_odd_samples(monkeypatch) -> None:
    """The first unit (nothing before it pruned, so ``x = r_P``): the two folds the ridge is
    cross-validated on hold exactly the moments of the even and of the odd calibration
    samples, recorded separately in the original (record_statistics, every position: the
    digits maps have at most 64); the solution is solve_sequential on both with the ridge
    chosen, which the report's note names."""
    model = onnx.load(SAMPLES / "digits_vgg_bn.onnx")
    data = {"input": _calibration()["input"][:100]}
    units, _ = list_units(model)
    first = units[0]
    kept = keep_best(first.arrays.weight, kept_count(first.channels, 0.3), "l2")
    seen = []

    def spy(folds, kept):
        seen.append(folds)
        return cross_validated_ridge(folds, kept)

    monkeypatch.setattr(sequential_module, "cross_validated_ridge", spy)
    calibration = SequentialCalibration(model, [first], data, batch=7)
    _, solution = calibration.solve(first, len(kept), [], kept)
    assert len(seen) == 1
    for parity, fold in enumerate(seen[0]):
        part = {"input": data["input"][parity::2]}
        stats = record_statistics(model, [first], part)[first.name]
        assert fold.count == stats.count
        np.testing.assert_allclose(fold.r_total, stats.total, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(fold.x_total, stats.total[kept], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(fold.xr, stats.outer[kept], rtol=1e-5, atol=1e-2)
    ridge = cross_validated_ridge(seen[0], kept)
    assert solution.notes == [f"ridge {ridge:g} (cross-validated)"]
    expected = solve_sequential(seen[0][0] + seen[0][1], kept, ridge)
    np.testing.assert_allclose(solution.scaling, expected.scaling)


def test_the_ridge_is_cross_validated_on_synthetic_inputs_only() -> None:
    """Synthetic calibration cross-validates each unit's ridge; real calibration data keeps
    the fixed one (measured: docs/benchmarks.md), and a given ridge is used as given."""
    model = onnx.load(SAMPLES / "digits_vgg_bn.onnx")

    def notes(**options) -> list[str]:
        _, report = prune(model, ratio=0.3, check=False, **options)
        return [note for u in report.units for note in u.notes if "cross-validated" in note]

    assert len(notes(synthetic_calibration=True)) == 5
    assert notes(calibration_data=_calibration()) == []
    assert notes(synthetic_calibration=True, calibration_ridge=0.1) == []
    real, _ = prune(model, ratio=0.3, check=False, calibration_data=_calibration())
    fixed, _ = prune(
        model, ratio=0.3, check=False, calibration_data=_calibration(), calibration_ridge=1e-2
    )
    for got, want in zip(real.graph.initializer, fixed.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
