"""What every matcher of a unit's parts needs: declining with a reason, constant operands,
the sole reader of a tensor, per-channel constants.

A matcher raises :class:`Decline` with a one-line reason where a structure cannot be pruned;
:func:`~lbyl_onnx.graph.units.find_units` turns it into a
:class:`~lbyl_onnx.graph.records.Declined` record.
"""

from __future__ import annotations

import numpy as np
import onnx

from .index import GraphIndex
from .records import Operand, node_name

STANDARD_DOMAINS = ("", "ai.onnx")
"""The default ONNX domain, under both of its names."""


BFLOAT16 = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16))
"""NumPy's bfloat16 (from ``ml_dtypes``, which onnx uses): not a ``np.floating`` subtype."""


def is_floating(dtype: np.dtype) -> bool:
    """Whether weights of ``dtype`` can be solved for (in float64) and written back in it:
    float16, bfloat16, float32, float64 (not the float8 types: 8-bit weights are
    quantized, and a compensation rounded to them is not one)."""
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == BFLOAT16


class Decline(Exception):
    """Raised inside a matcher: the candidate is left untouched, for this reason."""


def is_standard(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is an op of the default domain (not a custom op of the same name)."""
    return node.domain in STANDARD_DOMAINS


def constant(index: GraphIndex, node: onnx.NodeProto, i: int, what: str) -> Operand:
    """``node.input[i]`` as a floating-point constant that only this node reads, or decline."""
    if i >= len(node.input) or not node.input[i]:
        raise Decline(f"{what} is missing")
    name = node.input[i]
    value = index.value(name)
    if value is None:
        raise Decline(f"{what} '{name}' is not a constant")
    if index.is_shared(name):
        raise Decline(f"{what} '{name}' is shared with another node")
    if not is_floating(value.dtype):
        raise Decline(f"{what} '{name}' is not floating point ({value.dtype})")
    if not np.all(np.isfinite(value)):
        raise Decline(f"{what} '{name}' contains NaN or Inf")
    return Operand.of(node, i, value)


def optional_constant(index: GraphIndex, node: onnx.NodeProto, i: int, what: str) -> Operand | None:
    """``node.input[i]`` as in :func:`constant` where the node has it, None where it does not."""
    return constant(index, node, i, what) if len(node.input) > i and node.input[i] else None


def only_first_output(index: GraphIndex, node: onnx.NodeProto) -> None:
    """Decline where an output of ``node`` other than its first is read or is a graph output
    (MaxPool's ``Indices``, Dropout's ``mask``, BatchNormalization's running statistics in
    training mode): pruning changes the channels of every output, and only the first one's
    readers are followed and rewritten, so another one would change shape unseen."""
    for position, name in enumerate(node.output[1:], 1):
        where = f"output {position} '{name}' of {node.op_type} '{node_name(node)}'"
        if name and name in index.graph_outputs:
            raise Decline(f"{where} is a graph output")
        if name and index.readers.get(name):
            raise Decline(f"{where} is read")


def sole_reader(index: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The sole reader of ``tensor``; None if there are several or none (the consumer walk
    then decides), decline if it is a graph output."""
    if tensor in index.graph_outputs:
        raise Decline(f"'{tensor}' is a graph output")
    readers = index.readers.get(tensor, [])
    if len(readers) != 1 or readers[0].index < 0:
        return None
    return readers[0].node


def other_input(node: onnx.NodeProto, tensor: str) -> int:
    """The position of a binary node's input that is not ``tensor``."""
    return 1 if node.input[0] == tensor else 0


def per_channel_operand(
    index: GraphIndex, tensor: str, op: str, n: int, channel_axis: int
) -> Operand | None:
    """If the sole reader of ``tensor`` is ``op`` (Add, Mul) with a constant that has one value
    per channel on ``channel_axis`` (counted from the end, e.g. ``[1, C, 1, 1]``), that
    constant; None otherwise (nothing to decline: the chain just does not continue here)."""
    reader = sole_reader(index, tensor)
    if reader is None or reader.op_type != op or not is_standard(reader):
        return None
    other = other_input(reader, tensor)
    value = index.value(reader.input[other])
    if value is None or value.size != n or n == 1:
        return None
    if len(value.shape) < -channel_axis or value.shape[channel_axis] != n:
        return None
    return constant(index, reader, other, f"per-channel {op} constant")
