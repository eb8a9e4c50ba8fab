"""The consumer walk: from the tensor that carries a unit's channels, through channel-wise
ops and layout steps, to every node that reads them.

Every reader must be one of the op table's (:mod:`lbyl_onnx.graph.ops`): an op that passes
the channels through in the current layout, a layout step, or a consumer that reads that
layout; anything else declines the unit with the reader's op named.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .index import GraphIndex, Reader
from .layouts import Position, Shapes
from .matching import Decline, is_standard, only_first_output
from .ops import op_spec
from .records import Approximation, Consumer, Layout, Operand, node_name

BETWEEN = "between activation and consumer"
"""Where an approximate op of the walk sits (:class:`~lbyl_onnx.graph.records.Approximation`)."""


@dataclass
class Walk:
    """What the walks of one unit found: its consumers, the tensors whose channel count
    changes, the ops it passes through approximately and the flatten targets to rewrite."""

    consumers: list[Consumer] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    approximations: list[Approximation] = field(default_factory=list)
    reshapes: list[tuple[Operand, int, int]] = field(default_factory=list)


def walk_consumers(
    index: GraphIndex,
    tensor: str,
    layout: Layout,
    n: int,
    shapes: Shapes,
    walk: Walk,
    internal: frozenset[int] = frozenset(),
) -> None:
    """Walk from ``tensor`` (its ``n`` channels in ``layout``) to its consumers, adding what
    it finds to ``walk``. Readers in ``internal`` (by ``id``: a residual group's own sums and
    channel-wise ops) are not followed; without them, a tensor nothing reads declines."""
    frontier = [Position(tensor, layout, 1, tensor)]
    while frontier:
        at = frontier.pop(0)
        if at.layout in (Layout.SPATIAL, Layout.FEATURES):
            at = replace(at, channels=at.tensor)
        if at.tensor in index.graph_outputs:
            raise Decline(f"'{at.tensor}' is a graph output")
        readers = [r for r in index.readers.get(at.tensor, []) if id(r.node) not in internal]
        if not readers and not internal:
            raise Decline(f"'{at.tensor}' is not read by any node")
        for reader in readers:
            after = _follow(index, reader, at, n, shapes, walk)
            if after is not None:
                frontier.append(after)


def _follow(
    index: GraphIndex, reader: Reader, at: Position, n: int, shapes: Shapes, walk: Walk
) -> Position | None:
    """One reader of ``at``: where the channels are after it (None: a consumer, or nothing
    after it depends on them), or decline."""
    node, position = reader.node, reader.index
    op = node.op_type
    if position < 0:
        raise Decline(f"'{at.tensor}' is read inside a subgraph of {op} '{node_name(node)}'")
    if not is_standard(node):
        raise Decline(f"'{at.tensor}' is read by custom op {node.domain}.{op}")
    if position != 0:
        raise Decline(f"'{at.tensor}' is input {position} of {op} '{node_name(node)}'")
    spec = op_spec(node)
    if spec is not None and at.layout in spec.passes:
        only_first_output(index, node)
        if spec.approximate:
            walk.approximations.append(Approximation(op, BETWEEN))
        walk.tensors.append(node.output[0])
        return replace(at, tensor=node.output[0])
    step = spec.step(index, node, at, n, shapes) if spec is not None and spec.step else None
    if step is not None:
        only_first_output(index, node)
        if step.after is not None:
            walk.tensors.append(node.output[0])
        if step.reshape is not None:
            walk.reshapes.append(step.reshape)
        return step.after
    if spec is not None and spec.consumer is not None and at.layout in spec.consumer.reads:
        walk.consumers.append(spec.consumer.matched(index, node, n, at))
        return None
    raise Decline(f"'{at.tensor}' is read by {op} '{node_name(node)}'")
