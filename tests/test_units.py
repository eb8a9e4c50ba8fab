"""Which chains are prunable units, and why the others are declined (LBYL.md section 1).

Every model is tiny and built in :mod:`tests.models`; every model is first checked to be valid
(full ONNX checker and one onnxruntime run), so a decline is the tool's decision, not a broken
test model. Expected arrays are the ones the builder put in, read back independently.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import (
    STORAGES,
    GraphBuilder,
    conv_net,
    dense_net,
    random_feeds,
    two_branches,
    weights_of,
)
from onnx import TensorProto, helper

from lbyl_onnx import list_units
from lbyl_onnx.graph.units import Declined, Unit
from lbyl_onnx.runtime.sessions import session


def valid(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model passes the full checker and runs in onnxruntime (a sanity check of the test)."""
    onnx.checker.check_model(model, full_check=True)
    session(model).run(None, random_feeds(model))
    return model


def find(model: onnx.ModelProto) -> tuple[dict[str, Unit], dict[str, Declined]]:
    units, declined = list_units(valid(model))
    return {u.name: u for u in units}, {d.name: d for d in declined}


def assert_declined(model: onnx.ModelProto, name: str, *words: str) -> Declined:
    units, declined = find(model)
    assert name not in units, f"{name} was accepted as a unit"
    assert name in declined, f"{name} is neither a unit nor declined: {list(declined)}"
    reason = declined[name].reason
    for word in words:
        assert word.lower() in reason.lower(), f"reason {reason!r} does not mention {word!r}"
    return declined[name]


def conv_rows(model: onnx.ModelProto, name: str) -> np.ndarray:
    w = weights_of(model)[name]
    return w.reshape(w.shape[0], -1)


# --------------------------------------------------------------------------- found


def test_conv_relu_conv_is_a_unit_with_its_arrays_and_consumer():
    model = conv_net(channels=(3, 8))
    units, declined = find(model)
    assert list(units) == ["conv0"]
    unit = units["conv0"]
    w = weights_of(model)
    assert unit.kind == "conv" and unit.channels == 8
    np.testing.assert_array_equal(unit.arrays.weight, w["conv0.W"].reshape(8, -1))
    np.testing.assert_array_equal(unit.arrays.bias, w["conv0.b"])
    assert unit.arrays.bn is None and unit.bn is None
    assert unit.activation is not None and unit.activation.op_type == "Relu"
    assert [(c.node.name, c.kind, c.block) for c in unit.consumers] == [("head", "conv", 1)]
    assert "graph output" in declined["head"].reason


def test_conv_without_bias_is_a_unit_with_zero_bias():
    units, _ = find(conv_net(channels=(3, 8), bias=False))
    np.testing.assert_array_equal(units["conv0"].arrays.bias, np.zeros(8))
    assert units["conv0"].bias is None


def test_batchnorm_parameters_are_in_layer_arrays():
    model = conv_net(channels=(3, 8), bn="kept")
    bn_node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn_node.attribute[0].f = 1e-3  # a non-default epsilon must be carried
    units, _ = find(model)
    unit, w = units["conv0"], weights_of(model)
    assert unit.bn is not None and unit.bn.name == "bn0"
    bn = unit.arrays.bn
    assert bn is not None
    np.testing.assert_allclose(bn.gamma, w["bn0.scale"], rtol=0, atol=0)
    np.testing.assert_allclose(bn.beta, w["bn0.B"], rtol=0, atol=0)
    np.testing.assert_allclose(bn.mean, w["bn0.mean"], rtol=0, atol=0)
    np.testing.assert_allclose(bn.var, w["bn0.var"], rtol=0, atol=0)
    eps = float(np.float32(1e-3))  # the attribute is a float32
    assert bn.eps == eps
    np.testing.assert_array_equal(unit.arrays.weight, w["conv0.W"].reshape(8, -1))
    # folded filters by the formula of LBYL.md section 2, computed here
    rho = w["bn0.scale"].astype(np.float64) / np.sqrt(w["bn0.var"].astype(np.float64) + eps)
    np.testing.assert_allclose(
        unit.arrays.folded_weight, rho[:, None] * w["conv0.W"].reshape(8, -1), rtol=1e-12
    )
    f64 = {key: v.astype(np.float64) for key, v in w.items()}
    expected_bias = f64["bn0.B"] + rho * (f64["conv0.b"] - f64["bn0.mean"])
    np.testing.assert_allclose(unit.arrays.folded_bias, expected_bias, rtol=1e-12)


