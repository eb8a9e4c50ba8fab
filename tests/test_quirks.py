"""Exporter quirks: each reproduced by a small model, checked against a NumPy-built oracle."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from models import GraphBuilder, conv_net, random_filters, weights_of
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx import MethodOptions, list_units, prune
from lbyl_onnx.graph.index import attribute
from lbyl_onnx.runtime.sessions import session

C0, N, OUT, HW = 3, 8, 5, 6


def _conv_chain(
    middle: str, arrays: dict[str, np.ndarray], opset: int = 17, spatial: int | None = None
) -> onnx.ModelProto:
    """x -> Conv(W) -> <middle> -> Relu -> consumer, where middle is one of
    ``add_bias`` (Add of [1,N,1,1]), ``mul_add`` (Mul then Add of [1,N,1,1]),
    ``bn`` (BatchNormalization, optionally with the old ``spatial`` attribute),
    and the consumer is a 1x1 Conv, or GlobalAveragePool -> Squeeze -> Gemm for ``gap``."""
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "W"], ["z"], "conv0", pads=[1, 1, 1, 1])]
    tensor = "z"
    if middle in ("add_bias", "gap"):
        nodes.append(helper.make_node("Add", [tensor, "b"], ["zb"], "bias_add"))
        tensor = "zb"
    elif middle == "mul_add":
        nodes.append(helper.make_node("Mul", [tensor, "scale"], ["zs"], "bn_mul"))
        nodes.append(helper.make_node("Add", ["zs", "shift"], ["zb"], "bn_add"))
        tensor = "zb"
    elif middle == "bn":
        attrs = {"epsilon": 1e-5} if spatial is None else {"epsilon": 1e-5, "spatial": spatial}
        nodes.append(
            helper.make_node(
                "BatchNormalization", [tensor, "g", "beta", "m", "v"], ["zb"], "bn", **attrs
            )
        )
        tensor = "zb"
    nodes.append(helper.make_node("Relu", [tensor], ["r"], "relu"))
    if middle == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", ["r"], ["p"], "gap"))
        if opset >= 13:
            inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
            nodes.append(helper.make_node("Squeeze", ["p", "axes"], ["s"], "squeeze"))
        else:
            nodes.append(helper.make_node("Squeeze", ["p"], ["s"], "squeeze", axes=[2, 3]))
        nodes.append(helper.make_node("Gemm", ["s", "V", "c"], ["y"], "head", transB=1))
        out_shape = ["N", OUT]
    else:
        nodes.append(helper.make_node("Conv", ["r", "V"], ["y"], "head"))
        out_shape = ["N", OUT, HW, HW]
    graph = helper.make_graph(
        nodes,
        "quirk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C0, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 12 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _arrays(middle: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = {"W": rng.standard_normal((N, C0, 3, 3)).astype(np.float32)}
    a["W"] *= np.linspace(0.2, 2.0, N, dtype=np.float32)[:, None, None, None]  # distinct norms
    if middle in ("add_bias", "gap"):
        a["b"] = rng.standard_normal((1, N, 1, 1)).astype(np.float32)
    if middle == "mul_add":
        a["scale"] = rng.uniform(0.5, 1.5, (1, N, 1, 1)).astype(np.float32)
        a["shift"] = rng.standard_normal((1, N, 1, 1)).astype(np.float32)
    if middle == "bn":
        a["g"] = rng.uniform(0.5, 1.5, N).astype(np.float32)
        a["beta"] = rng.standard_normal(N).astype(np.float32)
        a["m"] = rng.standard_normal(N).astype(np.float32)
        a["v"] = rng.uniform(0.5, 2, N).astype(np.float32)
    if middle == "gap":
        a["V"] = rng.standard_normal((OUT, N)).astype(np.float32)
        a["c"] = rng.standard_normal(OUT).astype(np.float32)
    else:
        a["V"] = rng.standard_normal((OUT, N, 1, 1)).astype(np.float32)
    return a


def _delete(arrays: dict[str, np.ndarray], kept: np.ndarray) -> dict[str, np.ndarray]:
    """The hand-pruned arrays: producer rows, per-channel vectors on their channel axis,
    the consumer's input channels."""
    out = {}
    for name, value in arrays.items():
        if name == "W":
            out[name] = value[kept]
        elif name in ("b", "scale", "shift"):
            out[name] = value[:, kept]
        elif name in ("g", "beta", "m", "v"):
            out[name] = value[kept]
        elif name == "V":
            out[name] = value[:, kept]
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(
    ("middle", "opset"),
    [("add_bias", 17), ("mul_add", 17), ("gap", 11), ("gap", 13), ("bn", 7)],
)
def test_quirk_is_a_unit_and_prune_matches_numpy_deletion(middle: str, opset: int) -> None:
    arrays = _arrays(middle)
    model = _conv_chain(middle, arrays, opset, spatial=1 if middle == "bn" else None)
    units, declined = list_units(model)
    assert [u.name for u in units] == ["conv0"], declined
    pruned, _ = prune(model, ratio=0.5, method="prune", check=False)
    onnx.checker.check_model(pruned, full_check=True)
    kept = np.sort(np.argsort(-np.linalg.norm(arrays["W"].reshape(N, -1), axis=1))[: N // 2])
    expected = _conv_chain(middle, _delete(arrays, kept), opset, 1 if middle == "bn" else None)
    x = np.random.default_rng(1).standard_normal((2, C0, HW, HW)).astype(np.float32)
    np.testing.assert_allclose(
        session(pruned).run(None, {"x": x})[0],
        session(expected).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_mul_add_scale_shift_is_folded_like_batchnorm() -> None:
    """A removed filter that is, after the Mul/Add scale and shift, an exact positive multiple
    of a kept one is restored exactly by Neuron Merging (the scale is folded into wt)."""
    arrays = _arrays("mul_add")
    scale, shift = arrays["scale"].reshape(-1), arrays["shift"].reshape(-1)
    # folded filter of channel 0 = 0.05 * folded filter of channel 7 (weights and biases)
    arrays["W"][0] = 0.05 * scale[7] * arrays["W"][7] / scale[0]
    arrays["shift"][0, 0, 0, 0] = 0.05 * shift[7]
    norms = np.linalg.norm(arrays["W"].reshape(N, -1), axis=1)
    assert norms.argmin() == 0  # the L2 criterion removes channel 0
    model = _conv_chain("mul_add", arrays)
    x = np.random.default_rng(2).standard_normal((2, C0, HW, HW)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    pruned, _ = prune(model, ratio=1 / N, method="nm", check=False)
    assert [i.dims for i in pruned.graph.initializer if i.name.startswith("W")] == [
        [N - 1, C0, 3, 3]
    ]
    np.testing.assert_allclose(
        session(pruned).run(None, {"x": x})[0], reference, rtol=1e-4, atol=1e-4
    )


def test_batchnorm_with_per_element_statistics_is_declined() -> None:
    model = _conv_chain("bn", _arrays("bn"), opset=7, spatial=0)
    units, declined = list_units(model)
    assert units == []
    assert any("spatial=0" in d.reason for d in declined)


def _nhwc_head(arrays: dict[str, np.ndarray], computed: bool, act: str | None = "Relu"):
    """tf2onnx's flatten: x -> Conv(N) -> [Relu] -> Transpose(0,2,3,1) -> Reshape -> MatMul,
    the Reshape target either constant ``[-1, h*w*N]`` or computed as
    ``Cast(Concat(Slice(Cast(Gather(Shape(t), [0,3,1,2])), 0:1), [h*w*N]))``."""
    n = arrays["W"].shape[0]
    inits = {k: v for k, v in arrays.items()}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["z"], "conv0", pads=[1, 1, 1, 1])]
    tensor = "z"
    if act:
        nodes.append(helper.make_node(act, ["z"], ["r"], "act0"))
        tensor = "r"
    nodes.append(helper.make_node("Transpose", [tensor], ["t"], "to_nhwc", perm=[0, 2, 3, 1]))
    if computed:
        inits["perm"] = np.array([0, 3, 1, 2], np.int64)
        inits["starts"], inits["ends"] = np.array([0], np.int64), np.array([1], np.int64)
        inits["columns"] = np.array([HW * HW * n], np.int32)
        nodes += [
            helper.make_node("Shape", ["t"], ["shape"], "shape"),
            helper.make_node("Gather", ["shape", "perm"], ["nchw"], "gather"),
            helper.make_node("Cast", ["nchw"], ["nchw32"], "cast32", to=TensorProto.INT32),
            helper.make_node("Slice", ["nchw32", "starts", "ends"], ["batch"], "batch"),
            helper.make_node("Concat", ["batch", "columns"], ["target32"], "concat", axis=0),
            helper.make_node("Cast", ["target32"], ["target"], "cast64", to=TensorProto.INT64),
        ]
    else:
        inits["target"] = np.array([-1, HW * HW * n], np.int64)
    nodes.append(helper.make_node("Reshape", ["t", "target"], ["flat"], "flatten"))
    nodes.append(helper.make_node("MatMul", ["flat", "V"], ["y"], "head"))
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C0, HW, HW])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _nhwc_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, C0, 3, 3)).astype(np.float32)
    w *= np.linspace(0.2, 2.0, N, dtype=np.float32)[:, None, None, None]
    return {
        "W": w,
        "b": rng.standard_normal(N).astype(np.float32),
        "V": rng.standard_normal((HW * HW * N, OUT)).astype(np.float32),
    }


