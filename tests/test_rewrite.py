"""End-to-end properties of the rewrite (LBYL.md section 6), through ``lbyl_onnx.prune``.

Oracles, all independent of the code under test:

- the original model, run in onnxruntime (ratio 0, exact restoration);
- the same model with channels deleted by hand in NumPy (``models.conv_net(..., delete=r)``:
  L2 norms computed there, rows, biases, BN vectors, PRelu slopes and the consumers' input
  channels or ``h*w`` column blocks sliced there), run in onnxruntime (plain pruning);
- weights built so that a removed filter is an exact positive multiple, or an exact linear
  combination, of kept ones (then Neuron Merging / LBYL must restore the output).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from models import (
    STORAGES,
    GraphBuilder,
    conv_net,
    dense_net,
    kept_by_l2,
    random_feeds,
    two_branches,
    weights_of,
)
from onnx import TensorProto, helper, numpy_helper

from lbyl_onnx import MethodOptions, prune
from lbyl_onnx.runtime.sessions import session

METHODS = ("prune", "nm", "lbyl", "lbyl-nn")
EXACT = MethodOptions(ridge=1e-9)
"""LBYL with a vanishing ridge: exact when the removed filters are in the kept span."""


# --------------------------------------------------------------------------- helpers


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def pruned(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, object]:
    """``prune`` without its own validation, the methods in closed form (the oracles here
    are theirs) unless told; the output must pass the full checker."""
    options.setdefault("synthetic_calibration", False)
    out, report = prune(model, check=False, **options)
    onnx.checker.check_model(out, full_check=True)
    return out, report


def rel_error(candidate: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Largest relative L2 error over the outputs."""
    return max(
        float(np.linalg.norm(c.astype(np.float64) - r) / np.linalg.norm(r.astype(np.float64)))
        for c, r in zip(candidate, reference, strict=True)
    )


def assert_outputs_close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def parameter_count(model: onnx.ModelProto) -> int:
    return sum(int(v.size) for v in weights_of(model).values() if v.dtype.kind == "f")


