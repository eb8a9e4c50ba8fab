"""Properties of the pure NumPy methods (LBYL.md sections 2, 3 and 6).

Every expected value is computed here, independently of ``lbyl_onnx.methods``: BN folding by
its formula, LBYL's minimiser by ``np.linalg.lstsq`` on the stacked system, Neuron Merging's
partner by brute force, the residual by its definition, and the networks by plain NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st
from oracles import lbyl_bn_aware_coefficients, lbyl_objective

from lbyl_onnx.methods import (
    BatchNormParams,
    LayerArrays,
    MethodOptions,
    choose_kept,
    kept_count,
    solve_lbyl,
    solve_lbyl_nn,
    solve_merging,
    solve_prune,
)
from lbyl_onnx.methods.base import regularisers
from lbyl_onnx.methods.lbyl_nn import nonnegative_quadratic

# --------------------------------------------------------------------------- oracles


def make_bn(rng: np.random.Generator, n: int, positive: bool = False) -> BatchNormParams:
    """Random BN with ``|gamma|`` in [0.3, 2] (both signs unless ``positive``)."""
    sign = np.ones(n) if positive else rng.choice([-1.0, 1.0], size=n)
    return BatchNormParams(
        gamma=sign * rng.uniform(0.3, 2.0, n),
        beta=rng.normal(size=n),
        mean=rng.normal(size=n),
        var=rng.uniform(0.1, 3.0, n),
        eps=1e-5,
    )


def fold(w: np.ndarray, b: np.ndarray, bn: BatchNormParams | None):
    """``wt = rho w``, ``bt = beta + rho (b - mean)``, ``rho = gamma / sqrt(var + eps)``."""
    if bn is None:
        return w.astype(np.float64), b.astype(np.float64)
    rho = bn.gamma / np.sqrt(bn.var + bn.eps)
    return rho[:, None] * w, bn.beta + rho * (b - bn.mean)


def unfold(wt: np.ndarray, bt: np.ndarray, bn: BatchNormParams | None):
    """Raw ``(w, b)`` whose folding through ``bn`` gives ``(wt, bt)``."""
    if bn is None:
        return wt, bt
    rho = bn.gamma / np.sqrt(bn.var + bn.eps)
    return wt / rho[:, None], bn.mean + (bt - bn.beta) / rho


def batchnorm(z: np.ndarray, bn: BatchNormParams | None) -> np.ndarray:
    """BN on ``z`` of shape ``(channels, batch)``."""
    if bn is None:
        return z
    return (bn.gamma[:, None] * (z - bn.mean[:, None]) / np.sqrt(bn.var[:, None] + bn.eps)) + (
        bn.beta[:, None]
    )


def take_bn(bn: BatchNormParams | None, idx: np.ndarray) -> BatchNormParams | None:
    if bn is None:
        return None
    return BatchNormParams(bn.gamma[idx], bn.beta[idx], bn.mean[idx], bn.var[idx], bn.eps)


def removed_of(n: int, kept: np.ndarray) -> np.ndarray:
    return np.array(sorted(set(range(n)) - {int(k) for k in kept}), dtype=int)


def objective(wt, bt, kept, j, s, lam1, lam2) -> float:
    dw = wt[j] - s @ wt[kept]
    db = bt[j] - s @ bt[kept]
    return float(dw @ dw + lam1 * db**2 + lam2 * s @ s)


def lstsq_lbyl(wt, bt, kept, j, lam1, lam2) -> np.ndarray:
    """Minimiser of the LBYL objective as an ordinary least-squares problem on stacked rows."""
    m = len(kept)
    a = np.vstack([wt[kept].T, np.sqrt(lam1) * bt[kept][None, :], np.sqrt(lam2) * np.eye(m)])
    y = np.concatenate([wt[j], [np.sqrt(lam1) * bt[j]], np.zeros(m)])
    return np.linalg.lstsq(a, y, rcond=None)[0]


def residual_oracle(wt, bt, kept, scaling, lam1) -> float:
    removed = removed_of(len(wt), kept)
    err = base = 0.0
    for j in removed:
        s = scaling[j]
        err += np.sum((wt[j] - s @ wt[kept]) ** 2) + lam1 * (bt[j] - s @ bt[kept]) ** 2
        base += np.sum(wt[j] ** 2) + lam1 * bt[j] ** 2
    return err / base


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# --------------------------------------------------------------------------- strategies


@dataclass
class Case:
    layer: LayerArrays
    kept: np.ndarray
    rng: np.random.Generator
    seed: int

    def __repr__(self) -> str:  # keep hypothesis' failure output short
        n, d = self.layer.weight.shape
        bn = self.layer.bn is not None
        return f"Case(N={n}, d={d}, m={len(self.kept)}, bn={bn}, seed={self.seed})"


seeds = st.integers(0, 2**32 - 1)
ratios = st.floats(0.01, 0.89)


@st.composite
def cases(draw, bn: bool | None = None, min_d: int = 1) -> Case:
    """A random layer (N in 2..48, d in min_d..80), with or without BN, and a random kept set."""
    n = draw(st.integers(2, 48))
    d = draw(st.integers(min_d, 80))
    ratio = draw(ratios)
    with_bn = draw(st.booleans()) if bn is None else bn
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    layer = LayerArrays(
        rng.normal(size=(n, d)), rng.normal(size=n), make_bn(rng, n) if with_bn else None
    )
    kept = np.sort(rng.choice(n, kept_count(n, ratio), replace=False))
    return Case(layer, kept, rng, seed)


options_st = st.builds(
    MethodOptions,
    bias_weight=st.floats(0.0, 10.0),
    ridge=st.floats(1e-3, 1.0),
    nm_threshold=st.floats(-0.5, 0.9),
    nm_lambda=st.floats(0.0, 1.0),
)


@st.composite
def restorable(draw, linear: bool):
    """Folded filters whose removed rows are exact combinations of kept rows, m <= d.

    ``linear``: arbitrary linear combinations; otherwise each removed row (weight and bias) is
    ``s * kept row`` with ``s`` in [0.2, 5]. Raw weights are unfolded through random BN (gamma > 0)
    when BN is drawn, so the relation holds for the FOLDED filters.
    """
    d = draw(st.integers(1, 80))
    n = draw(st.integers(2, 48))
    ratio = draw(ratios)
    with_bn = draw(st.booleans())
    rng = np.random.default_rng(draw(seeds))
    m = min(kept_count(n, ratio), d)
    kept = np.sort(rng.choice(n, m, replace=False))
    removed = removed_of(n, kept)
    wt = np.zeros((n, d))
    bt = np.zeros(n)
    wt[kept] = rng.normal(size=(m, d))
    bt[kept] = rng.normal(size=m)
    if linear:
        coeffs = rng.normal(size=(len(removed), m))
    else:
        coeffs = np.zeros((len(removed), m))
        coeffs[np.arange(len(removed)), rng.integers(0, m, len(removed))] = rng.uniform(
            0.2, 5.0, len(removed)
        )
    wt[removed] = coeffs @ wt[kept]
    bt[removed] = coeffs @ bt[kept]
    bn = make_bn(rng, n, positive=True) if with_bn else None
    w, b = unfold(wt, bt, bn)
    return LayerArrays(w, b, bn), kept, rng, coeffs


# --------------------------------------------------------------------------- 1. criteria


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [
        (10, 0.1, 9),
        (10, 0.3, 7),
        (10, 0.5, 5),
        (64, 0.1, 57),
        (64, 0.3, 44),
        (64, 0.5, 32),
        (100, 0.1, 90),
        (100, 0.3, 70),
        (100, 0.5, 50),
        (10, 0.99, 1),
        (50, 0.9, 5),
        (100, 0.9, 10),
        (1, 0.5, 1),
    ],
)
def test_kept_count_is_floor_of_kept_fraction_at_least_one(n, ratio, expected):
    assert kept_count(n, ratio) == expected


@given(st.integers(1, 4096), ratios)
def test_kept_count_is_within_one_below_kept_fraction(n, ratio):
    m = kept_count(n, ratio)
    assert 1 <= m <= n
    assert m == 1 or m <= n * (1 - ratio) + 1e-6
    assert m > n * (1 - ratio) - 1


def my_scores(w: np.ndarray, criterion: str) -> np.ndarray:
    w = w.reshape(len(w), -1).astype(np.float64)
    if criterion == "l2":
        return np.sqrt((w**2).sum(axis=1))
    if criterion == "l1":
        return np.abs(w).sum(axis=1)
    diff = w[:, None, :] - w[None, :, :]
    return np.sqrt((diff**2).sum(axis=2)).sum(axis=1)


@given(
    st.integers(2, 48),
    st.integers(1, 8),
    st.sampled_from([1, 3]),
    ratios,
    st.sampled_from(["l2", "l1", "l2-gm"]),
    seeds,
)
def test_choose_kept_keeps_highest_scores(n, c, k, ratio, criterion, seed):
    w = np.random.default_rng(seed).normal(size=(n, c, k, k))
    kept = choose_kept(w, ratio, criterion)
    assert kept.dtype.kind in "iu"
    assert len(kept) == kept_count(n, ratio)
    assert np.all(np.diff(kept) > 0)  # sorted, unique
    assert kept.min() >= 0 and kept.max() < n
    scores = my_scores(w, criterion)
    removed = removed_of(n, kept)
    if len(removed):
        tol = 1e-9 * max(1.0, float(scores.max()))
        assert scores[kept].min() >= scores[removed].max() - tol


@given(st.integers(1, 6), st.integers(2, 40), ratios, st.sampled_from(["l2", "l1", "l2-gm"]), seeds)
def test_choose_kept_breaks_ties_by_lowest_index(groups, n, ratio, criterion, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(groups, 5))
    labels = rng.integers(0, groups, n)
    w = base[labels]  # exact duplicates: exact ties in every criterion
    kept = choose_kept(w, ratio, criterion)
    assert len(kept) == kept_count(n, ratio)
    scores = my_scores(w, criterion)
    # equal filters score equal up to float noise (sums in another order): within ``tie``
    # a removed filter must have a higher index than every kept filter it ties with
    tie = 1e-9 * max(float(scores.max()), 1e-300)
    for k in kept:
        for r in removed_of(n, kept):
            assert scores[k] > scores[r] + tie or (abs(scores[k] - scores[r]) <= tie and k < r)
    np.testing.assert_array_equal(choose_kept(w.copy(), ratio, criterion), kept)


def test_choose_kept_identical_filters_keeps_first_indices():
    w = np.ones((10, 4))
    for criterion in ("l2", "l1", "l2-gm"):
        np.testing.assert_array_equal(choose_kept(w, 0.3, criterion), np.arange(7))


# --------------------------------------------------------------------------- 2. prune


@given(cases(), options_st)
def test_prune_keeps_identity_drops_removed_and_residual_is_one(case, options):
    layer, kept = case.layer, case.kept
    sol = solve_prune(layer, kept, options)
    n, m = layer.channels, len(kept)
    assert sol.scaling.shape == (n, m)
    np.testing.assert_array_equal(sol.scaling[kept, np.arange(m)], 1.0)
    expected = np.zeros((n, m))
    expected[kept, np.arange(m)] = 1.0
    np.testing.assert_array_equal(sol.scaling, expected)
    if len(removed_of(n, kept)):
        assert sol.residual == pytest.approx(1.0, abs=1e-15)


# --------------------------------------------------------------------------- 3. folding


@given(cases())
def test_folded_filters_match_batchnorm_formula_and_preactivation(case):
    layer = case.layer
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    np.testing.assert_allclose(layer.folded_weight, wt, rtol=1e-13, atol=0)
    np.testing.assert_allclose(layer.folded_bias, bt, rtol=1e-12, atol=1e-12)
    x = case.rng.normal(size=(layer.weight.shape[1], 8))
    z = batchnorm(layer.weight @ x + layer.bias[:, None], layer.bn)
    np.testing.assert_allclose(
        layer.folded_weight @ x + layer.folded_bias[:, None], z, rtol=1e-10, atol=1e-10
    )


# --------------------------------------------------------------------------- 4-5. LBYL optimum


@given(cases(), options_st)
def test_lbyl_rows_equal_stacked_least_squares_minimiser(case, options):
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    sol = solve_lbyl(layer, kept, options)
    np.testing.assert_array_equal(sol.scaling[kept, np.arange(len(kept))], 1.0)
    for j in removed_of(layer.channels, kept):
        reference = lstsq_lbyl(wt, bt, kept, j, lam1, lam2)
        assert np.linalg.norm(sol.scaling[j] - reference) <= 1e-6 * max(
            np.linalg.norm(reference), 1e-12
        )


@given(cases(), options_st)
def test_lbyl_objective_at_solution_not_above_plain_removal(case, options):
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    wt, bt = layer.folded_weight, layer.folded_bias
    sol = solve_lbyl(layer, kept, options)
    zero = np.zeros(len(kept))
    for j in removed_of(layer.channels, kept):
        at_solution = lbyl_objective(wt, bt, kept, j, sol.scaling[j], lam1, lam2)
        at_zero = lbyl_objective(wt, bt, kept, j, zero, lam1, lam2)
        assert at_solution == pytest.approx(
            objective(wt, bt, kept, j, sol.scaling[j], lam1, lam2), rel=1e-9, abs=1e-12
        )
        assert at_zero == pytest.approx(objective(wt, bt, kept, j, zero, lam1, lam2), rel=1e-12)
        assert at_solution <= at_zero * (1 + 1e-12) + 1e-15


# --------------------------------------------------------------------------- 6-7. exactness


@given(restorable(linear=True))
def test_lbyl_restores_linear_combinations_exactly_in_linear_network(data):
    layer, kept, rng, _ = data
    sol = solve_lbyl(layer, kept, MethodOptions(ridge=1e-12))
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    for j in removed_of(layer.channels, kept):
        scale = np.linalg.norm(wt[j]) + abs(bt[j]) + 1e-300
        assert np.linalg.norm(wt[j] - sol.scaling[j] @ wt[kept]) <= 1e-6 * scale
        assert abs(bt[j] - sol.scaling[j] @ bt[kept]) <= 1e-6 * scale
    x = rng.normal(size=(layer.weight.shape[1], 16))
    v = rng.normal(size=(5, layer.channels))
    y = v @ batchnorm(layer.weight @ x + layer.bias[:, None], layer.bn)
    v_new = np.einsum("oi,it->ot", v, sol.scaling)
    y_new = v_new @ batchnorm(
        layer.weight[kept] @ x + layer.bias[kept][:, None], take_bn(layer.bn, kept)
    )
    assert np.abs(y_new - y).max() <= 1e-6 * max(np.abs(y).max(), 1.0)


def relu_network_outputs(layer, kept, scaling, rng):
    x = rng.normal(size=(layer.weight.shape[1], 16))
    v = rng.normal(size=(5, layer.channels))
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    y = v @ relu(batchnorm(layer.weight @ x + layer.bias[:, None], layer.bn))
    z_kept = batchnorm(layer.weight[kept] @ x + layer.bias[kept][:, None], take_bn(layer.bn, kept))
    return y, (v @ scaling) @ relu(z_kept)


@given(restorable(linear=False))
def test_merging_restores_positive_multiples_exactly_in_relu_network(data):
    layer, kept, rng, coeffs = data
    sol = solve_merging(layer, kept, MethodOptions())
    removed = removed_of(layer.channels, kept)
    np.testing.assert_allclose(sol.scaling[removed], coeffs, rtol=1e-9, atol=1e-12)
    y, y_new = relu_network_outputs(layer, kept, sol.scaling, rng)
    assert np.abs(y_new - y).max() <= 1e-9 * max(np.abs(y).max(), 1.0)
    assert sol.residual <= 1e-12  # the residual comes from the Gram matrix: float64 cancellation


@pytest.mark.parametrize("solve", [solve_lbyl, solve_lbyl_nn], ids=["lbyl", "lbyl-nn"])
@given(data=restorable(linear=False))
def test_lbyl_restores_positive_multiples_exactly_in_relu_network(solve, data):
    layer, kept, rng, coeffs = data
    sol = solve(layer, kept, MethodOptions(ridge=1e-12))
    removed = removed_of(layer.channels, kept)
    if len(removed):
        assert rel_err(sol.scaling[removed], coeffs) <= 1e-5
    y, y_new = relu_network_outputs(layer, kept, sol.scaling, rng)
    assert np.abs(y_new - y).max() <= 1e-5 * max(np.abs(y).max(), 1.0)


# --------------------------------------------------------------------------- 8. BN-aware form


@given(cases(bn=True), options_st)
def test_lbyl_bn_aware_form_equals_folded_form(case, options):
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    sol = solve_lbyl(layer, kept, options)
    for j in removed_of(layer.channels, kept):
        bn_aware = lbyl_bn_aware_coefficients(
            layer.weight, layer.bias, layer.bn, kept, int(j), lam1, lam2
        )
        assert np.linalg.norm(bn_aware - sol.scaling[j]) <= 1e-6 * max(
            np.linalg.norm(sol.scaling[j]), 1e-12
        )


# --------------------------------------------------------------------------- 9. Neuron Merging


def nm_costs(wt, bt, kept, j, lam):
    """Brute force: per kept position, (cost, cos, ratio); None for zero-norm kept filters."""
    norm_j = float(np.sqrt(wt[j] @ wt[j]))
    rows = []
    for k in kept:
        norm_k = float(np.sqrt(wt[k] @ wt[k]))
        if norm_k == 0:
            rows.append(None)
            continue
        ratio = norm_j / norm_k
        rows.append([float(wt[k] @ wt[j]) / (norm_j * norm_k), ratio, abs(bt[j] - ratio * bt[k])])
    mism = [r[2] for r in rows if r is not None]
    lo, hi = min(mism), max(mism)
    out = []
    for r in rows:
        if r is None:
            out.append(None)
            continue
        cos, ratio, mis = r
        normalised = (mis - lo) / (hi - lo) if hi > lo else 0.0
        out.append((lam * (1 - cos) + (1 - lam) * normalised, cos, ratio))
    return out


@given(cases(), options_st)
def test_merging_partner_is_bruteforce_argmin_and_threshold_applies(case, options):
    layer, kept = case.layer, case.kept
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    sol = solve_merging(layer, kept, options)
    for j in removed_of(layer.channels, kept):
        costs = nm_costs(wt, bt, kept, j, options.nm_lambda)
        best = min(c[0] for c in costs if c is not None)
        near = [t for t, c in enumerate(costs) if c is not None and c[0] <= best + 1e-9]
        row = sol.scaling[j]
        nonzero = np.flatnonzero(row)
        assert len(nonzero) <= 1
        if len(near) > 1:  # numerically tied partners: any of them is right
            expected_partner = int(nonzero[0]) if len(nonzero) else near[0]
            assert expected_partner in near
        else:
            expected_partner = near[0]
        cos, ratio = costs[expected_partner][1], costs[expected_partner][2]
        if abs(cos - options.nm_threshold) < 1e-9:
            continue  # on the threshold: either outcome is right
        if cos < options.nm_threshold:
            np.testing.assert_array_equal(row, 0.0)
        else:
            assert list(nonzero) == [expected_partner]
            assert row[expected_partner] == pytest.approx(ratio, rel=1e-12)


@given(st.integers(2, 48), st.integers(2, 80), ratios, st.floats(0.0, 1.0), seeds)
def test_merging_row_is_zero_when_every_kept_filter_is_below_threshold(n, d, ratio, lam, seed):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    m = kept_count(n, ratio)
    kept = np.sort(rng.choice(n, m, replace=False))
    removed = removed_of(n, kept)
    w = np.zeros((n, d))
    g = rng.normal(size=(m, d))
    g -= np.outer(g @ u, u)  # orthogonal to u
    w[kept] = rng.uniform(-2.0, 0.0, m)[:, None] * u + g  # cos(w_k, u) <= 0 < 0.1
    w[removed] = rng.uniform(0.2, 5.0, len(removed))[:, None] * u
    layer = LayerArrays(w, rng.normal(size=n))
    sol = solve_merging(layer, kept, MethodOptions(nm_lambda=lam))
    np.testing.assert_array_equal(sol.scaling[removed], 0.0)


def test_merging_never_picks_zero_kept_filter_and_skips_zero_removed_filter():
    w = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.1]])
    layer = LayerArrays(w, np.array([5.0, 0.0, 0.0, 0.0]))
    kept = np.array([0, 1])
    sol = solve_merging(layer, kept, MethodOptions(nm_threshold=-1.0))
    assert np.all(np.isfinite(sol.scaling))
    np.testing.assert_array_equal(sol.scaling[2], 0.0)  # zero removed filter
    assert sol.scaling[3, 0] == 0.0 and sol.scaling[3, 1] == pytest.approx(np.hypot(2, 0.1))


def test_merging_threshold_is_checked_on_cost_optimal_partner_not_best_cosine():
    """Documented behaviour (as in the reference decompose.py): the partner is the argmin of the
    cost; if ITS cosine is below t nothing is merged, even when another kept filter has cos >= t."""
    a = np.array([0.15, np.sqrt(1 - 0.15**2), 0.0])  # cos 0.15, bias matches exactly
    b = np.array([0.3, 0.0, np.sqrt(1 - 0.3**2)])  # cos 0.30, bias mismatch 1
    layer = LayerArrays(np.vstack([a, b, [1.0, 0.0, 0.0]]), np.array([1.0, 0.0, 1.0]))
    kept = np.array([0, 1])
    # costs: a -> 0.85 * 0.85 = 0.7225, b -> 0.85 * 0.7 + 0.15 = 0.745
    sol = solve_merging(layer, kept, MethodOptions(nm_threshold=0.2, nm_lambda=0.85))
    np.testing.assert_array_equal(sol.scaling[2], 0.0)
    sol = solve_merging(layer, kept, MethodOptions(nm_threshold=0.1, nm_lambda=0.85))
    np.testing.assert_allclose(sol.scaling[2], [1.0, 0.0])


def test_input_second_moment_ignores_zero_filters():
    w = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    bn = BatchNormParams(np.ones(4), np.zeros(4), np.zeros(4), np.array([9.0, 2.0, 8.0, 75.0]), 0.0)
    # ratios var / |w|^2 over non-zero filters: 2, 2, 3 -> median 2
    assert LayerArrays(w, np.zeros(4), bn).input_second_moment() == pytest.approx(2.0)
    assert LayerArrays(w, np.zeros(4)).input_second_moment() == 1.0


# --------------------------------------------------------------------------- 10. singular


# scipy's Cholesky sometimes "succeeds" on the exactly singular Gram with an rcond ~1e-17
# LinAlgWarning instead of raising; the result must be optimal either way.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@given(
    st.integers(1, 8),
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 30),
    st.booleans(),
    seeds,
)
def test_lbyl_singular_system_still_returns_least_squares_optimum(
    distinct, copies, n_removed, d, bias_term, seed
):
    rng = np.random.default_rng(seed)
    base_w = rng.normal(size=(distinct, d))
    base_b = rng.normal(size=distinct)
    labels = np.concatenate([np.arange(distinct), rng.integers(0, distinct, copies)])
    w = np.vstack([base_w[labels], rng.normal(size=(n_removed, d))])
    b = np.concatenate([base_b[labels], rng.normal(size=n_removed)])
    kept = np.arange(len(labels))  # kept filters hold exact duplicates: W_P W_P^T is singular
    layer = LayerArrays(w, b)
    options = MethodOptions(bias_weight=1.0 if bias_term else 0.0, ridge=0.0)
    lam1, lam2 = regularisers(layer, kept, options)
    assert lam2 == 0.0
    sol = solve_lbyl(layer, kept, options)
    assert np.all(np.isfinite(sol.scaling))
    for j in removed_of(len(w), kept):
        best = objective(w, b, kept, j, lstsq_lbyl(w, b, kept, j, lam1, 0.0), lam1, 0.0)
        got = objective(w, b, kept, j, sol.scaling[j], lam1, 0.0)
        scale = w[j] @ w[j] + lam1 * b[j] ** 2
        assert got <= best + 1e-9 * scale


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@given(st.integers(2, 10), seeds)
def test_lbyl_more_kept_than_inputs_without_ridge_reproduces_removed_filters(d, seed):
    rng = np.random.default_rng(seed)
    n = 3 * d + 4  # m = 2d + 3 > d + 1: the system is rank deficient, the fit is exact
    layer = LayerArrays(rng.normal(size=(n, d)), rng.normal(size=n))
    kept = np.arange(2 * d + 3)
    sol = solve_lbyl(layer, kept, MethodOptions(bias_weight=1.0, ridge=0.0))
    assert np.all(np.isfinite(sol.scaling))
    assert residual_oracle(layer.weight, layer.bias, kept, sol.scaling, 1.0) <= 1e-12


# --------------------------------------------------------------------------- 11. scale


@given(cases(bn=False), options_st, st.floats(1e-3, 1e3))
def test_joint_rescaling_scales_ridge_by_c_squared_and_leaves_s_unchanged(case, options, c):
    """Without BN, lam1 = bias_weight (mu2 = 1) and lam2 = ridge * mean |wt_P|^2.

    Scaling weight AND bias by c multiplies every term of the objective by c^2 (lam2 carries
    c^2 through the mean norm), so the minimiser S, the residual and NM's S are unchanged.
    """
    layer, kept = case.layer, case.kept
    scaled = LayerArrays(c * layer.weight, c * layer.bias)
    lam1, lam2 = regularisers(layer, kept, options)
    lam1_c, lam2_c = regularisers(scaled, kept, options)
    assert lam1 == options.bias_weight and lam1_c == lam1
    assert lam2 == pytest.approx(options.ridge * np.sum(layer.weight[kept] ** 2) / len(kept))
    assert lam2_c == pytest.approx(c**2 * lam2, rel=1e-12)
    base, other = solve_lbyl(layer, kept, options), solve_lbyl(scaled, kept, options)
    assert rel_err(other.scaling, base.scaling) <= 1e-8
    assert other.residual == pytest.approx(base.residual, rel=1e-8, abs=1e-12)
    nm, nm_c = solve_merging(layer, kept, options), solve_merging(scaled, kept, options)
    np.testing.assert_allclose(nm_c.scaling, nm.scaling, rtol=1e-9, atol=0)


@given(cases(), options_st)
def test_regularisers_are_bias_weight_over_second_moment_and_relative_ridge(case, options):
    """lam1 = bias_weight / mu2, mu2 = median_i var_i / |w_i|^2 over live filters (1.0 without
    BN); lam2 = ridge * trace(Wt_P Wt_P^T) / m."""
    layer, kept = case.layer, case.kept
    wt, _ = fold(layer.weight, layer.bias, layer.bn)
    if layer.bn is None:
        mu2 = 1.0
    else:
        sq = np.sum(layer.weight**2, axis=1)
        alive = sq > 1e-12 * sq.max()  # dead filters (|w| below 1e-6 of the largest) left out
        mu2 = float(np.median(layer.bn.var[alive] / sq[alive]))
    lam1, lam2 = regularisers(layer, kept, options)
    assert lam1 == pytest.approx(options.bias_weight / mu2, rel=1e-12, abs=0)
    assert lam2 == pytest.approx(options.ridge * np.trace(wt[kept] @ wt[kept].T) / len(kept))


# --------------------------------------------------------------------------- 12. residuals


@given(cases(), options_st)
def test_lbyl_residual_never_above_plain_removal(case, options):
    layer, kept = case.layer, case.kept
    lam1, _ = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    sol = solve_lbyl(layer, kept, options)
    assert sol.residual == pytest.approx(
        residual_oracle(wt, bt, kept, sol.scaling, lam1), rel=1e-9, abs=1e-15
    )
    assert sol.residual <= solve_prune(layer, kept, options).residual + 1e-12


@given(cases(), options_st)
def test_lbyl_objective_not_above_merging_objective(case, options):
    """LBYL minimises the objective, so no one-to-one merge can beat it (ridge included)."""
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    lbyl, nm = solve_lbyl(layer, kept, options), solve_merging(layer, kept, options)
    for j in removed_of(layer.channels, kept):
        ours = objective(wt, bt, kept, j, lbyl.scaling[j], lam1, lam2)
        theirs = objective(wt, bt, kept, j, nm.scaling[j], lam1, lam2)
        assert ours <= theirs * (1 + 1e-9) + 1e-12


@given(cases(), options_st)
def test_merging_residual_matches_one_to_one_error(case, options):
    """A merged row leaves |wt_j - r wt_k|^2 = 2 |wt_j|^2 (1 - cos) in the filter term."""
    layer, kept = case.layer, case.kept
    lam1, _ = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    sol = solve_merging(layer, kept, options)
    assert sol.residual == pytest.approx(
        residual_oracle(wt, bt, kept, sol.scaling, lam1), rel=1e-9, abs=1e-15
    )
    for j in removed_of(layer.channels, kept):
        nonzero = np.flatnonzero(sol.scaling[j])
        if len(nonzero):
            k = kept[nonzero[0]]
            cos = wt[j] @ wt[k] / (np.linalg.norm(wt[j]) * np.linalg.norm(wt[k]))
            err = np.sum((wt[j] - sol.scaling[j, nonzero[0]] * wt[k]) ** 2)
            assert err == pytest.approx(2 * (wt[j] @ wt[j]) * (1 - cos), rel=1e-7, abs=1e-9)


@given(cases(bn=False), st.floats(0.5, 0.99), st.floats(0.0, 1.0))
def test_merging_residual_at_most_one_without_bias_when_threshold_at_least_half(case, t, lam):
    layer = LayerArrays(case.layer.weight, np.zeros(case.layer.channels))
    sol = solve_merging(layer, case.kept, MethodOptions(nm_threshold=t, nm_lambda=lam))
    assert sol.residual <= 1.0 + 1e-12


def test_merging_residual_can_exceed_plain_removal_when_cosine_below_half():
    """Documented behaviour: NM scales by |wt_j|/|wt_k|, not by the projection, so a merge at
    cos < 0.5 (allowed by the default threshold 0.1) is worse than removing the channel."""
    cos = 0.2
    w = np.array([[np.sqrt(1 - cos**2), cos], [0.0, 1.0]])  # kept 0, removed 1
    layer = LayerArrays(w, np.zeros(2))
    sol = solve_merging(layer, np.array([0]), MethodOptions())
    assert sol.scaling[1, 0] == pytest.approx(1.0)
    assert sol.residual == pytest.approx(2 * (1 - cos))  # 1.6 > 1.0
    assert solve_prune(layer, np.array([0]), MethodOptions()).residual == 1.0


# --------------------------------------------------------------------------- 13. lbyl-nn


def nnls_lbyl(wt, bt, kept, j, lam1, lam2) -> np.ndarray:
    """Minimiser of the LBYL objective over ``s >= 0``, by SciPy's NNLS on the stacked rows."""
    m = len(kept)
    a = np.vstack([wt[kept].T, np.sqrt(lam1) * bt[kept][None, :], np.sqrt(lam2) * np.eye(m)])
    y = np.concatenate([wt[j], [np.sqrt(lam1) * bt[j]], np.zeros(m)])
    return scipy.optimize.nnls(a, y, maxiter=50 * (m + 1))[0]


