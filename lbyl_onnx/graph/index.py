"""A read-only index of a graph: who produces and who reads each tensor, and its constants.

The model is edited as a ``ModelProto`` directly (not through an exported copy), so that
every byte the tool does not mean to change (IR version, opsets, metadata, node order,
initializers listed as graph inputs) stays as it was.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class Reader:
    """One use of a tensor: ``node.input[index]``; ``index == -1`` for a use inside a subgraph."""

    node: onnx.NodeProto
    index: int


@dataclass(frozen=True)
class ConstantSource:
    """Where a constant tensor's value lives: an initializer, a ``Constant`` node, or a
    ``ConstantOfShape`` node of a constant shape, possibly reached through ``Identity`` nodes
    (``hops``)."""

    name: str
    kind: str  # "initializer", "constant" or "constant_of_shape"
    node: onnx.NodeProto | None
    hops: tuple[onnx.NodeProto, ...]


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names of outer-scope tensors read by ``node``'s subgraphs (If, Loop, Scan)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
        for graph in graphs:
            local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                local.update(inner.output)
            for inner in graph.node:
                names.update(n for n in inner.input if n and n not in local)
                names.update(_subgraph_names(inner))
    return names


class GraphIndex:
    """Producers, readers and constant values of the tensors of a model's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.readers: dict[str, list[Reader]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for index, name in enumerate(node.input):
                if name:
                    self.readers[name].append(Reader(node, index))
            for name in sorted(_subgraph_names(node)):
                self.readers[name].append(Reader(node, -1))
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self._values: dict[str, np.ndarray | None] = {}

    def source(self, name: str) -> ConstantSource | None:
        """The constant behind tensor ``name``, or None if it is computed at run time."""
        hops: list[onnx.NodeProto] = []
        while True:
            if name in self.initializers:
                # an initializer also listed as a graph input (old exporters) is a weight too
                return ConstantSource(name, "initializer", None, tuple(hops))
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                return ConstantSource(name, "constant", node, tuple(hops))
            if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
                if self.value(node.input[0]) is None:
                    return None
                return ConstantSource(name, "constant_of_shape", node, tuple(hops))
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
                hops.append(node)
                name = node.input[0]
                continue
            return None

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of tensor ``name`` (cached), or None."""
        if name not in self._values:
            src = self.source(name)
            if src is None:
                self._values[name] = None
            elif src.kind == "initializer":
                self._values[name] = numpy_helper.to_array(self.initializers[src.name])
            elif src.kind == "constant":
                self._values[name] = constant_node_value(src.node)
            else:
                fill = attribute(src.node, "value")
                fill = numpy_helper.to_array(fill).reshape(-1) if fill is not None else [0.0]
                dtype = fill.dtype if isinstance(fill, np.ndarray) else np.float32
                shape = [int(d) for d in self.value(src.node.input[0])]
                self._values[name] = np.full(shape, fill[0], dtype=dtype)
        return self._values[name]

    def is_shared(self, name: str) -> bool:
        """Whether the constant behind ``name`` is read by more than one node."""
        src = self.source(name)
        if src is None:
            return False
        chain = [src.name, *(hop.output[0] for hop in src.hops)]
        # every tensor on the chain (root, then each Identity output) must have one reader
        return any(len(self.readers.get(n, [])) != 1 for n in chain) or any(
            n in self.graph_outputs for n in chain
        )


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (any of its attribute forms)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def attribute(node: onnx.NodeProto, name: str, default=None):
    """An attribute's Python value, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