def unread_constants(model: onnx.ModelProto) -> list[str]:
    """Initializers, Constant and Identity outputs that nothing reads (orphans)."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    read |= {o.name for o in graph.output} | {i.name for i in graph.input}
    orphans = [t.name for t in graph.initializer if t.name not in read]
    for node in graph.node:
        if node.op_type in ("Constant", "Identity"):
            orphans += [o for o in node.output if o not in read]
    return orphans


def conv_rows(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1)


# --------------------------------------------------------------------------- 1. ratio 0

RATIO_ZERO_MODELS = {
    "conv": lambda: conv_net(channels=(3, 8, 6)),
    "conv_bn_kept": lambda: conv_net(channels=(3, 8, 6), bn="kept"),
    "conv_bn_fused": lambda: conv_net(channels=(3, 8, 6), bn="fused"),
    "conv_flatten_gemm": lambda: conv_net(channels=(3, 8), bn="kept", heads=("flatten_gemm",)),
    "conv_reshape_matmul": lambda: conv_net(channels=(3, 8), heads=("reshape_matmul",)),
    "gemm": lambda: dense_net(features=(12, 8, 6)),
    "gemm_transb0": lambda: dense_net(features=(12, 8, 6), trans_b=0, alpha=1.5, beta=0.5),
    "matmul": lambda: dense_net(features=(12, 8, 6), kind="matmul"),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(RATIO_ZERO_MODELS))
def test_ratio_zero_is_identity(name, method):
    model = RATIO_ZERO_MODELS[name]()
    feeds = random_feeds(model)
    out, report = pruned(model, ratio=0.0, method=method)
    assert report.units, "no unit found: the property would hold vacuously"
    assert all(u.channels_after == u.channels_before for u in report.units)
    assert_outputs_close(run(out, feeds), run(model, feeds), atol=1e-6)


# --------------------------------------------------------------------------- 2. prune == NumPy

DELETION_CASES = {
    "conv_chain_bias": lambda **k: conv_net(channels=(3, 8, 6), **k),
    "conv_bn_kept": lambda **k: conv_net(channels=(3, 8, 6), bn="kept", **k),
    "conv_bn_kept_no_bias": lambda **k: conv_net(channels=(3, 8), bn="kept", bias=False, **k),
    "conv_bn_fused": lambda **k: conv_net(channels=(3, 8, 6), bn="fused", **k),
    "conv_leaky_maxpool": lambda **k: conv_net(
        channels=(3, 8), act="LeakyRelu", between=("MaxPool",), **k
    ),
    "conv_clip_dropout": lambda **k: conv_net(
        channels=(3, 8), act="Clip", between=("Dropout", "Identity"), **k
    ),
    "flatten_gemm_transb1": lambda **k: conv_net(
        channels=(3, 8), bn="kept", between=("MaxPool",), heads=("flatten_gemm",), **k
    ),
    "flatten_gemm_transb0": lambda **k: conv_net(
        channels=(3, 8), heads=("flatten_gemm",), trans_b=0, **k
    ),
    "gap_flatten_gemm": lambda **k: conv_net(
        channels=(3, 8, 6), between=("GlobalAveragePool",), heads=("flatten_gemm",), **k
    ),
    "reshape_matmul": lambda **k: conv_net(channels=(3, 8), heads=("reshape_matmul",), **k),
    "prelu_c11": lambda **k: conv_net(channels=(3, 8, 6), act="PRelu", slope_shape="c11", **k),
    "prelu_1c11": lambda **k: conv_net(channels=(3, 8), act="PRelu", slope_shape="1c11", **k),
    "prelu_scalar": lambda **k: conv_net(channels=(3, 8), act="PRelu", slope_shape="scalar", **k),
    "two_heads_conv_and_gemm": lambda **k: conv_net(
        channels=(3, 8), heads=("conv", "flatten_gemm"), **k
    ),
    "gemm_chain": lambda **k: dense_net(features=(12, 8, 6), **k),
    "gemm_transb0_alpha_beta": lambda **k: dense_net(
        features=(12, 8, 6), trans_b=0, alpha=1.5, beta=0.5, **k
    ),
    "gemm_prelu_c": lambda **k: dense_net(features=(12, 8), act="PRelu", slope_shape="c", **k),
    "gemm_prelu_1c": lambda **k: dense_net(features=(12, 8), act="PRelu", slope_shape="1c", **k),
    "matmul_add_chain": lambda **k: dense_net(features=(12, 8, 6), kind="matmul", **k),
    "matmul_bias_first": lambda **k: dense_net(
        features=(12, 8), kind="matmul", bias_first=True, **k
    ),
    "matmul_sequence": lambda **k: dense_net(features=(12, 8, 6), kind="matmul", sequence=5, **k),
    "gemm_bias_1xn": lambda **k: dense_net(features=(12, 8, 6), bias_shape="1n", **k),
    "matmul_bias_1xn": lambda **k: dense_net(features=(12, 8), kind="matmul", bias_shape="1n", **k),
}


def assert_prune_matches_deletion(build, ratio: float = 0.5, **extra) -> onnx.ModelProto:
    model, expected = build(**extra), build(delete=ratio, **extra)
    feeds = random_feeds(model)
    out, report = pruned(model, ratio=ratio, method="prune")
    assert report.units and all(u.channels_after < u.channels_before for u in report.units)
    assert_outputs_close(run(out, feeds), run(expected, feeds), atol=1e-5)
    assert parameter_count(out) == parameter_count(expected)
    assert rel_error(run(out, feeds), run(model, feeds)) > 1e-3  # something was removed
    return out


@pytest.mark.parametrize("name", list(DELETION_CASES))
def test_prune_matches_numpy_deletion(name):
    assert_prune_matches_deletion(DELETION_CASES[name])


def _explicit_reshape(first: int):
    """Conv -> Relu -> Reshape to ``[first, C*h*w]`` (written out) -> MatMul + Add."""

    def build(**k):
        features = (4 if "delete" in k else 8) * 36
        return conv_net(
            channels=(3, 8), heads=("reshape_matmul",), reshape_target=(first, features), **k
        )

    return build


@pytest.mark.parametrize("first", [-1, 0])
def test_prune_matches_numpy_deletion_through_explicit_reshape(first):
    assert_prune_matches_deletion(_explicit_reshape(first))


def _conv1d(delete: bool) -> onnx.ModelProto:
    """Conv1d (8 channels, length 7) -> PRelu (slope [C, 1]) -> Flatten -> Gemm."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    slope = rng.uniform(0.1, 0.3, (8, 1)).astype(np.float32)
    v = rng.standard_normal((5, 8 * 7)).astype(np.float32)
    if delete:
        kept = kept_by_l2(w, 0.5)
        w, b, slope = w[kept], b[kept], slope[kept]
        v = v.reshape(5, 8, 7)[:, kept].reshape(5, -1)
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 7])
    z = g.op("Conv", [x, g.const("W", w), g.const("b", b)], "z", name="conv0", pads=[1, 1])
    r = g.op("PRelu", [z, g.const("slope", slope)], "r")
    f = g.op("Flatten", [r], "flat")
    g.op("Gemm", [f, g.const("V", v)], "y", name="head", transB=1)
    g.output("y", ["N", 5])
    return g.build()


