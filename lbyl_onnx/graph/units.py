"""Find prunable units in a graph, and decline the rest with a reason.

A unit (LBYL.md section 1)::

    x --Conv|Gemm|MatMul(+Add)--> z --[BatchNormalization]--> --[activation]--> r
      --[channel-wise ops]--> consumers (Conv group 1, or Gemm/MatMul after a flatten)

Every check returns a reason instead of raising: :func:`find_units` gives, for every
candidate producer, either a :class:`Unit` or a :class:`Declined` record. Adding an
activation or a pass-through op is one entry in the tables below.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ..methods.base import BatchNormParams, LayerArrays
from ..methods.moments import Activation
from .index import GraphIndex, attribute

ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "PRelu"}
"""Element-wise activations a unit may contain (Clip only with min 0, i.e. ReLU6-like)."""

SPATIAL_PASS_THROUGH = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
"""Channel-wise ops between the activation and the consumers (spatial tensors only)."""

ANY_PASS_THROUGH = {"Dropout", "Identity"}
"""Ops that pass every channel through unchanged, in any layout."""

APPROXIMATE_PASS_THROUGH = {"MaxPool", "GlobalMaxPool"}
"""Max does not commute with sums: the compensation is approximate through these."""


@dataclass(frozen=True)
class Operand:
    """A constant input of a node: ``node.input[index]`` and its value."""

    node: onnx.NodeProto
    index: int
    value: np.ndarray

    @property
    def tensor(self) -> str:
        return self.node.input[self.index]


@dataclass(frozen=True)
class Consumer:
    """A node that reads the unit's channels and absorbs ``S``.

    ``kind`` is ``conv`` (weight ``O x N x k...``), ``gemm`` or ``matmul``; ``block`` is the
    number of consecutive input columns each channel owns after a flatten (``h*w``), 1 when
    there is none. ``transposed`` means the weight is stored ``O x (N*block)`` (Gemm transB).
    """

    node: onnx.NodeProto
    kind: str
    weight: Operand
    block: int = 1
    transposed: bool = False
    interleaved: bool = False
    """Columns are ``p * N + c`` (a channels-last flatten) instead of ``c * block + p``."""
    channels_tensor: str = ""
    """The tensor holding the unit's channels right before this consumer (before a flatten)."""
    bias: Operand | None = None
    """The consumer's bias (Conv input 2, Gemm C, the constant of an Add after a MatMul)."""


@dataclass
class Unit:
    """One producer whose output channels may be removed, and everything that reads them."""

    name: str
    producer: onnx.NodeProto
    kind: str  # conv, gemm, matmul
    weight: Operand
    bias: Operand | None
    bn: onnx.NodeProto | None
    bn_params: list[Operand]
    activation: onnx.NodeProto | None
    slope: Operand | None
    consumers: list[Consumer]
    tensors: list[str]
    """Every tensor whose channel count changes (their recorded shapes go stale)."""
    arrays: LayerArrays
    activation_model: Activation = field(default_factory=lambda: Activation("identity"))
    """The activation as the data-free moment formulas see it."""
    reshapes: list[tuple[Operand, int, int]] = field(default_factory=list)
    """Reshape targets ``(operand, position, block)``: the entry at ``position`` (``N*block``)
    becomes ``m*block``."""
    record: str = ""
    """Where the channels ``S`` acts on can be observed: the tensor every consumer reads
    (before any flatten), else the activation output."""
    notes: list[str] = field(default_factory=list)
    extra_slices: list[tuple[Operand, int]] = field(default_factory=list)
    """Further per-channel constants to slice, with their channel axis (a depthwise conv's
    kernels, bias and normalisation; the other producers of a residual group)."""
    regroup: list[onnx.NodeProto] = field(default_factory=list)
    """Depthwise convs whose ``group`` attribute becomes the kept count."""
    producers: list[onnx.NodeProto] = field(default_factory=list)
    """Every node whose output channels are the unit's channels (the producer first)."""

    def __post_init__(self) -> None:
        if not self.producers:
            self.producers = [self.producer]

    @property
    def channels(self) -> int:
        return self.arrays.channels


@dataclass(frozen=True)
class Declined:
    """A candidate producer left untouched, and why (one line)."""

    name: str
    op_type: str
    reason: str


class _Decline(Exception):
    """Internal: raised inside the matcher, turned into a :class:`Declined` record."""


def units_by_tensor(units: list[Unit]) -> tuple[dict[str, int], dict[str, int]]:
    """For each node output, the position in ``units`` of the unit whose channels the node
    writes (its producers), and of the unit whose channels it reads (its consumers)."""
    writes = {p.output[0]: i for i, u in enumerate(units) for p in u.producers}
    reads = {c.node.output[0]: i for i, u in enumerate(units) for c in u.consumers}
    return writes, reads


def node_name(node: onnx.NodeProto) -> str:
    """A node's name, or a stand-in from its first output when it has none."""
    return node.name or f"<{node.op_type} -> {node.output[0]}>"


