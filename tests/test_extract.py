"""Sub-models (graph/extract.py) and the recorder (runtime/record.py): a cut computes exactly
what the whole model computes, from its inputs or from a frontier, and nothing else; the
recorder batches a fixed-batch model as it batches a free one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from models import GraphBuilder, conv_net, random_feeds, two_branches
from onnx import helper

from lbyl_onnx import list_units
from lbyl_onnx.graph.extract import cut, needed_nodes, tensor_type
from lbyl_onnx.graph.index import GraphIndex
from lbyl_onnx.runtime import sessions
from lbyl_onnx.runtime.record import Recorder, record_statistics

MODELS = {
    "chain with BN": lambda: conv_net((3, 8, 8, 8), bn="kept"),
    "two heads": lambda: conv_net((3, 8, 8), heads=("conv", "flatten_gemm")),
    "weights in Constant nodes": lambda: conv_net((3, 8, 8), storage="constant_identity"),
    "IR 3, initializers listed as inputs": lambda: conv_net((3, 8, 8), opset=8, ir_version=3),
    "two branches": lambda: two_branches(False, False),
}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The oracle: the whole model, ``names`` added to its outputs."""
    full = onnx.ModelProto.FromString(model.SerializeToString())
    full.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return full


def _inner(model: onnx.ModelProto) -> list[str]:
    """Every tensor a node computes, in graph order."""
    return [name for node in model.graph.node for name in node.output]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs by name, in onnxruntime without graph optimisations (which would
    fuse the whole model and its cut differently)."""
    session = sessions.session(model)
    names = [o.name for o in model.graph.output]
    read = {i.name: feeds[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(names, read), strict=True))


@pytest.mark.parametrize("case", MODELS)
def test_a_cut_computes_exactly_what_the_whole_model_does(case: str) -> None:
    """Every inner tensor, cut alone and all together, equals (bit for bit) the whole
    model's value of it, on the same inputs; the model itself is not changed."""
    model = MODELS[case]()
    before = model.SerializeToString()
    feeds = random_feeds(model)
    tensors = _inner(model)
    expected = _run(_with_outputs(model, tensors), feeds)
    for chosen in [[t] for t in tensors] + [tensors[::-1]]:
        with cut(model, chosen) as sub:
            got = _run(sub, feeds)
        assert list(got) == chosen
        for name in chosen:
            np.testing.assert_array_equal(got[name], expected[name])
    assert model.SerializeToString() == before


@pytest.mark.parametrize("case", MODELS)
def test_a_frontier_cut_fed_the_models_values_reproduces_what_follows(case: str) -> None:
    """Cut at each inner tensor ``f`` (as a new input, typed from an example value) to the
    model's outputs: fed the whole model's ``f``, it gives the whole model's outputs, bit for
    bit."""
    model = MODELS[case]()
    feeds = random_feeds(model)
    outputs = [o.name for o in model.graph.output]
    values = _run(_with_outputs(model, _inner(model)), feeds)
    for frontier in _inner(model):
        if frontier in outputs:
            continue
        given = {frontier: tensor_type(values[frontier].dtype)}
        with cut(model, outputs, given) as sub:
            assert frontier in [i.name for i in sub.graph.input]
            assert frontier not in {t for n in sub.graph.node for t in n.output}
            got = _run(sub, {**feeds, frontier: values[frontier]})
        for name in outputs:
            np.testing.assert_array_equal(got[name], values[name])


def test_a_cut_holds_no_unused_branch_node_or_weight() -> None:
    """Of two independent branches, the cut to one holds only that branch's nodes,
    weights and input; the IR version and opsets are the model's."""
    model = two_branches(False, False)
    with cut(model, ["y_a"]) as sub:
        assert [n.name for n in sub.graph.node] == ["conv_a", "r_a", "head_a"]
        assert sorted(t.name for t in sub.graph.initializer) == ["Va", "Wa"]
        assert [i.name for i in sub.graph.input] == ["x"]
        assert [o.name for o in sub.graph.output] == ["y_a"]
        assert sub.ir_version == model.ir_version
        assert list(sub.opset_import) == list(model.opset_import)
    with cut(model, ["r_b"], {"z_b": tensor_type(np.float32)}) as sub:  # nothing but the Relu
        assert [n.name for n in sub.graph.node] == ["r_b"]
        assert len(sub.graph.initializer) == 0
        assert [i.name for i in sub.graph.input] == ["z_b"]


