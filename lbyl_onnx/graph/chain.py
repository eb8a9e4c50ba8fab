"""A producer's chain of per-channel ops: ``producer -> [bias Add] -> [BN] -> [activation]``,
and a depthwise conv coupled after it.

Each op of a chain is the sole reader of the tensor before it; which ops may stand where is
the op table's (:mod:`lbyl_onnx.graph.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..methods.base import BatchNormParams, LayerArrays
from ..methods.moments import Activation
from .index import GraphIndex, attribute
from .matching import (
    Decline,
    constant,
    is_standard,
    only_first_output,
    per_channel_operand,
    sole_reader,
)
from .ops import op_spec
from .records import Layout, MatrixKind, NodeRef, Operand, Unit, channel_axis, node_name


@dataclass
class Chain:
    """A producer and the per-channel ops right after it: ``[bias Add] -> [BN] -> [act]``."""

    kind: MatrixKind
    layout: Layout
    weight: Operand
    weight_axis: int
    bias: Operand | None
    rows: np.ndarray
    b: np.ndarray
    bn: NodeRef | None
    bn_params: list[Operand]
    bn_record: BatchNormParams | None
    activation: NodeRef | None
    slope: Operand | None
    activation_model: Activation
    tensors: list[str]
    tensor: str
    """The last tensor of the chain (what the readers of the channels read)."""
    channel_axis: int


def match_chain(
    index: GraphIndex, producer: onnx.NodeProto, depthwise: bool = False, activation: bool = True
) -> Chain:
    """The producer, then (each optional) a BatchNormalization or its Mul/Add form and, with
    ``activation``, an activation of the op table, each the sole reader of the tensor before
    it."""
    spec = op_spec(producer)
    if spec is None or spec.producer is None:
        raise Decline(f"{producer.op_type} '{node_name(producer)}' is not a producer")
    role = spec.producer
    only_first_output(index, producer)
    produced = role.match(index, producer, depthwise)
    n = produced.rows.shape[0]
    tensor, axis = produced.tensor, produced.channel_axis
    tensors = [producer.output[0]] if tensor == producer.output[0] else [producer.output[0], tensor]
    bn, bn_params, bn_record = match_normalisation(index, tensor, n, axis)
    if bn_params:
        tensor = bn_params[-1].node.output[0] if bn is None else bn.output[0]
        tensors.extend([bn.output[0]] if bn else [p.node.output[0] for p in bn_params])
    node, slope, model = None, None, Activation("identity")
    reader = sole_reader(index, tensor)
    spec = op_spec(reader) if reader is not None else None
    if activation and spec is not None and spec.activation is not None:
        only_first_output(index, reader)
        node = NodeRef.of(reader)
        model, slope = spec.activation.matched(index, reader, n, axis)
        tensor = reader.output[0]
        tensors.append(tensor)
    return Chain(
        kind=role.kind,
        layout=role.layout,
        weight=produced.weight,
        weight_axis=produced.weight_axis,
        bias=produced.bias,
        rows=np.asarray(produced.rows),
        b=np.asarray(produced.b),
        bn=bn,
        bn_params=bn_params,
        bn_record=bn_record,
        activation=node,
        slope=slope,
        activation_model=model,
        tensors=tensors,
        tensor=tensor,
        channel_axis=axis,
    )


def chain_unit(chain: Chain, **fields) -> Unit:
    """A unit whose main producer is ``chain``'s, with the other fields given."""
    producer = chain.weight.node
    return Unit(
        name=node_name(producer),
        producer=producer,
        kind=chain.kind,
        layout=chain.layout,
        weight=chain.weight,
        weight_axis=chain.weight_axis,
        bias=chain.bias,
        bn=chain.bn,
        bn_params=chain.bn_params,
        activation=chain.activation,
        slope=chain.slope,
        **fields,
    )