def find_units(
    model: onnx.ModelProto, shapes: dict[str, list[int | str | None]], residual: bool = False
) -> tuple[list[Unit], list[Declined]]:
    """Every ``Conv``/``Gemm``/``MatMul`` of the main graph as a :class:`Unit` or :class:`Declined`.

    ``shapes`` maps tensor names to inferred shapes (needed for the ``h*w`` block of a
    flatten). ``residual`` also matches residual groups (:func:`_match_residual`). Units are
    returned in graph order of their first producer.
    """
    index = GraphIndex(model)
    units: list[Unit] = []
    declined: list[Declined] = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        try:
            units.append(_match_unit(index, node, shapes))
        except _Decline as why:
            declined.append(Declined(node_name(node), node.op_type, str(why)))
    if residual:
        groups, failed = _residual_groups(index, shapes)
        units += groups
        declined += failed
        order = {node_name(n): i for i, n in enumerate(model.graph.node)}
        units.sort(key=lambda u: order[u.name])
    absorbed = {node_name(p) for u in units for p in u.producers}
    return units, [d for d in declined if d.name not in absorbed]


def _constant(index: GraphIndex, node: onnx.NodeProto, i: int, what: str) -> Operand:
    """``node.input[i]`` as a constant that only this node reads, or decline."""
    if i >= len(node.input) or not node.input[i]:
        raise _Decline(f"{what} is missing")
    name = node.input[i]
    value = index.value(name)
    if value is None:
        raise _Decline(f"{what} '{name}' is not a constant")
    if index.is_shared(name):
        raise _Decline(f"{what} '{name}' is shared with another node")
    if not np.issubdtype(value.dtype, np.floating):
        raise _Decline(f"{what} '{name}' is not floating point ({value.dtype})")
    if not np.all(np.isfinite(value)):
        raise _Decline(f"{what} '{name}' contains NaN or Inf")
    return Operand(node, i, value)


