"""Tiny test models built with ``onnx.helper`` and seeded NumPy weights.

Two families cover the units of LBYL.md section 1:

- :func:`conv_net`: ``x -> [Conv -> [BN] -> [act] -> [between ops]] * L -> head(s)``, heads
  being a Conv, ``Flatten -> Gemm`` or ``Reshape -> MatMul (+ Add)``;
- :func:`dense_net`: ``x -> [Gemm | MatMul + Add -> [act]] * L -> head``.

Every array is generated first, by name (``conv0.W``, ``bn0.scale``, ``act0.slope``,
``head.W`` ...), then ``params`` overrides some of them, then ``delete`` (a ratio) removes
channels by hand: each prunable layer keeps its ``int(N (1 - ratio))`` filters of largest L2
norm (raw filters, computed here), its rows, bias, BN vectors and PRelu slope are sliced, and
its consumers lose the matching input channels (a block of ``h*w`` columns per channel after a
flatten). The model built with ``delete`` is the NumPy oracle of plain pruning.

:class:`GraphBuilder` is the small helper underneath; tests use it for one-off graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT

STORAGES = ("initializer", "constant", "identity", "constant_identity")
"""Where a weight lives: an initializer, a ``Constant`` node (Paddle style), an initializer
read through an ``Identity`` node, or a ``Constant`` node read through an ``Identity``."""


class GraphBuilder:
    """Accumulates nodes, constants, inputs and outputs; :meth:`build` makes the model."""

    def __init__(
        self, opset: int = 17, ir_version: int | None = None, storage: str = "initializer"
    ) -> None:
        assert storage in STORAGES, storage
        self.opset = opset
        self.ir_version = ir_version
        self.storage = storage
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.values: dict[str, np.ndarray] = {}

    def const(self, name: str, value: np.ndarray, storage: str | None = None) -> str:
        """Add a constant tensor called ``name`` stored as ``storage``; returns ``name``."""
        storage = storage or self.storage
        value = np.asarray(value)
        self.values[name] = value
        if storage == "initializer":
            self.initializers.append(numpy_helper.from_array(value, name))
        elif storage == "constant":
            tensor = numpy_helper.from_array(value, name)
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=f"{name}/const", value=tensor)
            )
        elif storage == "identity":
            self.initializers.append(numpy_helper.from_array(value, f"{name}/raw"))
            self.nodes.append(
                helper.make_node("Identity", [f"{name}/raw"], [name], name=f"{name}/id")
            )
        elif storage == "constant_identity":
            tensor = numpy_helper.from_array(value, f"{name}/raw")
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [f"{name}/raw"], name=f"{name}/const", value=tensor
                )
            )
            self.nodes.append(
                helper.make_node("Identity", [f"{name}/raw"], [name], name=f"{name}/id")
            )
        else:
            raise ValueError(storage)
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], output: str, name: str | None = None, **attrs
    ):
        """Add a node with one output; returns the output's name."""
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=name or output, **attrs)
        )
        return output

    def input(self, name: str, shape: Sequence[int | str | None], elem: int = FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, shape: Sequence[int | str | None] | None = None, elem: int = FLOAT):
        self.outputs.append(
            helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))
        )

    def build(self, list_initializers: bool = False) -> onnx.ModelProto:
        """The model; ``list_initializers`` also lists every initializer as a graph input
        (what IR < 4 requires, so it is always done there, and what old exporters did)."""
        inputs = list(self.inputs)
        opset = helper.make_opsetid("", self.opset)
        ir = self.ir_version or helper.find_min_ir_version_for([opset])
        if list_initializers or ir < 4:
            inputs += [
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in self.initializers
            ]
        graph = helper.make_graph(self.nodes, "test", inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[opset], ir_version=ir)
        model.producer_name = "lbyl-onnx-tests"
        return model


# --------------------------------------------------------------------------- helpers


def kept_by_l2(rows: np.ndarray, ratio: float) -> np.ndarray:
    """Sorted indices of the ``int(N (1 - ratio))`` rows of largest L2 norm (at least 1)."""
    rows = rows.reshape(rows.shape[0], -1).astype(np.float64)
    n = rows.shape[0]
    m = max(1, int(n * (1.0 - ratio) + 1e-9))
    norms = np.sqrt(np.sum(rows**2, axis=1))
    return np.sort(np.argsort(-norms, kind="stable")[:m])


