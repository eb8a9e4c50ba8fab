"""Calibration mode: activation-space least squares with bias correction, from real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from models import conv_net, dense_net, random_feeds, weights_of

from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.methods.base import offsets_from_means
from lbyl_onnx.methods.calibrated import (
    RIDGE_CHOICES,
    ActivationStats,
    CrossStats,
    solve_calibrated,
    solve_sequential,
)
from lbyl_onnx.runtime.sessions import session

ROOT = Path(__file__).resolve().parent.parent
VGG = ROOT / "sample_models" / "digits_vgg_bn.onnx"
DIGITS = ROOT / "sample_models" / "digits_test.npz"


@given(st.integers(0, 2**32 - 1), st.integers(3, 12), st.floats(0.1, 0.8))
def test_calibrated_solution_is_the_affine_least_squares_fit(seed, n, ratio) -> None:
    """S and e minimise sum over samples of (r_j - s^T r_P - e)^2 (NumPy lstsq with an
    intercept column is the oracle), up to the tiny relative ridge."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal((200, n)) @ rng.standard_normal((n, n)) + rng.normal(size=n)
    stats = ActivationStats.empty(n)
    stats.add(samples[:120])
    stats.add(samples[120:])  # accumulating in pieces gives the same moments
    m = max(1, int(n * (1 - ratio)))
    kept = np.sort(rng.permutation(n)[:m])
    solution = solve_calibrated(stats, kept, ridge=1e-10)
    design = np.column_stack([samples[:, kept], np.ones(len(samples))])
    for j in sorted(set(range(n)) - set(kept.tolist())):
        coef = np.linalg.lstsq(design, samples[:, j], rcond=None)[0]
        np.testing.assert_allclose(solution.scaling[j], coef[:-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(solution.offsets[j], coef[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(solution.scaling[kept], np.eye(n)[kept][:, kept])
    assert 0.0 <= solution.residual <= 1.0


def test_mean_offsets_are_what_the_kept_channels_do_not_carry() -> None:
    stats = ActivationStats.empty(3)
    stats.add(np.array([[1.0, 2.0, 10.0], [3.0, 4.0, 12.0]]))  # means 2, 3, 11
    kept = np.array([0, 1])
    scaling = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    offsets = offsets_from_means(stats.mean, scaling, kept)
    np.testing.assert_allclose(offsets, [0.0, 0.0, 11 - 4 - 3])


def _affine_chain() -> tuple:
    """Conv -> Conv (linear) where removed filters are combinations of kept ones plus a
    constant that no filter combination carries."""
    w = weights_of(conv_net(channels=(3, 6), act=None, kernel=1, seed=3))
    params = {}
    filters, bias = w["conv0.W"].copy(), w["conv0.b"].copy()
    filters[:2] = 0.3 * filters[2:4] + 0.2 * filters[4:6]  # the two smallest filters go
    bias[:2] = 0.3 * bias[2:4] + 0.2 * bias[4:6] + np.array([2.0, -3.0], np.float32)
    params["conv0.W"], params["conv0.b"] = filters, bias
    return conv_net(channels=(3, 6), act=None, kernel=1, seed=3, params=params)


def test_bias_correction_restores_an_affine_combination_exactly() -> None:
    """A 1x1 (unpadded) consumer: the constant goes into its bias exactly."""
    model = _affine_chain()
    feeds = random_feeds(model, batch=4)
    reference = session(model).run(None, feeds)[0]
    calibration = random_feeds(model, seed=7, batch=32)
    calibrated, report = prune(
        model, ratio=1 / 3, calibration_data=calibration, calibration_ridge=1e-9, check=False
    )
    out = session(calibrated).run(None, feeds)[0]
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-4)
    assert "calibrated on 32 samples" in report.mode
    plain, _ = prune(model, ratio=1 / 3, method="lbyl", check=False)
    error = np.abs(session(plain).run(None, feeds)[0] - reference).max()
    assert error > 0.1  # data-free LBYL cannot know the constant: the test can fail


@pytest.mark.parametrize("method", ["prune", "nm", "lbyl", "lbyl-nn"])
def test_calibration_creates_biases_where_consumers_have_none(method: str) -> None:
    """The digits VGG's convs have no bias (BN follows): bias correction must add one to the
    consumer, which is also the next unit's producer (then sliced with its channels)."""
    data = np.load(DIGITS)
    x, labels = data["input"], data["label"]
    model, _report = prune(
        str(VGG), ratio=0.3, method=method, calibration_data={"input": x[:256]}, check=False
    )
    logits = session(model).run(None, {"input": x[256:]})[0]
    accuracy = float(np.mean(logits.argmax(1) == labels[256:]))
    plain, _ = prune(str(VGG), ratio=0.3, method="prune", check=False)
    plain_logits = session(plain).run(None, {"input": x[256:]})[0]
    plain_accuracy = float(np.mean(plain_logits.argmax(1) == labels[256:]))
    assert accuracy > plain_accuracy
    biases = [i for i in model.graph.initializer if ".bias" in i.name and i.name.startswith("conv")]
    assert biases, "bias correction should have created Conv biases"


def test_dense_consumer_bias_correction_matches_numpy() -> None:
    model = dense_net(features=(12, 8), act=None)
    feeds = random_feeds(model, batch=64)
    pruned, _ = prune(model, ratio=0.5, calibration_data=feeds, check=False, method="prune")
    # plain removal + bias correction: the output moves by exactly the removed channels'
    # mean contribution, so the mean output over the calibration set is unchanged
    before = session(model).run(None, feeds)[0].mean(axis=0)
    after = session(pruned).run(None, feeds)[0].mean(axis=0)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "not found"),
        ({"other": np.zeros((4, 1, 8, 8), np.float32)}, "no array named 'input'"),
        ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "float64"),
    ],
)
def test_bad_calibration_data_is_a_usage_error(tmp_path: Path, content, needle: str) -> None:
    path = tmp_path / "calibration.npz"
    if content is not None:
        np.savez(path, **content)
    args = [str(VGG), str(tmp_path / "out.onnx"), "--calibration-data", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_channels_constant_over_the_samples_stay_solvable() -> None:
    """Weights generated by ConstantOfShape (onnx's light ResNet-50) make channels that do
    not vary: their covariance is rounding error of the raw moments, which a ridge relative
    to it alone cannot make positive definite. The floor relative to ``E|x|^2`` keeps both
    solvers finite, and the constant then comes back through the offsets."""
    rng = np.random.default_rng(0)
    level = rng.uniform(1e3, 1e4, 6)
    rows = np.tile(level, (300, 1)) * (1 + 1e-9 * rng.standard_normal((300, 6)))
    kept = np.array([0, 2, 3, 5])
    stats = ActivationStats.empty(6)
    stats.add(rows)
    independent = solve_calibrated(stats, kept)
    rebuilt = independent.scaling @ level[kept] + independent.offsets
    np.testing.assert_allclose(rebuilt, level, rtol=1e-6)
    pairs = CrossStats.empty(len(kept), 6)
    pairs.add(rows[:, kept], rows)
    for ridge in RIDGE_CHOICES:
        sequential = solve_sequential(pairs, kept, ridge)
        rebuilt = sequential.scaling @ level[kept] + sequential.offsets
        np.testing.assert_allclose(rebuilt, level, rtol=1e-6)