def _next(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The sole reader of ``tensor``; None if there are several or none (the consumer walk
    then decides), decline if it is a graph output."""
    if tensor in index.graph_outputs:
        raise _Decline(f"'{tensor}' is a graph output")
    readers = index.readers.get(tensor, [])
    if len(readers) != 1 or readers[0].index < 0:
        return None
    return readers[0].node


def _match_producer(index: GraphIndex, node: onnx.NodeProto, depthwise: bool = False):
    """Producer weight (filters as rows), bias, and the tensor that carries its channels.

    ``depthwise``: the node is the depthwise conv of a group (one kernel per channel)."""
    if node.op_type == "Conv":
        group = attribute(node, "group", 1)
        weight = _constant(index, node, 1, "weight")
        if group != 1 and not depthwise:
            kind = "depthwise" if group == weight.value.shape[0] else "grouped"
            raise _Decline(f"{kind} Conv producer (group={group})")
        n = weight.value.shape[0]
        bias = _constant(index, node, 2, "bias") if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        if bias is None:  # paddle2onnx and others: the bias as a separate Add of [1, C, 1, 1]
            bias = _per_channel_operand(index, out, "Add", n, -(weight.value.ndim - 1))
            if bias is not None:
                out = bias.node.output[0]
        rows = weight.value.reshape(n, -1)
        b = bias.value.reshape(-1) if bias is not None else np.zeros(n, rows.dtype)
        return "conv", weight, bias, rows, b, out
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            raise _Decline("Gemm with transA=1")
        weight = _constant(index, node, 1, "weight")
        trans_b = bool(attribute(node, "transB", 0))
        rows = weight.value if trans_b else weight.value.T
        n = rows.shape[0]
        alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
        bias = _constant(index, node, 2, "bias") if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(n)
        if bias is not None:
            if bias.value.size not in (1, n) or (bias.value.ndim == 2 and bias.value.shape[0] != 1):
                raise _Decline(f"Gemm bias of shape {list(bias.value.shape)} is not per-channel")
            b = beta * np.broadcast_to(bias.value.reshape(-1), (n,))
        return "gemm", weight, bias, rows if alpha == 1 else alpha * rows, b, node.output[0]
    # MatMul: x @ B with B (K x N), optionally followed by Add of a per-channel bias
    weight = _constant(index, node, 1, "weight")
    if weight.value.ndim != 2:
        raise _Decline("MatMul weight is not 2-D")
    rows = weight.value.T
    n = rows.shape[0]
    out = node.output[0]
    bias = None
    b = np.zeros(n)
    reader = _next(index, out)
    if reader is not None and reader.op_type == "Add":
        other = 1 if reader.input[0] == out else 0
        value = index.value(reader.input[other])
        if value is not None and value.size == n and value.shape[-1] == n:
            bias = _constant(index, reader, other, "bias")
            b = bias.value.reshape(-1)
            out = reader.output[0]
    return "matmul", weight, bias, rows, b, out


def _per_channel_operand(
    index: GraphIndex, tensor: str, op: str, n: int, channel_axis: int
) -> Operand | None:
    """If the sole reader of ``tensor`` is ``op`` (Add, Mul) with a constant that has one value
    per channel on ``channel_axis`` (counted from the end, e.g. ``[1, C, 1, 1]``), that
    constant; None otherwise (nothing to decline: the chain just does not continue here)."""
    reader = _next(index, tensor)
    if reader is None or reader.op_type != op or reader.domain not in ("", "ai.onnx"):
        return None
    other = 1 if reader.input[0] == tensor else 0
    value = index.value(reader.input[other])
    if value is None or value.size != n or n == 1:
        return None
    if len(value.shape) < -channel_axis or value.shape[channel_axis] != n:
        return None
    return _constant(index, reader, other, f"per-channel {op} constant")


def _match_scale_shift(
    index: GraphIndex, tensor: str, n: int, channel_axis: int
) -> tuple[list[Operand], BatchNormParams, str] | None:
    """BatchNormalization written as ``Mul`` by a per-channel scale, then optionally ``Add``
    of a per-channel shift: ``gamma = scale``, ``beta = shift``, no statistics."""
    scale = _per_channel_operand(index, tensor, "Mul", n, channel_axis)
    if scale is None:
        return None
    tensor = scale.node.output[0]
    shift = _per_channel_operand(index, tensor, "Add", n, channel_axis)
    params = [scale]
    beta = np.zeros(n)
    if shift is not None:
        params.append(shift)
        beta = shift.value.reshape(-1).astype(np.float64)
        tensor = shift.node.output[0]
    gamma = scale.value.reshape(-1).astype(np.float64)
    record = BatchNormParams(gamma, beta, np.zeros(n), np.ones(n), 0.0, statistics=False)
    return params, record, tensor


def _match_bn(index: GraphIndex, node: onnx.NodeProto, n: int) -> tuple[list[Operand], float]:
    if len([o for o in node.output if o]) > 1 and any(
        index.readers.get(o) for o in node.output[1:] if o
    ):
        raise _Decline("BatchNormalization in training mode (extra outputs are read)")
    if attribute(node, "spatial", 1) == 0:
        raise _Decline("BatchNormalization with spatial=0 (per-element statistics)")
    params = [_constant(index, node, i, f"BatchNormalization input {i}") for i in range(1, 5)]
    if any(p.value.size != n for p in params):
        raise _Decline("BatchNormalization parameters are not per-channel")
    return params, float(attribute(node, "epsilon", 1e-5))


def _match_activation(
    index: GraphIndex, node: onnx.NodeProto, n: int, channel_axis: int
) -> Operand | None:
    """Check an activation; return PRelu's slope when it must be sliced.

    ``channel_axis`` is the channel axis of the activation's input counted from the end
    (-1 for Gemm/MatMul outputs, ``-(rank - 1)`` for a Conv output): a per-channel slope must
    broadcast onto it, e.g. ``[C,1,1]`` or ``[1,C,1,1]`` for a 4-D Conv output, not ``[C]``.
    """
    if node.op_type == "Clip":
        low = attribute(node, "min") if index.opset < 11 else None
        if index.opset >= 11 and len(node.input) > 1 and node.input[1]:
            value = index.value(node.input[1])
            if value is None:
                raise _Decline("Clip min is not a constant")
            low = float(value.reshape(-1)[0])
        if low != 0:
            raise _Decline(f"Clip with min {low} (only min 0, ReLU6-like, is supported)")
        has_max = index.opset >= 11 and len(node.input) > 2 and node.input[2]
        if has_max and index.value(node.input[2]) is None:
            raise _Decline("Clip max is not a constant")
        return None
    if node.op_type == "PRelu":
        slope = _constant(index, node, 1, "PRelu slope")
        if slope.value.size == 1:
            return None
        shape = slope.value.shape
        aligned = len(shape) >= -channel_axis and shape[channel_axis] == n
        if slope.value.size != n or not aligned:
            raise _Decline(f"PRelu slope of shape {list(shape)} is not per-channel")
        return slope
    return None


def _activation_model(
    index: GraphIndex, node: onnx.NodeProto, slope: Operand | None, n: int
) -> Activation:
    """The matched activation node as an :class:`Activation` record."""
    if node.op_type == "Relu":
        return Activation("relu")
    if node.op_type == "LeakyRelu":
        return Activation("leaky", np.full(n, float(attribute(node, "alpha", 0.01))))
    if node.op_type == "PRelu":
        value = slope.value if slope is not None else index.value(node.input[1])
        return Activation("leaky", np.broadcast_to(value.reshape(-1), (n,)).astype(np.float64))
    high = attribute(node, "max") if index.opset < 11 else None
    if index.opset >= 11 and len(node.input) > 2 and node.input[2]:
        high = float(index.value(node.input[2]).reshape(-1)[0])
    return Activation("clip", high=None if high is None else float(high))


@dataclass
class _Chain:
    """A producer and the per-channel ops right after it: ``[bias Add] -> [BN] -> [act]``."""

    kind: str
    weight: Operand
    bias: Operand | None
    rows: np.ndarray
    b: np.ndarray
    bn: onnx.NodeProto | None
    bn_params: list[Operand]
    bn_record: BatchNormParams | None
    activation: onnx.NodeProto | None
    slope: Operand | None
    activation_model: Activation
    tensors: list[str]
    tensor: str
    """The last tensor of the chain (what the readers of the channels read)."""
    channel_axis: int


def _match_chain(
    index: GraphIndex, producer: onnx.NodeProto, depthwise: bool = False, activation: bool = True
) -> _Chain:
    """The producer, then (each optional) a BatchNormalization or its Mul/Add form and, with
    ``activation``, a supported activation, each the sole reader of the tensor before it."""
    kind, weight, bias, rows, b, tensor = _match_producer(index, producer, depthwise)
    n = rows.shape[0]
    tensors = [producer.output[0]] if tensor == producer.output[0] else [producer.output[0], tensor]
    channel_axis = -(weight.value.ndim - 1) if kind == "conv" else -1
    bn, bn_params, bn_record = _match_normalisation(index, tensor, n, channel_axis)
    if bn_params:
        tensor = bn_params[-1].node.output[0] if bn is None else bn.output[0]
        tensors.extend([bn.output[0]] if bn else [p.node.output[0] for p in bn_params])
    node, slope, model = None, None, Activation("identity")
    reader = _next(index, tensor)
    if activation and reader is not None and reader.op_type in ACTIVATIONS:
        node = reader
        slope = _match_activation(index, node, n, channel_axis)
        model = _activation_model(index, node, slope, n)
        tensor = node.output[0]
        tensors.append(tensor)
    return _Chain(
        kind,
        weight,
        bias,
        np.asarray(rows),
        np.asarray(b),
        bn,
        bn_params,
        bn_record,
        node,
        slope,
        model,
        tensors,
        tensor,
        channel_axis,
    )


def _match_normalisation(
    index: GraphIndex, tensor: str, n: int, channel_axis: int
) -> tuple[onnx.NodeProto | None, list[Operand], BatchNormParams | None]:
    """A BatchNormalization reading ``tensor`` (node, its four parameters, the record), or
    its ``Mul``/``Add`` form (no node, the constants, a record without statistics)."""
    reader = _next(index, tensor)
    if reader is not None and reader.op_type == "BatchNormalization":
        params, eps = _match_bn(index, reader, n)
        gamma, beta, mean, var = (p.value.reshape(-1).astype(np.float64) for p in params)
        return reader, params, BatchNormParams(gamma, beta, mean, var, eps)
    scale_shift = _match_scale_shift(index, tensor, n, channel_axis)
    if scale_shift is None:
        return None, [], None
    params, record, _ = scale_shift
    return None, params, record


@dataclass
class _DepthwiseTail:
    """``depthwise Conv -> [bias Add] -> [BN] -> [act]`` after a unit's chain."""

    conv: onnx.NodeProto
    kernels: np.ndarray
    """``N x k`` (one spatial kernel per channel, flattened)."""
    bias: np.ndarray
    slices: list[tuple[Operand, int]]
    bn_record: BatchNormParams | None
    activation_model: Activation
    tensors: list[str]
    tensor: str


def _match_depthwise(index: GraphIndex, tensor: str, n: int) -> _DepthwiseTail | None:
    """A depthwise Conv (``group = N``, one kernel per channel) as the sole reader of
    ``tensor``, with its own bias, normalisation and activation; None if there is none."""
    conv = _next(index, tensor)
    if conv is None or conv.op_type != "Conv" or n == 1 or attribute(conv, "group", 1) != n:
        return None
    if conv.domain not in ("", "ai.onnx"):
        return None
    weight = _constant(index, conv, 1, "depthwise weight")
    if weight.value.shape[:2] != (n, 1):
        shape = list(weight.value.shape)
        raise _Decline(f"depthwise Conv '{node_name(conv)}' with weight {shape} (multiplier != 1)")
    tail = _match_chain(index, conv, depthwise=True)
    slices = [(weight, 0)]
    if tail.bias is not None:
        slices.append((tail.bias, channel_axis(tail.bias.value, n)))
    slices += [(p, channel_axis(p.value, n)) for p in tail.bn_params]
    if tail.slope is not None:
        slices.append((tail.slope, channel_axis(tail.slope.value, n)))
    return _DepthwiseTail(
        conv,
        tail.rows,
        tail.b,
        slices,
        tail.bn_record,
        tail.activation_model,
        tail.tensors,
        tail.tensor,
    )


def channel_axis(value: np.ndarray, channels: int) -> int:
    """The axis of a per-channel vector (``[C]``, ``[C,1,1]``, ``[1,C,1,1]``, ``[1,C]``)."""
    return next((a for a, d in enumerate(value.shape) if d == channels), 0)


def composite_arrays(
    chain: LayerArrays, kernels: np.ndarray, bias: np.ndarray, bn: BatchNormParams | None
) -> LayerArrays:
    """The arrays of a depthwise group: producer ``w_j`` (BN folded in: ``rho_j w_j``, bias
    ``c_j``), then depthwise kernel ``k_j`` and bias ``d_j``.

    Ignoring the activation between them, channel ``j`` before the second normalisation is
    ``k_j * (rho_j w_j . x + c_j) + d_j``: a linear map of the input whose filter is the
    tensor product ``rho_j w_j (x) k_j`` (exactly the composite filter when the producer is
    1x1) and whose constant is ``c_j sum(k_j) + d_j`` (away from zero-padded borders). A
    combination of these composite filters is the same combination of the composed maps, so
    LBYL, Neuron Merging and the criteria apply to them unchanged, with ``bn`` (after the
    depthwise conv) folded as usual. Memory: ``N x d k`` floats.
    """
    folded = chain.folded_weight
    rows = (folded[:, :, None] * kernels.astype(np.float64)[:, None, :]).reshape(len(folded), -1)
    constant = chain.folded_bias * kernels.astype(np.float64).sum(axis=1) + bias
    return LayerArrays(rows.astype(np.float32), constant, bn)


def _match_unit(index: GraphIndex, producer: onnx.NodeProto, shapes) -> Unit:
    chain = _match_chain(index, producer)
    n = chain.rows.shape[0]
    tensors = list(chain.tensors)
    tensor = chain.tensor
    arrays = LayerArrays(chain.rows, chain.b, chain.bn_record)
    activation_model = chain.activation_model
    notes: list[str] = []
    extra: list[tuple[Operand, int]] = []
    regroup: list[onnx.NodeProto] = []
    producers = [producer]
    tail = _match_depthwise(index, tensor, n) if chain.kind == "conv" else None
    if tail is not None:
        arrays = composite_arrays(arrays, tail.kernels, tail.bias, tail.bn_record)
        activation_model = tail.activation_model
        extra, regroup = tail.slices, [tail.conv]
        producers.append(tail.conv)
        tensors += tail.tensors
        tensor = tail.tensor
        notes.append(f"coupled with depthwise Conv '{node_name(tail.conv)}'")
    layout = "spatial" if chain.kind == "conv" else "features"
    reshapes: list[tuple[Operand, int, int]] = []
    consumers = _match_consumers(index, tensor, layout, n, shapes, tensors, notes, reshapes)
    reads = {c.channels_tensor for c in consumers}
    record = reads.pop() if len(reads) == 1 else tensor
    return _chain_unit(
        chain,
        consumers=consumers,
        tensors=tensors,
        arrays=arrays,
        activation_model=activation_model,
        reshapes=reshapes,
        record=record,
        notes=notes,
        extra_slices=extra,
        regroup=regroup,
        producers=producers,
    )


def _chain_unit(chain: _Chain, **fields) -> Unit:
    """A unit whose main producer is ``chain``'s, with the other fields given."""
    producer = chain.weight.node
    return Unit(
        name=node_name(producer),
        producer=producer,
        kind=chain.kind,
        weight=chain.weight,
        bias=chain.bias,
        bn=chain.bn,
        bn_params=chain.bn_params,
        activation=chain.activation,
        slope=chain.slope,
        **fields,
    )


def _flatten_block(tensor: str, shapes, n: int, channels_last: bool = False) -> int:
    """``h*w``: the columns each channel owns after flattening ``tensor`` (``N, C, h, w...``,
    or ``N, h, w..., C`` when ``channels_last``)."""
    shape = shapes.get(tensor)
    if shape is None or len(shape) < 2:
        raise _Decline(f"shape of '{tensor}' before the flatten is unknown")
    spatial, c = (shape[1:-1], shape[-1]) if channels_last else (shape[2:], shape[1])
    if any(not isinstance(d, int) for d in spatial):
        raise _Decline(f"spatial size of '{tensor}' before the flatten is not static")
    if isinstance(c, int) and c != n:
        raise _Decline(f"'{tensor}' has {c} channels, expected {n}")
    return int(np.prod(spatial, dtype=np.int64))


def _shape_reads_only_batch(index: GraphIndex, node: onnx.NodeProto, shape) -> bool:
    """Whether every use of ``Shape(x)`` only extracts ``x``'s first (batch) dimension, through
    constant ``Gather``, ``Slice`` and ``Cast`` (how tf2onnx builds a flatten's target)."""
    if shape is None or attribute(node, "start") not in (None, 0):
        return False
    pending = [(node.output[0], list(range(len(shape))))]
    while pending:
        tensor, dims = pending.pop()
        if tensor in index.graph_outputs and dims != [0]:
            return False
        for reader in index.readers.get(tensor, []):
            op, follower = reader.node.op_type, reader.node
            if reader.index != 0 or op not in ("Gather", "Slice", "Cast"):
                if dims != [0]:
                    return False
                continue  # only the batch goes on from here
            if op == "Cast":
                kept = dims
            elif op == "Gather":
                indices = index.value(follower.input[1])
                if indices is None:
                    return False
                kept = [dims[int(i)] for i in np.atleast_1d(indices)]
            else:
                values = [index.value(name) if name else None for name in follower.input[1:]]
                if len(values) < 2 or values[0] is None or values[1] is None:
                    return False
                if len(values) > 3 and values[3] is not None and np.any(values[3] != 1):
                    return False
                if len(values) > 2 and values[2] is not None and np.any(values[2] != 0):
                    return False
                start, end = int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0])
                kept = dims[start:end]
            pending.append((follower.output[0], kept))
    return True


