"""Apply a plan to the graph: slice the producers, fold ``S`` into the consumers.

Rewrite rules, for a unit with kept channels ``P`` (``m`` of ``N``) and scaling ``S``
(``N x m``):

- producer weight rows, bias, BatchNormalization vectors and a per-channel PRelu slope are
  sliced to ``P``;
- a Conv consumer's weight ``V`` (``O x N x k...``) becomes
  ``V'[o, t] = sum_i S[i, t] V[o, i]``;
- a Gemm/MatMul consumer after a flatten gets the same on each channel's block of ``h*w``
  input columns (channel-major);
- every tensor on the unit's path loses its recorded shape (it would be stale).

New values are written as new constants with fresh unique names (an initializer for an
initializer, a ``Constant`` node for a ``Constant`` node); the old ones are removed once
nothing reads them. An initializer that is also listed as a graph input (IR < 4 models and
old exporters) keeps its name, and its graph input's shape is updated, so the input list
stays consistent. The model is edited in place; the units' nodes are found in it by name
(:class:`~lbyl_onnx.graph.records.NodeRef`), so a plan applies to any copy of the model its
unit was found in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .index import GraphIndex
from .names import all_names, fresh_name
from .records import Consumer, MatrixKind, Operand, Unit, channel_axis


@dataclass(frozen=True)
class Plan:
    """What to do with one unit: keep channels ``kept``, fold ``scaling`` into the consumers."""

    unit: Unit
    kept: np.ndarray
    scaling: np.ndarray
    offsets: np.ndarray | None = None
    """Bias correction: per channel, the constant the consumers' biases absorb."""


def channel_columns(
    consumer: Consumer, weight: np.ndarray
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The consumer's weight as a ``rows x N`` matrix, one column per channel of the unit
    (output channels, kernel taps and flattened positions as rows), and the map that puts a
    ``rows x m`` matrix back into the weight's own layout with ``m`` channels."""
    if consumer.kind is MatrixKind.CONV:  # O x N x k...
        moved = np.moveaxis(weight, 1, -1)
        return moved.reshape(-1, weight.shape[1]), lambda c: np.moveaxis(
            c.reshape(*moved.shape[:-1], c.shape[1]), -1, 1
        )
    block = consumer.block
    if consumer.interleaved and consumer.transposed:  # O x (block*N), column p*N + c
        o = weight.shape[0]
        n = weight.shape[1] // block
        return weight.reshape(o * block, n), lambda c: c.reshape(o, block * c.shape[1])
    if consumer.interleaved:  # (block*N) x O
        o = weight.shape[1]
        n = weight.shape[0] // block
        columns = weight.reshape(block, n, o).transpose(0, 2, 1).reshape(-1, n)
        return columns, lambda c: c.reshape(block, o, c.shape[1]).transpose(0, 2, 1).reshape(-1, o)
    if consumer.transposed:  # Gemm transB: O x (N*block)
        o = weight.shape[0]
        n = weight.shape[1] // block
        columns = weight.reshape(o, n, block).transpose(0, 2, 1).reshape(-1, n)
        return columns, lambda c: c.reshape(o, block, c.shape[1]).transpose(0, 2, 1).reshape(o, -1)
    n = weight.shape[0] // block  # (N*block) x O
    o = weight.shape[1]
    return weight.reshape(n, block * o).T, lambda c: c.T.reshape(-1, o)


def fold_into_consumer(consumer: Consumer, weight: np.ndarray, scaling: np.ndarray) -> np.ndarray:
    """``V'[o, t, ...] = sum_i S[i, t] V[o, i, ...]`` in the consumer's own weight layout:
    one matrix product on the weight's channel columns (BLAS, not ``einsum``)."""
    columns, restore = channel_columns(consumer, weight.astype(np.float64))
    folded = restore(columns @ scaling)
    return np.ascontiguousarray(folded).astype(weight.dtype)


def take_channels(value: np.ndarray, kept: np.ndarray, axis: int) -> np.ndarray:
    """``value`` restricted to ``kept`` along ``axis``; broadcast (size-1) values unchanged."""
    if value.size == 1:
        return value
    return np.take(value, kept, axis=axis)


def _reshape_target(target: np.ndarray, position: int, columns: int) -> np.ndarray:
    """The flatten target with its ``N*block`` entry (at ``position``) set to ``m*block``."""
    flat = target.reshape(-1).copy()
    flat[position] = columns
    return flat.reshape(target.shape)


class _Editor:
    """Accumulates new values per constant operand, then writes them into the graph."""

    def __init__(self) -> None:
        self.edits: dict[tuple[str, int], tuple[Operand, np.ndarray]] = {}

    def edit(self, operand: Operand, change: Callable[[np.ndarray], np.ndarray]) -> None:
        key = (operand.node.output[0], operand.index)  # outputs are unique in a graph
        current = self.edits.get(key, (operand, operand.value))[1]
        self.edits[key] = (operand, change(current))

    def write(self, model: onnx.ModelProto) -> set[str]:
        """Write every edited value; return the tensor names whose shape changed."""
        changed: set[str] = set()
        if not self.edits:
            return changed
        index = GraphIndex(model)
        graph = model.graph
        names = all_names(model)
        detached: list[str] = []
        for operand, value in self.edits.values():
            node = operand.node.resolve(index)
            name = node.input[operand.index]
            source = index.source(name)
            if source is None:  # matched as constant before: cannot happen
                raise RuntimeError(f"operand '{name}' is no longer a constant")
            changed.update([name, source.name, *(hop.output[0] for hop in source.hops)])
            if source.kind == "initializer" and source.name in index.graph_inputs:
                _replace_listed_initializer(model, source.name, value)
                continue
            fresh = fresh_name(names, f"{name}_pruned")
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), fresh)
            if source.kind in ("initializer", "constant_of_shape"):
                graph.initializer.append(tensor)
                if model.ir_version < 4:  # IR 3: every initializer is also a graph input
                    graph.input.append(
                        helper.make_tensor_value_info(fresh, tensor.data_type, list(value.shape))
                    )
            else:
                const = helper.make_node("Constant", [], [fresh], name=fresh, value=tensor)
                graph.node.insert(_position(graph, node), const)
            node.input[operand.index] = fresh
            detached.append(name)
        _remove_unread(model, detached)
        present = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
        stale = [v for v in graph.value_info if v.name in detached and v.name not in present]
        for info in stale:
            graph.value_info.remove(info)
        return changed


