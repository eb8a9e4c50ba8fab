"""--target-latency: each onnxruntime kernel's time split into a fixed part and a part that
scales with the kept channels, allocated like MACs. No test asserts on a measured time:
the split is checked on constructed times, the profile's matching on the graph's structure,
and the budget on costs that stand in for the profile."""

from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from lbyl_onnx import list_units, prune
from lbyl_onnx.cli import main
from lbyl_onnx.errors import UsageError
from lbyl_onnx.methods.allocation import CostTerm, allocate, total_cost
from lbyl_onnx.pipeline import run
from lbyl_onnx.runtime.sessions import random_inputs
from lbyl_onnx.runtime.timing import LatencyCosts, factor_at, latency_costs, split_times

ROOT = Path(__file__).resolve().parent.parent
VGG = ROOT / "sample_models" / "digits_vgg_bn.onnx"
MBV2 = ROOT / "sample_models" / "digits_mbv2.onnx"


def test_split_recovers_each_kernels_fixed_and_variable_time() -> None:
    """Kernels timed as ``fixed + variable * factor``: the split returns ``variable`` with the
    kernel's units, and the fixed time of the rest; a probe slower than the original gives 0,
    one faster than a linear scaling allows is capped at the kernel's whole time."""
    channels, probe_counts = [32, 64], [16, 48]
    kernels = {  # name: (units read, units written), fixed, variable
        "stem": ((None, 0), 5.0, 40.0),
        "middle": ((0, 1), 10.0, 100.0),
        "head": ((1, None), 2.0, 20.0),
    }
    full = {name: fixed + variable for name, (_, fixed, variable) in kernels.items()}
    probe = {
        name: fixed + variable * factor_at(factor, probe_counts, channels)
        for name, (factor, fixed, variable) in kernels.items()
    }
    factors = {name: factor for name, (factor, _, _) in kernels.items()}
    full |= {"reorder": 7.0, "slower": 3.0, "faster": 4.0}
    probe |= {"reorder": 7.0, "slower": 3.5, "faster": 0.0}
    factors |= {"slower": (None, 0), "faster": (None, 1)}

    terms = split_times(full, probe, factors, probe_counts, channels)

    found = {(t.input_unit, t.output_unit, round(t.base, 9)) for t in terms}
    expected = {(*factor, variable) for factor, _, variable in kernels.values()}
    assert found == expected | {(None, 0, 0.0), (None, 1, 4.0)}
    # the terms predict the probe's time of the kernels they stand for
    fixed = sum(f for _, f, _ in kernels.values())
    predicted = fixed + total_cost(
        [t for t in terms if t.base in (40, 100, 20)], probe_counts, channels
    )
    assert predicted == pytest.approx(sum(probe[k] for k in kernels))


@pytest.mark.parametrize("path", [VGG, MBV2], ids=["vgg", "mbv2"])
def test_profiled_kernels_resolve_to_the_units_they_scale_with(path: Path) -> None:
    """On onnxruntime's real profile (fused and blocked kernels renamed by it), every
    Conv/Gemm that produces or reads a unit is matched: a term per pruned unit, and a term
    between two units exactly where a node reads one and writes the other."""
    model = onnx.load(str(path))
    units, _ = list_units(model)
    feeds = random_inputs(model, 64, 0)
    costs = latency_costs(model, units, feeds, round_to=8)

    index = {u.producer.output[0]: i for i, u in enumerate(units)}
    writes = {p.output[0]: index[u.producer.output[0]] for u in units for p in u.producers}
    reads = {c.node.output[0]: index[u.producer.output[0]] for u in units for c in u.consumers}
    between = {(reads[o], writes[o]) for o in writes.keys() & reads.keys()}
    found = {(t.input_unit, t.output_unit) for t in costs.terms}
    assert between <= found
    assert all(pair in between for pair in found if None not in pair)
    shrinkable = [i for i, u in enumerate(units) if u.channels > 8]
    assert {t.output_unit for t in costs.terms} >= set(shrinkable)
    assert costs.resolved >= len(units)
    assert 0 < sum(t.base for t in costs.terms) <= costs.total
    assert costs.inputs == "input:64x1x8x8"


def _macs_as_time(model: onnx.ModelProto, scale: float, fixed: float):
    """Stand-in costs: each node's MACs times ``scale`` microseconds, plus ``fixed``."""
    from lbyl_onnx.pipeline.budget import cost_terms

    units, _ = list_units(model)
    terms = cost_terms(model, units, "MACs", run.PruneConfig())
    scaled = [CostTerm(t.base * scale, t.input_unit, t.output_unit) for t in terms]
    total = sum(t.base for t in scaled) + fixed
    return LatencyCosts(scaled, total, "input:1x1x8x8", 10, 8)