@pytest.mark.parametrize("computed", [False, True], ids=["constant_target", "computed_target"])
def test_channels_last_flatten_matches_numpy_deletion(computed: bool) -> None:
    arrays = _nhwc_arrays()
    model = _nhwc_head(arrays, computed)
    units, declined = list_units(model)
    assert [u.name for u in units] == ["conv0"], declined
    pruned, _ = prune(model, ratio=0.5, method="prune", check=False)
    kept = np.sort(np.argsort(-np.linalg.norm(arrays["W"].reshape(N, -1), axis=1))[: N // 2])
    # channels-last columns: column p * N + c belongs to channel c
    v = arrays["V"].reshape(HW * HW, N, OUT)[:, kept].reshape(-1, OUT)
    expected = _nhwc_head({"W": arrays["W"][kept], "b": arrays["b"][kept], "V": v}, computed)
    x = np.random.default_rng(3).standard_normal((2, C0, HW, HW)).astype(np.float32)
    got, want = session(pruned).run(None, {"x": x})[0], session(expected).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_channels_last_flatten_folds_compensation_exactly_in_a_linear_chain() -> None:
    """No activation, the two removed filters exact combinations of kept ones: LBYL restores
    the output through the interleaved columns."""
    arrays = _nhwc_arrays(seed=4)
    w, b = arrays["W"], arrays["b"]
    w[0] = 0.05 * (w[4] - 0.5 * w[6])
    b[0] = 0.05 * (b[4] - 0.5 * b[6])
    w[1] = 0.04 * (w[5] + w[7])
    b[1] = 0.04 * (b[5] + b[7])
    model = _nhwc_head(arrays, computed=True, act=None)
    x = np.random.default_rng(5).standard_normal((2, C0, HW, HW)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    restored, _ = prune(model, ratio=0.25, options=MethodOptions(ridge=1e-9), check=False)
    np.testing.assert_allclose(
        session(restored).run(None, {"x": x})[0], reference, rtol=1e-3, atol=1e-3
    )
    plain, _ = prune(model, ratio=0.25, method="prune", check=False)
    assert np.abs(session(plain).run(None, {"x": x})[0] - reference).max() > 1e-2


# --------------------------------------------------------------------------- activations


DECLINED_ACTIVATIONS = {
    # form: (opset, the op the reason must name: the first that reads conv0's output)
    "HardSwish": (14, "HardSwish"),
    "HardSigmoid": (17, "HardSigmoid"),
    "Sigmoid": (17, "Sigmoid"),
    "SiLU": (17, "Sigmoid"),  # x * Sigmoid(x)
    "HardSwish_as_HardSigmoid": (17, "HardSigmoid"),  # x * HardSigmoid(x, 1/6, 1/2)
    "HardSwish_as_Clip": (17, "Add"),  # x * Clip(x + 3, 0, 6) / 6 (torch before opset 14)
}


def _declined_activation_model(form: str, opset: int) -> onnx.ModelProto:
    """``x -> conv0 -> <form> -> conv1 -> Relu -> head -> y``: conv0's activation is one the
    tool does not support; conv1 is an ordinary unit, so pruning does change the model."""
    rng = np.random.default_rng(11)
    g = GraphBuilder(opset)
    x = g.input("x", ["N", C0, HW, HW])
    w0 = g.const("W0", random_filters(rng, N, C0 * 9, (C0, 3, 3)))
    b0 = g.const("b0", rng.standard_normal(N).astype(np.float32))
    z = g.op("Conv", [x, w0, b0], "z", name="conv0", pads=[1] * 4)
    if form in ("HardSwish", "HardSigmoid", "Sigmoid"):
        a = g.op(form, [z], "a", name="act")
    elif form == "SiLU":
        a = g.op("Mul", [z, g.op("Sigmoid", [z], "s", name="sigmoid")], "a", name="mul")
    elif form == "HardSwish_as_HardSigmoid":
        gate = g.op("HardSigmoid", [z], "h", name="gate", alpha=1 / 6, beta=0.5)
        a = g.op("Mul", [z, gate], "a", name="mul")
    elif form == "HardSwish_as_Clip":
        three = g.const("three", np.array(3.0, np.float32))
        zero, six = (
            g.const("zero", np.array(0.0, np.float32)),
            g.const("six", np.array(6.0, np.float32)),
        )
        shifted = g.op("Add", [z, three], "t", name="add3")
        clipped = g.op("Clip", [shifted, zero, six], "c", name="relu6")
        a = g.op("Div", [g.op("Mul", [z, clipped], "m", name="mul"), six], "a", name="div6")
    else:
        raise ValueError(form)
    w1 = g.const("W1", random_filters(rng, N, N * 9, (N, 3, 3)))
    z1 = g.op("Conv", [a, w1], "z1", name="conv1", pads=[1] * 4)
    r1 = g.op("Relu", [z1], "r1", name="relu1")
    g.op("Conv", [r1, g.const("V", random_filters(rng, OUT, N, (N, 1, 1)))], "y", name="head")
    g.output("y", ["N", OUT, HW, HW])
    model = g.build()
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("form", list(DECLINED_ACTIVATIONS))
def test_unsupported_activation_is_declined_and_left_untouched(form: str) -> None:
    opset, op = DECLINED_ACTIVATIONS[form]
    model = _declined_activation_model(form, opset)
    units, declined = list_units(model)
    assert [u.name for u in units] == ["conv1"], declined
    reasons = {d.name: d.reason for d in declined}
    assert re.search(rf"\b{op}\b", reasons["conv0"]), reasons["conv0"]

    pruned, report = prune(model, ratio=0.3)
    assert report.validation.status == "passed", report.validation.message
    onnx.checker.check_model(pruned, full_check=True)
    # conv0 and every node of its activation, before conv1, are exactly as they were ...
    first = [n.name for n in model.graph.node].index("conv1")
    assert list(pruned.graph.node)[:first] == list(model.graph.node)[:first]
    before, after = weights_of(model), weights_of(pruned)
    for node in list(model.graph.node)[:first]:
        for name in node.input:
            if name in before:
                np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    # ... and conv1, which reads them, lost output channels but none of its input channels
    conv1 = next(n for n in pruned.graph.node if n.name == "conv1")
    assert after[conv1.input[1]].shape == (int(N * 0.7), N, 3, 3)


# --------------------------------------------------------------------------- old BatchNormalization


@pytest.mark.parametrize("opset", [7, 8])
def test_batchnorm_with_spatial_1_is_exact_at_ratio_0_and_validates_at_0_3(opset: int) -> None:
    model = _conv_chain("bn", _arrays("bn"), opset, spatial=1)
    assert [u.name for u in list_units(model)[0]] == ["conv0"]
    x = np.random.default_rng(6).standard_normal((3, C0, HW, HW)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]

    same, report = prune(model, ratio=0.0)
    assert report.validation.status == "passed", report.validation.message
    np.testing.assert_allclose(session(same).run(None, {"x": x})[0], reference, atol=1e-5)

    pruned, report = prune(model, ratio=0.3)
    assert report.validation.status == "passed", report.validation.message
    onnx.checker.check_model(pruned, full_check=True)
    assert pruned.ir_version == model.ir_version
    assert pruned.opset_import == model.opset_import
    bn = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    assert attribute(bn, "spatial") == 1
    kept = int(N * 0.7)
    shapes = {name: value.shape for name, value in weights_of(pruned).items()}
    assert [shapes[name] for name in bn.input[1:]] == [(kept,)] * 4


def _opset6_batchnorm(arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ``bn`` chain at opset 6 and IR 3: BatchNormalization-6 with ``is_test=1`` and
    ``spatial=1``, every initializer listed as a graph input (what IR 3 requires)."""
    model = _conv_chain("bn", arrays, opset=7, spatial=1)
    model.opset_import[0].version = 6
    model.ir_version = 3
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("is_test", 1))
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in model.graph.initializer
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _as_opset7(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model at opset 7: BatchNormalization-7 is BatchNormalization-6 in test mode
    without the ``is_test`` attribute."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    converted.opset_import[0].version = 7
    for node in converted.graph.node:
        kept = [a for a in node.attribute if a.name != "is_test"]
        del node.attribute[:]
        node.attribute.extend(kept)
    return converted


def test_opset6_batchnorm_with_is_test_is_pruned_and_keeps_its_format() -> None:
    """onnxruntime has no kernel for BatchNormalization-6, so such a model cannot run there and
    validation is 'unavailable'. What is checked instead: the checker passes, the unit is
    found, opset 6, IR 3 and ``is_test`` are kept, and, converted to opset 7 (the same
    computation), the pruned model matches the hand-pruned one in onnxruntime."""
    arrays = _arrays("bn")
    model = _opset6_batchnorm(arrays)
    with pytest.raises(Exception, match="BatchNormalization"):
        session(model)  # the premise: onnxruntime cannot run it (else validate it instead)
    units, _ = list_units(model)
    assert [(u.name, u.bn.name) for u in units] == [("conv0", "bn")]

    pruned, report = prune(model, ratio=0.5, method="prune")
    assert report.validation.status == "unavailable"
    assert "does not load" in report.validation.message
    onnx.checker.check_model(pruned, full_check=True)
    assert (pruned.ir_version, [(o.domain, o.version) for o in pruned.opset_import]) == (
        3,
        [("", 6)],
    )
    bn = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    assert (attribute(bn, "is_test"), attribute(bn, "spatial")) == (1, 1)
    listed = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in pruned.graph.input
    }
    for init in pruned.graph.initializer:
        assert listed[init.name] == list(init.dims), init.name

    kept = np.sort(np.argsort(-np.linalg.norm(arrays["W"].reshape(N, -1), axis=1))[: N // 2])
    expected = _conv_chain("bn", _delete(arrays, kept), 7, spatial=1)
    x = np.random.default_rng(8).standard_normal((2, C0, HW, HW)).astype(np.float32)
    np.testing.assert_allclose(
        session(_as_opset7(pruned)).run(None, {"x": x})[0],
        session(expected).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------------- opsets and IR


OPSET_IR = [
    *[
        (opset, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
        for opset in range(7, 23)
    ],
    (7, 10),  # an old opset in a recent file
    (9, 6),
    (13, 10),
    (18, 10),
]


@pytest.mark.parametrize(("opset", "ir"), OPSET_IR, ids=[f"opset{o}-ir{i}" for o, i in OPSET_IR])
def test_every_opset_and_ir_version_is_kept_and_validated(opset: int, ir: int) -> None:
    """Conv -> Relu -> Conv -> Relu -> Flatten -> Gemm (ops whose form did not change from
    opset 7 on); IR 3 lists every initializer as a graph input, as it must."""
    model = conv_net(channels=(3, 8, 6), heads=("flatten_gemm",), opset=opset, ir_version=ir)
    assert model.ir_version == ir
    pruned, report = prune(model, ratio=0.3)
    assert pruned.ir_version == ir
    assert [(o.domain, o.version) for o in pruned.opset_import] == [("", opset)]
    onnx.checker.check_model(pruned, full_check=True)
    assert report.validation.status == "passed", report.validation.message
    assert [(u.name, u.channels_after) for u in report.units] == [("conv0", 5), ("conv1", 4)]
    # plain pruning against the NumPy-deleted model, at this opset and IR
    plain, _ = prune(model, ratio=0.3, method="prune", check=False)
    expected = conv_net(
        channels=(3, 8, 6), heads=("flatten_gemm",), opset=opset, ir_version=ir, delete=0.3
    )
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(
        session(plain).run(None, {"x": x})[0],
        session(expected).run(None, {"x": x})[0],
        rtol=1e-5,
        atol=1e-5,
    )


# --------------------------------------------------------------------------- dynamic dims


@pytest.mark.parametrize(
    "dims",
    [["batch", C0, "H", "W"], [None, C0, None, None], ["batch", C0, None, "W"]],
    ids=["symbolic", "unknown", "mixed"],
)
def test_symbolic_and_unknown_dimensions_are_kept(dims: list) -> None:
    model = conv_net(channels=(3, 8, 6), heads=("conv",))
    out_dims = [dims[0], 5, dims[2], dims[3]]
    for entry, wanted in ((model.graph.input[0], dims), (model.graph.output[0], out_dims)):
        for dim, value in zip(entry.type.tensor_type.shape.dim, wanted, strict=True):
            dim.Clear()
            if isinstance(value, str):
                dim.dim_param = value
            elif value is not None:
                dim.dim_value = value
    onnx.checker.check_model(model, full_check=True)
    # the default (synthetic calibration at 224 x 224 for the unknown sides) once; the
    # closed form for the other spellings of a free dimension (about 18 s less each)
    default = dims[2] == "H"
    pruned, report = prune(model, ratio=0.3, synthetic_calibration=None if default else False)
    assert report.mode.startswith("calibrated on" if default else "closed form")
    assert report.validation.status == "passed", report.validation.message
    assert len(report.units) == 2
    for before, after in (
        (model.graph.input, pruned.graph.input),
        (model.graph.output, pruned.graph.output),
    ):
        assert [(v.name, v.type) for v in after] == [(v.name, v.type) for v in before]
    unknown = [
        d for d in pruned.graph.input[0].type.tensor_type.shape.dim if not d.HasField("dim_value")
    ]
    assert len(unknown) == 3
    assert [d.dim_param for d in unknown] == [
        d if isinstance(d, str) else "" for d in dims if d != C0
    ]
    for shape in ((2, C0, 7, 9), (1, C0, 4, 4)):  # still runs at any size
        x = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
        assert session(pruned).run(None, {"x": x})[0].shape == (shape[0], 5, *shape[2:])