def slope_array(values: np.ndarray, shape: str) -> np.ndarray:
    """A per-channel PRelu slope in one of the layouts ``c``, ``c11``, ``1c11``, ``1c``,
    or ``scalar`` (the first value, shape ``[1]``)."""
    c = values.size
    layouts = {"c": (c,), "c11": (c, 1, 1), "1c11": (1, c, 1, 1), "1c": (1, c)}
    if shape == "scalar":
        return values.reshape(-1)[:1].astype(np.float32)
    return values.reshape(layouts[shape]).astype(np.float32)


def _slope_axis(shape: str) -> int | None:
    return {"c": 0, "c11": 0, "1c11": 1, "1c": 1}.get(shape)


def random_filters(rng: np.random.Generator, n: int, fan_in: int, shape: tuple) -> np.ndarray:
    """Gaussian filters scaled to unit gain, each with its own norm factor in [0.5, 2]."""
    w = rng.standard_normal((n, *shape)) / np.sqrt(fan_in)
    scale = rng.uniform(0.5, 2.0, size=(n,) + (1,) * len(shape))
    return (w * scale).astype(np.float32)


def random_bn(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "scale": rng.uniform(0.5, 1.5, n).astype(np.float32),
        "B": (0.2 * rng.standard_normal(n)).astype(np.float32),
        "mean": (0.2 * rng.standard_normal(n)).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, n).astype(np.float32),
    }


def fold_bn(w: np.ndarray, b: np.ndarray, bn: dict[str, np.ndarray], eps: float = 1e-5):
    """``wt = rho w``, ``bt = beta + rho (b - mean)``, ``rho = gamma / sqrt(var + eps)``."""
    rho = bn["scale"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + eps)
    wt = rho.reshape((-1,) + (1,) * (w.ndim - 1)) * w.astype(np.float64)
    bt = bn["B"] + rho * (b.astype(np.float64) - bn["mean"])
    return wt.astype(np.float32), bt.astype(np.float32)


def _activation(g: GraphBuilder, act: str | None, x: str, i: int, arrays, clip) -> str:
    """Emit activation ``act`` of layer ``i`` reading ``x``; returns its output."""
    out = f"act{i}"
    if act is None:
        return x
    if act in ("Relu", "Sigmoid", "HardSwish"):
        return g.op(act, [x], out)
    if act == "LeakyRelu":
        return g.op("LeakyRelu", [x], out, alpha=0.1)
    if act == "PRelu":
        return g.op("PRelu", [x, g.const(f"act{i}.slope", arrays[f"act{i}.slope"])], out)
    if act == "Clip":
        low, high, form = clip
        if form == "attr":
            attrs = {"min": low} if low is not None else {}
            if high is not None:
                attrs["max"] = high
            return g.op("Clip", [x], out, **attrs)
        shape = () if form == "input" else (1,)
        names = ["", ""]
        if low is not None:
            names[0] = g.const(f"act{i}.min", np.full(shape, low, np.float32))
        if high is not None:
            names[1] = g.const(f"act{i}.max", np.full(shape, high, np.float32))
        while names and not names[-1]:
            names.pop()
        return g.op("Clip", [x, *names], out)
    raise ValueError(act)


def _clip_spec(opset: int, clip_min, clip_max, clip_form):
    form = clip_form or ("input" if opset >= 11 else "attr")
    return clip_min, clip_max, form


# --------------------------------------------------------------------------- conv nets