@pytest.mark.parametrize("fixed_share", [0.0, 0.25])
def test_latency_linear_in_macs_gives_the_equivalent_macs_budgets_widths(
    fixed_share: float,
) -> None:
    """Oracle: where the time is a fixed part ``F`` of the total ``T`` plus a part exactly
    proportional to MACs, keeping ``L`` of the time is keeping ``(L - F) / (1 - F)`` of the
    MACs, so ``--target-latency 0.7`` chooses the widths of ``--target-macs 0.7`` without a
    fixed part and of ``--target-macs 0.6`` with a quarter fixed."""
    model = onnx.load(str(VGG))
    variable = _macs_as_time(model, 0.01, 0.0)
    fixed = fixed_share / (1 - fixed_share) * variable.total
    costs = _macs_as_time(model, 0.01, fixed)
    options = dict(round_to=8, synthetic_calibration=False, check=False)
    with mock.patch.object(run, "latency_costs", return_value=costs):
        _, timed = prune(model, target_latency=0.7, **options)
    _, counted = prune(model, target_macs=(0.7 - fixed_share) / (1 - fixed_share), **options)
    widths = [(u.name, u.channels_after) for u in timed.units]
    assert widths == [(u.name, u.channels_after) for u in counted.units]
    assert any(u.channels_after < u.channels_before for u in timed.units)
    assert "latency estimated" in timed.budget and "(target 70.0%)" in timed.budget


def test_fixed_time_makes_a_latency_budget_unreachable_and_is_named() -> None:
    """Half the time fixed: keeping 40% of it is out of reach whatever the widths, and the
    message gives the lowest share the smallest widths reach (computed from the costs)."""
    model = onnx.load(str(VGG))
    costs = _macs_as_time(model, 0.01, fixed=0.0)
    costs = LatencyCosts(costs.terms, 2 * costs.total, costs.inputs, 10, 8)
    units, _ = list_units(model)
    channels = [u.channels for u in units]
    lowest = (costs.total / 2 + total_cost(costs.terms, [1] * len(units), channels)) / costs.total
    unreachable = r"--target-latency 0.4 cannot be reached"
    with (
        mock.patch.object(run, "latency_costs", return_value=costs),
        pytest.raises(UsageError, match=unreachable) as error,
    ):
        prune(model, target_latency=0.4, synthetic_calibration=False, check=False)
    assert f"keeps {lowest:.1%} of its latency" in str(error.value)


def test_a_latency_limit_with_a_macs_budget_meets_both() -> None:
    """``--target-macs 0.7`` with ``--target-latency``: where the time falls only with conv2's
    channels (stand-in costs), a loose limit leaves the MAC budget's widths as they are and a
    tight one moves the cut to conv2; the MACs (the report's count) and the time (recomputed
    from the stand-in costs at the written widths) both meet their targets."""
    model = onnx.load(str(VGG))
    units, _ = list_units(model)
    second = next(i for i, u in enumerate(units) if u.name == "conv2")
    costs = _macs_as_time(model, 0.01, 0.0)
    terms = [t for t in costs.terms if second in (t.input_unit, t.output_unit)]
    costs = LatencyCosts(terms, costs.total, costs.inputs, 10, 8)
    channels = [u.channels for u in units]
    fixed = costs.total - sum(t.base for t in terms)
    options = dict(target_macs=0.7, synthetic_calibration=False, check=False)
    _, alone = prune(model, **options)
    alone_time = fixed + total_cost(terms, [u.channels_after for u in alone.units], channels)
    with mock.patch.object(run, "latency_costs", return_value=costs):
        _, loose = prune(model, target_latency=1.0, **options)
        limit = alone_time / costs.total - 0.05
        _, tight = prune(model, target_latency=limit, **options)
    assert [u.channels_after for u in loose.units] == [u.channels_after for u in alone.units]
    widths = [u.channels_after for u in tight.units]
    assert tight.after.macs / tight.before.macs <= 0.7 + 1e-9
    assert (fixed + total_cost(terms, widths, channels)) / costs.total <= limit + 1e-9
    assert widths[second] < alone.units[second].channels_after
    assert "MACs" in tight.budget and "(target 70.0%), latency estimated" in tight.budget
    assert f"(target {limit:.1%})" in tight.budget


def test_an_unreachable_latency_limit_is_named() -> None:
    """Half the time fixed: a 40% latency limit beside a MAC budget is refused like a
    latency budget, before any damage is measured. A limit the smallest widths meet but no
    widths at the budget do (a budget of 99% of the MACs against 60% of the time) is
    refused too, with the share the fastest widths at the budget keep."""
    model = onnx.load(str(VGG))
    costs = _macs_as_time(model, 0.01, fixed=0.0)
    halved = LatencyCosts(costs.terms, 2 * costs.total, costs.inputs, 10, 8)
    options = dict(synthetic_calibration=False, check=False)
    with (
        mock.patch.object(run, "latency_costs", return_value=halved),
        pytest.raises(UsageError, match=r"--target-latency 0.4 cannot be reached"),
    ):
        prune(model, target_macs=0.7, target_latency=0.4, **options)
    with (
        mock.patch.object(run, "latency_costs", return_value=costs),
        pytest.raises(UsageError, match=r"0.6 cannot be met with --target-macs 0.99") as error,
    ):
        prune(model, target_macs=0.99, target_latency=0.6, **options)
    # time is MACs here: at the budget the fastest widths keep about 99% of it
    assert re.search(r"save the most time keep an estimated 9\d\.\d% of the", str(error.value))