@given(cases(), options_st)
def test_lbyl_nn_rows_are_the_nonnegative_least_squares_minimiser(case, options):
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    sol = solve_lbyl_nn(layer, kept, options)
    np.testing.assert_array_equal(sol.scaling[kept, np.arange(len(kept))], 1.0)
    for j in removed_of(layer.channels, kept):
        assert np.all(sol.scaling[j] >= 0.0)
        best = objective(wt, bt, kept, j, nnls_lbyl(wt, bt, kept, j, lam1, lam2), lam1, lam2)
        got = objective(wt, bt, kept, j, sol.scaling[j], lam1, lam2)
        assert got == pytest.approx(best, rel=1e-7, abs=1e-9 * (wt[j] @ wt[j] + 1e-30))


@given(cases(), options_st)
def test_lbyl_nn_objective_lies_between_lbyl_and_merging_and_removal(case, options):
    """LBYL drops the sign constraint, so it is never worse; Neuron Merging's single positive
    coefficient and removal's zero are feasible, so neither is better."""
    layer, kept = case.layer, case.kept
    lam1, lam2 = regularisers(layer, kept, options)
    wt, bt = fold(layer.weight, layer.bias, layer.bn)
    ours = solve_lbyl_nn(layer, kept, options)
    lbyl, nm = solve_lbyl(layer, kept, options), solve_merging(layer, kept, options)
    for j in removed_of(layer.channels, kept):
        value = objective(wt, bt, kept, j, ours.scaling[j], lam1, lam2)
        scale = 1e-7 * value + 1e-9 * (wt[j] @ wt[j] + 1e-30)
        assert objective(wt, bt, kept, j, lbyl.scaling[j], lam1, lam2) <= value + scale
        assert value <= objective(wt, bt, kept, j, nm.scaling[j], lam1, lam2) + scale
        assert value <= objective(wt, bt, kept, j, np.zeros(len(kept)), lam1, lam2) + scale


