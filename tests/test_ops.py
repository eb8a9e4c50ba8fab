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
from models import GraphBuilder, conv_net, kept_by_l2, random_feeds, weights_of
from onnx import helper, numpy_helper
from scipy import integrate
from scipy.stats import norm

from lbyl_onnx import MethodOptions, list_units, prune
from lbyl_onnx.graph.index import GraphIndex
from lbyl_onnx.graph.ops import OPS, ActivationRole, op_spec, ops_where
from lbyl_onnx.graph.rewrite import Plan, apply_plans
from lbyl_onnx.graph.units import Layout, MatrixKind, NodeRef
from lbyl_onnx.methods.base import identity_rows
from lbyl_onnx.methods.moments import (
    ACTIVATION_FUNCTIONS,
    TANH_SPLIT,
    Activation,
    activation_means,
    apply_activation,
)
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


# --------------------------------------------------------------------------- Tanh


def test_tanh_mean_matches_adaptive_quadrature():
    """Gauss-Hermite below the split, the step plus Gauss-Laguerre above it, both against
    ``scipy.integrate.quad`` over narrow, wide and dead (``gamma = 0``) channels."""
    means = np.array([-6.0, -3.0, -1.0, -0.3, 0.0, 0.2, 1.0, 4.0, 8.0])
    for std in (0.0, 1e-6, 0.05, 0.5, TANH_SPLIT, 0.71, 1.0, 3.0, 10.0, 100.0):
        expected = [
            integrate.quad(
                lambda z, m=m, s=std: np.tanh(m + s * z) * norm.pdf(z),
                -40,
                40,
                points=[-m / std] if std else None,
                limit=1000,
                epsabs=1e-13,
            )[0]
            for m in means
        ]
        got = activation_means(means, np.full_like(means, -std), Activation("tanh"))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10, err_msg=f"std {std}")


def test_tanh_mean_matches_monte_carlo():
    rng = np.random.default_rng(5)
    beta = np.array([-1.5, -0.2, 0.0, 0.4, 2.0, 0.3])
    gamma = np.array([0.3, 1.0, 2.5, -0.6, 0.8, 12.0])
    z = beta + gamma * rng.standard_normal((400_000, len(beta)))
    r = apply_activation(z, Activation("tanh"))
    np.testing.assert_array_equal(r, np.tanh(z))
    np.testing.assert_allclose(
        activation_means(beta, gamma, Activation("tanh")), r.mean(0), atol=3e-3
    )


@pytest.mark.parametrize("bn", [False, True])
def test_conv_bn_tanh_conv_is_a_unit(bn):
    units, _ = list_units(conv_act_conv("Tanh", bn=bn))
    [unit] = units
    assert unit.name == "conv0" and unit.channels == 8
    assert unit.activation.op_type == "Tanh" and unit.activation_model == Activation("tanh")
    assert "act0" in unit.tensors and unit.record == "act0"
    assert [c.node.name for c in unit.consumers] == ["head"]
    assert not unit.approximate  # an activation comes before S: nothing is folded through it
    assert (unit.bn is not None) is bn


def numpy_net(a: dict[str, np.ndarray], x: np.ndarray, kept: np.ndarray | None = None):
    """``conv_act_conv("Tanh")`` in NumPy (float64), with only the channels ``kept``."""
    kept = np.arange(a["conv0.W"].shape[0]) if kept is None else kept
    w = a["conv0.W"][kept, :, 0, 0].astype(np.float64)
    z = np.einsum("oc,nchw->nohw", w, x) + a["conv0.b"][kept, None, None]
    if "bn0.scale" in a:
        scale, shift, mean, var = (
            a[f"bn0.{key}"][kept, None, None].astype(np.float64)
            for key in ("scale", "B", "mean", "var")
        )
        z = scale * (z - mean) / np.sqrt(var + 1e-5) + shift
    v = a["head.W"][:, kept, 0, 0].astype(np.float64)
    return np.einsum("oc,nchw->nohw", v, np.tanh(z)) + a["head.b"][:, None, None]


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("method", ["prune", "nm", "lbyl", "lbyl-nn"])
def test_tanh_unit_prunes_with_each_method(method, bn):
    model = conv_act_conv("Tanh", bn=bn, seed=3)
    feeds = random_feeds(model, batch=4)
    out, report = prune(model, ratio=0.5, method=method, synthetic_calibration=False, check=False)
    onnx.checker.check_model(out, full_check=True)
    assert [(u.name, u.channels_after) for u in report.units] == [("conv0", 4)]
    [y] = session(out).run(None, feeds)
    assert y.shape == (4, 5, 5, 5) and np.all(np.isfinite(y))
    a = weights_of(model)
    reference = numpy_net(a, feeds["x"])
    np.testing.assert_allclose(session(model).run(None, feeds)[0], reference, atol=1e-4)
    if method == "prune":  # plain removal is the network with those channels deleted
        kept = kept_by_l2(a["conv0.W"], 0.5)
        np.testing.assert_allclose(y, numpy_net(a, feeds["x"], kept), atol=1e-4)