def test_prune_matches_numpy_deletion_in_conv1d():
    assert_prune_matches_deletion(lambda delete=None: _conv1d(delete is not None))


def test_deletion_oracle_removes_lowest_l2_filters():
    """The oracle itself: the kept filters are those of largest norm, sliced consistently."""
    model, expected = conv_net(channels=(3, 8)), conv_net(channels=(3, 8), delete=0.5)
    w, e = weights_of(model), weights_of(expected)
    norms = np.linalg.norm(conv_rows(w["conv0.W"]), axis=1)
    kept = np.sort(np.argsort(norms)[4:])
    np.testing.assert_array_equal(e["conv0.W"], w["conv0.W"][kept])
    np.testing.assert_array_equal(e["head.W"], w["head.W"][:, kept])
    assert norms[kept].min() > np.delete(norms, kept).max()


# --------------------------------------------------------------------------- 3. multiples


def positive_multiples(
    rng: np.random.Generator, n: int, d: int, with_bn: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None, np.ndarray]:
    """Raw filters ``n x d``, biases and BN where every odd channel is a positive multiple
    (factor in [0.3, 0.7] of the raw filter) of the preceding even one, including the folded
    bias: ``wt_j = c wt_k`` and ``bt_j = c bt_k`` with ``c > 0``. Returns the kept indices
    the L2 criterion must choose (the even ones, norms in [1, 1.2])."""
    w = rng.standard_normal((n, d))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    w *= rng.uniform(1.0, 1.2, (n, 1))
    b = 0.3 * rng.standard_normal(n)
    bn = None
    if with_bn:
        bn = {
            "scale": rng.uniform(0.5, 1.5, n),
            "B": 0.2 * rng.standard_normal(n),
            "mean": 0.2 * rng.standard_normal(n),
            "var": rng.uniform(0.5, 1.5, n),
        }
    rho = bn["scale"] / np.sqrt(bn["var"] + 1e-5) if bn else np.ones(n)
    for j in range(1, n, 2):
        k, a = j - 1, rng.uniform(0.3, 0.7)
        w[j] = a * w[k]
        c = a * rho[j] / rho[k]  # folded factor
        bt_k = (bn["B"][k] if bn else 0.0) + rho[k] * (b[k] - (bn["mean"][k] if bn else 0.0))
        if bn:
            bn["B"][j] = c * bt_k - rho[j] * (b[j] - bn["mean"][j])
        else:
            b[j] = c * bt_k
    f32 = {key: v.astype(np.float32) for key, v in bn.items()} if bn else None
    return w.astype(np.float32), b.astype(np.float32), f32, np.arange(0, n, 2)