def match_normalisation(
    index: GraphIndex, tensor: str, n: int, channel_axis: int
) -> tuple[NodeRef | None, list[Operand], BatchNormParams | None]:
    """A BatchNormalization reading ``tensor`` (node, its four parameters, the record), or
    its ``Mul``/``Add`` form (no node, the constants, a record without statistics)."""
    reader = sole_reader(index, tensor)
    if reader is not None and reader.op_type == "BatchNormalization":
        params, eps = _match_bn(index, reader, n)
        gamma, beta, mean, var = (p.value.reshape(-1).astype(np.float64) for p in params)
        return NodeRef.of(reader), params, BatchNormParams(gamma, beta, mean, var, eps)
    scale_shift = _match_scale_shift(index, tensor, n, channel_axis)
    if scale_shift is None:
        return None, [], None
    params, record = scale_shift
    return None, params, record


def _match_bn(index: GraphIndex, node: onnx.NodeProto, n: int) -> tuple[list[Operand], float]:
    try:
        only_first_output(index, node)
    except Decline as why:
        raise Decline(f"BatchNormalization in training mode: {why}") from None
    if attribute(node, "spatial", 1) == 0:
        raise Decline("BatchNormalization with spatial=0 (per-element statistics)")
    params = [constant(index, node, i, f"BatchNormalization input {i}") for i in range(1, 5)]
    if any(p.value.size != n for p in params):
        raise Decline("BatchNormalization parameters are not per-channel")
    eps = float(attribute(node, "epsilon", 1e-5))
    if not np.all(params[3].value.astype(np.float64) + eps > 0):
        raise Decline("BatchNormalization variance + epsilon is not positive (NaN or Inf)")
    return params, eps


def _match_scale_shift(
    index: GraphIndex, tensor: str, n: int, channel_axis: int
) -> tuple[list[Operand], BatchNormParams] | None:
    """BatchNormalization written as ``Mul`` by a per-channel scale, then optionally ``Add``
    of a per-channel shift: ``gamma = scale``, ``beta = shift``, no statistics."""
    scale = per_channel_operand(index, tensor, "Mul", n, channel_axis)
    if scale is None:
        return None
    shift = per_channel_operand(index, scale.node.output[0], "Add", n, channel_axis)
    params = [scale]
    beta = np.zeros(n)
    if shift is not None:
        params.append(shift)
        beta = shift.value.reshape(-1).astype(np.float64)
    gamma = scale.value.reshape(-1).astype(np.float64)
    return params, BatchNormParams(gamma, beta, np.zeros(n), np.ones(n), 0.0, statistics=False)


@dataclass
class DepthwiseTail:
    """``depthwise Conv -> [bias Add] -> [BN] -> [act]`` after a unit's chain."""

    conv: NodeRef
    kernels: np.ndarray
    """``N x k`` (one spatial kernel per channel, flattened)."""
    bias: np.ndarray
    slices: list[tuple[Operand, int]]
    bn_record: BatchNormParams | None
    activation_model: Activation
    tensors: list[str]
    tensor: str


def match_depthwise(index: GraphIndex, tensor: str, n: int) -> DepthwiseTail | None:
    """A depthwise Conv (``group = N``, one kernel per channel) as the sole reader of
    ``tensor``, with its own bias, normalisation and activation; None if there is none."""
    conv = sole_reader(index, tensor)
    if conv is None or conv.op_type != "Conv" or n == 1 or attribute(conv, "group", 1) != n:
        return None
    if not is_standard(conv):
        return None
    weight = constant(index, conv, 1, "depthwise weight")
    if weight.value.shape[:2] != (n, 1):
        shape = list(weight.value.shape)
        raise Decline(f"depthwise Conv '{node_name(conv)}' with weight {shape} (multiplier != 1)")
    tail = match_chain(index, conv, depthwise=True)
    slices = [(weight, 0)]
    if tail.bias is not None:
        slices.append((tail.bias, channel_axis(tail.bias.value, n)))
    slices += [(p, channel_axis(p.value, n)) for p in tail.bn_params]
    if tail.slope is not None:
        slices.append((tail.slope, channel_axis(tail.slope.value, n)))
    return DepthwiseTail(
        NodeRef.of(conv),
        tail.rows,
        tail.b,
        slices,
        tail.bn_record,
        tail.activation_model,
        tail.tensors,
        tail.tensor,
    )


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
    constant_part = chain.folded_bias * kernels.astype(np.float64).sum(axis=1) + bias
    return LayerArrays(rows.astype(np.float32), constant_part, bn)