def _position(graph: onnx.GraphProto, node: onnx.NodeProto) -> int:
    """Where ``node`` is in the graph's node list (found by its first output)."""
    return next(i for i, n in enumerate(graph.node) if n.output and n.output[0] == node.output[0])


def _replace_listed_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Update an initializer that is also a graph input, and that input's shape, in place."""
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(value), name)
            )
    for entry in graph.input:
        if entry.name == name:
            dims = entry.type.tensor_type.shape.dim
            del dims[:]
            for d in value.shape:
                dims.add().dim_value = int(d)


def _remove_unread(model: onnx.ModelProto, detached: list[str]) -> None:
    """Remove the initializers, ``Constant`` and ``Identity`` nodes no longer read by anything."""
    index = GraphIndex(model)
    readers = {name: len(found) for name, found in index.readers.items()}
    dead_nodes: set[str] = set()  # by first output
    dead_initializers: set[str] = set()
    pending = list(detached)
    while pending:
        name = pending.pop()
        if readers.get(name, 0) or name in index.graph_outputs:
            continue
        if name in index.initializers and name not in index.graph_inputs:
            dead_initializers.add(name)
            continue
        node = index.producer.get(name)
        if node is None or node.op_type not in ("Constant", "Identity", "ConstantOfShape"):
            continue
        if any(readers.get(o, 0) for o in node.output) or node.output[0] in dead_nodes:
            continue
        dead_nodes.add(node.output[0])
        if node.op_type in ("Identity", "ConstantOfShape"):
            readers[node.input[0]] = readers.get(node.input[0], 0) - 1
            pending.append(node.input[0])
    graph = model.graph
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in dead_initializers:
            del graph.initializer[i]
    for i in reversed(range(len(graph.node))):
        if graph.node[i].output and graph.node[i].output[0] in dead_nodes:
            del graph.node[i]


def _set_group(node: onnx.NodeProto, groups: int) -> None:
    """Set a depthwise Conv's ``group`` attribute (it has one: ``group = N`` was matched)."""
    for attr in node.attribute:
        if attr.name == "group":
            attr.i = groups


def consumer_column_gram(unit: Unit) -> np.ndarray:
    """``M = sum over consumers of V^T V``, ``V`` the consumer's weight with one column per
    channel of the unit (:func:`channel_columns`)."""
    gram = np.zeros((unit.channels, unit.channels))
    for consumer in unit.consumers:
        columns, _ = channel_columns(consumer, consumer.weight.value)
        gram += (columns.T @ columns).astype(np.float64)
    return gram


