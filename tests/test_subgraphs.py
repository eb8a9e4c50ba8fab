"""Models with control flow (issue 28, class 2): subgraphs that read outer-scope names, and
subgraphs that define the names the tool would create. ONNX's single static assignment holds
across subgraphs, so every name the tool adds must be new in the whole model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx import list_units, prune
from lbyl_onnx.graph.names import all_names, fresh_name

SIDE = 12


def _branch(name: str, reads: str, defines: str) -> onnx.GraphProto:
    """A branch that reads ``reads`` from the outer graph and defines ``defines``."""
    one = numpy_helper.from_array(np.array(1.5, np.float32), f"one_{name}")
    nodes = [
        helper.make_node("ReduceMean", [reads], [defines], keepdims=0),
        helper.make_node("Mul", [defines, f"one_{name}"], [f"out_{name}"]),
    ]
    out = helper.make_tensor_value_info(f"out_{name}", TensorProto.FLOAT, [])
    return helper.make_graph(nodes, name, [], [out], [one])


def _model(defines: tuple[str, str], reads: str = "x", bias3: bool = True) -> onnx.ModelProto:
    """x -> conv1 -> relu -> conv2 -> relu -> conv3 -> y, beside an If on the input's sum
    whose branches read ``reads`` (outer scope) and define the names ``defines``."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)

    conv3_inputs = ["r2", "w3", "b3"] if bias3 else ["r2", "w3"]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", conv3_inputs, ["y"], name="conv3"),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node(
            "If",
            ["cond"],
            ["z"],
            name="branchy",
            then_branch=_branch("then", reads, defines[0]),
            else_branch=_branch("else", reads, defines[1]),
        ),
    ]
    weights = [weight("w1", 8, 3, 3, 3), weight("b1", 8), weight("w2", 8, 8, 3, 3)]
    weights += [weight("b2", 8), weight("w3", 4, 8, 1, 1), weight("b3", 4)]
    weights.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    graph = helper.make_graph(
        nodes,
        "control_flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, SIDE, SIDE]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, []),
        ],
        [w for w in weights if bias3 or w.name != "b3"],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


# the names the tool would give conv2's new weight, the sensitivity's first map, and the
# bias it creates for a conv3 without one
CLASHES = [("w2_pruned", "lbyl_onnx.map.0"), ("conv3.bias_pruned", "r2_lbyl_mapped")]


@pytest.mark.parametrize("defines", CLASHES, ids=["weight-and-map", "bias-and-mapped"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"synthetic_calibration": False},
        {"method": "auto"},
        {"target_macs": 0.6},
        {"method": "nm", "synthetic_calibration": False},
    ],
    ids=["default", "closed-form", "auto", "budget", "nm"],
)
def test_subgraph_names_never_collide_with_the_tools(defines, options) -> None:
    """Whatever path runs (sequential synthetic calibration, closed form, the sensitivity's
    inserted maps, budgets), the pruned model is valid (full checker, onnxruntime), conv1
    and conv2 really lost channels, and the If output is the original's bit for bit."""
    model = _model(defines, bias3=defines[0] != "conv3.bias_pruned")
    pruned, report = prune(model, **options)
    onnx.checker.check_model(pruned, full_check=True)
    assert {r.name for r in report.units} == {"conv1", "conv2"}
    for prefix in ("w1", "w2"):
        weight = next(t for t in pruned.graph.initializer if t.name.startswith(prefix))
        assert weight.dims[0] < 8
    x = np.random.default_rng(1).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)
    y, z = _run(model, x)
    y_pruned, z_pruned = _run(pruned, x)
    assert y_pruned.shape == y.shape and np.isfinite(y_pruned).all()
    np.testing.assert_array_equal(z_pruned, z)


def test_a_unit_read_inside_a_subgraph_is_declined() -> None:
    """A branch reading a unit's channels from the outer scope is a reader the rewrite cannot
    fold into: that unit is declined with the If named, the others stay prunable."""
    units, declined = list_units(_model(("a", "b"), reads="r1"))
    assert [u.name for u in units] == ["conv2"]
    reasons = {d.name: d.reason for d in declined}
    assert "subgraph" in reasons["conv1"] and "branchy" in reasons["conv1"]


def test_all_names_reaches_nested_subgraphs() -> None:
    """Names defined only inside branches (and a Loop body nested in a branch) count."""
    inner = helper.make_graph(
        [helper.make_node("Identity", ["v"], ["deep_name"])],
        "body",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("deep_name", TensorProto.FLOAT, [])],
    )
    model = _model(("then_name", "else_name"))
    branch = model.graph.node[-1].attribute[0].g
    branch.node.append(helper.make_node("Loop", ["", ""], [], body=inner))
    names = all_names(model)
    assert {"then_name", "else_name", "deep_name", "out_then", "x", "w1", "conv1"} <= names
    assert fresh_name(names, "deep_name") == "deep_name2"
    assert fresh_name(names, "deep_name") == "deep_name3"
    assert fresh_name(names, "unused") == "unused"
