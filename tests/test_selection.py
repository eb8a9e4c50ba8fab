"""The ``reconstruction`` criterion: kept channels chosen from the activations, greedily, so
that they rebuild the consumers' output best (:mod:`lbyl_onnx.methods.selection`), and its
place in sequential calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from models import conv_net, ort_outputs, weights_of, with_integer_input

from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.methods.selection import reconstruction_keep

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
CALIBRATION = SAMPLES / "digits_calibration.npz"


def _covariances(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xc, rc = x - x.mean(0), r - r.mean(0)
    return xc.T @ xc / len(x), xc.T @ rc / len(x)


def _error(x: np.ndarray, r: np.ndarray, v: np.ndarray, kept) -> float:
    """Oracle: the consumers' output ``r V`` rebuilt from ``x_P`` by NumPy lstsq (affine:
    centred), its squared error summed over the samples."""
    y = (r - r.mean(0)) @ v
    if len(kept) == 0:
        return float(np.sum(y**2))
    design = x[:, list(kept)] - x[:, list(kept)].mean(0)
    coefficients = np.linalg.lstsq(design, y, rcond=None)[0]
    return float(np.sum((y - design @ coefficients) ** 2))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(1, 6), st.booleans())
def test_each_step_removes_the_channel_whose_loss_costs_least(seed, n, d, same) -> None:
    """The greedy elimination, replayed with the lstsq oracle: keeping one channel fewer
    removes, from the channels kept before, the one whose removal leaves the consumers the
    least error. ``x = r`` (the first unit) or ``x`` a perturbed ``r`` (units after pruned
    ones)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((200, n)) @ rng.standard_normal((n, n)) + rng.normal(size=n)
    x = r if same else r + 0.3 * rng.standard_normal(r.shape)
    v = rng.standard_normal((n, d))
    cxx, cxr = _covariances(x, r)
    before = list(range(n))
    for m in range(n - 1, 0, -1):
        kept = reconstruction_keep(cxx, cxr, v @ v.T, m)
        assert len(kept) == m and set(kept) <= set(before)
        (gone,) = set(before) - set(kept)
        errors = {k: _error(x, r, v, [c for c in before if c != k]) for k in before}
        best = min(errors.values())
        assert errors[gone] <= best + 1e-6 * _error(x, r, v, []), (errors, gone)
        before = list(kept)


def test_channels_that_copy_others_go_first_and_the_rest_rebuilds_exactly() -> None:
    """Four channels that are linear combinations of the other four: keeping four, the kept
    ones span all eight, so the consumers' output is rebuilt exactly."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 4))
    r = np.hstack([base, base @ rng.standard_normal((4, 4))])
    r = r[:, rng.permutation(8)]
    v = rng.standard_normal((8, 5))
    cxx, cxr = _covariances(r, r)
    kept = reconstruction_keep(cxx, cxr, v @ v.T, 4)
    assert _error(r, r, v, kept) < 1e-8 * _error(r, r, v, [])


def test_channels_the_consumers_ignore_are_not_kept() -> None:
    """Zero consumer weights for channels 1 and 4: they explain nothing of the output."""
    rng = np.random.default_rng(1)
    r = rng.standard_normal((300, 6))
    v = rng.standard_normal((6, 3))
    v[[1, 4]] = 0.0
    cxx, cxr = _covariances(r, r)
    np.testing.assert_array_equal(reconstruction_keep(cxx, cxr, v @ v.T, 4), [0, 2, 3, 5])


def test_constant_channels_are_removed_first() -> None:
    """A channel that never varies carries only its mean, which the offsets (the bias
    correction) restore: it scores zero, whatever its size."""
    rng = np.random.default_rng(2)
    r = rng.standard_normal((300, 5))
    r[:, 2] = 100.0
    v = rng.standard_normal((5, 4))
    cxx, cxr = _covariances(r, r)
    assert 2 not in reconstruction_keep(cxx, cxr, v @ v.T, 4)


def _with_copies() -> np.ndarray:
    """A conv net (3 -> 8 channels, ReLU, conv head) whose channels 6 and 7 are channel 0
    scaled by 5 and 4 (``relu(5z) = 5 relu(z)``): the largest filters, all three copies of
    one channel."""
    model = conv_net((3, 8), seed=4)
    a = weights_of(model)
    w, b = a["conv0.W"].copy(), a["conv0.b"].copy()
    w[6], b[6] = 5 * w[0], 5 * b[0]
    w[7], b[7] = 4 * w[0], 4 * b[0]
    return conv_net((3, 8), seed=4, params={"conv0.W": w, "conv0.b": b})


def test_reconstruction_removes_the_copies_that_l2_keeps() -> None:
    """Removing two of eight channels: the L2 criterion removes two distinct small filters
    and loses something; the reconstruction criterion removes two of the three copies and the
    pruned model computes the original's outputs."""
    model = _with_copies()
    rng = np.random.default_rng(5)
    data = {"x": rng.standard_normal((64, 3, 6, 6)).astype(np.float32)}
    feeds = {"x": rng.standard_normal((16, 3, 6, 6)).astype(np.float32)}
    (want,) = ort_outputs(model, feeds)
    errors = {}
    for criterion in ("l2", "reconstruction"):
        pruned, report = prune(
            model, ratio=0.25, calibration_data=data, criterion=criterion, calibration_ridge=1e-9
        )
        assert report.criterion == criterion
        (got,) = ort_outputs(pruned, feeds)
        errors[criterion] = float(np.abs(got - want).max() / np.abs(want).max())
    assert errors["reconstruction"] < 1e-4 < 0.01 < errors["l2"], errors


@pytest.mark.parametrize(
    "args, criterion",
    [
        (["--calibration-data", str(CALIBRATION)], "reconstruction"),
        (["--calibration-data", str(CALIBRATION), "--criterion", "l1"], "l1"),
        (["--calibration-data", str(CALIBRATION), "--independent"], "l2"),
        ([], "l2"),  # synthetic calibration
        (["--closed-form"], "l2"),
        (["--criterion", "reconstruction"], "reconstruction"),  # on synthetic inputs, asked
    ],
)
def test_the_default_criterion_follows_the_calibration(tmp_path: Path, args, criterion) -> None:
    out = tmp_path / "out.onnx"
    model = SAMPLES / "digits_vgg_bn.onnx"
    result = CliRunner().invoke(main, [str(model), str(out), "--no-check", *args])
    assert result.exit_code == 0, result.output
    assert f"criterion {criterion}," in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--closed-form"],
        ["--calibration-data", str(CALIBRATION), "--independent"],
        ["--calibration-data", str(CALIBRATION), "--method", "nm"],
        ["--method", "auto"],
    ],
)
def test_reconstruction_needs_a_sequential_solve(tmp_path: Path, args) -> None:
    out = tmp_path / "out.onnx"
    model = SAMPLES / "digits_vgg_bn.onnx"
    args = [str(model), str(out), "--criterion", "reconstruction", *args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--criterion reconstruction needs --method lbyl solved sequentially" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_reconstruction_where_the_default_falls_back_to_the_closed_form(tmp_path: Path) -> None:
    """An integer input cannot be synthesised: the default becomes the closed form, where the
    criterion cannot apply (exit 2, saying so)."""
    source, out = tmp_path / "int.onnx", tmp_path / "out.onnx"
    onnx.save(with_integer_input(conv_net((3, 8))), source)
    result = CliRunner().invoke(main, [str(source), str(out), "--criterion", "reconstruction"])
    assert result.exit_code == 2, result.output
    assert "here the compensation is the closed form" in result.output
    assert not out.exists()