def _to_channels_last(node: onnx.NodeProto, shapes, n: int) -> bool:
    """A Transpose ``[0, 2, ..., r-1, 1]``: NCHW to NHWC (before a flatten, tf2onnx style)."""
    perm = list(attribute(node, "perm", []) or [])
    rank = len(perm)
    return rank >= 3 and perm == [0, *range(2, rank), 1]


def _flattening_reshape(
    index: GraphIndex, node: onnx.NodeProto, shapes, tensor: str
) -> tuple[Operand, int] | None:
    """Check a Reshape that flattens to ``[batch, C*h*w]``.

    Accepted targets: ``[0 | -1 | batch, -1]`` (nothing to rewrite, returns None),
    ``[0 | -1 | batch, C*h*w]`` (returns the target and the position 1 of the entry to
    rewrite), and a target computed as ``Concat(batch taken from a Shape, [C*h*w] or [-1])``
    (tf2onnx; returns the constant and position 0).
    """
    target = index.value(node.input[1]) if len(node.input) > 1 else None
    shape = shapes.get(tensor)
    if target is None and shape is not None and len(node.input) > 1:
        return _concat_target(index, node, shape)
    if target is None or target.size != 2 or shape is None or len(shape) < 2:
        raise _Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")
    first, second = (int(v) for v in target.reshape(-1))
    batch_ok = first in (0, -1) or (isinstance(shape[0], int) and first == shape[0])
    if batch_ok and second == -1 and first != -1:
        return None
    dims = shape[1:]
    if batch_ok and all(isinstance(d, int) for d in dims) and second == int(np.prod(dims)):
        if index.is_shared(node.input[1]):
            raise _Decline(f"shape of Reshape '{node_name(node)}' is shared with another node")
        return Operand(node, 1, target), 1
    raise _Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")