def multiples_model(kind: str, seed: int = 3, **extra) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    if kind == "dense":
        w, b, _, kept = positive_multiples(rng, 8, 12, with_bn=False)
        model = dense_net(features=(12, 8), params={"fc0.W": w, "fc0.b": b}, **extra)
    else:
        with_bn = kind == "conv_bn"
        w, b, bn, kept = positive_multiples(rng, 8, 27, with_bn)
        params = {"conv0.W": w.reshape(8, 3, 3, 3), "conv0.b": b}
        if bn:
            params.update({f"bn0.{key}": v for key, v in bn.items()})
        model = conv_net(channels=(3, 8), bn="kept" if with_bn else "none", params=params, **extra)
    raw = weights_of(model)["fc0.W" if kind == "dense" else "conv0.W"]
    np.testing.assert_array_equal(kept_by_l2(raw, 0.5), kept)  # the multiples are removed
    return model


@pytest.mark.parametrize("kind", ["conv", "conv_bn", "dense"])
def test_positive_multiple_is_restored_exactly(kind):
    model = multiples_model(kind)
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    errors = {}
    methods = (("nm", MethodOptions()), ("lbyl", EXACT), ("lbyl-nn", EXACT), ("prune", EXACT))
    for method, options in methods:
        out, report = pruned(model, ratio=0.5, method=method, options=options)
        assert [u.channels_after for u in report.units] == [4]
        errors[method] = rel_error(run(out, feeds), reference)
    assert errors["nm"] < 1e-4, errors
    assert errors["lbyl"] < 1e-4, errors
    assert errors["lbyl-nn"] < 1e-4, errors
    assert errors["prune"] > 0.05, errors  # removing the multiples does change the output


# --------------------------------------------------------------------------- 4. linear combos


def linear_combinations(
    rng: np.random.Generator, n: int, d: int, with_bn: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray] | None]:
    """Raw filters and biases (and BN) whose folded odd filters and biases are exact linear
    combinations (mixed signs) of the folded even ones; the even ones have the larger raw
    norms, so the L2 criterion keeps them."""
    half = n // 2
    wt = np.zeros((n, d))
    bt = np.zeros(n)
    kept, removed = np.arange(0, n, 2), np.arange(1, n, 2)
    base = rng.standard_normal((half, d))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    wt[kept] = base * rng.uniform(2.0, 2.5, (half, 1))
    bt[kept] = 0.5 * rng.standard_normal(half)
    coefficients = 0.2 * rng.standard_normal((half, half))
    wt[removed] = coefficients @ wt[kept]
    bt[removed] = coefficients @ bt[kept]
    if not with_bn:
        return wt.astype(np.float32), bt.astype(np.float32), None
    bn = {
        "scale": rng.uniform(0.9, 1.1, n),
        "B": 0.2 * rng.standard_normal(n),
        "mean": 0.2 * rng.standard_normal(n),
        "var": rng.uniform(0.9, 1.1, n),
    }
    rho = bn["scale"] / np.sqrt(bn["var"] + 1e-5)
    w = wt / rho[:, None]
    b = bn["mean"] + (bt - bn["B"]) / rho
    return (
        w.astype(np.float32),
        b.astype(np.float32),
        {k: v.astype(np.float32) for k, v in bn.items()},
    )


def combinations_model(bn: bool = False, seed: int = 4, **extra) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w, b, stats = linear_combinations(rng, 8, 27, bn)
    params = {"conv0.W": w.reshape(8, 3, 3, 3), "conv0.b": b}
    if stats:
        params.update({f"bn0.{key}": v for key, v in stats.items()})
    model = conv_net(channels=(3, 8), act=None, bn="kept" if bn else "none", params=params, **extra)
    np.testing.assert_array_equal(kept_by_l2(w, 0.5), np.arange(0, 8, 2))
    return model


