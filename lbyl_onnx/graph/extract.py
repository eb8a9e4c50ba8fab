"""Sub-models: the part of a model that computes given tensors, the one way the tool cuts one.

A tensor depends on the node that produces it, on that node's inputs, and on the outer
tensors its subgraphs read (:class:`~lbyl_onnx.graph.index.GraphIndex` lists those as
readers). The sub-model computing tensors ``T`` from the frontier ``F`` holds exactly the
nodes reached by walking backward from ``T`` without crossing a tensor of ``F``; each tensor
of ``F`` it reads becomes a graph input, of the type the caller gives. onnxruntime runs every
node of a graph whatever the outputs asked for, so a cut is what makes a pass run only what it
needs (calibration's recordings, the sequential solve's passes from the frontier, the probe
that measures the first layer for the input normalisation).

A cut is made in one of two ways (:func:`cut`):

- **a new model** (the default): copies of the needed nodes and of the initializers they read,
  with the model's IR version, opsets and local functions; ``model`` is not changed;
- **in place**, for the block of a ``with``: ``model`` itself, every node kept, the tensors
  appended to its outputs and removed again after. Nothing is copied (a large model,
  :func:`~lbyl_onnx.graph.io.is_large`, is run from its own weights) and every reference held
  into the graph (units' nodes, an index) stays valid, which removing nodes would break: a
  protobuf element removed from its list is detached, and putting it back stores a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import helper

from .index import GraphIndex

Reads = Callable[[onnx.NodeProto], list[str]]
"""``node -> the tensors it reads``."""


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node holds a subgraph (control flow, which reads outer tensors by name)."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    )


def tensor_type(dtype: np.dtype, shape: Sequence[int | str | None] | None = None) -> onnx.TypeProto:
    """The ONNX tensor type of NumPy ``dtype`` (of unknown shape unless ``shape`` is given),
    for a frontier tensor known by an example value."""
    return helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def needed_nodes(
    index: GraphIndex, outputs: Iterable[str], frontier: Collection[str] = ()
) -> list[onnx.NodeProto]:
    """The nodes of ``index.model`` that ``outputs`` depend on, in graph order, not looking
    past the tensors of ``frontier``: the backward walk from ``outputs`` over each node's
    inputs and its subgraphs' outer reads."""
    return _walk(index, _reads(index), outputs, frontier)


def _walk(
    index: GraphIndex, reads: Reads, outputs: Iterable[str], frontier: Collection[str]
) -> list[onnx.NodeProto]:
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        node = index.producer.get(name) if name not in frontier else None
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(reads(node))
    return [node for node in index.model.graph.node if id(node) in needed]


@contextmanager
def cut(
    model: onnx.ModelProto,
    outputs: Sequence[str],
    frontier: Mapping[str, onnx.TypeProto] | None = None,
    *,
    in_place: bool = False,
    index: GraphIndex | None = None,
) -> Iterator[onnx.ModelProto]:
    """The sub-model of ``model`` computing ``outputs`` (in that order) from the graph inputs
    and the ``frontier`` tensors (each of the given type), for the block of a ``with``.

    By default a new model (:func:`needed_nodes`, their initializers, the graph inputs they
    read, the value_info of the tensors they compute), whose outputs are ``outputs``: each
    keeps its declaration where the graph declares it as an output, the others are declared
    without a type. ``in_place``: ``model`` itself, every node kept, ``outputs`` appended to
    its outputs until the block ends (a frontier is refused there: its producers would have
    to go). ``index``: a :class:`GraphIndex` of ``model``, when the caller has one.
    """
    outputs = list(dict.fromkeys(outputs))
    graph = model.graph
    declared = {o.name: o for o in graph.output}
    if in_place:
        if frontier:
            raise ValueError("an in-place cut keeps every node: it cannot start from a frontier")
        count = len(graph.output)
        graph.output.extend(_untyped(name) for name in outputs if name not in declared)
        try:
            yield model
        finally:
            del graph.output[count:]
        return
    results = [declared[name] if name in declared else _untyped(name) for name in outputs]
    yield _copy(model, index or GraphIndex(model), outputs, results, dict(frontier or {}))


def _copy(
    model: onnx.ModelProto,
    index: GraphIndex,
    outputs: list[str],
    results: list[onnx.ValueInfoProto],
    frontier: dict[str, onnx.TypeProto],
) -> onnx.ModelProto:
    """A new model of the nodes ``outputs`` need from the graph inputs and ``frontier``."""
    graph = model.graph
    reads = _reads(index)
    nodes = _walk(index, reads, outputs, frontier)
    read = set(outputs).union(*(reads(node) for node in nodes))
    computed = {name for node in nodes for name in node.output} - set(frontier)
    sub = onnx.ModelProto(ir_version=model.ir_version)
    sub.opset_import.extend(model.opset_import)
    sub.functions.extend(model.functions)
    into = sub.graph
    into.name = graph.name
    into.node.extend(nodes)
    into.input.extend(i for i in graph.input if i.name in read and i.name not in frontier)
    into.input.extend(
        helper.make_value_info(name, kind) for name, kind in frontier.items() if name in read
    )
    into.output.extend(results)
    into.value_info.extend(v for v in graph.value_info if v.name in computed)
    into.initializer.extend(t for t in graph.initializer if t.name in read)
    into.sparse_initializer.extend(t for t in graph.sparse_initializer if t.values.name in read)
    return sub


def _reads(index: GraphIndex) -> Reads:
    """``node -> the tensors it reads``: its inputs and its subgraphs' outer reads (the
    readers ``index`` lists at position -1)."""
    outer: dict[int, list[str]] = {}
    for name, readers in index.readers.items():
        for reader in readers:
            if reader.index < 0:
                outer.setdefault(id(reader.node), []).append(name)

    def reads(node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name] + outer.get(id(node), [])

    return reads


def _untyped(name: str) -> onnx.ValueInfoProto:
    return helper.make_empty_tensor_value_info(name)
