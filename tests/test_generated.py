"""Property-based tests of ``lbyl_onnx.prune`` over randomly generated Conv chains.

A chain is ``x [batch, C0, H, W] -> (Conv -> [BN] -> [act] -> [between]) * L -> head``, with
weights stored as initializers or Constant nodes (optionally read through Identity),
random kernels, strides, dilations, padding (explicit pads, none, ``auto_pad`` NOTSET,
SAME_UPPER, VALID), biases, BN statistics of both signs, activations (Relu, LeakyRelu,
Clip(0, 6) in input form, PRelu with a ``[C, 1, 1]`` slope), pools, Dropout/Identity, and a
head: one or two Conv consumers, ``GlobalAveragePool -> Flatten -> Gemm`` or
``Flatten -> MatMul``. Opsets 11/13/17/21 with a compatible IR version.

Oracles are independent of the code under test: the original model in onnxruntime (ratio 0,
finiteness) and, for plain pruning, the same chain rebuilt here with the channels deleted by
hand (L2 norms of the producers' raw filters computed here, ties kept at the lower index).
Only *which* producers are units is taken from the tool (``list_units``).

``GENERATED_EXAMPLES`` overrides the example count (default 500, 20000 with the ``long``
hypothesis profile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, event, given, note, settings
from hypothesis import strategies as st
from models import STORAGES, GraphBuilder, _activation, conv_net, random_filters

from lbyl_onnx import list_units, prune

_LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
EXAMPLES = int(os.environ.get("GENERATED_EXAMPLES", "20000" if _LONG else "500"))
DECLINE_EXAMPLES = max(20, EXAMPLES // 5)

IR_FOR_OPSET = {11: (6, 7), 13: (7, 8), 17: (8,), 21: (10,)}
ACTIVATIONS = (None, "Relu", "LeakyRelu", "Clip", "PRelu")
CLIP = (0.0, 6.0, "input")  # Clip(0, 6) with scalar min/max inputs (opset >= 11)
METHODS = ("prune", "nm", "lbyl", "lbyl-nn")

ort.set_default_logger_severity(3)


# --------------------------------------------------------------------------- specification


@dataclass(frozen=True)
class Layer:
    """One Conv of the chain and what follows it."""

    out: int
    kernel: int
    stride: int
    dilation: int
    pad_mode: str  # pads | none | NOTSET | SAME_UPPER | VALID
    pads: tuple[int, int, int, int]
    bias: bool
    bn: bool
    act: str | None  # one of ACTIVATIONS, or Sigmoid (declined models)
    between: str | None  # MaxPool | AveragePool | Dropout | Identity
    pool_stride: int = 2
    tie: str = "none"  # none | dup | multiple: a filter equal to / a multiple of another
    residual: bool = False  # Add(activation, block input): declined models only


@dataclass(frozen=True)
class Chain:
    opset: int
    ir: int
    batch: int | str
    c0: int
    h: int
    w: int
    layers: tuple[Layer, ...]
    head: str  # conv | two_conv | gap_gemm | flatten_matmul
    head_out: int
    head_kernels: tuple[int, ...]
    trans_b: int
    head_bias: bool
    infer: bool  # record value_info from shape inference (as exporters do)
    seed: int
    storage: str = "initializer"  # where weights live (tests/models.py STORAGES)
    epsilon: float = 1e-5
    listed: bool = False  # initializers also listed as graph inputs (old exporters)


def conv_size(size: int, layer: Layer, axis: int) -> int:
    """Output length of a Conv along one spatial axis (``axis`` 0: H, 1: W)."""
    k, s, d = layer.kernel, layer.stride, layer.dilation
    if layer.pad_mode == "SAME_UPPER":
        return -(-size // s)
    begin, end = (0, 0) if layer.pad_mode in ("none", "VALID") else layer.pads[axis::2]
    return (size + begin + end - d * (k - 1) - 1) // s + 1


def pool_size(size: int, layer: Layer) -> int:
    if layer.between in ("MaxPool", "AveragePool"):
        return (size - 2) // layer.pool_stride + 1
    return size


def final_size(chain: Chain) -> tuple[int, int]:
    h, w = chain.h, chain.w
    for layer in chain.layers:
        h, w = conv_size(h, layer, 0), conv_size(w, layer, 1)
        h, w = pool_size(h, layer), pool_size(w, layer)
    return h, w


@st.composite
def chains(draw, kind: str = "plain") -> Chain:
    """A random chain; ``kind`` ``plain`` (prunable) or ``declined`` (Sigmoid / residual)."""
    opset = draw(st.sampled_from(sorted(IR_FOR_OPSET)))
    ir = draw(st.sampled_from(IR_FOR_OPSET[opset]))
    batch = draw(st.one_of(st.just("N"), st.integers(1, 3)))
    c0, h0, w0 = draw(st.integers(1, 4)), draw(st.integers(5, 12)), draw(st.integers(5, 12))
    h, w = h0, w0
    layers = []
    channels = c0
    for _ in range(draw(st.integers(1, 3))):
        residual = kind == "declined" and draw(st.booleans())
        kernel = draw(st.sampled_from([1, 3]) if residual else st.integers(1, 3))
        dilation = draw(st.integers(1, 2))
        if residual:  # same size, same channels: the Add reads the block input
            out, stride = channels, 1
            pad_mode = draw(st.sampled_from(["pads", "SAME_UPPER"]))
            pads = (dilation * (kernel // 2),) * 4
        else:
            out, stride = draw(st.integers(1, 32)), draw(st.integers(1, 2))
            pad_mode = draw(st.sampled_from(["pads", "none", "NOTSET", "SAME_UPPER", "VALID"]))
            pads = tuple(draw(st.integers(0, kernel - 1)) for _ in range(4))
        layer = Layer(
            out=out,
            kernel=kernel,
            stride=stride,
            dilation=dilation,
            pad_mode=pad_mode,
            pads=pads,
            bias=draw(st.booleans()),
            bn=draw(st.booleans()),
            act=None,
            between=None,
            tie=draw(st.sampled_from(["none", "none", "dup", "multiple"])),
            residual=residual,
        )
        if min(conv_size(h, layer, 0), conv_size(w, layer, 1)) < 1:
            layer = replace(layer, pad_mode="SAME_UPPER")  # always at least 1
        if layer.pad_mode == "SAME_UPPER":  # onnxruntime: no dilation with auto_pad SAME
            layer = replace(layer, dilation=1)
        h, w = conv_size(h, layer, 0), conv_size(w, layer, 1)
        if kind == "plain":
            act = draw(st.sampled_from(ACTIVATIONS))
        elif residual:
            act = draw(st.sampled_from((*ACTIVATIONS, "Sigmoid")))
        else:
            act = "Sigmoid"
        betweens = [None, "Dropout", "Identity"]
        if min(h, w) >= 2:
            betweens += ["MaxPool", "AveragePool"]
        between = None if residual else draw(st.sampled_from(betweens))
        layer = replace(layer, act=act, between=between, pool_stride=draw(st.integers(1, 2)))
        h, w = pool_size(h, layer), pool_size(w, layer)
        layers.append(layer)
        channels = out
    head = draw(st.sampled_from(["conv", "two_conv", "gap_gemm", "flatten_matmul"]))
    heads = 2 if head == "two_conv" else 1
    storage, listed, infer = (
        draw(st.sampled_from(STORAGES)),
        draw(st.booleans()),
        draw(st.booleans()),
    )
    return Chain(
        opset=opset,
        ir=ir,
        batch=batch,
        c0=c0,
        h=h0,
        w=w0,
        layers=tuple(layers),
        head=head,
        head_out=draw(st.integers(1, 8)),
        head_kernels=tuple(draw(st.integers(1, 3)) for _ in range(heads)),
        trans_b=draw(st.integers(0, 1)),
        head_bias=draw(st.booleans()),
        infer=infer,
        seed=draw(st.integers(0, 2**32 - 1)),
        storage=storage,
        epsilon=draw(st.sampled_from([1e-5, 1e-3])),
        listed=listed,
    )


# --------------------------------------------------------------------------- arrays and model


def make_arrays(chain: Chain) -> dict[str, np.ndarray]:
    """Seeded weights for every constant of ``chain``, by name."""
    rng = np.random.default_rng(chain.seed)
    a: dict[str, np.ndarray] = {}
    channels = chain.c0
    for i, layer in enumerate(chain.layers):
        k, n = layer.kernel, layer.out
        wts = random_filters(rng, n, channels * k * k, (channels, k, k))
        if layer.tie != "none" and n >= 2:
            src, dst = rng.choice(n, size=2, replace=False)
            factor = 1.0 if layer.tie == "dup" else rng.uniform(0.25, 4.0)
            wts[dst] = (wts[src] * factor).astype(np.float32)
        a[f"conv{i}.W"] = wts
        a[f"conv{i}.b"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        sign = rng.choice([-1.0, 1.0], size=n)
        a[f"bn{i}.scale"] = (sign * rng.uniform(0.2, 2.0, n)).astype(np.float32)
        a[f"bn{i}.B"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        a[f"bn{i}.mean"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        a[f"bn{i}.var"] = rng.uniform(0.1, 2.0, n).astype(np.float32)
        a[f"act{i}.slope"] = rng.uniform(-0.3, 0.5, (n, 1, 1)).astype(np.float32)
        channels = n
    hs, ws = final_size(chain)
    out = chain.head_out
    for j, k in enumerate(chain.head_kernels):
        if chain.head in ("conv", "two_conv"):
            a[f"head{j}.W"] = random_filters(rng, out, channels * k * k, (channels, k, k))
    if chain.head == "gap_gemm":
        rows = random_filters(rng, out, channels, (channels,))
        a["head0.W"] = rows if chain.trans_b else np.ascontiguousarray(rows.T)
    if chain.head == "flatten_matmul":
        rows = random_filters(rng, out, channels * hs * ws, (channels * hs * ws,))
        a["head0.W"] = np.ascontiguousarray(rows.T)
    for j in range(len(chain.head_kernels)):
        a[f"head{j}.b"] = (0.2 * rng.standard_normal(out)).astype(np.float32)
    return a


def build(chain: Chain, a: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The ONNX model of ``chain`` with the constants ``a`` (their shapes set the widths)."""
    g = GraphBuilder(chain.opset, chain.ir, chain.storage)
    x = g.input("x", [chain.batch, chain.c0, chain.h, chain.w])
    for i, layer in enumerate(chain.layers):
        block_input = x
        k, s, d = layer.kernel, layer.stride, layer.dilation
        attrs = {"kernel_shape": [k, k], "strides": [s, s], "dilations": [d, d]}
        if layer.pad_mode == "pads":
            attrs["pads"] = list(layer.pads)
        elif layer.pad_mode == "NOTSET":
            attrs.update(auto_pad="NOTSET", pads=list(layer.pads))
        elif layer.pad_mode in ("SAME_UPPER", "VALID"):
            attrs["auto_pad"] = layer.pad_mode
        inputs = [x, g.const(f"conv{i}.W", a[f"conv{i}.W"])]
        if layer.bias:
            inputs.append(g.const(f"conv{i}.b", a[f"conv{i}.b"]))
        x = g.op("Conv", inputs, f"z{i}", name=f"conv{i}", **attrs)
        if layer.bn:
            stats = [g.const(f"bn{i}.{key}", a[f"bn{i}.{key}"]) for key in BN_KEYS]
            x = g.op("BatchNormalization", [x, *stats], f"bn{i}", epsilon=chain.epsilon)
        x = _activation(g, layer.act, x, i, a, CLIP)
        if layer.residual:
            x = g.op("Add", [x, block_input], f"res{i}")
        if layer.between in ("MaxPool", "AveragePool"):
            stride = [layer.pool_stride] * 2
            x = g.op(layer.between, [x], f"pool{i}", kernel_shape=[2, 2], strides=stride)
        elif layer.between is not None:
            x = g.op(layer.between, [x], f"{layer.between.lower()}{i}")
    hs, ws = final_size(chain)
    out, batch = chain.head_out, chain.batch

    def bias(j: int) -> list[str]:
        return [g.const(f"head{j}.b", a[f"head{j}.b"])] if chain.head_bias else []

    if chain.head in ("conv", "two_conv"):
        for j, k in enumerate(chain.head_kernels):
            y = "y" if chain.head == "conv" else f"y{j}"
            w = g.const(f"head{j}.W", a[f"head{j}.W"])
            pads = [k // 2] * 4
            g.op("Conv", [x, w, *bias(j)], y, name=f"head{j}", kernel_shape=[k, k], pads=pads)
            g.output(y, [batch, out, hs + 2 * (k // 2) - k + 1, ws + 2 * (k // 2) - k + 1])
    elif chain.head == "gap_gemm":
        x = g.op("GlobalAveragePool", [x], "gap")
        x = g.op("Flatten", [x], "flat", axis=1)
        w = g.const("head0.W", a["head0.W"])
        g.op("Gemm", [x, w, *bias(0)], "y", name="head0", transB=chain.trans_b)
        g.output("y", [batch, out])
    else:
        x = g.op("Flatten", [x], "flat", axis=1)
        w = g.const("head0.W", a["head0.W"])
        if chain.head_bias:
            x = g.op("MatMul", [x, w], "mm", name="head0")
            g.op("Add", [x, *bias(0)], "y", name="head0.add")
        else:
            g.op("MatMul", [x, w], "y", name="head0")
        g.output("y", [batch, out])
    model = g.build(list_initializers=chain.listed)
    if chain.infer:
        model = onnx.shape_inference.infer_shapes(model)
    return model


BN_KEYS = ("scale", "B", "mean", "var")


def kept_channels(weight: np.ndarray, ratio: float) -> np.ndarray:
    """The oracle's choice: the ``int(N (1 - ratio))`` (at least 1) filters of largest L2 norm,
    equal norms kept at the lower index."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    n = rows.shape[0]
    m = max(1, int(n * (1.0 - ratio) + 1e-9))
    norms = [float(np.sqrt(np.sum(r * r))) for r in rows]
    order = sorted(range(n), key=lambda j: (-norms[j], j))
    return np.array(sorted(order[:m]), dtype=np.int64)


def delete_by_hand(
    chain: Chain, a: dict[str, np.ndarray], units: set[str], ratio: float
) -> dict[str, np.ndarray]:
    """``a`` with the removed channels of every unit deleted: the producer's rows, bias, BN
    vectors and PRelu slope, and the consumer's input channels (or flattened column blocks)."""
    b = dict(a)
    last = len(chain.layers) - 1
    hs, ws = final_size(chain)
    for i in range(len(chain.layers)):
        if f"conv{i}" not in units:
            continue
        p = kept_channels(a[f"conv{i}.W"], ratio)  # norms of the original filters
        for key in (f"conv{i}.W", f"conv{i}.b", f"act{i}.slope", *(f"bn{i}.{k}" for k in BN_KEYS)):
            b[key] = b[key][p]
        if i < last:
            b[f"conv{i + 1}.W"] = b[f"conv{i + 1}.W"][:, p]
        elif chain.head in ("conv", "two_conv"):
            for j in range(len(chain.head_kernels)):
                b[f"head{j}.W"] = b[f"head{j}.W"][:, p]
        elif chain.head == "gap_gemm":
            b["head0.W"] = b["head0.W"][:, p] if chain.trans_b else b["head0.W"][p]
        else:
            n, out = a[f"conv{i}.W"].shape[0], chain.head_out
            b["head0.W"] = b["head0.W"].reshape(n, hs * ws, out)[p].reshape(-1, out)
    return b


# --------------------------------------------------------------------------- running


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def feeds_for(chain: Chain) -> dict[str, np.ndarray]:
    batch = 2 if isinstance(chain.batch, str) else chain.batch
    rng = np.random.default_rng(chain.seed ^ 0x5EED)
    return {"x": rng.standard_normal((batch, chain.c0, chain.h, chain.w)).astype(np.float32)}


def original_or_skip(chain: Chain):
    """The model, its arrays and its outputs; ``assume`` away a model that is itself invalid
    (a generator bug must not count as a finding)."""
    a = make_arrays(chain)
    try:
        model = build(chain, a)
        onnx.checker.check_model(model, full_check=True)
        outputs = run(model, feeds_for(chain))
    except Exception as error:  # the original does not check or run
        note(f"original rejected: {error!r}"[:500])
        assume(False)
    return model, a, outputs


def assert_close(actual: dict, expected: dict, atol: float, rtol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name, ref in expected.items():
        got = actual[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)


def same_interface(pruned: onnx.ModelProto, model: onnx.ModelProto) -> None:
    assert pruned.ir_version == model.ir_version
    opsets = {(o.domain, o.version) for o in model.opset_import}
    assert {(o.domain, o.version) for o in pruned.opset_import} == opsets
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]


def check_pruned(chain: Chain, method: str, ratio: float) -> None:
    """Every property of one generated model, method and ratio (see the module docstring)."""
    model, a, expected = original_or_skip(chain)
    feeds = feeds_for(chain)
    before = model.SerializeToString()
    units, _ = list_units(model)
    names = {u.name for u in units}
    note(f"units: {sorted(names)}")
    # every producer of the chain is a unit (LBYL.md section 1); the heads are graph outputs
    producers = {f"conv{i}" for i in range(len(chain.layers))}
    assert names == producers

    removed = sum(u.channels - max(1, int(u.channels * (1 - ratio) + 1e-9)) for u in units)
    event(f"{method}, {'ratio 0' if ratio == 0 else 'channels removed' if removed else 'none'}")
    pruned, report = prune(model, ratio=ratio, method=method, check=False)
    assert model.SerializeToString() == before, "prune modified its input model"
    onnx.checker.check_model(pruned, full_check=True)
    same_interface(pruned, model)
    got = run(pruned, feeds)
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, name

    if ratio == 0:
        assert_close(got, expected, atol=1e-5, rtol=1e-5)
    elif method == "prune":
        reference = run(build(chain, delete_by_hand(chain, a, names, ratio)), feeds)
        scale = max(1.0, *(float(np.max(np.abs(r))) for r in reference.values()))
        assert_close(got, reference, atol=1e-4 * scale)
    else:
        for name, ref in expected.items():
            bad = np.isfinite(ref) & ~np.isfinite(got[name])
            assert not bad.any(), f"{name}: non-finite output where the original is finite"
    assert [r.name for r in report.units] == [u.name for u in units]


# --------------------------------------------------------------------------- properties

_positive = st.floats(0.0, 0.9, exclude_min=True, exclude_max=True, allow_subnormal=False)
ratios = st.integers(0, 3).flatmap(lambda k: _positive if k else st.just(0.0))  # 1/4 at 0


@settings(max_examples=EXAMPLES)
@given(chains(), st.sampled_from(METHODS), ratios)
def test_generated_chains(chain: Chain, method: str, ratio: float) -> None:
    check_pruned(chain, method, ratio)


@settings(max_examples=DECLINE_EXAMPLES)
@given(chains("declined"), st.sampled_from(METHODS), st.floats(0.05, 0.9))
def test_declined_chains_unchanged(chain: Chain, method: str, ratio: float) -> None:
    """Sigmoid activations and activations read by a residual Add: nothing is a unit."""
    model, _, expected = original_or_skip(chain)
    pruned, report = prune(model, ratio=ratio, method=method, check=False)
    assert report.units == []
    assert list_units(model)[0] == []
    onnx.checker.check_model(pruned, full_check=True)
    same_interface(pruned, model)
    assert len(pruned.graph.node) == len(model.graph.node)
    got = run(pruned, feeds_for(chain))
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        np.testing.assert_array_equal(got[name], ref, err_msg=name)


# --------------------------------------------------------------------------- found by the above


def _plain_oracle_matches(model: onnx.ModelProto, expected: onnx.ModelProto, ratio: float) -> None:
    pruned, _ = prune(model, ratio=ratio, method="prune", check=False)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)}
    assert_close(run(pruned, feeds), run(expected, feeds), atol=1e-5)


def test_listed_initializer_behind_identity_with_recorded_shape() -> None:
    """x[N,1,6,6] -> Conv(W = Identity(W/raw), W/raw [2,1,1,1] also a graph input) -> Conv head;
    value_info records conv0.W as [2,1,1,1]: pruning one channel fails the checker with
    "(op_type:Identity, node name: conv0.W/id): Inferred shape and existing shape differ in
    dimension 0: (1) vs (2)"."""
    options = dict(channels=(1, 2), kernel=1, act=None, bias=False, storage="identity")
    model = onnx.shape_inference.infer_shapes(conv_net(**options, list_initializers=True))
    _plain_oracle_matches(model, conv_net(**options, delete=0.5), 0.5)


@pytest.mark.parametrize("bn", ["none", "kept"])
def test_two_consumers_without_activation_is_a_unit(bn: str) -> None:
    """x[N,1,6,6] -> conv0 (2 channels, 1x1) -> [BN] -> {head0: Conv, head1: Conv}."""
    options = dict(channels=(1, 2), heads=("conv", "conv"), kernel=1, act=None, bn=bn)
    model = conv_net(**options)
    assert [u.name for u in list_units(model)[0]] == ["conv0"]
    _plain_oracle_matches(model, conv_net(**options, delete=0.5), 0.5)
