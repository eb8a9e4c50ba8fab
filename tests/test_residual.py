"""Residual groups (``--prune-residual``): every conv feeding a chain of residual sums loses
the same channels, and every reader of the chain absorbs the compensation.

The model: ``stem -> BN -> Relu -> [conv1 -> BN -> Relu -> conv2 -> BN -> Add -> Relu] x 2
-> GlobalAveragePool -> Flatten -> Gemm``. Oracles, independent of the code under test:

- the same model with channels deleted by hand in NumPy (rows of the stem and of both
  ``conv2``, their BN vectors; input channels of both ``conv1`` and the Gemm's columns);
- a channel duplicated in every producer and normalisation: Neuron Merging and LBYL restore
  the output exactly through the sums and ReLUs; removal does not.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from models import GraphBuilder, random_bn, random_feeds, random_filters
from test_rewrite import EXACT, pruned, rel_error, run

from lbyl_onnx import MethodOptions, list_units, prune
from lbyl_onnx.cli import main

KEYS = ("scale", "B", "mean", "var")
PRODUCERS = ("stem", "b0.conv2", "b1.conv2")
READERS = ("b0.conv1", "b1.conv1")


def arrays_of(seed: int = 0, n: int = 8, hidden: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = {"stem.W": random_filters(rng, n, 27, (3, 3, 3))}
    for b in ("b0", "b1"):
        a[f"{b}.conv1.W"] = random_filters(rng, hidden, 9 * n, (n, 3, 3))
        a[f"{b}.conv2.W"] = random_filters(rng, n, 9 * hidden, (hidden, 3, 3))
        a.update({f"{b}.bn1.{k}": v for k, v in random_bn(rng, hidden).items()})
    for p in PRODUCERS:
        a.update({f"{p}.bn.{k}": v for k, v in random_bn(rng, n).items()})
    a["fc.W"] = random_filters(rng, 5, n, (n,))
    a["fc.b"] = np.zeros(5, np.float32)
    return a


def resnet(a: dict, sum_op: str = "Add", output_inside: bool = False, pool: bool = False):
    g = GraphBuilder(opset=13)
    x = g.input("x", ["B", 3, 6, 6])

    def conv_bn(name: str, h: str, w: str, bn: str) -> str:
        h = g.op("Conv", [h, g.const(f"{w}.W", a[f"{w}.W"])], f"{w}_out", name=w, pads=[1] * 4)
        params = [g.const(f"{bn}.{k}", a[f"{bn}.{k}"]) for k in KEYS]
        return g.op("BatchNormalization", [h, *params], f"{bn}_out", name=bn)

    h = g.op("Relu", [conv_bn("stem", x, "stem", "stem.bn")], "stem_relu")
    if pool:
        h = g.op("MaxPool", [h], "pooled", kernel_shape=[1, 1])
    for b in ("b0", "b1"):
        t = g.op("Relu", [conv_bn(b, h, f"{b}.conv1", f"{b}.bn1")], f"{b}.relu1")
        t = conv_bn(b, t, f"{b}.conv2", f"{b}.conv2.bn")
        h = g.op("Relu", [g.op(sum_op, [h, t], f"{b}.sum", name=f"{b}.sum")], f"{b}.relu2")
    if output_inside:
        g.output("b0.relu2", ["B", a["stem.W"].shape[0], 6, 6])
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h], "gap")], "flat")
    fc = [h, g.const("fc.W", a["fc.W"]), g.const("fc.b", a["fc.b"])]
    g.output(g.op("Gemm", fc, "logits", name="fc", transB=1), ["B", 5])
    return g.build()


def group_norms(a: dict) -> np.ndarray:
    """Per channel, the norm of the producers' folded filters side by side."""
    total = 0.0
    for p in PRODUCERS:
        rho = a[f"{p}.bn.scale"] / np.sqrt(a[f"{p}.bn.var"].astype(np.float64) + 1e-5)
        rows = a[f"{p}.W"].reshape(len(rho), -1).astype(np.float64) * rho[:, None]
        total = total + np.sum(rows**2, axis=1)
    return np.sqrt(total)


def deleted(a: dict, kept: np.ndarray) -> dict:
    out = dict(a)
    for p in PRODUCERS:
        out[f"{p}.W"] = a[f"{p}.W"][kept]
        out.update({f"{p}.bn.{k}": a[f"{p}.bn.{k}"][kept] for k in KEYS})
    for r in READERS:
        out[f"{r}.W"] = a[f"{r}.W"][:, kept]
    out["fc.W"] = a["fc.W"][:, kept]
    return out


def test_without_the_option_the_group_producers_are_declined():
    units, declined = list_units(resnet(arrays_of()))
    assert [u.name for u in units] == ["b0.conv1", "b1.conv1"]
    reasons = {d.name: d.reason for d in declined}
    assert all("Add" in reasons[p] for p in PRODUCERS), reasons


