"""Budgets: global allocation of per-unit kept counts (--target-macs, --round-to, --min-keep)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from models import conv_net, dense_net, weights_of, with_integer_input
from test_quirks import _nhwc_arrays, _nhwc_head

from lbyl_onnx import list_units, prune
from lbyl_onnx.api import PruneConfig
from lbyl_onnx.cli import main
from lbyl_onnx.errors import UsageError
from lbyl_onnx.graph.rewrite import consumer_column_gram
from lbyl_onnx.inputs.images import CONVENTIONS, convention
from lbyl_onnx.inputs.normalisation import fit_normalisation
from lbyl_onnx.inputs.synthetic import synthetic_inputs
from lbyl_onnx.methods import solve_lbyl
from lbyl_onnx.methods.allocation import (
    CostTerm,
    Limit,
    activation_damage,
    allocate,
    allocate_within,
    candidate_counts,
    total_cost,
)
from lbyl_onnx.pipeline import run
from lbyl_onnx.pipeline.budget import budget_counts
from lbyl_onnx.pipeline.measure import SYNTHETIC_SAMPLES, Measurement
from lbyl_onnx.pipeline.run import summarize

ROOT = Path(__file__).resolve().parent.parent
VGG = ROOT / "sample_models" / "digits_vgg_bn.onnx"


def test_candidate_counts_are_multiples_of_k_above_the_floor() -> None:
    assert candidate_counts(20, 8) == [20, 16, 8]
    assert candidate_counts(16, 8) == [16, 8]
    assert candidate_counts(10, 1, min_keep=0.5) == [10, 9, 8, 7, 6, 5]
    assert candidate_counts(5, 8) == [5]  # smaller than K: left whole
    assert candidate_counts(64, 8, min_keep=0.3) == [64, 56, 48, 40, 32, 24]


@st.composite
def networks(draw):
    """A chain of units: node i produces unit i and consumes unit i-1 (bilinear costs)."""
    units = draw(st.integers(1, 6))
    channels = [draw(st.integers(1, 48)) for _ in range(units)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    terms = [CostTerm(float(rng.uniform(1, 100)), None, 0)]
    terms += [CostTerm(float(rng.uniform(1, 100)), i - 1, i) for i in range(1, units)]
    terms += [CostTerm(float(rng.uniform(1, 100)), units - 1, None), CostTerm(50.0)]
    scales = rng.uniform(0.1, 10, units)
    powers = rng.uniform(0.5, 3, units)
    damage = [
        (lambda m, n=n, a=a, p=p: a * (1 - m / n) ** p)
        for n, a, p in zip(channels, scales, powers, strict=True)
    ]
    round_to = draw(st.sampled_from([1, 2, 4, 8]))
    return channels, damage, terms, round_to


def _within_one_step(terms, kept, channels, grids, target) -> bool:
    """The cost of ``kept`` is at most ``target`` and more than ``target`` minus the largest
    saving of one unit's last step: undoing any one unit's last step would exceed the
    target, or the allocation could not have stopped here."""
    cost = total_cost(terms, kept, channels)
    full = total_cost(terms, channels, channels)
    steps = [
        total_cost(terms, [*kept[:u], g[g.index(m) - 1], *kept[u + 1 :]], channels) - cost
        for u, (m, g) in enumerate(zip(kept, grids, strict=True))
        if g.index(m) > 0
    ]
    return target - max(steps, default=0.0) - 1e-9 * full <= cost <= target + 1e-9 * full


@given(networks(), st.floats(0.05, 1.0))
def test_budget_is_met_within_one_step(network, fraction) -> None:
    channels, damage, terms, round_to = network
    target = fraction * total_cost(terms, channels, channels)
    kept = allocate(channels, damage, terms, target, round_to)
    grids = [candidate_counts(n, round_to) for n in channels]
    assert all(m in grid for m, grid in zip(kept, grids, strict=True))
    if target >= total_cost(terms, [g[-1] for g in grids], channels):
        assert _within_one_step(terms, kept, channels, grids, target)
    else:
        assert kept == [g[-1] for g in grids]


@given(networks())
def test_allocation_is_monotone_in_the_budget(network) -> None:
    channels, damage, terms, round_to = network
    full = total_cost(terms, channels, channels)
    previous = list(channels)
    for fraction in (0.95, 0.8, 0.6, 0.4, 0.2):
        kept = allocate(channels, damage, terms, fraction * full, round_to)
        assert all(m <= p for m, p in zip(kept, previous, strict=True))
        previous = kept


@given(networks(), st.floats(0.2, 1.0), st.floats(0.05, 1.0), st.integers(0, 2**32 - 1))
def test_a_limit_is_met_at_the_budget(network, fraction, limit_fraction, seed) -> None:
    """A second cost (random terms on the same units) limited besides the budget: the
    budget is met within one step, as without the limit, so a limit is met at the budget or
    not at all; where the budget's own allocation already meets the limit, it is kept; where
    the result misses the limit, so does the allocation that saves the most of it at the
    budget (priced at 1e8 per unit of the second cost; the damages here are at most 10)."""
    channels, damage, terms, round_to = network
    rng = np.random.default_rng(seed)
    second = [CostTerm(float(rng.uniform(0, 100)), t.input_unit, t.output_unit) for t in terms]
    target = fraction * total_cost(terms, channels, channels)
    limit = Limit(second, limit_fraction * total_cost(second, channels, channels))
    kept = allocate_within(channels, damage, terms, target, limit, round_to)
    grids = [candidate_counts(n, round_to) for n in channels]
    assert all(m in grid for m, grid in zip(kept, grids, strict=True))
    if target >= total_cost(terms, [g[-1] for g in grids], channels):
        assert _within_one_step(terms, kept, channels, grids, target)
    alone = allocate(channels, damage, terms, target, round_to)
    if total_cost(second, alone, channels) <= limit.target:
        assert kept == alone
    elif total_cost(second, kept, channels) > limit.target:
        fastest = allocate(channels, damage, terms, target, round_to, 0.0, None, second, 1e8)
        assert total_cost(second, fastest, channels) > limit.target


def test_a_limit_moves_the_cut_to_the_unit_that_saves_it() -> None:
    """Two units of equal MACs: unit 0 is cheaper to cut but saves no time, unit 1 saves
    all of it. The budget alone cuts unit 0; with the time limited to 75%, unit 1 is cut to
    half instead (that meets both), not both units (past the budget)."""
    terms = [CostTerm(100.0, None, 0), CostTerm(100.0, None, 1)]
    time = [CostTerm(100.0, None, 1)]
    damage = [lambda m: 0.1 * (1 - m / 10), lambda m: 1 - m / 10]
    assert allocate([10, 10], damage, terms, 150.0) == [5, 10]
    assert allocate_within([10, 10], damage, terms, 150.0, Limit(time, 75.0)) == [10, 5]


def test_free_channels_go_first() -> None:
    """Two independent units of equal cost: the one whose damage stays 0 is cut first."""
    terms = [CostTerm(100.0, None, 0), CostTerm(100.0, None, 1)]
    damage = [lambda m: 1 - m / 10, lambda m: 0.0]
    assert allocate([10, 10], damage, terms, 150.0) == [10, 5]


@pytest.mark.parametrize("target", [0.9, 0.7, 0.5])
def test_target_macs_on_a_model_respects_rounding_and_min_keep(target: float) -> None:
    _model, report = prune(str(VGG), target_macs=target, round_to=4, min_keep=0.25, check=False)
    for unit in report.units:
        if unit.channels_after < unit.channels_before:
            assert unit.channels_after % 4 == 0
        assert unit.channels_after >= 0.25 * unit.channels_before
    reached = report.after.macs / report.before.macs
    assert reached <= target + 1e-9
    assert report.budget and f"target {target:.1%}" in report.budget


def test_lbyl_nn_under_a_budget_takes_lbyls_widths_and_its_own_coefficients() -> None:
    """The damage curves of ``lbyl-nn`` are LBYL's (a quadratic programme per removed channel
    at every width would cost minutes on large layers), so both choose the same widths; the
    compensation is still the non-negative one: the consumers' folded weights differ."""
    lbyl_model, lbyl_report = prune(
        str(VGG), target_macs=0.6, method="lbyl", synthetic_calibration=False, check=False
    )
    nn_model, nn_report = prune(str(VGG), target_macs=0.6, method="lbyl-nn", check=False)
    widths = [(u.name, u.channels_after) for u in lbyl_report.units]
    assert widths == [(u.name, u.channels_after) for u in nn_report.units]
    assert any(u.channels_after < u.channels_before for u in lbyl_report.units)
    assert weights_of(lbyl_model).keys() == weights_of(nn_model).keys()
    assert any(
        not np.allclose(value, weights_of(nn_model)[name])
        for name, value in weights_of(lbyl_model).items()
    )


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "real"])
def test_budget_curves_are_fitted_to_real_calibration_data_only(real: bool) -> None:
    """A budget's damage curves solve each unit at many widths (``run.solve_unit``; the final
    compensation is the sequential solve's). On synthetic inputs, the default, they are
    closed-form LBYL's, measured on the synthetic statistics but not fitted to them; on
    real calibration data, the calibrated solution's. Either way the compensation folded
    in is calibrated, sequentially."""
    data = np.load(ROOT / "sample_models" / "digits_calibration.npz")["input"][:64]
    calibration = {"input": data} if real else None
    with mock.patch.object(run, "solve_unit", wraps=run.solve_unit) as spy:
        _, report = prune(str(VGG), target_macs=0.5, calibration_data=calibration, check=False)
    fitted_to = [call.args[3] for call in spy.call_args_list]
    assert fitted_to and all((stats is not None) == real for stats in fitted_to)
    source = "64 samples" if real else "256 synthetic inputs"
    assert report.mode.startswith(f"calibrated on {source}"), report.mode
    assert "sequential" in report.mode


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target-macs", "0"], "outside (0, 1]"),
        (["--target-macs", "0.5", "--target-params", "0.5"], "not both"),
        (["--target-macs", "0.5", "--ratio-for", "conv1=0.2"], "cannot be combined"),
        (["--round-to", "0"], "at least 1"),
        (["--min-keep", "1.5"], "outside [0, 1]"),
        (["--target-macs", "0.5", "--ratio", "0.2"], "not both"),
        (["--target-macs", "0.5", "--input-range", "0,2"], "Invalid value for '--input-range'"),
        (["--target-macs", "0.5", "--target-params", "0.5", "--target-latency", "0.9"], "not both"),
        (["--target-macs", "0.9", "--target-latency", "0"], "outside (0, 1]"),
        (["--target-latency", "1.5"], "outside (0, 1]"),
        (["--target-latency", "0.5", "--ratio", "0.2"], "not both"),
    ],
)
def test_bad_budget_options_are_usage_errors(tmp_path: Path, args, needle) -> None:
    result = CliRunner().invoke(main, [str(VGG), str(tmp_path / "out.onnx"), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_activation_damage_matches_the_consumer_output_error_on_samples() -> None:
    """Oracle: on a set of samples, ``E|V (r - S r_P - o)|^2 / E|V r|^2`` computed directly
    equals the damage from those samples' moments (an identity, so to rounding)."""
    rng = np.random.default_rng(3)
    n, samples = 7, 500
    r = np.maximum(rng.standard_normal((samples, n)) @ rng.standard_normal((n, n)) + 0.5, 0)
    v = rng.standard_normal((4, n))
    kept = np.array([0, 2, 3, 5])
    scaling = np.zeros((n, len(kept)))
    scaling[kept, np.arange(len(kept))] = 1.0
    scaling[[1, 4, 6]] = rng.standard_normal((3, len(kept)))
    offsets = np.zeros(n)
    offsets[[1, 4, 6]] = rng.standard_normal(3)
    error = r - (r[:, kept] @ scaling.T + offsets)
    expected = np.mean(np.sum((error @ v.T) ** 2, 1)) / np.mean(np.sum((r @ v.T) ** 2, 1))
    damage = activation_damage(v.T @ v, r.T @ r / samples, r.mean(0), kept, scaling, offsets)
    assert damage == pytest.approx(expected, rel=1e-9)
    everything = np.arange(n)
    assert activation_damage(v.T @ v, r.T @ r / samples, r.mean(0), everything, np.eye(n)) == 0


def _columns_by_loop(consumer, n: int) -> np.ndarray:
    """``M[c, d] = sum over outputs o and positions p of V[o, (c, p)] V[o, (d, p)]``, indexing
    the weight entry by entry as the op reads it (the oracle for the reshapes)."""
    w, block = consumer.weight.value, consumer.block
    gram = np.zeros((n, n))
    if consumer.kind == "conv":
        flat = w.reshape(w.shape[0], n, -1)
        for c in range(n):
            for d in range(n):
                gram[c, d] = np.sum(flat[:, c] * flat[:, d])
        return gram
    rows = w if consumer.transposed else w.T  # O x K
    for c in range(n):
        for d in range(n):
            for p in range(block):
                col_c = p * n + c if consumer.interleaved else c * block + p
                col_d = p * n + d if consumer.interleaved else d * block + p
                gram[c, d] += rows[:, col_c] @ rows[:, col_d]
    return gram


@pytest.mark.parametrize(
    "model",
    [
        conv_net((3, 6), heads=("conv",)),
        conv_net((3, 6), heads=("flatten_gemm",), trans_b=1),
        conv_net((3, 6), heads=("flatten_gemm",), trans_b=0),
        conv_net((3, 6), heads=("reshape_matmul",)),
        dense_net((5, 6), kind="gemm", trans_b=0),
        dense_net((5, 6), kind="matmul"),
    ],
    ids=["conv", "gemm-transB", "gemm", "reshape-matmul", "dense-gemm", "dense-matmul"],
)
def test_consumer_column_gram_matches_an_entrywise_loop(model) -> None:
    (unit,), _ = list_units(model)
    (consumer,) = unit.consumers
    expected = _columns_by_loop(consumer, unit.channels)
    np.testing.assert_allclose(consumer_column_gram(unit), expected, rtol=1e-5, atol=1e-6)


def test_consumer_column_gram_of_a_channels_last_flatten() -> None:
    """tf2onnx's Transpose -> Reshape -> MatMul: columns interleaved as ``p * N + c``."""
    (unit,), _ = list_units(_nhwc_head(_nhwc_arrays(), computed=False))
    (consumer,) = unit.consumers
    assert consumer.interleaved
    expected = _columns_by_loop(consumer, unit.channels)
    np.testing.assert_allclose(consumer_column_gram(unit), expected, rtol=1e-5, atol=1e-5)


def _budget_trap() -> onnx.ModelProto:
    """Two units of 8. ``fc0``'s channel 7 has a tenth of its filter norm (the smallest
    channel of either layer relative to its layer) but ``fc1`` reads it with 30 times its
    weights: cheap in filter space, the costliest loss after it."""
    base = dense_net((6, 8, 8), seed=4)
    w = weights_of(base)
    w0, b0, w1 = (w[k].copy() for k in ("fc0.W", "fc0.b", "fc1.W"))
    w0[7], b0[7] = 0.1 * w0[7], 0.1 * b0[7]
    w1[:, 7] *= 30.0  # transB = 1: fc1.W is out x in
    return dense_net((6, 8, 8), seed=4, params={"fc0.W": w0, "fc0.b": b0, "fc1.W": w1})


def test_budget_damage_is_measured_where_the_consumers_read() -> None:
    """One channel must go. The filter-space damage takes it from ``fc0`` (its channel 7 is
    the weakest filter); measured on synthetic inputs, in the consumer's output, that channel
    is the strongest signal, and the channel goes from ``fc1``."""
    model = _budget_trap()
    units, _ = list_units(model)
    config = PruneConfig(target_macs=0.99).validated()
    before = summarize(model)

    def solve(unit, kept):
        return solve_lbyl(unit.arrays, kept, config.options)

    filter_space, _ = budget_counts(model, units, config, before, solve)
    assert filter_space == {"fc0": 7, "fc1": 8}  # the premise: filter space is fooled
    _, report = prune(model, target_macs=0.99, check=False)
    assert [u.channels_after for u in report.units] == [8, 7]
    assert "synthetic" in report.budget


def test_budget_damage_uses_the_calibration_data_when_given() -> None:
    model = _budget_trap()
    data = {"x": np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)}
    _, report = prune(model, target_macs=0.99, calibration_data=data, check=False)
    assert [u.channels_after for u in report.units] == [8, 7]
    assert "calibration data" in report.budget


def test_an_unreachable_budget_is_a_usage_error_and_writes_nothing(tmp_path: Path) -> None:
    """With at least half of every unit kept, a budget of 5% of the MACs cannot be met: the
    tool says so (exit 2, the lowest reachable share named) instead of emptying the layers."""
    out = tmp_path / "out.onnx"
    args = [str(VGG), str(out), "--target-macs", "0.05", "--min-keep", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--target-macs 0.05 cannot be reached" in result.output
    assert "smallest allowed width (--min-keep 0.5)" in result.output
    lowest = float(result.output.split("keeps ")[1].split("%")[0]) / 100
    assert 0.25 <= lowest < 1.0  # every conv's output (and the next one's input) at least halved
    assert not out.exists()


def test_an_unreachable_budget_names_the_rounding_that_sets_the_smallest_widths() -> None:
    """Multiples of 16 keep at least 16 channels in each of digits_vgg_bn's units (conv1 16,
    conv2 32, conv3 32, conv4 64, fc1 64): the message names the option, and the lowest share
    is the one counted by hand from the weights' shapes (8 x 8 maps before the first pool,
    4 x 4 after it, 2 x 2 into fc1)."""
    macs = {  # (outputs, inputs per output, positions) per layer, as written and at 16
        "conv1": ((16, 9, 64), (16, 9, 64)),
        "conv2": ((32, 16 * 9, 64), (16, 16 * 9, 64)),
        "conv3": ((32, 32 * 9, 16), (16, 16 * 9, 16)),
        "conv4": ((64, 32 * 9, 16), (16, 16 * 9, 16)),
        "fc1": ((64, 256, 1), (16, 16 * 4, 1)),
        "fc2": ((10, 64, 1), (10, 16, 1)),
    }
    original = sum(np.prod(before) for before, _ in macs.values())
    smallest = sum(np.prod(after) for _, after in macs.values())
    with pytest.raises(UsageError, match=r"smallest allowed width \(--round-to 16\)") as error:
        prune(onnx.load(str(VGG)), target_macs=0.01, round_to=16, check=False)
    lowest = float(str(error.value).split("keeps ")[1].split("%")[0]) / 100
    assert lowest == pytest.approx(smallest / original, abs=1e-3)  # 30.3%


def test_budget_falls_back_to_filter_space_for_an_input_that_cannot_be_synthesised() -> None:
    """Integer pixels cast to float inside the graph: no synthetic inputs can be made for an
    integer input, so the damage is the filter-space one, and the report says so."""
    model = with_integer_input(conv_net((3, 8, 8)))
    _, report = prune(model, target_macs=0.8, check=False)
    assert "damage in filter space (input 'x' is not floating point" in report.budget
    assert report.after.macs <= 0.8 * report.before.macs


@pytest.mark.parametrize("name", CONVENTIONS)
def test_input_range_scales_the_synthetic_inputs_a_budget_is_measured_on(name: str) -> None:
    """``--input-range`` replaces the estimated normalisation: the measured inputs are the
    synthetic images under that convention's map (and lie in its range), and the report
    names it."""
    model = onnx.load(VGG)
    units, _ = list_units(model)
    measurement = Measurement(model, units, PruneConfig(input_range=name).validated(), None)
    x = measurement.inputs()["input"]
    scale, shift = convention(name, 1)
    expected = synthetic_inputs(
        model, SYNTHETIC_SAMPLES, 0, normalisation={"input": (scale, shift)}
    )["input"]
    np.testing.assert_array_equal(x, expected)
    assert x.min() >= shift[0] - 1e-5 and x.max() <= scale[0] + shift[0] + 1e-4
    assert x.max() - x.min() > 0.5 * scale[0]  # spread over the range, not a constant
    assert measurement.source == f"{SYNTHETIC_SAMPLES} synthetic inputs scaled as {name}, as given"


def test_without_input_range_the_report_names_the_estimated_normalisation() -> None:
    _, report = prune(str(VGG), target_macs=0.8, synthetic_calibration=False, check=False)
    assert report.budget.endswith(f"scaled as {fit_normalisation(onnx.load(VGG)).describe()}")


def test_input_range_is_validated_and_warned_about_where_it_does_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown --input-range '0-1'"):
        PruneConfig(input_range="0-1").validated()
    out = tmp_path / "out.onnx"
    used = CliRunner().invoke(
        main,
        [str(VGG), str(out), "--target-macs", "0.8", "--input-range", "0,255", "--closed-form"],
    )
    assert used.exit_code == 0, used.output
    assert "scaled as [0,255], as given" in used.output
    assert "--input-range has no effect" not in used.output
    calibrated = CliRunner().invoke(main, [str(VGG), str(out), "--input-range", "-1,1"])
    assert calibrated.exit_code == 0, calibrated.output
    assert "synthetic inputs scaled as [-1,1], as given" in calibrated.output
    assert "--input-range has no effect" not in calibrated.output
    unused = CliRunner().invoke(
        main, [str(VGG), str(out), "--ratio", "0.2", "--input-range", "-1,1", "--closed-form"]
    )
    assert unused.exit_code == 0, unused.output
    assert "warning: --input-range has no effect" in unused.output