def test_tanh_unit_prunes_with_calibration_and_bias_correction():
    model = conv_act_conv("Tanh", bn=True, seed=4)
    feeds = random_feeds(model, batch=4)
    out, report = prune(model, ratio=0.5, bias_correction=True, method="nm", check=False)
    assert any("bias correction" in note for note in report.units[0].notes)
    calibrated, _ = prune(
        model, ratio=0.5, calibration_data=random_feeds(model, 2, 16), check=False
    )
    for pruned in (out, calibrated):
        onnx.checker.check_model(pruned, full_check=True)
        assert np.all(np.isfinite(session(pruned).run(None, feeds)[0]))


def duplicate_tanh_net(seed: int = 6) -> onnx.ModelProto:
    """``conv_act_conv("Tanh", bn=True)`` whose odd channels have the pre-activations of the
    even ones: raw filter ``w_j = c w_k`` (``c < 1``: the L2 criterion removes them) and
    BatchNormalization set so that ``rho_j c = rho_k`` and the folded biases agree."""
    model = conv_act_conv("Tanh", bn=True, seed=seed)
    a = weights_of(model)
    rng = np.random.default_rng(seed)
    w, b = a["conv0.W"].astype(np.float64), a["conv0.b"].astype(np.float64)
    bn = {k: a[f"bn0.{k}"].astype(np.float64) for k in ("scale", "B", "mean", "var")}
    w[0::2] *= (
        rng.uniform(2.0, 2.5, (4, 1, 1, 1))
        / np.linalg.norm(w[0::2].reshape(4, -1), axis=1)[:, None, None, None]
    )
    c = rng.uniform(0.3, 0.6, 4)
    w[1::2] = c[:, None, None, None] * w[0::2]
    rho_k = bn["scale"][0::2] / np.sqrt(bn["var"][0::2] + 1e-5)
    rho_j = rho_k / c
    bn["scale"][1::2] = rho_j * np.sqrt(bn["var"][1::2] + 1e-5)
    bt_k = bn["B"][0::2] + rho_k * (b[0::2] - bn["mean"][0::2])
    bn["B"][1::2] = bt_k - rho_j * (b[1::2] - bn["mean"][1::2])
    values = {"conv0.W": w, **{f"bn0.{k}": v for k, v in bn.items()}}
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in values:
            array = values[tensor.name].astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    np.testing.assert_array_equal(kept_by_l2(w, 0.5), np.arange(0, 8, 2))
    return model


def test_tanh_of_duplicated_pre_activations_is_restored_exactly():
    """``tanh(z_j) = tanh(z_k)`` when ``z_j = z_k``: merging channel ``j`` into ``k`` (Neuron
    Merging, LBYL with a vanishing ridge) restores the output; plain removal does not."""
    model = duplicate_tanh_net()
    feeds = random_feeds(model, batch=4)
    [reference] = session(model).run(None, feeds)
    errors = {}
    for method in ("nm", "lbyl", "lbyl-nn", "prune"):
        out, _ = prune(
            model,
            ratio=0.5,
            method=method,
            options=MethodOptions(ridge=1e-9),
            synthetic_calibration=False,
            check=False,
        )
        [y] = session(out).run(None, feeds)
        errors[method] = float(np.linalg.norm(y - reference) / np.linalg.norm(reference))
    assert max(errors["nm"], errors["lbyl"], errors["lbyl-nn"]) < 1e-4, errors
    assert errors["prune"] > 0.05, errors


def test_tanh_inside_a_residual_group_is_passed_through():
    """``stem -> Tanh -> s``, ``s + conv2(relu(conv1(s)))`` read by ``head``: the Tanh is
    inside the group, which prunes ``stem`` and ``conv2`` together."""
    rng = np.random.default_rng(7)
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 5, 5])
    weight = lambda name, o, i: g.const(name, rng.standard_normal((o, i, 1, 1)).astype("f"))  # noqa: E731
    s = g.op("Tanh", [g.op("Conv", [x, weight("Ws", 8, 3)], "zs", name="stem")], "s")
    r = g.op("Relu", [g.op("Conv", [s, weight("W1", 6, 8)], "z1", name="conv1")], "r1")
    total = g.op("Add", [g.op("Conv", [r, weight("W2", 8, 6)], "z2", name="conv2"), s], "sum")
    g.op("Conv", [total, weight("V", 4, 8)], "y", name="head")
    g.output("y", ["N", 4, 5, 5])
    model = g.build()
    units, _ = list_units(model, prune_residual=True)
    group = next(u for u in units if u.name == "stem")
    assert [p.name for p in group.producers] == ["stem", "conv2"]
    assert sorted(c.node.name for c in group.consumers) == ["conv1", "head"]
    assert not group.approximate
    out, report = prune(model, ratio=0.25, prune_residual=True, method="lbyl", check=False)
    onnx.checker.check_model(out, full_check=True)
    assert ("stem", 6) in [(u.name, u.channels_after) for u in report.units]
    assert np.all(np.isfinite(session(out).run(None, random_feeds(model))[0]))
