"""Ops that change where the channels lie on the way to the consumers (the op table's layout
steps): a flatten gives each channel a block of ``h*w`` columns, a channels-last transpose
interleaves them, a squeeze after a global pool keeps one column each, and a ``Shape``
that only reads the batch size does not depend on the channels at all.

Each step looks at one reader of the walk's current tensor and says where the channels are
after it (a :class:`Step`), or None where it does not apply (the walk then declines the
reader); it raises :class:`~lbyl_onnx.graph.matching.Decline` where it applies but cannot be
rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from .index import GraphIndex, attribute
from .matching import Decline
from .records import Layout, Operand, node_name

Shapes = Mapping[str, list[int | str | None]]
"""Inferred shapes by tensor name."""


@dataclass(frozen=True)
class Position:
    """A point of the consumer walk: ``tensor`` holds the channels in ``layout``, each
    owning ``block`` columns, and ``channels`` is the last tensor before any flatten."""

    tensor: str
    layout: Layout
    block: int
    channels: str


@dataclass(frozen=True)
class Step:
    """Where a layout-changing reader leaves the channels: ``after`` (None: nothing after it
    depends on them), and a flatten target to rewrite ``(operand, position, block)``."""

    after: Position | None
    reshape: tuple[Operand, int, int] | None = None


SPATIAL_LAYOUTS = (Layout.SPATIAL, Layout.SPATIAL_LAST)

FLATTENED = {Layout.SPATIAL: Layout.FLAT, Layout.SPATIAL_LAST: Layout.FLAT_INTERLEAVED}
"""The layout a flatten makes of a spatial one."""


def shape_step(
    index: GraphIndex, node: onnx.NodeProto, at: Position, n: int, shapes: Shapes
) -> Step | None:
    """``Shape`` whose every use only extracts the batch size: the walk ends here."""
    if shape_reads_only_batch(index, node, shapes.get(at.tensor)):
        return Step(None)
    return None


def transpose_step(
    index: GraphIndex, node: onnx.NodeProto, at: Position, n: int, shapes: Shapes
) -> Step | None:
    """A Transpose ``[0, 2, ..., r-1, 1]`` of a spatial tensor: NCHW to NHWC (tf2onnx)."""
    perm = list(attribute(node, "perm", []) or [])
    rank = len(perm)
    if at.layout is Layout.SPATIAL and rank >= 3 and perm == [0, *range(2, rank), 1]:
        return Step(Position(node.output[0], Layout.SPATIAL_LAST, 1, at.channels))
    return None


def flatten_step(
    index: GraphIndex, node: onnx.NodeProto, at: Position, n: int, shapes: Shapes
) -> Step | None:
    """A Flatten with ``axis == 1`` of a spatial tensor."""
    if at.layout not in SPATIAL_LAYOUTS:
        return None
    if attribute(node, "axis", 1) != 1:
        raise Decline(f"Flatten '{node_name(node)}' with axis != 1")
    block = flatten_block(at.tensor, shapes, n, at.layout is Layout.SPATIAL_LAST)
    return Step(Position(node.output[0], FLATTENED[at.layout], block, at.channels))


def reshape_step(
    index: GraphIndex, node: onnx.NodeProto, at: Position, n: int, shapes: Shapes
) -> Step | None:
    """A Reshape of a spatial tensor to ``[batch, C*h*w]`` (:func:`flattening_reshape`)."""
    if at.layout not in SPATIAL_LAYOUTS:
        return None
    target = flattening_reshape(index, node, shapes, at.tensor)
    block = flatten_block(at.tensor, shapes, n, at.layout is Layout.SPATIAL_LAST)
    after = Position(node.output[0], FLATTENED[at.layout], block, at.channels)
    return Step(after, None if target is None else (*target, block))


def squeeze_step(
    index: GraphIndex, node: onnx.NodeProto, at: Position, n: int, shapes: Shapes
) -> Step | None:
    """A Squeeze of the 1x1 spatial axes after a global pool: ``[N, C, 1, 1] -> [N, C]``."""
    if at.layout is not Layout.SPATIAL:
        return None
    before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
    if before is None or after is None or len(after) != 2 or len(before) < 3:
        return None
    if not all(d == 1 for d in before[2:]) or after[1] not in (n, None):
        return None
    return Step(Position(node.output[0], Layout.FLAT, 1, at.channels))


def flatten_block(tensor: str, shapes: Shapes, n: int, channels_last: bool = False) -> int:
    """``h*w``: the columns each channel owns after flattening ``tensor`` (``N, C, h, w...``,
    or ``N, h, w..., C`` when ``channels_last``)."""
    shape = shapes.get(tensor)
    if shape is None or len(shape) < 2:
        raise Decline(f"shape of '{tensor}' before the flatten is unknown")
    spatial, c = (shape[1:-1], shape[-1]) if channels_last else (shape[2:], shape[1])
    if any(not isinstance(d, int) for d in spatial):
        raise Decline(f"spatial size of '{tensor}' before the flatten is not static")
    if isinstance(c, int) and c != n:
        raise Decline(f"'{tensor}' has {c} channels, expected {n}")
    return int(np.prod(spatial, dtype=np.int64))


def shape_reads_only_batch(index: GraphIndex, node: onnx.NodeProto, shape) -> bool:
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
            follower = reader.node
            if reader.index != 0 or follower.op_type not in ("Gather", "Slice", "Cast"):
                if dims != [0]:
                    return False
                continue  # only the batch goes on from here
            kept = _dims_kept(index, follower, dims)
            if kept is None:
                return False
            pending.append((follower.output[0], kept))
    return True


def _dims_kept(index: GraphIndex, node: onnx.NodeProto, dims: list[int]) -> list[int] | None:
    """Which of ``dims`` a ``Cast``, constant ``Gather`` or constant unit-step ``Slice`` of a
    shape keeps; None where it is not constant."""
    if node.op_type == "Cast":
        return dims
    if node.op_type == "Gather":
        indices = index.value(node.input[1])
        if indices is None:
            return None
        return [dims[int(i)] for i in np.atleast_1d(indices)]
    values = [index.value(name) if name else None for name in node.input[1:]]
    if len(values) < 2 or values[0] is None or values[1] is None:
        return None
    if len(values) > 3 and values[3] is not None and np.any(values[3] != 1):
        return None
    if len(values) > 2 and values[2] is not None and np.any(values[2] != 0):
        return None
    start, end = int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0])
    return dims[start:end]


def flattening_reshape(
    index: GraphIndex, node: onnx.NodeProto, shapes: Shapes, tensor: str
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
        raise Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")
    first, second = (int(v) for v in target.reshape(-1))
    batch_ok = first in (0, -1) or (isinstance(shape[0], int) and first == shape[0])
    if batch_ok and second == -1 and first != -1:
        return None
    dims = shape[1:]
    if batch_ok and all(isinstance(d, int) for d in dims) and second == int(np.prod(dims)):
        if index.is_shared(node.input[1]):
            raise Decline(f"shape of Reshape '{node_name(node)}' is shared with another node")
        return Operand.of(node, 1, target), 1
    raise Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")


def _concat_target(index: GraphIndex, node: onnx.NodeProto, shape) -> tuple[Operand, int] | None:
    """A Reshape target ``Concat(<batch, computed>, [C*h*w] | [-1])``, axis 0."""
    concat = index.producer.get(node.input[1])
    if concat is None or concat.op_type not in ("Concat", "Cast"):
        raise Decline(f"Reshape '{node_name(node)}' has a computed shape")
    if concat.op_type == "Cast":  # tf2onnx casts the shape to int64
        concat = index.producer.get(concat.input[0])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        raise Decline(f"Reshape '{node_name(node)}' has a computed shape")
    columns = index.value(concat.input[1])
    dims = shape[1:]
    if columns is None or columns.size != 1 or not all(isinstance(d, int) for d in dims):
        raise Decline(f"Reshape '{node_name(node)}' has a computed shape")
    value = int(columns.reshape(-1)[0])
    if value == -1:
        return None
    if value != int(np.prod(dims)) or index.is_shared(concat.input[1]):
        raise Decline(f"Reshape '{node_name(node)}' does not flatten to [batch, -1]")
    return Operand.of(concat, 1, index.value(concat.input[1])), 0