def assert_lbyl_restores(model: onnx.ModelProto) -> None:
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    out, report = pruned(model, ratio=0.5, method="lbyl", options=EXACT)
    assert report.units and all(u.channels_after == 4 for u in report.units)
    assert rel_error(run(out, feeds), reference) < 1e-4
    plain, _ = pruned(model, ratio=0.5, method="prune")
    assert rel_error(run(plain, feeds), reference) > 0.05  # the removed channels mattered


@pytest.mark.parametrize("bn", [False, True])
def test_linear_combination_is_restored_exactly_in_linear_chain(bn):
    assert_lbyl_restores(combinations_model(bn=bn))


def test_linear_combination_is_restored_exactly_in_linear_gemm_chain():
    rng = np.random.default_rng(5)
    w, b, _ = linear_combinations(rng, 8, 12, with_bn=False)
    assert_lbyl_restores(dense_net(features=(12, 8), act=None, params={"fc0.W": w, "fc0.b": b}))


# --------------------------------------------------------------------------- 5. consumers


@pytest.mark.parametrize("method", ["nm", "lbyl", "lbyl-nn"])
@pytest.mark.parametrize(
    ("heads", "between"),
    [
        (("conv", "conv"), ()),
        (("conv", "flatten_gemm"), ()),
        # max over a window commutes with a positive factor: exact for multiples too
        (("conv", "flatten_gemm"), ("MaxPool",)),
    ],
)
def test_every_consumer_absorbs_the_compensation(heads, between, method):
    model = multiples_model("conv_bn", heads=heads, between=between)
    feeds = random_feeds(model, batch=4)
    reference = run(model, feeds)
    out, _ = pruned(model, ratio=0.5, method=method, options=EXACT)
    outputs = run(out, feeds)
    assert len(outputs) == 2
    for got, want in zip(outputs, reference, strict=True):
        assert rel_error([got], [want]) < 1e-4
    plain, _ = pruned(model, ratio=0.5, method="prune")
    for got, want in zip(run(plain, feeds), reference, strict=True):
        assert rel_error([got], [want]) > 0.05


@pytest.mark.parametrize(
    ("between", "heads"),
    [
        (("AveragePool",), ("conv",)),
        (("AveragePool",), ("flatten_gemm",)),
        (("GlobalAveragePool",), ("conv",)),
        (("GlobalAveragePool",), ("flatten_gemm",)),
        (("GlobalAveragePool",), ("reshape_matmul",)),
        ((), ("flatten_gemm",)),
    ],
)
def test_average_pools_and_flatten_are_exact_in_linear_chain(between, heads):
    assert_lbyl_restores(combinations_model(between=between, heads=heads))


# --------------------------------------------------------------------------- 6. formats

FORMATS = [
    (opset, ir)
    for opset in (11, 13, 17, 21)
    for ir in (7, 8, 9, 10)
    if ir >= helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
]


def io_signature(model: onnx.ModelProto) -> list[tuple]:
    """Names, element types and (for real inputs and outputs) shapes, in order."""
    weights = {t.name for t in model.graph.initializer}

    def entry(v, with_shape):
        t = v.type.tensor_type
        return (v.name, t.elem_type, str(t.shape) if with_shape else None)

    return [entry(v, v.name not in weights) for v in model.graph.input] + [
        entry(v, True) for v in model.graph.output
    ]


