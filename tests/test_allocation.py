"""Budgets: global allocation of per-unit kept counts (--target-macs, --round-to, --min-keep)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from lbyl_onnx import prune
from lbyl_onnx.cli import main
from lbyl_onnx.methods.allocation import CostTerm, allocate, candidate_counts, total_cost

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


@given(networks(), st.floats(0.05, 1.0))
def test_budget_is_met_within_one_step(network, fraction) -> None:
    channels, damage, terms, round_to = network
    full = total_cost(terms, channels, channels)
    target = fraction * full
    kept = allocate(channels, damage, terms, target, round_to)
    grids = [candidate_counts(n, round_to) for n in channels]
    assert all(m in grid for m, grid in zip(kept, grids, strict=True))
    cost = total_cost(terms, kept, channels)
    floor = total_cost(terms, [g[-1] for g in grids], channels)
    if target >= floor:
        assert cost <= target + 1e-9 * full
        # the last step taken saved at most one grid step of one unit: undoing any one
        # unit's last step would exceed the target, or the allocation could not stop here
        largest_step = (
            max(
                total_cost(terms, [*kept[:u], g[g.index(m) - 1], *kept[u + 1 :]], channels) - cost
                for u, (m, g) in enumerate(zip(kept, grids, strict=True))
                if g.index(m) > 0
            )
            if any(g.index(m) > 0 for m, g in zip(kept, grids, strict=True))
            else 0.0
        )
        assert cost >= target - largest_step - 1e-9 * full
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


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target-macs", "0"], "outside (0, 1]"),
        (["--target-macs", "0.5", "--target-params", "0.5"], "not both"),
        (["--target-macs", "0.5", "--ratio-for", "conv1=0.2"], "cannot be combined"),
        (["--round-to", "0"], "at least 1"),
        (["--min-keep", "1.5"], "outside [0, 1]"),
        (["--target-macs", "0.5", "--ratio", "0.2"], "not both"),
    ],
)
def test_bad_budget_options_are_usage_errors(tmp_path: Path, args, needle) -> None:
    result = CliRunner().invoke(main, [str(VGG), str(tmp_path / "out.onnx"), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