def _concat_target(index: GraphIndex, node: onnx.NodeProto, shape) -> tuple[Operand, int] | None:
    """A Reshape target ``Concat(<batch, computed>, [C*h*w] | [-1])``, axis 0."""
    concat = index.producer.get(node.input[1])
    if concat is None or concat.op_type not in ("Concat", "Cast"):
        raise _Decline(f"Reshape '{node_name(node)}' has a computed shape")
    if concat.op_type == "Cast":  # tf2onnx casts the shape to int64
        concat = index.producer.get(concat.input[0])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        raise _Decline(f"Reshape '{node_name(node)}' has a computed shape")
    columns = index.value(concat.input[1])
    dims = shape[1:]
    if columns is None or columns.size != 1 or not all(isinstance(d, int) for d in dims):
        raise _Decline(f"Reshape '{node_name(node)}' has a computed shape")
    value = int(columns.reshape(-1)[0])
    if value == -1:
        return None
    if value != int(np.prod(dims)) or index.is_shared(concat.input[1]):
        raise _Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")
    operand = Operand(concat, 1, index.value(concat.input[1]))
    return operand, 0


def _match_consumers(
    index, tensor, layout, n, shapes, tensors, notes, reshapes, internal=frozenset()
) -> list[Consumer]:
    """Walk from the activation output through pass-through ops to the consumers.

    ``layout`` is ``spatial`` (channels on axis 1 of an N-D tensor), ``flat`` (after a
    flatten, each channel owns ``block`` consecutive columns), ``spatial_last`` (an NCHW
    tensor transposed to NHWC, as tf2onnx writes before a flatten), ``flat_interleaved``
    (that flattened: column ``p * N + c`` belongs to channel ``c``) or ``features``
    (channels on the last axis, the output of a Gemm/MatMul).
    """
    consumers: list[Consumer] = []
    frontier = [(tensor, layout, 1, tensor)]
    while frontier:
        current, layout, block, channels = frontier.pop(0)
        if layout in ("spatial", "features"):
            channels = current
        if current in index.graph_outputs:
            raise _Decline(f"'{current}' is a graph output")
        readers = [r for r in index.readers.get(current, []) if id(r.node) not in internal]
        if not readers and not internal:
            raise _Decline(f"'{current}' is not read by any node")
        for reader in readers:
            node, position = reader.node, reader.index
            op = node.op_type
            if position < 0:
                raise _Decline(f"'{current}' is read inside a subgraph of {op} '{node_name(node)}'")
            if node.domain not in ("", "ai.onnx"):
                raise _Decline(f"'{current}' is read by custom op {node.domain}.{op}")
            if position != 0:
                raise _Decline(f"'{current}' is input {position} of {op} '{node_name(node)}'")
            extra = [o for o in node.output[1:] if o and index.readers.get(o)]
            if op in ANY_PASS_THROUGH or (op in SPATIAL_PASS_THROUGH and layout == "spatial"):
                if extra:
                    raise _Decline(f"second output of {op} '{node_name(node)}' is used")
                if op in APPROXIMATE_PASS_THROUGH:
                    notes.append(f"{op} between activation and consumer: compensation approximate")
                tensors.append(node.output[0])
                frontier.append((node.output[0], layout, block, channels))
            elif op == "Shape" and _shape_reads_only_batch(index, node, shapes.get(current)):
                continue  # the batch size is all it reads: independent of the channel count
            elif op == "Transpose" and layout == "spatial" and _to_channels_last(node, shapes, n):
                tensors.append(node.output[0])
                frontier.append((node.output[0], "spatial_last", 1, channels))
            elif op == "Flatten" and layout in ("spatial", "spatial_last"):
                if attribute(node, "axis", 1) != 1:
                    raise _Decline(f"Flatten '{node_name(node)}' with axis != 1")
                tensors.append(node.output[0])
                block = _flatten_block(current, shapes, n, layout == "spatial_last")
                flat = "flat" if layout == "spatial" else "flat_interleaved"
                frontier.append((node.output[0], flat, block, channels))
            elif op == "Reshape" and layout in ("spatial", "spatial_last"):
                target = _flattening_reshape(index, node, shapes, current)
                block = _flatten_block(current, shapes, n, layout == "spatial_last")
                if target is not None:
                    reshapes.append((*target, block))
                tensors.append(node.output[0])
                flat = "flat" if layout == "spatial" else "flat_interleaved"
                frontier.append((node.output[0], flat, block, channels))
            elif op == "Squeeze" and layout == "spatial" and _squeezes_to_channels(shapes, node, n):
                tensors.append(node.output[0])
                frontier.append((node.output[0], "flat", 1, channels))
            elif op == "Conv" and layout == "spatial":
                consumers.append(_with_bias(index, _conv_consumer(index, node, n), channels))
            elif op in ("Gemm", "MatMul") and layout in ("flat", "features", "flat_interleaved"):
                consumer = _dense_consumer(index, node, n, block, layout == "flat_interleaved")
                consumers.append(_with_bias(index, consumer, channels))
            else:
                raise _Decline(f"'{current}' is read by {op} '{node_name(node)}'")
    return consumers