def test_a_nonnegative_combination_is_exact_where_the_kept_channels_agree_in_sign():
    """The module's claim, on a ReLU: ``z_j = s^T z_P`` exactly. With ``s >= 0``,
    ``relu(z_j) = s^T relu(z_P)`` on every input whose kept channels are all active or all
    inactive; a mixed-sign combination (LBYL's fit of one) fails on inputs of both kinds,
    where ``s^T z_P`` takes the other sign."""
    rng = np.random.default_rng(4)
    d, kept = 6, np.array([0, 1, 2])
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    x = rng.normal(size=(d, 20000))
    for coeffs, solve, exact in [
        (np.array([0.5, 1.5, 2.0]), solve_lbyl_nn, True),
        (np.array([1.5, -1.0, 0.5]), solve_lbyl, False),
    ]:
        w = np.zeros((4, d))
        w[kept] = rng.normal(size=(3, d))
        w[3] = coeffs @ w[kept]
        layer = LayerArrays(w, np.zeros(4))
        s = solve(layer, kept, MethodOptions(ridge=1e-12)).scaling[3]
        np.testing.assert_allclose(s, coeffs, rtol=1e-6)
        z = w @ x
        gap = np.abs(relu(z[3]) - s @ relu(z[kept]))
        tolerance = 1e-6 * np.abs(z[3]).max()
        for agree in (np.all(z[kept] > 0, axis=0), np.all(z[kept] < 0, axis=0)):
            assert agree.sum() > 100
            assert (gap[agree].max() <= tolerance) == exact


@given(st.integers(1, 30), st.integers(1, 12), st.integers(1, 40), seeds)
def test_nonnegative_quadratic_meets_the_optimality_conditions(m, columns, d, seed):
    """KKT of ``min 1/2 s^T A s - b^T s, s >= 0`` for a positive semi-definite ``A`` (singular
    when ``d < m``): ``s >= 0``, ``A s - b >= 0``, and ``s_i (A s - b)_i = 0``."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(m, d))
    a = f @ f.T
    b = f @ rng.normal(size=(d, columns))
    s = nonnegative_quadratic(a, b)
    gradient = a @ s - b
    scale = 1e-8 * (np.linalg.norm(b, axis=0) + 1e-300)
    assert np.all(s >= 0.0)
    assert np.all(gradient >= -scale)
    assert np.all(np.abs(s * gradient) <= scale * (np.abs(s).max(axis=0) + 1.0))


def test_nonnegative_quadratic_of_zero_filters_is_zero():
    assert not nonnegative_quadratic(np.zeros((3, 3)), np.zeros((3, 2))).any()