@pytest.mark.parametrize(("opset", "ir"), FORMATS)
def test_opset_and_ir_version_are_preserved(opset, ir):
    model = conv_net(
        channels=(3, 8, 6), bn="kept", heads=("flatten_gemm",), between=("MaxPool",),
        opset=opset, ir_version=ir,
    )  # fmt: skip
    before = model.SerializeToString()
    out, report = pruned(model, ratio=0.5, method="lbyl")
    assert model.SerializeToString() == before, "the input model was modified"
    assert out.ir_version == ir
    assert [(o.domain, o.version) for o in out.opset_import] == [("", opset)]
    assert io_signature(out) == io_signature(model)
    assert len(report.units) == 2
    for batch in (1, 5):
        feeds = random_feeds(model, batch=batch)
        assert run(out, feeds)[0].shape == (batch, 5)


def test_symbolic_batch_dimension_survives():
    model = conv_net(channels=(3, 8), bn="kept", heads=("reshape_matmul",), batch="N")
    out, _ = pruned(model, ratio=0.5, method="lbyl")
    for entry in [*out.graph.input, *out.graph.output]:
        dim = entry.type.tensor_type.shape.dim[0]
        assert dim.dim_param == "N" and not dim.HasField("dim_value")
    assert io_signature(out) == io_signature(model)


@pytest.mark.parametrize("method", METHODS)
def test_original_model_is_not_modified(method):
    for model in (
        conv_net(channels=(3, 8, 6), bn="kept", act="PRelu", storage="constant_identity"),
        conv_net(channels=(3, 8), opset=8, ir_version=3, heads=("flatten_gemm",)),
        dense_net(features=(12, 8, 6), kind="matmul"),
    ):
        before = model.SerializeToString()
        pruned(model, ratio=0.5, method=method)
        assert model.SerializeToString() == before


def test_new_weight_names_are_unique():
    model = conv_net(channels=(3, 8, 6), bn="kept", act="PRelu", heads=("conv", "flatten_gemm"))
    # a tensor already called like the tool's first choice of a fresh name
    model.graph.node.append(helper.make_node("Identity", ["y0"], ["conv0.W_pruned"]))
    model.graph.output.append(
        helper.make_tensor_value_info("conv0.W_pruned", TensorProto.FLOAT, ["N", 5, 6, 6])
    )
    original = weights_of(model)
    out, _ = pruned(model, ratio=0.5, method="lbyl")
    graph = out.graph
    names = [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]
    assert len(names) == len(set(names)), Counter(names).most_common(3)
    for name, value in weights_of(out).items():
        if name in original:  # a kept name must hold its original value
            np.testing.assert_array_equal(value, original[name])
    assert unread_constants(out) == []
    feeds = random_feeds(model)
    assert len(run(out, feeds)) == 3


@pytest.mark.parametrize(("opset", "ir"), [(8, 3), (9, 4)])
def test_initializers_listed_as_inputs_keep_correct_shapes(opset, ir):
    def build(**k):
        return conv_net(
            channels=(3, 8, 6), bn="kept", act="Clip", between=("Dropout",),
            heads=("flatten_gemm",), opset=opset, ir_version=ir, list_initializers=True, **k,
        )  # fmt: skip

    model = build()
    listed_before = [i.name for i in model.graph.input]
    assert {t.name for t in model.graph.initializer} <= set(listed_before)
    out = assert_prune_matches_deletion(build)
    assert out.ir_version == ir
    assert [i.name for i in out.graph.input] == listed_before
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in out.graph.input}
    for init in out.graph.initializer:
        assert init.name in shapes, f"{init.name} is no longer listed as an input"
        assert shapes[init.name] == list(init.dims), init.name
    assert shapes["conv0.W"] == [4, 3, 3, 3] and shapes["conv1.W"] == [3, 4, 3, 3]
    assert io_signature(out)[0] == io_signature(model)[0]
    # and lbyl runs through the same path
    out, _ = pruned(model, ratio=0.5, method="lbyl")
    assert run(out, random_feeds(model))[0].shape == (3, 5)


# --------------------------------------------------------------------------- 7. stale shapes