def _with_bias(index: GraphIndex, consumer: Consumer, channels: str) -> Consumer:
    """The consumer with the tensor it reads the channels from, and its bias if it has one
    that only it reads (a bias correction can then be folded into it)."""
    node = consumer.node
    bias = None
    try:
        if consumer.kind in ("conv", "gemm") and len(node.input) > 2 and node.input[2]:
            bias = _constant(index, node, 2, "consumer bias")
        elif consumer.kind == "matmul":
            reader = _next(index, node.output[0])
            if reader is not None and reader.op_type == "Add":
                other = 1 if reader.input[0] == node.output[0] else 0
                value = index.value(reader.input[other])
                if value is not None and value.ndim <= 2:
                    bias = _constant(index, reader, other, "consumer bias")
    except _Decline:
        bias = None
    return replace(consumer, channels_tensor=channels, bias=bias)


def _squeezes_to_channels(shapes, node: onnx.NodeProto, n: int) -> bool:
    """A Squeeze of the 1x1 spatial axes after a global pool: ``[N, C, 1, 1] -> [N, C]``."""
    before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
    if before is None or after is None or len(after) != 2 or len(before) < 3:
        return False
    return all(d == 1 for d in before[2:]) and after[1] in (n, None)


def _conv_consumer(index: GraphIndex, node: onnx.NodeProto, n: int) -> Consumer:
    weight = _constant(index, node, 1, "consumer weight")
    group = attribute(node, "group", 1)
    if group != 1:
        kind = "depthwise" if weight.value.shape[1] == 1 else "grouped"
        raise _Decline(f"consumer '{node_name(node)}' is a {kind} Conv (group={group})")
    if weight.value.shape[1] != n:
        raise _Decline(f"consumer '{node_name(node)}' expects {weight.value.shape[1]} channels")
    return Consumer(node, "conv", weight)


