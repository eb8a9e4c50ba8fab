"""The op table (``lbyl_onnx.graph.ops``): one entry per op, with its roles; an op missing from
it is declined with its name; approximation is a typed flag on the unit; units refer to nodes
by name, so that they apply to a copy of the model.

Models are built here (1x1 convolutions, so that NumPy computes the same network) or in
:mod:`tests.models`, and checked to run in onnxruntime first.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from models import GraphBuilder, conv_net, random_feeds, weights_of
from onnx import helper

from lbyl_onnx import list_units
from lbyl_onnx.graph.index import GraphIndex
from lbyl_onnx.graph.ops import OPS, ActivationRole, op_spec, ops_where
from lbyl_onnx.graph.rewrite import Plan, apply_plans
from lbyl_onnx.graph.units import Layout, MatrixKind, NodeRef
from lbyl_onnx.methods.base import identity_rows
from lbyl_onnx.methods.moments import ACTIVATION_FUNCTIONS
from lbyl_onnx.pipeline.solve import trusted_means, unit_notes
from lbyl_onnx.runtime.sessions import session
from lbyl_onnx.runtime.timing import CHANNELWISE, FUSED_INTO_CONV, MATRIX_OPS


def conv_act_conv(
    act: str | None, n: int = 8, seed: int = 0, domain: str = "", bn: bool = False
) -> onnx.ModelProto:
    """``x [N, 4, 5, 5] -> conv0 (1x1, n) -> [bn0] -> act -> head (1x1, 5) -> y``."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input("x", ["N", 4, 5, 5])
    w = g.const("conv0.W", rng.standard_normal((n, 4, 1, 1)).astype(np.float32))
    b = g.const("conv0.b", (0.3 * rng.standard_normal(n)).astype(np.float32))
    t = g.op("Conv", [x, w, b], "z0", name="conv0")
    if bn:
        stats = {
            "scale": rng.uniform(0.5, 1.5, n),
            "B": 0.3 * rng.standard_normal(n),
            "mean": 0.3 * rng.standard_normal(n),
            "var": rng.uniform(0.5, 1.5, n),
        }
        names = [g.const(f"bn0.{k}", v.astype(np.float32)) for k, v in stats.items()]
        t = g.op("BatchNormalization", [t, *names], "bn0", name="bn0")
    if act is not None:
        g.nodes.append(helper.make_node(act, [t], ["act0"], name="act0", domain=domain))
        t = "act0"
    v = g.const("head.W", rng.standard_normal((5, n, 1, 1)).astype(np.float32))
    c = g.const("head.b", (0.3 * rng.standard_normal(5)).astype(np.float32))
    g.op("Conv", [t, v, c], "y", name="head")
    g.output("y", ["N", 5, 5, 5])
    model = g.build()
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    else:
        onnx.checker.check_model(model, full_check=True)
        session(model).run(None, random_feeds(model))
    return model


# --------------------------------------------------------------------------- the table


