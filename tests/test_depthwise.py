"""Depthwise-separable groups: ``expand -> [BN] -> act -> depthwise -> [BN] -> act -> project``.

Channel ``j`` of the expansion, the depthwise conv, both normalisations and activations is
one coupled channel. Oracles, independent of the code under test:

- the same block with the channels deleted by hand in NumPy (expansion rows, BN vectors,
  depthwise kernels, the projection's input channels), run in onnxruntime;
- duplicated channels (identical expansion row, kernel and normalisations): Neuron Merging and
  LBYL must restore the output exactly through the activations;
- a linear block (no activations, no biases, valid padding) where a removed channel's
  composite filter ``w_j (x) k_j`` is an exact combination of kept ones: LBYL restores it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import GraphBuilder, random_bn, random_feeds, random_filters
from test_rewrite import EXACT, pruned, rel_error, run

from lbyl_onnx import MethodOptions, list_units, prune

KEYS = ("scale", "B", "mean", "var")


def block_arrays(seed: int = 0, c_in: int = 4, n: int = 8, c_out: int = 5, k: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "expand.W": random_filters(rng, n, c_in, (c_in, 1, 1)),
        "dw.W": random_filters(rng, n, k * k, (1, k, k)),
        "dw.b": (0.1 * rng.standard_normal(n)).astype(np.float32),
        "project.W": random_filters(rng, c_out, n, (n, 1, 1)),
    }
    for name in ("bn1", "bn2"):
        arrays.update({f"{name}.{key}": v for key, v in random_bn(rng, n).items()})
    return arrays


def block(
    arrays: dict,
    act: str | None = "Relu",
    bn: bool = True,
    pads: int = 1,
    multiplier: int = 1,
    readers: int = 1,
) -> onnx.ModelProto:
    """The block as an ONNX model (input ``x`` [B, c_in, 6, 6])."""
    n, c_in = arrays["expand.W"].shape[:2]
    k = arrays["dw.W"].shape[-1]
    g = GraphBuilder(opset=13)
    x = g.input("x", ["B", c_in, 6, 6])
    h = g.op("Conv", [x, g.const("expand.W", arrays["expand.W"])], "expand", name="expand")
    if bn:
        inputs = [g.const(f"bn1.{key}", arrays[f"bn1.{key}"]) for key in KEYS]
        h = g.op("BatchNormalization", [h, *inputs], "bn1", name="bn1")
    if act:
        h = g.op(act, [h], "act1", name="act1")
    dw_w = arrays["dw.W"] if multiplier == 1 else np.concatenate([arrays["dw.W"]] * multiplier)
    dw_inputs = [h, g.const("dw.W", dw_w)]
    if multiplier == 1:
        dw_inputs.append(g.const("dw.b", arrays["dw.b"]))
    h = g.op("Conv", dw_inputs, "dw", name="dw", group=n, pads=[pads] * 4)
    if bn and multiplier == 1:
        inputs = [g.const(f"bn2.{key}", arrays[f"bn2.{key}"]) for key in KEYS]
        h = g.op("BatchNormalization", [h, *inputs], "bn2", name="bn2")
    if act:
        h = g.op(act, [h], "act2", name="act2")
    project = arrays["project.W"]
    if multiplier != 1:
        project = np.concatenate([project] * multiplier, axis=1)
    for r in range(readers):
        name = "project" if r == 0 else f"project{r}"
        out = g.op("Conv", [h, g.const(f"{name}.W", project * (r + 1))], f"y{r}", name=name)
        g.output(out, ["B", project.shape[0], 4 + 2 * pads - (k - 3), 4 + 2 * pads - (k - 3)])
    return g.build()


def deleted(arrays: dict, kept: np.ndarray) -> dict:
    """The block with only channels ``kept``, by hand."""
    out = dict(arrays)
    for key, value in arrays.items():
        if key == "project.W":
            out[key] = value[:, kept]
        elif not key.startswith("project"):
            out[key] = value[kept]
    return out


def composite_norms(arrays: dict) -> np.ndarray:
    """``|rho1_j w_j| |k_j|``: the l2 score of a coupled channel (BN1 folded into ``w_j``)."""
    rho = arrays["bn1.scale"] / np.sqrt(arrays["bn1.var"].astype(np.float64) + 1e-5)
    w = np.linalg.norm(arrays["expand.W"].reshape(len(rho), -1), axis=1) * np.abs(rho)
    return w * np.linalg.norm(arrays["dw.W"].reshape(len(rho), -1), axis=1)


def test_group_is_one_unit_and_the_depthwise_conv_is_not_declined():
    units, declined = list_units(block(block_arrays()))
    assert [u.name for u in units] == ["expand"]
    assert [p.name for p in units[0].producers] == ["expand", "dw"]
    assert [c.node.name for c in units[0].consumers] == ["project"]
    assert [(d.name, d.reason) for d in declined] == [("project", "'y0' is a graph output")]


@pytest.mark.parametrize("act", ["Relu", None])
def test_prune_matches_numpy_deletion_of_the_coupled_channels(act):
    arrays = block_arrays(seed=3)
    model = block(arrays, act=act)
    norms = composite_norms(arrays)
    kept = np.sort(np.argsort(-norms, kind="stable")[:5])
    oracle = block(deleted(arrays, kept), act=act)
    out, report = pruned(model, ratio=0.375, method="prune", bias_correction=False)
    assert [(u.channels_before, u.channels_after) for u in report.units] == [(8, 5)]
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(out, feeds)[0], run(oracle, feeds)[0], atol=1e-5)
    dw = next(n for n in out.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 5


def duplicated(seed: int = 1) -> dict:
    """Channel 7 copies channel 0 in every array, and both have the smallest norm: at ratio
    1/8 the l2 criterion removes one of them (the tie is kept stably: channel 7 goes)."""
    arrays = block_arrays(seed)
    arrays["expand.W"][0] *= 0.9 * composite_norms(arrays).min() / composite_norms(arrays)[0]
    arrays["bn2.B"][0] = 1.0  # alive after the second ReLU
    for key, value in arrays.items():
        if not key.startswith("project"):
            value[7] = value[0]
    return arrays


def test_duplicated_channels_are_restored_exactly_through_the_activations():
    model = block(duplicated(), act="Relu")
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    errors = {}
    for method, options in (("nm", MethodOptions()), ("lbyl", EXACT), ("prune", EXACT)):
        out, report = pruned(
            model, ratio=0.125, method=method, options=options, bias_correction=False
        )
        assert [u.channels_after for u in report.units] == [7]
        errors[method] = rel_error(run(out, feeds), reference)
    assert errors["nm"] < 1e-5 and errors["lbyl"] < 1e-4, errors
    assert errors["prune"] > 0.05, errors


def test_linear_combination_of_composite_filters_is_restored_exactly():
    """Channel 7's composite filter ``w (x) (k_0 - 2 k_1)`` with ``w_0 = w_1 = w_7``:
    a mixed-sign combination, exact for LBYL in a linear block, impossible for merging."""
    arrays = block_arrays(seed=5)
    for key in ("dw.b", "bn1.B", "bn1.mean", "bn2.B", "bn2.mean"):
        arrays[key][:] = 0
    for key in ("bn1.scale", "bn1.var"):
        arrays[key][[1, 7]] = arrays[key][0]
    arrays["expand.W"][[1, 7]] = arrays["expand.W"][0]
    arrays["dw.W"][7] = (arrays["dw.W"][0] - 2 * arrays["dw.W"][1]) * 0.01  # smallest norm
    model = block(arrays, act=None, pads=0)
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    errors = {}
    for method in ("lbyl", "nm", "prune"):
        out, _ = pruned(model, ratio=0.125, method=method, options=EXACT)
        errors[method] = rel_error(run(out, feeds), reference)
    assert errors["lbyl"] < 1e-4, errors
    assert errors["nm"] > 10 * errors["lbyl"] and errors["prune"] > 10 * errors["lbyl"], errors


def test_every_reader_of_the_group_absorbs_the_compensation():
    model = block(duplicated(), readers=2)
    feeds = random_feeds(model, batch=2)
    out, report = pruned(model, ratio=0.125, method="nm")
    assert sorted(report.units[0].consumers) == ["project", "project1"]
    for a, b in zip(run(out, feeds), run(model, feeds), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_channel_multiplier_is_declined_with_a_reason():
    units, declined = list_units(block(block_arrays(), multiplier=2, bn=False))
    assert units == []
    assert any("multiplier" in d.reason for d in declined), declined


@pytest.mark.parametrize("method", ["prune", "nm", "lbyl", "lbyl-nn"])
def test_ratio_zero_leaves_the_block_unchanged(method):
    model = block(block_arrays(seed=2), act="Relu")
    feeds = random_feeds(model)
    out, _ = pruned(model, ratio=0.0, method=method)
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], atol=1e-5)


@pytest.mark.parametrize("sequential, bound", [(False, 1e-3), (True, 3e-3)])
def test_calibration_mode_solves_on_the_depthwise_output(sequential: bool, bound: float):
    """The channels are recorded after the second activation, where the projection reads
    them: calibration on duplicated channels restores the block (up to the ridge: 1e-3 of
    the kept channels' variance independently, 1e-2 toward pass-through sequentially)."""
    model = block(duplicated(), act="Relu")
    data = random_feeds(model, seed=7, batch=64)
    feeds = random_feeds(model, batch=4)
    out, report = prune(
        model, ratio=0.125, calibration_data=data, sequential=sequential, check=False
    )
    assert report.mode.startswith("calibrated")
    assert rel_error(run(out, feeds), run(model, feeds)) < bound


def test_compensation_judged_worse_than_removal_falls_back_with_a_note():
    """Channel 7 mirrors channel 0 before the second ReLU (negated expansion row, zero
    shifts): LBYL's exact filter-space answer ``s = -1`` is wrong after the ReLU, and the
    judge replaces it by removal; with ``judge=False`` LBYL's answer is kept and worse."""
    arrays = block_arrays(seed=1)
    for key in ("dw.b", "bn1.B", "bn1.mean", "bn2.B", "bn2.mean"):
        arrays[key][:] = 0
    arrays["expand.W"][0] *= 0.9 * composite_norms(arrays).min() / composite_norms(arrays)[0]
    for key, value in arrays.items():
        if not key.startswith("project"):
            value[7] = value[0]
    arrays["dw.W"][7] = -arrays["dw.W"][0]
    model = block(arrays, act="Relu")
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    judged, report = pruned(model, ratio=0.125, method="lbyl", options=EXACT)
    assert any("removed plainly" in note for note in report.units[0].notes), report.units[0]
    unjudged, report = pruned(model, ratio=0.125, method="lbyl", options=EXACT, judge=False)
    assert not any("removed plainly" in note for note in report.units[0].notes)
    removal, _ = pruned(model, ratio=0.125, method="prune")
    assert rel_error(run(judged, feeds), reference) == rel_error(run(removal, feeds), reference)
    assert rel_error(run(judged, feeds), reference) < rel_error(run(unjudged, feeds), reference)


def test_bias_correction_is_on_by_default_in_depthwise_groups_only():
    """The removed channel's mean from BN2's statistics goes into the projection's bias (a
    bias is created: the projection has none); ``--no-bias-correction`` turns it off."""
    model = block(duplicated(), act="Relu")
    _, report = pruned(model, ratio=0.125, method="prune")
    assert any("bias correction" in note for note in report.units[0].notes)
    out, report = pruned(model, ratio=0.125, method="prune", bias_correction=False)
    assert not any("bias correction" in note for note in report.units[0].notes)
    assert len(next(n for n in out.graph.node if n.name == "project").input) == 2


def test_data_free_pruning_of_depthwise_groups_warns_and_calibration_does_not():
    model = block(duplicated(), act="Relu")
    _, report = pruned(model, ratio=0.125)
    assert any("depthwise group" in w for w in report.warnings), report.warnings
    _, report = pruned(model, ratio=0.0)
    assert not any("depthwise group" in w for w in report.warnings), report.warnings
    data = random_feeds(model, seed=7, batch=64)
    _, report = prune(model, ratio=0.125, calibration_data=data, check=False)
    assert not any("depthwise group" in w for w in report.warnings), report.warnings


def test_depthwise_groups_without_rounding_warn_about_latency():
    model = block(duplicated(), act="Relu")
    _, report = pruned(model, ratio=0.125)
    assert any("--round-to 8" in w for w in report.warnings), report.warnings
    _, report = pruned(model, ratio=0.125, round_to=4)
    assert not any("--round-to 8" in w for w in report.warnings), report.warnings
