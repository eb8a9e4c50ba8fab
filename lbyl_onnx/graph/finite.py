"""Weights that make a model compute NaN or Inf: found before any work is done.

A pruned model is compared with the original, and its compensation solved from the
original's weights and activations. Neither means anything where the original already
computes NaN or Inf, so such weights are the input's problem, named up front (exit 2)
rather than found as NaN statistics in a solver or as NaN outputs that validation would
call equal:

- a NaN in any floating-point initializer or ``Constant`` of the main graph;
- an Inf in a weight, bias or parameter of a layer the tool reads (``Conv``,
  ``ConvTranspose``, ``Gemm``, ``MatMul``, ``BatchNormalization``, ``PRelu``); an Inf
  elsewhere may be meant (a mask of ``-inf`` added to attention scores, a ``Clip`` bound);
- a ``BatchNormalization`` whose ``var + epsilon`` is zero or negative at some channel:
  ``(z - mean) / sqrt(var + epsilon)`` is then Inf or NaN on every input.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from .index import GraphIndex, attribute, constant_node_value
from .records import node_name

LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "PRelu")
"""Ops whose constant inputs the tool reads as weights: an Inf in them is refused."""

FLOATING = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def weight_problems(model: onnx.ModelProto) -> list[str]:
    """What makes ``model`` compute NaN or Inf from its weights alone (module docstring),
    one line each, naming the tensor, the node that reads it and the problem; empty if
    nothing does. Each weight is read once, one at a time (no copy of them all)."""
    index = GraphIndex(model)
    problems = []
    for name, value in _float_constants(model):
        nan = int(np.count_nonzero(np.isnan(value)))
        inf = int(np.count_nonzero(np.isinf(value)))
        layer = next(
            (r.node for r in index.readers.get(name, []) if r.node.op_type in LAYERS), None
        )
        if nan or (inf and layer is not None):
            problems.append(_named(index, name, _count(nan, "NaN") or _count(inf, "Inf")))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and len(node.input) > 4:
            problem = _variance_problem(index, node)
            if problem:
                problems.append(problem)
    return problems


def _float_constants(model: onnx.ModelProto) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, values)`` of the main graph's floating-point initializers and ``Constant``
    nodes, in their own dtype (``np.isnan`` takes bfloat16 too; no float64 copy)."""
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOATING:
            yield tensor.name, numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = constant_node_value(node)
            if value is not None and (value.dtype.kind == "f" or value.dtype.name == "bfloat16"):
                yield node.output[0], value


def _count(count: int, what: str) -> str:
    return f"{count} {what} value{'s' if count > 1 else ''}" if count else ""


def _named(index: GraphIndex, name: str, problem: str) -> str:
    """``weight 'W' of Conv 'conv0' holds ...`` (every node that reads it, the first named)."""
    readers = [r.node for r in index.readers.get(name, [])]
    where = f" of {readers[0].op_type} '{node_name(readers[0])}'" if readers else ""
    return f"weight '{name}'{where} holds {problem}: the model computes NaN or Inf from it"


def _variance_problem(index: GraphIndex, node: onnx.NodeProto) -> str:
    """The first channel where ``var + epsilon <= 0``, as a sentence; "" where there is none
    (or the variance is not a constant)."""
    var = index.value(node.input[4])
    if var is None or not var.size:
        return ""
    eps = float(attribute(node, "epsilon", 1e-5))
    total = np.asarray(var, np.float64).reshape(-1) + eps
    bad = np.flatnonzero(~(total > 0))
    if not len(bad):
        return ""
    channel = int(bad[0])
    value = float(np.asarray(var, np.float64).reshape(-1)[channel])
    sign = "zero" if total[channel] == 0 else "negative"
    return (
        f"BatchNormalization '{node_name(node)}': variance '{node.input[4]}' + epsilon is "
        f"{sign} at channel {channel} ({value:g} + {eps:g}; {len(bad)} channel(s)): it "
        "divides by the square root of that"
    )
