"""Residual groups: producers coupled through sums share their channels, so channel ``j`` is
removed from all of them at once.

Channel ``j`` of every tensor of the group is a sum of the producers' channels ``j``
(through the channel-wise ops). If each producer's folded filter satisfies
``wt_pj ~ sum_i s_ij wt_pi`` with the same ``s``, so do their sums: the methods are applied
to the producers' folded filters side by side (``[wt_1j, wt_2j, ...]``, biases added), and
``S`` is folded into every reader of every tensor of the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..methods.base import LayerArrays
from .chain import Chain, chain_unit, match_chain
from .consumers import Walk, walk_consumers
from .index import GraphIndex
from .layouts import Shapes
from .matching import Decline, only_first_output
from .ops import op_spec
from .records import (
    Approximation,
    Declined,
    Layout,
    MatrixKind,
    Operand,
    Unit,
    channel_axis,
    node_name,
)

INSIDE = "inside the group"
"""Where an approximate op inside a group sits
(:class:`~lbyl_onnx.graph.records.Approximation`)."""


@dataclass
class _Group:
    """The tensors around a sum that share its channels, the sums and channel-wise ops
    between them (by ``id``), and the chains that produce them."""

    tensors: list[str] = field(default_factory=list)
    internal: dict[int, onnx.NodeProto] = field(default_factory=dict)
    chains: list[tuple[onnx.NodeProto | None, Chain]] = field(default_factory=list)


def is_residual_sum(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A coupling op of the table (``Add``, ``Sum``) of two or more computed tensors."""
    spec = op_spec(node)
    if spec is None or not spec.coupling:
        return False
    inputs = [name for name in node.input if name]
    return len(inputs) >= 2 and all(index.value(name) is None for name in inputs)


def _group_internal(node: onnx.NodeProto) -> bool:
    spec = op_spec(node)
    return spec is not None and spec.group_internal


def residual_groups(index: GraphIndex, shapes: Shapes) -> tuple[list[Unit], list[Declined]]:
    """One unit per residual group of the graph, or a declined record named after its sum."""
    units: list[Unit] = []
    declined: list[Declined] = []
    seen: set[int] = set()
    for node in index.model.graph.node:
        if id(node) in seen or not is_residual_sum(index, node):
            continue
        try:
            unit, sums = match_residual(index, node, shapes)
        except Decline as why:
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
        spec = None if node is None else op_spec(node)
        if spec is None:
            break
        if spec.producer is not None and spec.producer.kind is MatrixKind.CONV:
            return node
        if not spec.affine:
            break
        node = index.producer.get(node.input[0]) or index.producer.get(node.input[-1])
    what = "a graph input" if node is None else f"{node.op_type} '{node_name(node)}'"
    raise Decline(f"'{tensor}' comes from {what}, not from a Conv")


def _collect(index: GraphIndex, start: onnx.NodeProto) -> _Group:
    """Every tensor connected to the sum ``start`` through sums and group-internal ops, and
    the chain that produces each of the others."""
    group = _Group(internal={id(start): start})
    pending = [name for name in start.input if name] + [start.output[0]]
    while pending:
        tensor = pending.pop(0)
        if tensor in group.tensors:
            continue
        if tensor in index.graph_outputs:
            raise Decline(f"'{tensor}' is a graph output")
        group.tensors.append(tensor)
        node = index.producer.get(tensor)
        if node is not None and (is_residual_sum(index, node) or _group_internal(node)):
            only_first_output(index, node)
            group.internal[id(node)] = node
            pending += [node.input[0]] if _group_internal(node) else list(node.input)
        elif all(chain[0] is not node for chain in group.chains):
            conv = _trace_to_producer(index, tensor)
            chain = match_chain(index, conv, activation=False)
            if chain.tensor != tensor or chain.kind is not MatrixKind.CONV:
                raise Decline(f"'{tensor}' is not the end of the chain of '{node_name(conv)}'")
            group.chains.append((node, chain))
        for reader in index.readers.get(tensor, []):
            follower = reader.node
            if is_residual_sum(index, follower):
                group.internal[id(follower)] = follower
                pending += [follower.output[0], *(i for i in follower.input if i)]
            elif _group_internal(follower) and reader.index == 0:
                only_first_output(index, follower)
                group.internal[id(follower)] = follower
                pending.append(follower.output[0])
    return group


def _internal_parts(
    index: GraphIndex, group: _Group, n: int, axis: int
) -> tuple[list[tuple[Operand, int]], list[Approximation]]:
    """The per-channel slopes of the activations inside the group (to slice), and its
    approximate ops."""
    slices: list[tuple[Operand, int]] = []
    approximations: list[Approximation] = []
    for node in group.internal.values():
        spec = op_spec(node)
        if spec is not None and spec.activation is not None:
            _, slope = spec.activation.matched(index, node, n, axis)
            if slope is not None:
                slices.append((slope, channel_axis(slope.value, n)))
        elif spec is not None and spec.approximate:
            approximations.append(Approximation(node.op_type, INSIDE))
    return slices, approximations


def _other_producers(chains: list[Chain], n: int) -> list[tuple[Operand, int]]:
    """The weights, biases and normalisations of every producer but the first, to slice."""
    slices: list[tuple[Operand, int]] = []
    for chain in chains[1:]:
        slices.append((chain.weight, 0))
        if chain.bias is not None:
            slices.append((chain.bias, channel_axis(chain.bias.value, n)))
        slices += [(p, channel_axis(p.value, n)) for p in chain.bn_params]
    return slices


def match_residual(
    index: GraphIndex, start: onnx.NodeProto, shapes: Shapes
) -> tuple[Unit, set[int]]:
    """The residual group around the sum ``start`` (module docstring), and its sums (by id)."""
    group = _collect(index, start)
    n = group.chains[0][1].rows.shape[0]
    if any(chain.rows.shape[0] != n for _, chain in group.chains):
        raise Decline("the producers of the group have different channel counts")
    extra, approximations = _internal_parts(index, group, n, group.chains[0][1].channel_axis)
    order = {node.output[0]: i for i, node in enumerate(index.model.graph.node)}
    chains = sorted((c for _, c in group.chains), key=lambda c: order[c.weight.node.output[0]])
    extra += _other_producers(chains, n)
    walk = Walk(
        tensors=[*group.tensors, *(t for chain in chains for t in chain.tensors)],
        approximations=approximations,
    )
    skip = frozenset(group.internal)
    for tensor in group.tensors:
        if any(id(r.node) not in skip for r in index.readers.get(tensor, [])):
            walk_consumers(index, tensor, Layout.SPATIAL, n, shapes, walk, skip)
    if not walk.consumers:
        raise Decline("no Conv, Gemm or MatMul reads the group")
    folded = [LayerArrays(c.rows, c.b, c.bn_record) for c in chains]
    arrays = LayerArrays(
        np.hstack([a.folded_weight for a in folded]).astype(np.float32),
        np.sum([a.folded_bias for a in folded], axis=0),
    )
    producers = [chain.weight.node for chain in chains]
    unit = chain_unit(
        chains[0],
        consumers=walk.consumers,
        tensors=walk.tensors,
        arrays=arrays,
        reshapes=walk.reshapes,
        record=walk.consumers[-1].channels_tensor,
        remarks=["residual group of " + ", ".join(f"'{node_name(p)}'" for p in producers)],
        approximations=walk.approximations,
        extra_slices=extra,
        producers=producers,
    )
    sums = {i for i, node in group.internal.items() if is_residual_sum(index, node)}
    return unit, sums