@pytest.mark.parametrize(
    ("opset", "act", "extra"),
    [
        (17, "LeakyRelu", {}),
        (13, "Clip", {"clip_form": "input"}),
        (13, "Clip", {"clip_form": "input1"}),
        (13, "Clip", {"clip_max": None}),
        (11, "Clip", {"clip_form": "input", "storage": "constant"}),
        (9, "Clip", {"clip_form": "attr"}),
        (6, "Clip", {"clip_form": "attr"}),
        (17, "PRelu", {"slope_shape": "c11"}),
        (17, "PRelu", {"slope_shape": "1c11"}),
        (17, "PRelu", {"slope_shape": "scalar"}),
        (9, "PRelu", {"slope_shape": "c11"}),
    ],
)
def test_supported_activations_are_inside_the_unit(opset, act, extra):
    bn = "kept" if opset >= 7 else "none"
    model = conv_net(channels=(3, 8), act=act, opset=opset, bn=bn, **extra)
    units, _ = find(model)
    unit = units["conv0"]
    assert unit.activation is not None and unit.activation.op_type == act
    assert "act0" in unit.tensors
    assert [c.node.name for c in unit.consumers] == ["head"]
    if act == "PRelu":
        slope = weights_of(model)["act0.slope"]
        if extra["slope_shape"] == "scalar":
            assert unit.slope is None  # broadcast: nothing to slice
        else:
            assert unit.slope is not None
            np.testing.assert_array_equal(unit.slope.value, slope)
    else:
        assert unit.slope is None


@pytest.mark.parametrize("slope_shape", ["c", "1c", "scalar"])
def test_prelu_slope_of_a_dense_unit_is_per_feature(slope_shape):
    model = dense_net(features=(12, 8), act="PRelu", slope_shape=slope_shape)
    unit = find(model)[0]["fc0"]
    if slope_shape == "scalar":
        assert unit.slope is None
    else:
        np.testing.assert_array_equal(unit.slope.value, weights_of(model)["act0.slope"])


@pytest.mark.parametrize(
    "between",
    [
        ("MaxPool",),
        ("AveragePool",),
        ("GlobalAveragePool",),
        ("GlobalMaxPool",),
        ("Dropout",),
        ("Identity",),
        ("Dropout", "Identity", "AveragePool"),
    ],
)
def test_channel_wise_ops_between_activation_and_consumer_are_passed_through(between):
    model = conv_net(channels=(3, 8), between=between, hw=8)
    unit = find(model)[0]["conv0"]
    assert [c.node.name for c in unit.consumers] == ["head"]
    for j, op in enumerate(between):
        assert f"{op.lower()}0_{j}" in unit.tensors
    approximate = any(op in ("MaxPool", "GlobalMaxPool") for op in between)
    assert any("approximate" in note for note in unit.notes) == approximate


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("between", "block"), [((), 36), (("MaxPool",), 9)])
def test_flatten_then_gemm_consumer_owns_blocks_of_h_times_w_columns(trans_b, between, block):
    model = conv_net(channels=(3, 8), heads=("flatten_gemm",), trans_b=trans_b, between=between)
    unit = find(model)[0]["conv0"]
    [consumer] = unit.consumers
    assert (consumer.node.name, consumer.kind) == ("head", "gemm")
    assert consumer.block == block
    assert consumer.transposed == bool(trans_b)
    np.testing.assert_array_equal(consumer.weight.value, weights_of(model)["head.W"])


@pytest.mark.parametrize("target", [(0, -1), "explicit"])
def test_reshape_to_batch_by_features_then_matmul_is_a_consumer(target):
    model = conv_net(channels=(3, 8), heads=("reshape_matmul",), reshape_target=target)
    unit = find(model)[0]["conv0"]
    [consumer] = unit.consumers
    assert (consumer.node.name, consumer.kind, consumer.block) == ("head", "matmul", 36)
    assert not consumer.transposed


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("gemm", {"trans_b": 1}),
        ("gemm", {"trans_b": 0}),
        ("gemm", {"trans_b": 1, "alpha": 2.0, "beta": 0.5}),
        ("matmul", {}),
        ("matmul", {"bias_first": True}),
    ],
)
def test_dense_relu_dense_is_a_unit(kind, extra):
    model = dense_net(features=(12, 8), kind=kind, **extra)
    units, _ = find(model)
    unit, w = units["fc0"], weights_of(model)
    rows = w["fc0.W"] if extra.get("trans_b", 0) else w["fc0.W"].T
    alpha, beta = extra.get("alpha", 1.0), extra.get("beta", 1.0)
    assert unit.kind == kind and unit.channels == 8
    np.testing.assert_allclose(unit.arrays.weight, alpha * rows, rtol=1e-7)
    np.testing.assert_allclose(unit.arrays.bias, beta * w["fc0.b"], rtol=1e-7)
    [consumer] = unit.consumers
    assert (consumer.node.name, consumer.kind, consumer.block) == ("head", kind, 1)


def test_two_conv_consumers_of_one_activation_are_both_consumers():
    model = conv_net(channels=(3, 8), heads=("conv", "conv"))
    unit = find(model)[0]["conv0"]
    assert sorted(c.node.name for c in unit.consumers) == ["head0", "head1"]


