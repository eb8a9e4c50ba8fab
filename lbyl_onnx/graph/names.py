"""Names in a model, and fresh ones for what the tool adds.

ONNX requires every value name to be assigned once in the whole model, subgraphs included
(single static assignment: an ``If`` or ``Loop`` body may not define a name its outer graph
also defines). A name the tool creates is therefore checked against every name anywhere in
the model (:func:`all_names`), not only against the main graph's.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes, at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _graphs(sub)


def all_names(model: onnx.ModelProto | onnx.GraphProto) -> set[str]:
    """Every value and node name of the model: inputs, outputs, initializers (dense and
    sparse), value_info, node outputs and node names, in the main graph and all subgraphs."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    names: set[str] = set()
    for sub in _graphs(graph):
        names.update(t.name for t in sub.initializer)
        names.update(t.values.name for t in sub.sparse_initializer)
        names.update(v.name for v in (*sub.input, *sub.output, *sub.value_info))
        for node in sub.node:
            names.update(node.output)
            names.add(node.name)
    names.discard("")
    return names


def fresh_name(names: set[str], base: str) -> str:
    """``base``, or ``base2``, ``base3``, ... : the first not in ``names``, which it joins."""
    candidate, counter = base, 1
    while candidate in names:
        counter += 1
        candidate = f"{base}{counter}"
    names.add(candidate)
    return candidate