def conv_net(
    channels: Sequence[int] = (3, 8),
    heads: Sequence[str] = ("conv",),
    out: int = 5,
    hw: int = 6,
    kernel: int = 3,
    bn: str = "none",
    act: str | None = "Relu",
    between: Sequence[str] = (),
    bias: bool = True,
    opset: int = 17,
    ir_version: int | None = None,
    batch: int | str = "N",
    storage: str = "initializer",
    list_initializers: bool = False,
    slope_shape: str = "c11",
    clip_min: float | None = 0.0,
    clip_max: float | None = 6.0,
    clip_form: str | None = None,
    trans_b: int = 1,
    reshape_target: Sequence[int] | str = (0, -1),
    params: dict[str, np.ndarray] | None = None,
    delete: float | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """``x [batch, channels[0], hw, hw]`` through one prunable Conv per further entry of
    ``channels`` (``conv{i}``: 3x3 or ``kernel``, same padding), each followed by ``bn``
    (``none``, ``kept`` as a BatchNormalization node, ``fused`` into the Conv), ``act`` and
    the ops in ``between`` (pools halve the size with a 2x2 window; GlobalAveragePool makes
    it 1x1), then by every head in ``heads`` reading the same tensor (outputs ``y``, or
    ``y0, y1, ...`` for several heads):

    - ``conv``: Conv to ``out`` channels (1x1 kernel after a global pool);
    - ``flatten_gemm``: Flatten, then Gemm with ``transB = trans_b``;
    - ``reshape_matmul``: Reshape to ``reshape_target`` (``explicit`` means ``[-1, C*h*w]``),
      then MatMul and Add.

    Activations: ``Relu``, ``LeakyRelu``, ``PRelu`` (slope in ``slope_shape``), ``Clip``
    (``clip_min``/``clip_max``; ``clip_form`` ``input`` = scalar inputs, ``input1`` =
    shape-[1] inputs, ``attr`` = attributes; default by opset), ``Sigmoid``, ``HardSwish``.
    """
    rng = np.random.default_rng(seed)
    k = kernel
    a: dict[str, np.ndarray] = {}
    layers = len(channels) - 1
    for i in range(layers):
        n_in, n = channels[i], channels[i + 1]
        a[f"conv{i}.W"] = random_filters(rng, n, n_in * k * k, (n_in, k, k))
        a[f"conv{i}.b"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        if bn != "none":
            stats = random_bn(rng, n)
            if bn == "kept":
                a.update({f"bn{i}.{key}": v for key, v in stats.items()})
            else:
                a[f"conv{i}.W"], a[f"conv{i}.b"] = fold_bn(a[f"conv{i}.W"], a[f"conv{i}.b"], stats)
        a[f"act{i}.slope"] = slope_array(rng.uniform(0.05, 0.3, n), slope_shape)
    size = hw
    for _ in range(layers):
        for op in between:
            if op in ("MaxPool", "AveragePool"):
                size //= 2
            elif op in ("GlobalAveragePool", "GlobalMaxPool"):
                size = 1
    n_last = channels[-1]
    head_k = 1 if size == 1 else k
    names = ["head"] if len(heads) == 1 else [f"head{j}" for j in range(len(heads))]
    for name, head in zip(names, heads, strict=True):
        if head == "conv":
            a[f"{name}.W"] = random_filters(rng, out, n_last * head_k**2, (n_last, head_k, head_k))
        else:
            w = random_filters(rng, out, n_last * size * size, (n_last * size * size,))
            a[f"{name}.W"] = w if head == "flatten_gemm" and trans_b else np.ascontiguousarray(w.T)
        a[f"{name}.b"] = (0.2 * rng.standard_normal(out)).astype(np.float32)
    if params:
        a.update({key: np.asarray(v, np.float32) for key, v in params.items()})

    if delete is not None:
        kept = {i: kept_by_l2(a[f"conv{i}.W"], delete) for i in range(layers)}
        for i in range(layers):
            p = kept[i]
            a[f"conv{i}.W"] = a[f"conv{i}.W"][p]
            a[f"conv{i}.b"] = a[f"conv{i}.b"][p]
            for key in ("scale", "B", "mean", "var"):
                if f"bn{i}.{key}" in a:
                    a[f"bn{i}.{key}"] = a[f"bn{i}.{key}"][p]
            axis = _slope_axis(slope_shape)
            if axis is not None:
                a[f"act{i}.slope"] = np.take(a[f"act{i}.slope"], p, axis=axis)
            if i + 1 < layers:
                a[f"conv{i + 1}.W"] = a[f"conv{i + 1}.W"][:, p]
        p, blk = kept[layers - 1], size * size
        for name, head in zip(names, heads, strict=True):
            w = a[f"{name}.W"]
            if head == "conv":
                a[f"{name}.W"] = w[:, p]
            elif head == "flatten_gemm" and trans_b:
                a[f"{name}.W"] = w.reshape(out, n_last, blk)[:, p].reshape(out, -1)
            else:
                a[f"{name}.W"] = w.reshape(n_last, blk, out)[p].reshape(-1, out)
        n_last = len(p)

    g = GraphBuilder(opset, ir_version, storage)
    x = g.input("x", [batch, channels[0], hw, hw])
    clip = _clip_spec(opset, clip_min, clip_max, clip_form)
    pads = [k // 2] * 4
    for i in range(layers):
        inputs = [x, g.const(f"conv{i}.W", a[f"conv{i}.W"])]
        if bias:
            inputs.append(g.const(f"conv{i}.b", a[f"conv{i}.b"]))
        x = g.op("Conv", inputs, f"z{i}", name=f"conv{i}", kernel_shape=[k, k], pads=pads)
        if bn == "kept":
            bn_in = [
                g.const(f"bn{i}.{key}", a[f"bn{i}.{key}"]) for key in ("scale", "B", "mean", "var")
            ]
            x = g.op("BatchNormalization", [x, *bn_in], f"bn{i}", epsilon=1e-5)
        x = _activation(g, act, x, i, a, clip)
        for j, op in enumerate(between):
            attrs = {}
            if op in ("MaxPool", "AveragePool"):
                attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
            x = g.op(op, [x], f"{op.lower()}{i}_{j}", **attrs)
    outs = ["y"] if len(heads) == 1 else [f"y{j}" for j in range(len(heads))]
    for name, head, y in zip(names, heads, outs, strict=True):
        w = g.const(f"{name}.W", a[f"{name}.W"])
        b = g.const(f"{name}.b", a[f"{name}.b"])
        if head == "conv":
            hp = [head_k // 2] * 4
            g.op("Conv", [x, w, b], y, name=name, kernel_shape=[head_k] * 2, pads=hp)
            g.output(y, [batch, out, size, size])
            continue
        if head == "flatten_gemm":
            flat = g.op("Flatten", [x], f"{name}.flat", axis=1)
            g.op("Gemm", [flat, w, b], y, name=name, transB=trans_b)
        elif head == "reshape_matmul":
            target = reshape_target
            if target == "explicit":
                target = (-1, n_last * size * size)
            shape = g.const(f"{name}.shape", np.array(target, np.int64), "initializer")
            flat = g.op("Reshape", [x, shape], f"{name}.flat")
            mm = g.op("MatMul", [flat, w], f"{name}.mm", name=name)
            g.op("Add", [mm, b], y, name=f"{name}.add")
        else:
            raise ValueError(head)
        g.output(y, [batch, out])
    return g.build(list_initializers)


# --------------------------------------------------------------------------- dense nets


def dense_net(
    features: Sequence[int] = (12, 8),
    out: int = 5,
    kind: str = "gemm",
    trans_b: int = 1,
    act: str | None = "Relu",
    between: Sequence[str] = (),
    alpha: float = 1.0,
    beta: float = 1.0,
    bias_first: bool = False,
    slope_shape: str = "c",
    bias_shape: str = "n",
    sequence: int | None = None,
    opset: int = 17,
    ir_version: int | None = None,
    batch: int | str = "N",
    storage: str = "initializer",
    params: dict[str, np.ndarray] | None = None,
    delete: float | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """``x [batch, features[0]]`` (``[batch, sequence, features[0]]`` when ``sequence`` is
    given, MatMul only) through one prunable fully connected layer per further entry
    of ``features`` (``fc{i}``: ``Gemm`` with ``transB = trans_b``, ``alpha``, ``beta``, or
    ``MatMul`` then ``Add`` of the bias, the bias first when ``bias_first``), each followed by
    ``act`` and ``between``, then a head layer of the same kind to ``out`` features (``y``).

    Weights are stored as the op reads them: ``N x K`` for ``transB = 1``, ``K x N``
    otherwise. Biases have shape ``[N]``, or ``[1, N]`` when ``bias_shape`` is ``1n``.
    """
    rng = np.random.default_rng(seed)
    a: dict[str, np.ndarray] = {}
    sizes = [*features, out]
    layers = len(features) - 1
    transposed = kind == "gemm" and trans_b

    def stored(rows: np.ndarray) -> np.ndarray:
        return rows if transposed else np.ascontiguousarray(rows.T)

    for i in range(layers + 1):
        name = f"fc{i}" if i < layers else "head"
        rows = random_filters(rng, sizes[i + 1], sizes[i], (sizes[i],))
        a[f"{name}.W"] = stored(rows)
        a[f"{name}.b"] = (0.2 * rng.standard_normal(sizes[i + 1])).astype(np.float32)
        if bias_shape == "1n":
            a[f"{name}.b"] = a[f"{name}.b"].reshape(1, -1)
        if i < layers:
            a[f"act{i}.slope"] = slope_array(rng.uniform(0.05, 0.3, sizes[i + 1]), slope_shape)
    if params:
        a.update({key: np.asarray(v, np.float32) for key, v in params.items()})

    def rows_of(w: np.ndarray) -> np.ndarray:
        return w if transposed else w.T

    if delete is not None:
        kept = {i: kept_by_l2(rows_of(a[f"fc{i}.W"]), delete) for i in range(layers)}
        for i in range(layers):
            p = kept[i]
            a[f"fc{i}.W"] = stored(rows_of(a[f"fc{i}.W"])[p])
            a[f"fc{i}.b"] = np.take(a[f"fc{i}.b"], p, axis=-1)
            axis = _slope_axis(slope_shape)
            if axis is not None:
                a[f"act{i}.slope"] = np.take(a[f"act{i}.slope"], p, axis=axis)
            nxt = f"fc{i + 1}" if i + 1 < layers else "head"
            a[f"{nxt}.W"] = stored(np.ascontiguousarray(rows_of(a[f"{nxt}.W"])[:, p]))

    g = GraphBuilder(opset, ir_version, storage)
    lead = [batch] if sequence is None else [batch, sequence]
    x = g.input("x", [*lead, features[0]])
    for i in range(layers + 1):
        name = f"fc{i}" if i < layers else "head"
        z = f"z{i}" if i < layers else "y"
        w = g.const(f"{name}.W", a[f"{name}.W"])
        b = g.const(f"{name}.b", a[f"{name}.b"])
        if kind == "gemm":
            x = g.op("Gemm", [x, w, b], z, name=name, transB=trans_b, alpha=alpha, beta=beta)
        else:
            mm = g.op("MatMul", [x, w], f"{name}.mm", name=name)
            x = g.op("Add", [b, mm] if bias_first else [mm, b], z, name=f"{name}.add")
        if i < layers:
            x = _activation(g, act, x, i, a, _clip_spec(opset, 0.0, 6.0, None))
            for j, op in enumerate(between):
                x = g.op(op, [x], f"{op.lower()}{i}_{j}")
    g.output("y", [*lead, out])
    return g.build()


def two_branches(share_producer: bool, share_consumer: bool, seed: int = 1) -> onnx.ModelProto:
    """``x -> conv_a -> Relu -> head_a -> y_a`` and ``x -> conv_b -> Relu -> head_b -> y_b``;
    ``conv_b`` reads ``conv_a``'s weight ``Wa`` when ``share_producer``, ``head_b`` reads
    ``head_a``'s weight ``Va`` when ``share_consumer``."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 6, 6])

    def weight(name: str, shape: tuple) -> str:
        return g.const(name, random_filters(rng, shape[0], int(np.prod(shape[1:])), shape[1:]))

    wa = weight("Wa", (8, 3, 3, 3))
    wb = wa if share_producer else weight("Wb", (8, 3, 3, 3))
    va = weight("Va", (4, 8, 1, 1))
    vb = va if share_consumer else weight("Vb", (4, 8, 1, 1))
    for tag, w, v in (("a", wa, va), ("b", wb, vb)):
        z = g.op("Conv", [x, w], f"z_{tag}", name=f"conv_{tag}", pads=[1] * 4)
        r = g.op("Relu", [z], f"r_{tag}")
        g.op("Conv", [r, v], f"y_{tag}", name=f"head_{tag}")
        g.output(f"y_{tag}", ["N", 4, 6, 6])
    return g.build()


# --------------------------------------------------------------------------- running


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer and ``Constant`` node value of ``model``, by tensor name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def real_input_shapes(model: onnx.ModelProto, batch: int = 3) -> dict[str, list[int]]:
    """Concrete shapes of the non-initializer graph inputs (symbolic dims become ``batch``)."""
    weights = {t.name for t in model.graph.initializer}
    shapes = {}
    for entry in model.graph.input:
        if entry.name in weights:
            continue
        dims = entry.type.tensor_type.shape.dim
        shapes[entry.name] = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    return shapes


def random_feeds(model: onnx.ModelProto, seed: int = 1, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in real_input_shapes(model, batch).items()
    }


def with_integer_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input ``x`` made INT32 and cast to float inside the graph (an input
    that synthetic data cannot stand for)."""
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    for node in model.graph.node:
        node.input[:] = ["x_float" if name == "x" else name for name in node.input]
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["x"], ["x_float"], to=1))
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs in onnxruntime (CPU), as float64."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o, np.float64) for o in session.run(None, feeds)]