def test_an_in_place_cut_keeps_every_node_and_restores_the_model() -> None:
    """In place, the tensors are appended to the outputs for the block: the nodes are the
    model's own (references into it stay valid, nothing is copied), the bytes the same
    after."""
    model = conv_net((3, 8, 8), heads=("conv", "flatten_gemm"))
    before = model.SerializeToString()
    first = model.graph.node[0]
    with cut(model, ["z0", "act0"], in_place=True) as sub:
        assert sub is model
        assert model.graph.node[0] is first
        assert [o.name for o in model.graph.output] == ["y0", "y1", "z0", "act0"]
        assert sessions.session(model).run(["act0"], random_feeds(model))[0].shape == (3, 8, 6, 6)
        refused = pytest.raises(ValueError, match="frontier")
        with refused, cut(model, ["y0"], {"z0": tensor_type(np.float32)}, in_place=True):
            pass
    assert model.graph.node[0] is first
    assert model.SerializeToString() == before


def test_a_subgraph_read_keeps_its_producer() -> None:
    """An ``If`` whose branches read outer tensors by name: the walk reaches their producers
    through the subgraphs (and no further), and the cut runs."""
    g = GraphBuilder()
    x = g.input("x", ["N", 4])
    g.op("Neg", [x], "inner")
    g.op("Add", [x, x], "twice")
    g.op("Relu", [x], "unused")
    g.const("cond", np.array(True))
    model = g.build()

    def branch(name: str, op: str, tensor: str) -> onnx.GraphProto:
        node = helper.make_node(op, [tensor], [f"{name}_out"])
        return helper.make_graph(
            [node], name, [], [helper.make_empty_tensor_value_info(node.output[0])]
        )

    node = helper.make_node(
        "If",
        ["cond"],
        ["routed"],
        then_branch=branch("then", "Identity", "inner"),
        else_branch=branch("else", "Abs", "twice"),
    )
    model.graph.node.append(node)
    names = [n.output[0] for n in needed_nodes(GraphIndex(model), ["routed"])]
    assert names == ["inner", "twice", "routed"]
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    with cut(model, ["routed"]) as sub:
        np.testing.assert_array_equal(_run(sub, feeds)["routed"], -feeds["x"])


def test_a_fixed_batch_records_the_moments_of_a_free_one() -> None:
    """The same weights with the batch fixed at 4 and free: on 16 samples the moments agree;
    on 19, the fixed model drops the 3 that do not fill a batch (the free one, given the
    first 16, agrees again)."""
    fixed, free = conv_net((3, 8, 8), batch=4), conv_net((3, 8, 8), batch="N")
    units, _ = list_units(free)
    samples = np.random.default_rng(5).standard_normal((19, 3, 6, 6)).astype(np.float32)
    for count, seen in ((16, 16), (19, 16)):
        got = record_statistics(fixed, list_units(fixed)[0], {"x": samples[:count]})
        want = record_statistics(free, units, {"x": samples[:seen]})
        for unit in units:
            assert got[unit.name].count == want[unit.name].count == seen * 36
            np.testing.assert_allclose(got[unit.name].mean, want[unit.name].mean, rtol=1e-6)
            np.testing.assert_allclose(got[unit.name].outer, want[unit.name].outer, rtol=1e-6)


def test_the_recorder_batches_as_the_model_fixes() -> None:
    """Batches of the requested size on a free model, of the fixed size otherwise (the
    remainder dropped); too few samples for a fixed batch is a usage error; each batch's
    tensors are the whole model's on those samples."""
    fixed, free = conv_net((3, 8, 8), batch=4), conv_net((3, 8, 8), batch="N")
    recorders = [Recorder.cut(m, ["act0"]) for m in (fixed, free)]
    assert sessions.fixed_batch(recorders[0].session) == 4
    assert sessions.fixed_batch(recorders[1].session) is None
    assert recorders[0].slices(11, 3) == [slice(0, 4), slice(4, 8)]
    assert recorders[1].slices(11, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 11)]
    with pytest.raises(Exception, match="batch is 4"):
        recorders[0].slices(3, 16)
    data = {"x": np.random.default_rng(6).standard_normal((8, 3, 6, 6)).astype(np.float32)}
    whole = _run(_with_outputs(free, ["act0"]), data)["act0"]
    got = np.concatenate([b["act0"] for b in recorders[0].batches(data, [slice(0, 4)] * 2)])
    np.testing.assert_array_equal(got, np.concatenate([whole[:4], whole[:4]]))