def _dense_consumer(
    index: GraphIndex, node: onnx.NodeProto, n: int, block: int, interleaved: bool = False
) -> Consumer:
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        raise _Decline(f"consumer Gemm '{node_name(node)}' has transA=1")
    weight = _constant(index, node, 1, "consumer weight")
    if weight.value.ndim != 2:
        raise _Decline(f"consumer '{node_name(node)}' weight is not 2-D")
    transposed = node.op_type == "Gemm" and bool(attribute(node, "transB", 0))
    columns = weight.value.shape[1] if transposed else weight.value.shape[0]
    if columns != n * block:
        raise _Decline(
            f"consumer '{node_name(node)}' reads {columns} features, expected {n * block}"
        )
    kind = "gemm" if node.op_type == "Gemm" else "matmul"
    return Consumer(node, kind, weight, block, transposed, interleaved)


RESIDUAL_OPS = {"Add", "Sum"}
"""Ops that sum the tensors of a residual group (``Sum``: Caffe2)."""

GROUP_INTERNAL = {
    "Relu",
    "LeakyRelu",
    "Clip",
    "PRelu",
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
}
"""Channel-wise ops a residual group's channels may pass through between its sums."""


def _is_residual_sum(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """An ``Add``/``Sum`` of two or more computed (non-constant) tensors."""
    if node.op_type not in RESIDUAL_OPS or node.domain not in ("", "ai.onnx"):
        return False
    inputs = [name for name in node.input if name]
    return len(inputs) >= 2 and all(index.value(name) is None for name in inputs)


def _residual_groups(index: GraphIndex, shapes) -> tuple[list[Unit], list[Declined]]:
    """One unit per residual group of the graph, or a declined record named after its sum."""
    units: list[Unit] = []
    declined: list[Declined] = []
    seen: set[int] = set()
    for node in index.model.graph.node:
        if id(node) in seen or not _is_residual_sum(index, node):
            continue
        try:
            unit, sums = _match_residual(index, node, shapes)
        except _Decline as why:
            declined.append(Declined(node_name(node), node.op_type, f"residual group: {why}"))
            seen.add(id(node))
            continue
        seen.update(sums)
        units.append(unit)
    return units, declined


def _trace_to_producer(index: GraphIndex, tensor: str) -> onnx.NodeProto:
    """The Conv whose chain (bias Add, normalisation, no activation) ends at ``tensor``."""
    node = index.producer.get(tensor)
    for _ in range(4):  # Conv -> [bias Add] -> [BN | Mul -> [Add]]
        if node is None:
            break
        if node.op_type == "Conv":
            return node
        if node.op_type not in ("BatchNormalization", "Mul", "Add"):
            break
        node = index.producer.get(node.input[0]) or index.producer.get(node.input[-1])
    what = "a graph input" if node is None else f"{node.op_type} '{node_name(node)}'"
    raise _Decline(f"'{tensor}' comes from {what}, not from a Conv")


def _match_residual(index: GraphIndex, start: onnx.NodeProto, shapes) -> tuple[Unit, set[int]]:
    """The residual group around the sum ``start``: every tensor connected to it through
    sums and channel-wise ops shares its channels, so channel ``j`` is removed from all of
    them at once.

    Channel ``j`` of every tensor of the group is a sum of the producers' channels ``j``
    (through the channel-wise ops). If each producer's folded filter satisfies
    ``wt_pj ~ sum_i s_ij wt_pi`` with the same ``s``, so do their sums: the methods are
    applied to the producers' folded filters side by side (``[wt_1j, wt_2j, ...]``, biases
    added), and ``S`` is folded into every reader of every tensor of the group.
    """
    group: list[str] = []
    internal: dict[int, onnx.NodeProto] = {id(start): start}
    chains: list[tuple[onnx.NodeProto, _Chain]] = []
    pending = [name for name in start.input if name] + [start.output[0]]
    while pending:
        tensor = pending.pop(0)
        if tensor in group:
            continue
        if tensor in index.graph_outputs:
            raise _Decline(f"'{tensor}' is a graph output")
        group.append(tensor)
        node = index.producer.get(tensor)
        if node is not None and (_is_residual_sum(index, node) or node.op_type in GROUP_INTERNAL):
            internal[id(node)] = node
            pending += [node.input[0]] if node.op_type in GROUP_INTERNAL else list(node.input)
        elif all(chain[0] is not node for chain in chains):
            conv = _trace_to_producer(index, tensor)
            chain = _match_chain(index, conv, activation=False)
            if chain.tensor != tensor or chain.kind != "conv":
                raise _Decline(f"'{tensor}' is not the end of the chain of '{node_name(conv)}'")
            chains.append((node, chain))
        for reader in index.readers.get(tensor, []):
            follower = reader.node
            if _is_residual_sum(index, follower):
                internal[id(follower)] = follower
                pending += [follower.output[0], *(i for i in follower.input if i)]
            elif follower.op_type in GROUP_INTERNAL and reader.index == 0:
                internal[id(follower)] = follower
                pending.append(follower.output[0])
    n = chains[0][1].rows.shape[0]
    if any(chain.rows.shape[0] != n for _, chain in chains):
        raise _Decline("the producers of the group have different channel counts")
    extra: list[tuple[Operand, int]] = []
    notes: list[str] = []
    for node in internal.values():
        if node.op_type in ACTIVATIONS:
            slope = _match_activation(index, node, n, chains[0][1].channel_axis)
            if slope is not None:
                extra.append((slope, channel_axis(slope.value, n)))
        elif node.op_type == "MaxPool":
            notes.append("MaxPool inside the group: compensation approximate")
    chains.sort(key=lambda c: list(index.model.graph.node).index(c[1].weight.node))
    first = chains[0][1]
    for _, chain in chains[1:]:
        extra.append((chain.weight, 0))
        if chain.bias is not None:
            extra.append((chain.bias, channel_axis(chain.bias.value, n)))
        extra += [(p, channel_axis(p.value, n)) for p in chain.bn_params]
    tensors = [*group, *(t for _, chain in chains for t in chain.tensors)]
    consumers: list[Consumer] = []
    reshapes: list[tuple[Operand, int, int]] = []
    skip = frozenset(internal)
    for tensor in group:
        if any(id(r.node) not in skip for r in index.readers.get(tensor, [])):
            consumers += _match_consumers(
                index, tensor, "spatial", n, shapes, tensors, notes, reshapes, skip
            )
    if not consumers:
        raise _Decline("no Conv, Gemm or MatMul reads the group")
    folded = [LayerArrays(c.rows, c.b, c.bn_record) for _, c in chains]
    arrays = LayerArrays(
        np.hstack([a.folded_weight for a in folded]).astype(np.float32),
        np.sum([a.folded_bias for a in folded], axis=0),
    )
    producers = [chain.weight.node for _, chain in chains]
    notes.insert(0, "residual group of " + ", ".join(f"'{node_name(p)}'" for p in producers))
    unit = _chain_unit(
        first,
        consumers=consumers,
        tensors=tensors,
        arrays=arrays,
        reshapes=reshapes,
        record=consumers[-1].channels_tensor,
        notes=notes,
        extra_slices=extra,
        producers=producers,
    )
    return unit, {i for i, node in internal.items() if _is_residual_sum(index, node)}