@pytest.mark.parametrize("sum_op", ["Add", "Sum"])
def test_the_group_is_one_unit_with_every_producer_and_reader(sum_op):
    units, declined = list_units(resnet(arrays_of(), sum_op), prune_residual=True)
    group = next(u for u in units if u.name == "stem")
    assert [p.name for p in group.producers] == list(PRODUCERS)
    assert sorted(c.node.name for c in group.consumers) == ["b0.conv1", "b1.conv1", "fc"]
    assert [u.name for u in units] == ["stem", "b0.conv1", "b1.conv1"]
    assert [d.name for d in declined] == ["fc"]  # its output is the graph output


def test_prune_matches_numpy_deletion_in_every_producer_and_reader():
    a = arrays_of(seed=4)
    model = resnet(a)
    kept = np.sort(np.argsort(-group_norms(a), kind="stable")[:5])
    oracle = resnet(deleted(a, kept))
    out, report = pruned(model, ratio=0.375, method="prune", prune_residual=True, exclude=READERS)
    assert [(u.name, u.channels_after) for u in report.units] == [("stem", 5)]
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(out, feeds)[0], run(oracle, feeds)[0], atol=1e-5)


def duplicated(seed: int = 2) -> dict:
    """Channel 7 copies channel 0 in every producer and normalisation (the readers are left
    as they are); both have the smallest group norm, so ratio 1/8 removes channel 7."""
    a = arrays_of(seed)
    scale = 0.9 * group_norms(a).min() / group_norms(a)[0]
    for p in PRODUCERS:
        a[f"{p}.W"][0] *= scale
        a[f"{p}.bn.B"][0] = 0.5  # alive after the ReLUs
        for key in (f"{p}.W", *(f"{p}.bn.{k}" for k in KEYS)):
            a[key][7] = a[key][0]
    return a


@pytest.mark.parametrize("sum_op", ["Add", "Sum"])
def test_duplicated_channel_is_restored_exactly_through_sums_and_relus(sum_op):
    model = resnet(duplicated(), sum_op)
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    errors = {}
    for method, options in (("nm", MethodOptions()), ("lbyl", EXACT), ("prune", EXACT)):
        out, report = pruned(
            model,
            ratio=0.125,
            method=method,
            options=options,
            prune_residual=True,
            exclude=READERS,
        )
        assert [u.channels_after for u in report.units] == [7]
        errors[method] = rel_error(run(out, feeds), reference)
    assert errors["nm"] < 1e-5 and errors["lbyl"] < 1e-4, errors
    assert errors["prune"] > 0.01, errors


def test_a_group_tensor_that_is_a_graph_output_declines_the_group():
    units, declined = list_units(resnet(arrays_of(), output_inside=True), prune_residual=True)
    assert "stem" not in [u.name for u in units]
    reasons = [d.reason for d in declined if d.op_type == "Add"]
    assert reasons and all("residual group" in r and "graph output" in r for r in reasons)


def test_max_pool_inside_the_group_is_noted_as_approximate():
    units, _ = list_units(resnet(arrays_of(), pool=True), prune_residual=True)
    group = next(u for u in units if u.name == "stem")
    assert any("MaxPool" in note for note in group.notes)
    _, report = pruned(resnet(arrays_of(), pool=True), ratio=0.25, prune_residual=True)
    assert report.units[0].channels_after == 6


def test_model_with_residual_groups_validates_in_onnxruntime():
    model = resnet(arrays_of(seed=6))
    _, report = prune(model, ratio=0.3, prune_residual=True)
    assert [u.channels_after for u in report.units] == [5, 4, 4]  # int(8 * 0.7), int(6 * 0.7)
    assert report.validation is not None and report.validation.status == "passed"
    assert report.after.parameters < report.before.parameters


def test_command_line_prunes_residual_groups_only_when_asked(tmp_path):
    path = tmp_path / "resnet.onnx"
    onnx.save(resnet(arrays_of(seed=6)), str(path))
    listed = CliRunner().invoke(main, [str(path), "--list", "--prune-residual"])
    assert listed.exit_code == 0 and "residual group of 'stem'" in listed.output, listed.output
    plain = CliRunner().invoke(main, [str(path), "--list"])
    assert "residual group" not in plain.output
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    result = CliRunner().invoke(
        main, [str(path), str(out), "--prune-residual", "--report", str(report), "-q"]
    )
    assert result.exit_code == 0, result.output
    units = {u["name"]: u for u in json.loads(report.read_text())["units"]}
    assert units["stem"]["channels_after"] == 5
    weights = {t.name: t.dims for t in onnx.load(str(out)).graph.initializer}
    assert next(d for name, d in weights.items() if name.startswith("b0.conv2.W"))[0] == 5