def consumer_bias_delta(consumer: Consumer, offsets: np.ndarray) -> np.ndarray:
    """What the consumer's output gains when channel ``j`` carries the constant ``e_j``:
    ``delta[o] = sum_j e_j sum_k V[o, j, k]`` (Conv: exact away from zero-padded borders;
    Gemm/MatMul: each channel's block of columns), in the units of the consumer's bias."""
    v = consumer.weight.value.astype(np.float64)
    n = offsets.shape[0]
    if consumer.kind is MatrixKind.CONV:
        per_channel = v.reshape(v.shape[0], n, -1).sum(axis=2)  # O x N
    elif consumer.interleaved and consumer.transposed:
        per_channel = v.reshape(v.shape[0], consumer.block, n).sum(axis=1)
    elif consumer.interleaved:
        per_channel = v.reshape(consumer.block, n, v.shape[1]).sum(axis=0).T
    elif consumer.transposed:
        per_channel = v.reshape(v.shape[0], n, consumer.block).sum(axis=2)
    else:
        per_channel = v.reshape(n, consumer.block, v.shape[1]).sum(axis=1).T
    delta = per_channel @ offsets
    if consumer.kind is MatrixKind.GEMM:
        delta = delta * consumer.alpha / consumer.beta
    return delta


def _add_to_bias(bias: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``bias + delta`` in the bias's own shape (``[O]``, ``[1, O]``, or a broadcast scalar)."""
    if bias.size == 1:
        return (bias.reshape(-1)[0] + delta).astype(bias.dtype)
    return (bias + delta.reshape(bias.shape)).astype(bias.dtype)


def _ensure_bias(
    model: onnx.ModelProto, index: GraphIndex, consumer: Consumer, names: set[str]
) -> Operand | None:
    """The consumer's bias operand, created (zeros) for a Conv or Gemm that has none; None
    for a MatMul without a bias Add (the correction is then skipped)."""
    if consumer.bias is not None:
        return consumer.bias
    if consumer.kind is MatrixKind.MATMUL:
        return None
    node = consumer.node.resolve(index)
    weight = consumer.weight.value
    by_row = consumer.kind is MatrixKind.CONV or consumer.transposed
    outputs = weight.shape[0] if by_row else weight.shape[1]
    zeros = np.zeros(outputs, dtype=weight.dtype)
    name = fresh_name(names, f"{node.name or node.output[0]}.bias_pruned")
    model.graph.initializer.append(numpy_helper.from_array(zeros, name))
    if len(node.input) > 2:
        node.input[2] = name  # an empty optional input
    else:
        node.input.append(name)
    return Operand.of(node, 2, zeros)


def apply_plans(model: onnx.ModelProto, plans: list[Plan]) -> None:
    """Rewrite ``model`` in place so that each planned unit keeps only its channels ``kept``.

    Plans are independent: each was solved on the original weights. Consumers absorb ``S``
    (and a bias correction) first, then producers are sliced: folding ``S`` into a layer's
    input channels commutes with slicing its output channels, and a bias correction is
    computed in the consumer's original output channels.
    """
    editor = _Editor()
    stale: set[str] = set()
    names = all_names(model)
    index = GraphIndex(model)
    active = [p for p in plans if len(p.kept) < p.unit.channels]
    created: dict[str, Operand] = {}  # biases created for consumers, by node output
    for plan in active:
        for consumer in plan.unit.consumers:
            editor.edit(
                consumer.weight, lambda v, c=consumer, s=plan.scaling: fold_into_consumer(c, v, s)
            )
            if plan.offsets is None or not np.any(plan.offsets):
                continue
            key = consumer.node.output[0]
            bias = created.get(key) or _ensure_bias(model, index, consumer, names)
            if bias is None:
                continue
            if consumer.bias is None:
                created[key] = bias
            delta = consumer_bias_delta(consumer, plan.offsets)
            editor.edit(bias, lambda b, d=delta: _add_to_bias(b, d))
    for plan in active:
        unit, kept = plan.unit, plan.kept
        n, m = unit.channels, len(kept)
        editor.edit(unit.weight, lambda w, k=kept, a=unit.weight_axis: np.take(w, k, axis=a))
        operands = [*unit.bn_params]
        if unit.bias is not None:
            operands.append(unit.bias)
        operands += [created[p.output[0]] for p in unit.producers if p.output[0] in created]
        if unit.slope is not None:
            operands.append(unit.slope)
        slices = [(o, channel_axis(o.value, n) if o.value.size == n else 0) for o in operands]
        for operand, axis in [*slices, *unit.extra_slices]:
            editor.edit(operand, lambda v, k=kept, a=axis: take_channels(v, k, a))
        for node in unit.regroup:
            _set_group(node.resolve(index), m)
        for target, position, block in unit.reshapes:
            editor.edit(target, lambda v, p=position, c=m * block: _reshape_target(v, p, c))
        stale.update(unit.tensors)
    stale.update(editor.write(model))
    kept_info = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