def test_a_unit_whose_channels_cost_no_time_is_kept_whole_and_named() -> None:
    """A unit whose channels no kernel's time was seen to fall with (unmatched, or as fast at
    half width: convolutions blocked by 16 around 16 channels) is not pruned for nothing,
    and the budget line says which."""
    model = onnx.load(str(VGG))
    costs = _macs_as_time(model, 0.01, 0.0)
    units, _ = list_units(model)
    first = next(i for i, u in enumerate(units) if u.name == "conv1")
    terms = [t for t in costs.terms if first not in (t.input_unit, t.output_unit)]
    costs = LatencyCosts(terms, costs.total, costs.inputs, 10, 8)
    with mock.patch.object(run, "latency_costs", return_value=costs):
        _, report = prune(model, target_latency=0.7, synthetic_calibration=False, check=False)
    widths = {u.name: (u.channels_before, u.channels_after) for u in report.units}
    assert widths["conv1"][0] == widths["conv1"][1]
    assert any(before > after for before, after in widths.values())
    assert "kept whole, no time measured to fall with their channels: conv1" in report.budget


def test_target_latency_from_the_command_line(tmp_path: Path) -> None:
    """The whole path on a real profile: widths at multiples of 8, a valid model written,
    and the budget line with what it was measured at."""
    out = tmp_path / "out.onnx"
    args = [str(VGG), str(out), "--target-latency", "0.8", "--round-to", "8"]
    result = CliRunner().invoke(main, [*args, "--input-shape", "input:64,1,8,8"])
    assert result.exit_code == 0, result.output
    assert "budget: latency estimated" in result.output
    assert "(target 80.0%)" in result.output and "at input:64x1x8x8" in result.output
    onnx.checker.check_model(str(out), full_check=True)
    before = {u.name: u.channels for u in list_units(onnx.load(str(VGG)))[0]}
    after = {u.name: u.channels for u in list_units(onnx.load(str(out)))[0]}
    assert after.keys() == before.keys()
    assert all(m % 8 == 0 or m == before[name] for name, m in after.items())
    assert any(m < before[name] for name, m in after.items())


def test_a_macs_budget_with_a_latency_limit_from_the_command_line(tmp_path: Path) -> None:
    """Both flags together on a real profile: the run succeeds and the budget line gives
    both targets (what is met is checked on stand-in costs above)."""
    out = tmp_path / "out.onnx"
    args = [str(VGG), str(out), "--target-macs", "0.8", "--target-latency", "0.95"]
    result = CliRunner().invoke(main, [*args, "--input-shape", "input:64,1,8,8"])
    assert result.exit_code == 0, result.output
    assert "budget: MACs" in result.output and "(target 80.0%), latency estimated" in result.output
    assert "(target 95.0%); latency" in result.output
    onnx.checker.check_model(str(out), full_check=True)


def test_a_step_that_saves_nothing_is_never_taken() -> None:
    """A unit whose channels were measured to cost no time stays whole, even where the
    budget cannot be met without it."""
    terms = [CostTerm(0.0, None, 0), CostTerm(100.0, None, 1)]
    kept = allocate([10, 10], [lambda m: 0.0, lambda m: 0.0], terms, 0.0)
    assert kept == [10, 1]


def test_a_macs_budget_counts_at_batch_one_whatever_the_input_shape() -> None:
    """Regression: with ``--input-shape`` at batch 8 the MACs were counted at batch 8
    against the report's batch-1 total, and ``--target-macs 0.7`` kept 7.5% of them."""
    model = onnx.load(str(VGG))
    options = dict(target_macs=0.7, synthetic_calibration=False, check=False)
    _, batched = prune(model, input_shapes={"input": [8, 1, 8, 8]}, **options)
    _, single = prune(model, **options)
    assert [u.channels_after for u in batched.units] == [u.channels_after for u in single.units]
    assert 0.6 < batched.after.macs / batched.before.macs <= 0.7
    assert np.isclose(batched.after.macs, single.after.macs)


def test_a_latency_budget_needs_the_size_of_an_input_that_is_not_fixed() -> None:
    """Time depends on the image size: with the height and width left symbolic, the tool
    asks for ``--input-shape`` instead of timing 1 x 1 images."""
    model = onnx.load(str(VGG))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    with pytest.raises(UsageError, match=r"needs --input-shape for input 'input'"):
        prune(model, target_latency=0.7, synthetic_calibration=False, check=False)