def test_latency_model_reads_the_same_ops_from_the_table():
    """The sets ``runtime/timing.py`` listed before the table, now derived from it."""
    fused = {"Add", "BatchNormalization", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu"}
    fused |= {"Relu", "Sigmoid", "Sum", "Tanh"}
    assert fused == FUSED_INTO_CONV
    others = {"AveragePool", "Div", "Dropout", "GlobalAveragePool", "GlobalMaxPool", "Identity"}
    others |= {"MaxPool", "Mul", "Pad", "PRelu", "Sub"}
    assert fused | others == CHANNELWISE
    assert set(MATRIX_OPS) == {"Conv", "Gemm", "MatMul"}


def test_every_activation_points_to_its_mean_and_apply_functions():
    kinds = {spec.activation.kind for spec in OPS.values() if spec.activation is not None}
    assert kinds <= set(ACTIVATION_FUNCTIONS)
    with pytest.raises(ValueError, match="softsign"):
        ActivationRole("softsign")


def test_only_ops_the_compensation_is_folded_through_are_flagged_approximate():
    """The flag is about folding ``S`` through an op after the activation: only max pools
    carry it, and no activation does (they come before ``S``)."""
    assert ops_where(lambda spec: spec.approximate) == {"MaxPool", "GlobalMaxPool"}
    assert all(spec.passes for spec in OPS.values() if spec.approximate)
    assert not any(spec.approximate for spec in OPS.values() if spec.activation is not None)


def test_producers_say_how_their_channels_lie():
    layouts = {op: (s.producer.kind, s.producer.layout) for op, s in OPS.items() if s.producer}
    assert layouts == {
        "Conv": (MatrixKind.CONV, Layout.SPATIAL),
        "Gemm": (MatrixKind.GEMM, Layout.FEATURES),
        "MatMul": (MatrixKind.MATMUL, Layout.FEATURES),
    }
    assert MatrixKind.CONV == "conv" and str(MatrixKind.GEMM) == "gemm"
    assert (Layout.SPATIAL.channel_axis, Layout.FEATURES.channel_axis) == (1, -1)


def test_lookup_is_by_op_type_in_the_default_domain_only():
    relu = helper.make_node("Relu", ["a"], ["b"])
    assert op_spec(relu) is OPS["Relu"]
    assert op_spec(helper.make_node("Relu", ["a"], ["b"], domain="com.example")) is None
    assert op_spec(helper.make_node("Softsign", ["a"], ["b"])) is None


# --------------------------------------------------------------------------- declined


@pytest.mark.parametrize("op", ["Softsign", "Elu", "Softplus", "Selu"])
def test_activation_missing_from_the_table_is_declined_with_its_name(op):
    units, declined = list_units(conv_act_conv(op))
    assert units == []
    reasons = {d.name: d.reason for d in declined}
    assert op in reasons["conv0"] and "act0" in reasons["conv0"], reasons


def test_custom_op_named_like_a_table_op_is_declined_not_modelled():
    units, declined = list_units(conv_act_conv("Relu", domain="com.example"))
    assert units == []
    reason = {d.name: d.reason for d in declined}["conv0"]
    assert "custom op" in reason and "com.example.Relu" in reason, reason


# --------------------------------------------------------------------------- approximation


@pytest.mark.parametrize(
    ("between", "approximate"),
    [(("MaxPool",), True), (("GlobalMaxPool",), True), (("AveragePool", "Identity"), False)],
)
def test_approximation_is_a_typed_flag_set_from_the_table(between, approximate):
    model = conv_net(channels=(3, 8), bn="kept", between=between, hw=8)
    [unit] = list_units(model)[0]
    assert unit.approximate is approximate
    assert [a.op_type for a in unit.approximations] == [op for op in between if approximate]
    assert trusted_means(unit) is not approximate
    assert unit_notes(unit, calibrated=False) == unit.notes
    assert unit_notes(unit, calibrated=True) == unit.remarks == []
    assert any("approximate" in note for note in unit.notes) is approximate


def test_trust_rule_reads_the_flag_not_the_notes():
    [unit] = list_units(conv_net(channels=(3, 8), bn="kept"))[0]
    worded = replace(unit, remarks=["a remark that says approximate"])
    assert trusted_means(worded)
    assert unit_notes(worded, calibrated=True) == ["a remark that says approximate"]


# --------------------------------------------------------------------------- node references


def _half_plans(model: onnx.ModelProto) -> list[Plan]:
    units, _ = list_units(model)
    assert units
    return [
        Plan(u, np.arange(u.channels // 2), identity_rows(u.channels, np.arange(u.channels // 2)))
        for u in units
    ]


def test_units_refer_to_nodes_by_name():
    [unit] = list_units(conv_net(channels=(3, 8), bn="kept"))[0]
    assert unit.producer == NodeRef("conv0", "Conv", ("z0",))
    assert unit.bn.name == "bn0" and unit.activation.op_type == "Relu"
    assert unit.weight.node == unit.producer and unit.weight.tensor == "conv0.W"
    assert [c.node.name for c in unit.consumers] == ["head"]


@pytest.mark.parametrize("renamed", [False, True])
def test_units_found_in_a_model_apply_to_a_copy_of_it(renamed):
    """A copy (its nodes renamed, as the latency profile does) pruned with the original's
    units equals the original pruned in place, and the original's units stay valid."""
    model = conv_net(channels=(3, 8, 6), bn="kept", between=("AveragePool",), hw=8)
    plans = _half_plans(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if renamed:
        for i, node in enumerate(copy.graph.node):
            node.name = f"renamed_{i}"
    apply_plans(copy, plans)
    before = weights_of(model)
    apply_plans(model, plans)
    if renamed:
        for node, twin in zip(model.graph.node, copy.graph.node, strict=True):
            twin.name = node.name
    assert copy.SerializeToString() == model.SerializeToString()
    assert weights_of(model)["conv0.W_pruned"].shape[0] == 4 < before["conv0.W"].shape[0]
    feeds = random_feeds(model)
    np.testing.assert_array_equal(
        session(copy).run(None, feeds)[0], session(model).run(None, feeds)[0]
    )


def test_a_node_missing_from_the_model_does_not_resolve():
    model = conv_net(channels=(3, 8))
    [unit] = list_units(model)[0]
    index = GraphIndex(model)
    assert unit.producer.resolve(index).name == "conv0"
    with pytest.raises(KeyError, match="Conv"):
        NodeRef("conv9", "Conv", ("nowhere",)).resolve(index)