def actual_shapes(model: onnx.ModelProto, names: list[str], feeds) -> dict[str, tuple]:
    """The shapes onnxruntime produces for intermediate tensors ``names``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            info = probe.graph.output.add()
            info.name = name
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    wanted = [o.name for o in probe.graph.output]
    values = session(probe).run(wanted, feeds)
    return {name: v.shape for name, v in zip(wanted, values, strict=True)}


STALE_CASES = {
    "conv_bn_pool_gemm": lambda: conv_net(
        channels=(3, 8, 6), bn="kept", act="PRelu", between=("MaxPool",), heads=("flatten_gemm",)
    ),
    "conv_constant_weights": lambda: conv_net(
        channels=(3, 8), bn="kept", heads=("reshape_matmul",), storage="constant"
    ),
    "conv_identity_weights": lambda: conv_net(channels=(3, 8, 6), storage="identity"),
    "matmul": lambda: dense_net(features=(12, 8, 6), kind="matmul", between=("Dropout",)),
}


@pytest.mark.parametrize("name", list(STALE_CASES))
def test_recorded_shapes_are_updated_after_pruning(name):
    model = onnx.shape_inference.infer_shapes(STALE_CASES[name]())
    produced = {o for n in model.graph.node for o in n.output}
    recorded = {v.name for v in model.graph.value_info}
    assert {"z0", "act0"} <= recorded
    out, _ = pruned(model, ratio=0.5, method="lbyl")
    feeds = random_feeds(model)
    out_produced = {o for n in out.graph.node for o in n.output}
    infos = [v for v in out.graph.value_info if v.name in out_produced]
    # every recorded intermediate that still exists keeps a record
    still_there = (recorded & produced & out_produced) - {o.name for o in out.graph.output}
    assert still_there <= {v.name for v in infos}
    actual = actual_shapes(out, [v.name for v in infos], feeds)
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        got = actual[info.name]
        assert len(dims) == len(got), info.name
        for d, g in zip(dims, got, strict=True):
            if d.HasField("dim_value"):
                assert d.dim_value == g, f"{info.name}: recorded {dims} but runs as {got}"
    # the pruned tensors really changed: channel dim recorded as the pruned count
    channel = {v.name: v.type.tensor_type.shape.dim for v in infos}
    assert channel["z0"][1].dim_value == 4 and actual["z0"][1] == 4
    assert channel["act0"][1].dim_value == 4


@pytest.mark.parametrize("storage", ["constant", "identity"])
def test_no_shape_record_is_left_for_removed_tensors(storage):
    model = onnx.shape_inference.infer_shapes(conv_net(channels=(3, 8), storage=storage))
    assert "conv0.W" in {v.name for v in model.graph.value_info}
    out, _ = pruned(model, ratio=0.5, method="prune")
    existing = {o for n in out.graph.node for o in n.output} | {
        t.name for t in out.graph.initializer
    }
    assert [v.name for v in out.graph.value_info if v.name not in existing] == []


# --------------------------------------------------------------------------- 8. constant weights


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_constant_and_identity_weights_are_rewritten(storage, kind):
    if kind == "conv":

        def build(**k):
            return conv_net(
                channels=(3, 8, 6), bn="kept", act="PRelu", heads=("flatten_gemm",),
                storage=storage, **k,
            )  # fmt: skip

    else:

        def build(**k):
            return dense_net(features=(12, 8, 6), kind="matmul", storage=storage, **k)

    out = assert_prune_matches_deletion(build)
    assert unread_constants(out) == []
    expected = build(delete=0.5)

    def ops(model: onnx.ModelProto) -> Counter:
        return Counter(n.op_type for n in model.graph.node if n.op_type != "Identity")

    assert ops(out) == ops(expected)  # Constant nodes included: one per weight, as built
    # rewritten weights are written as plain constants: an Identity is left only in front of
    # the one weight that did not change (the head's bias)
    identities = [n.output[0] for n in out.graph.node if n.op_type == "Identity"]
    assert identities == (["head.b"] if "identity" in storage else [])


# --------------------------------------------------------------------------- 9. shared weights


@pytest.mark.parametrize(("share_producer", "share_consumer"), [(True, False), (False, True)])
@pytest.mark.parametrize("method", ["prune", "lbyl"])
def test_shared_weight_is_left_untouched(share_producer, share_consumer, method):
    model = two_branches(share_producer, share_consumer)
    feeds = random_feeds(model)
    out, report = pruned(model, ratio=0.5, method=method)
    assert report.units == []
    assert {d.name for d in report.declined} >= {"conv_a", "conv_b"}
    assert all("shared" in d.reason for d in report.declined if d.name.startswith("conv"))
    assert_outputs_close(run(out, feeds), run(model, feeds), atol=0)
    assert weights_of(out).keys() == weights_of(model).keys()
    for name, value in weights_of(model).items():
        np.testing.assert_array_equal(weights_of(out)[name], value)


def test_shared_weight_does_not_block_other_units():
    """A model with a shared-weight pair and a separate prunable chain: only the chain changes,
    exactly as NumPy deletion says."""
    rng = np.random.default_rng(7)
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 6, 6])
    shared = g.const("S", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    for tag in ("a", "b"):
        g.op("Conv", [x, shared], f"y_{tag}", name=f"shared_{tag}", pads=[1] * 4)
        g.output(f"y_{tag}", ["N", 4, 6, 6])
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    v = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    kept = kept_by_l2(w0, 0.5)

    def chain(builder, w, head):
        z = builder.op("Conv", [x, builder.const("W0", w)], "z0", name="conv0", pads=[1] * 4)
        r = builder.op("Relu", [z], "act0")
        builder.op("Conv", [r, builder.const("V", head)], "y", name="head", pads=[1] * 4)
        builder.output("y", ["N", 5, 6, 6])

    chain(g, w0, v)
    model = g.build()
    out, report = pruned(model, ratio=0.5, method="prune")
    assert [u.name for u in report.units] == ["conv0"]
    # expected: the same model with W0 and V sliced by hand
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    for i, t in enumerate(expected.graph.initializer):
        new = {"W0": w0[kept], "V": v[:, kept]}.get(t.name)
        if new is not None:
            expected.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, t.name))
    feeds = random_feeds(model)
    assert_outputs_close(run(out, feeds), run(expected, feeds), atol=1e-5)
    np.testing.assert_array_equal(weights_of(out)["S"], weights_of(model)["S"])


# --------------------------------------------------------------------------- bugs found


def _prelu_on_width(delete: bool) -> onnx.ModelProto:
    """Conv (4 channels) on a 4x4 image, then PRelu with slope shape [4]: by NumPy
    broadcasting that slope runs along the LAST axis (width), not the channels."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * np.array(
        [1.0, 0.2, 2.0, 0.3], np.float32
    ).reshape(4, 1, 1, 1)
    v = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    slope = np.array([0.1, 0.5, 0.9, 0.3], np.float32)
    if delete:
        kept = kept_by_l2(w, 0.5)
        w, v = w[kept], v[:, kept]  # the slope is per width: unchanged
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 4, 4])
    z = g.op("Conv", [x, g.const("W", w)], "z", name="conv0", pads=[1] * 4)
    r = g.op("PRelu", [z, g.const("slope", slope)], "r")
    g.op("Conv", [r, g.const("V", v)], "y", name="head")
    g.output("y", ["N", 2, 4, 4])
    return g.build()


def test_prelu_slope_broadcast_along_width_is_not_sliced_as_channels():
    model, expected = _prelu_on_width(False), _prelu_on_width(True)
    feeds = random_feeds(model)
    out, report = pruned(model, ratio=0.5, method="prune")
    if report.units:
        assert_outputs_close(run(out, feeds), run(expected, feeds), atol=1e-5)
    else:
        assert_outputs_close(run(out, feeds), run(model, feeds), atol=0)
