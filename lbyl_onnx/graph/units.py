"""Find prunable units in a graph, and decline the rest with a reason.

A unit (LBYL.md section 1)::

    x --Conv|Gemm|MatMul(+Add)--> z --[BatchNormalization]--> --[activation]--> r
      --[channel-wise ops]--> consumers (Conv group 1, or Gemm/MatMul after a flatten)

Every check returns a reason instead of raising: :func:`find_units` gives, for every
candidate producer, either a :class:`Unit` or a :class:`Declined` record. Which ops may stand
where is the op table's (:mod:`lbyl_onnx.graph.ops`); the parts are matched in
:mod:`~lbyl_onnx.graph.chain` (producer, normalisation, activation, depthwise coupling),
:mod:`~lbyl_onnx.graph.consumers` (the walk to the consumers) and
:mod:`~lbyl_onnx.graph.residual` (residual groups).
"""

from __future__ import annotations

import onnx

from ..methods.base import LayerArrays
from .chain import chain_unit, composite_arrays, match_chain, match_depthwise
from .consumers import Walk, walk_consumers
from .index import GraphIndex
from .layouts import Shapes
from .matching import Decline
from .ops import op_spec
from .records import (
    Approximation,
    Consumer,
    Declined,
    Layout,
    MatrixKind,
    NodeRef,
    Operand,
    Unit,
    channel_axis,
    node_name,
    units_by_tensor,
)
from .residual import residual_groups

__all__ = [
    "Approximation",
    "Consumer",
    "Declined",
    "Layout",
    "MatrixKind",
    "NodeRef",
    "Operand",
    "Unit",
    "channel_axis",
    "composite_arrays",
    "find_units",
    "node_name",
    "units_by_tensor",
]


def find_units(
    model: onnx.ModelProto, shapes: Shapes, residual: bool = False
) -> tuple[list[Unit], list[Declined]]:
    """Every producer of the op table (``Conv``/``Gemm``/``MatMul``) in the main graph as a
    :class:`Unit` or :class:`Declined`.

    ``shapes`` maps tensor names to inferred shapes (needed for the ``h*w`` block of a
    flatten). ``residual`` also matches residual groups
    (:func:`~lbyl_onnx.graph.residual.match_residual`). Units are returned in graph order of
    their first producer.
    """
    index = GraphIndex(model)
    units: list[Unit] = []
    declined: list[Declined] = []
    for node in model.graph.node:
        spec = op_spec(node)
        if spec is None or spec.producer is None:
            continue
        try:
            units.append(_match_unit(index, node, shapes))
        except Decline as why:
            declined.append(Declined(node_name(node), node.op_type, str(why)))
    if residual:
        groups, failed = residual_groups(index, shapes)
        units += groups
        declined += failed
        order = {node_name(n): i for i, n in enumerate(model.graph.node)}
        units.sort(key=lambda u: order[u.name])
    absorbed = {node_name(p) for u in units for p in u.producers}
    return units, [d for d in declined if d.name not in absorbed]


def _match_unit(index: GraphIndex, producer: onnx.NodeProto, shapes: Shapes) -> Unit:
    """The producer's chain, a depthwise conv coupled after it, and its consumers."""
    chain = match_chain(index, producer)
    n = chain.rows.shape[0]
    walk = Walk(tensors=list(chain.tensors))
    tensor = chain.tensor
    arrays = LayerArrays(chain.rows, chain.b, chain.bn_record)
    activation_model = chain.activation_model
    remarks: list[str] = []
    extra: list[tuple[Operand, int]] = []
    regroup: list[NodeRef] = []
    producers = [chain.weight.node]
    tail = match_depthwise(index, tensor, n) if chain.kind is MatrixKind.CONV else None
    if tail is not None:
        arrays = composite_arrays(arrays, tail.kernels, tail.bias, tail.bn_record)
        activation_model = tail.activation_model
        extra, regroup = tail.slices, [tail.conv]
        producers.append(tail.conv)
        walk.tensors += tail.tensors
        tensor = tail.tensor
        remarks.append(f"coupled with depthwise Conv '{node_name(tail.conv)}'")
    walk_consumers(index, tensor, chain.layout, n, shapes, walk)
    reads = {c.channels_tensor for c in walk.consumers}
    return chain_unit(
        chain,
        consumers=walk.consumers,
        tensors=walk.tensors,
        arrays=arrays,
        activation_model=activation_model,
        reshapes=walk.reshapes,
        record=reads.pop() if len(reads) == 1 else tensor,
        remarks=remarks,
        approximations=walk.approximations,
        extra_slices=extra,
        regroup=regroup,
        producers=producers,
    )
