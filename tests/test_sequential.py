"""Sequential calibration (``--sequential``): units solved in graph order against the
original's activations, with the earlier units already pruned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from models import dense_net, ort_outputs

from lbyl_onnx import list_units, prune
from lbyl_onnx.cli import main
from lbyl_onnx.graph.record import record_statistics
from lbyl_onnx.graph.sequential import SequentialCalibration
from lbyl_onnx.methods import kept_count
from lbyl_onnx.methods.calibrated import CrossStats, solve_calibrated, solve_sequential
from lbyl_onnx.methods.criteria import keep_best

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
    solution = SequentialCalibration(model, data, False, 0.01).solve(first, kept, [])
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
    [["--sequential"], ["--sequential", "--calibration-data", str(CALIBRATION), "--method", "nm"]],
)
def test_sequential_needs_calibration_data_and_lbyl(tmp_path: Path, args) -> None:
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, [str(SAMPLES / "digits_vgg_bn.onnx"), str(out), *args])
    assert result.exit_code == 2, result.output
    assert "--sequential needs --calibration-data and --method lbyl" in result.output
    assert not out.exists()


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