def test_conv_and_flatten_gemm_consumers_of_one_activation_are_both_consumers():
    model = conv_net(channels=(3, 8), heads=("conv", "flatten_gemm"))
    unit = find(model)[0]["conv0"]
    assert sorted((c.node.name, c.kind) for c in unit.consumers) == [
        ("head0", "conv"),
        ("head1", "gemm"),
    ]


@pytest.mark.parametrize("storage", STORAGES)
def test_weights_in_constant_nodes_or_behind_identity_are_constants(storage):
    model = conv_net(channels=(3, 8), bn="kept", act="PRelu", storage=storage)
    units, _ = find(model)
    unit, w = units["conv0"], weights_of(model)
    raw = "conv0.W" if storage in ("initializer", "constant") else "conv0.W/raw"
    np.testing.assert_array_equal(unit.arrays.weight, w[raw].reshape(8, -1))
    np.testing.assert_array_equal(unit.arrays.bn.gamma, w[raw.replace("conv0.W", "bn0.scale")])
    assert unit.consumers[0].weight.value.shape == (5, 8, 3, 3)


# --------------------------------------------------------------------------- declined


@pytest.mark.parametrize("tensor", ["z0", "bn0", "act0", "maxpool0_0"])
def test_graph_output_inside_the_unit_is_declined(tensor):
    model = conv_net(channels=(3, 8), bn="kept", between=("MaxPool",))
    size = 3 if tensor.startswith("maxpool") else 6
    shape = ["N", 8, size, size]
    model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape))
    assert_declined(model, "conv0", "graph output", tensor)


def _residual_like(op: str) -> onnx.ModelProto:
    """``x -> conv0 -> relu -> conv1 (8 -> 8)`` and ``act0`` also read by ``op``."""
    g = GraphBuilder()
    rng = np.random.default_rng(0)
    x = g.input("x", ["N", 3, 6, 6])
    w0 = g.const("W0", rng.standard_normal((8, 3, 3, 3)).astype(np.float32))
    w1 = g.const("W1", rng.standard_normal((8, 8, 3, 3)).astype(np.float32))
    z = g.op("Conv", [x, w0], "z0", name="conv0", pads=[1] * 4)
    r = g.op("Relu", [z], "act0")
    c = g.op("Conv", [r, w1], "z1", name="conv1", pads=[1] * 4)
    if op == "Add":
        g.op("Add", [c, r], "y", name="residual")
        g.output("y", ["N", 8, 6, 6])
    elif op == "Concat":
        g.op("Concat", [r, c], "y", name="concat", axis=1)
        g.output("y", ["N", 16, 6, 6])
    else:
        g.op("Shape", [r], "s", name="shape")
        g.output("s", [4], TensorProto.INT64)
        g.output("z1", ["N", 8, 6, 6])
    return g.build()


@pytest.mark.parametrize("op", ["Add", "Concat", "Shape"])
def test_activation_read_by_another_op_is_declined(op):
    assert_declined(_residual_like(op), "conv0", op)


def test_weight_without_initializer_is_declined_as_not_constant():
    model = conv_net(channels=(3, 8))
    kept = [t for t in model.graph.initializer if t.name != "conv0.W"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.input.append(
        helper.make_tensor_value_info("conv0.W", TensorProto.FLOAT, [8, 3, 3, 3])
    )
    assert_declined(model, "conv0", "not a constant", "conv0.W")


def test_shared_producer_weight_is_declined():
    model = two_branches(share_producer=True, share_consumer=False)
    for name in ("conv_a", "conv_b"):
        assert_declined(model, name, "shared", "Wa")


def test_shared_consumer_weight_is_declined():
    model = two_branches(share_producer=False, share_consumer=True)
    for name in ("conv_a", "conv_b"):
        assert_declined(model, name, "shared", "Va")


def test_weight_shared_through_identity_is_declined():
    model = conv_net(channels=(3, 8), storage="identity")
    # a second reader of the raw initializer behind the Identity
    model.graph.node.append(helper.make_node("Identity", ["conv0.W/raw"], ["w_copy"]))
    model.graph.output.append(
        helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, [8, 3, 3, 3])
    )
    assert_declined(model, "conv0", "shared")


def _conv_group_chain(
    producer_group: int, consumer_group: int, n: int = 8, second_reader: bool = False
) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    c_in = n if producer_group > 1 else 3
    x = g.input("x", ["N", c_in, 6, 6])
    w0 = g.const("W0", rng.standard_normal((n, c_in // producer_group, 3, 3)).astype("f"))
    out = n if consumer_group == n else 6
    w1 = g.const("W1", rng.standard_normal((out, n // consumer_group, 3, 3)).astype("f"))
    z = g.op("Conv", [x, w0], "z0", name="conv0", pads=[1] * 4, group=producer_group)
    r = g.op("Relu", [z], "act0")
    g.op("Conv", [r, w1], "y", name="conv1", pads=[1] * 4, group=consumer_group)
    g.output("y", ["N", out, 6, 6])
    if second_reader:
        w2 = g.const("W2", rng.standard_normal((4, n, 1, 1)).astype("f"))
        g.output(g.op("Conv", [r, w2], "y2", name="conv2"), ["N", 4, 6, 6])
    return g.build()


def test_depthwise_consumer_beside_another_reader_is_declined():
    """A depthwise conv that is the sole reader makes a depthwise group (test_depthwise.py);
    beside another reader it is a consumer that cannot absorb a combination of channels."""
    assert_declined(_conv_group_chain(1, 8, second_reader=True), "conv0", "depthwise")


def test_grouped_consumer_is_declined():
    assert_declined(_conv_group_chain(1, 2), "conv0", "grouped")


def test_depthwise_producer_is_declined():
    assert_declined(_conv_group_chain(8, 1), "conv0", "depthwise", "producer")


@pytest.mark.parametrize(("act", "opset"), [("Sigmoid", 17), ("HardSwish", 14), ("Softsign", 13)])
def test_unsupported_activation_is_declined(act, opset):
    if act == "Softsign":  # Tanh until it became an entry of the op table (tests/test_ops.py)
        model = conv_net(channels=(3, 8), act=None, opset=opset)
        node = next(n for n in model.graph.node if n.name == "head")
        node.input[0] = "t0"
        model.graph.node.insert(1, helper.make_node("Softsign", ["z0"], ["t0"], name="softsign0"))
    else:
        model = conv_net(channels=(3, 8), act=act, opset=opset)
    assert_declined(model, "conv0", act)


@pytest.mark.parametrize(
    ("opset", "extra"),
    [
        (13, {"clip_min": -1.0}),
        (13, {"clip_min": -1.0, "clip_form": "input1"}),
        (13, {"clip_min": 0.5}),
        (13, {"clip_min": None}),  # no min input: min is -inf
        (9, {"clip_min": -1.0, "clip_form": "attr"}),
        (9, {"clip_min": None, "clip_form": "attr"}),  # no min attribute: min is -FLT_MAX
    ],
)
def test_clip_with_min_other_than_zero_is_declined(opset, extra):
    model = conv_net(channels=(3, 8), act="Clip", opset=opset, **extra)
    assert_declined(model, "conv0", "Clip", "min")


def test_flatten_with_axis_other_than_one_is_declined():
    model = conv_net(channels=(3, 8), heads=("flatten_gemm",))
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    flat.attribute[0].i = 2
    # keep the model valid: the Gemm now reads [N*8, 36]; give it a weight of that width
    w = weights_of(model)["head.W"][:, :36].copy()
    for i, t in enumerate(model.graph.initializer):
        if t.name == "head.W":
            model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(w, "head.W"))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N8"
    assert_declined(model, "conv0", "Flatten", "axis")


def test_reshape_keeping_channels_apart_is_declined():
    model = conv_net(
        channels=(3, 8), act="Relu", heads=("reshape_matmul",), reshape_target=(0, 8, -1)
    )
    # MatMul now reads [N, 8, 36]: give it a 36 x 5 weight so the model stays valid
    w = np.random.default_rng(0).standard_normal((36, 5)).astype(np.float32)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "head.W":
            model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(w, "head.W"))
    model.graph.output[0].type.tensor_type.shape.dim.insert(1, onnx.TensorShapeProto.Dimension())
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    assert_declined(model, "conv0", "Reshape")


def test_gemm_reading_a_spatial_tensor_without_flatten_is_declined():
    model = conv_net(channels=(3, 8), heads=("flatten_gemm",), between=("GlobalAveragePool",))
    units, _ = find(model)
    assert "conv0" in units  # with the Flatten: a unit
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    head = next(n for n in model.graph.node if n.name == "head")
    head.input[0] = flat.input[0]  # Gemm on [N, 8, 1, 1]: invalid, so only find_units
    model.graph.node.remove(flat)
    units, declined = list_units(model)
    assert "conv0" not in {u.name for u in units}
    assert "Gemm" in {d.name: d for d in declined}["conv0"].reason


def test_activation_read_inside_a_subgraph_is_declined():
    model = conv_net(channels=(3, 8))
    branches = {}
    for tag in ("then", "else"):
        out = f"{tag}_out"
        branches[f"{tag}_branch"] = helper.make_graph(
            [helper.make_node("Identity", ["act0"], [out])],
            tag,
            [],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 8, 6, 6])],
        )
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["o"], name="if", **branches))
    model.graph.output.append(helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 8, 6, 6]))
    assert_declined(model, "conv0", "subgraph", "If")
