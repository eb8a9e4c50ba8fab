"""How much of a unit's error reaches the model's outputs, measured in onnxruntime.

A unit's compensation replaces the channels ``r`` its consumers read by ``S r_P + e``: a
linear map ``r -> T r + e`` with ``T = S P^T`` (``P`` selects the kept channels), because
folding ``S`` into a consumer is linear. Inserting that map in front of the consumers gives
exactly the pruned unit's outputs, without rewriting any weight. One session holds a map per
unit, its ``T`` and ``e`` fed as inputs: the identity and zero everywhere except in the unit
being measured, so every unit is measured on the same inputs with one session.

An output computed by a Softmax or LogSoftmax is measured at that node's input, the logits:
a classifier's probabilities saturate, so their error counts the few inputs whose label
flips and does not add up over units, where the logits' error does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph.shapes import infer_shapes
from ..graph.units import Layout, Unit
from . import sessions

BATCH = 8
"""Inputs per onnxruntime run (unless the model's batch is fixed)."""

NORMALISERS = ("Softmax", "LogSoftmax")
"""Ops whose input, not output, is measured when they compute a model output."""


class OutputSensitivity:
    """The model's outputs on the first ``samples`` of ``inputs`` (at least one fixed batch)
    with one unit's compensation applied at a time."""

    def __init__(
        self,
        model: onnx.ModelProto,
        units: list[Unit],
        inputs: dict[str, np.ndarray],
        samples: int,
    ):
        self.maps = {
            u.name: (f"lbyl_onnx.map.{i}", f"lbyl_onnx.offset.{i}") for i, u in enumerate(units)
        }
        self.channels = {u.name: u.channels for u in units}
        self.layout = {u.name: u.layout for u in units}
        self.dtypes = {u.name: u.weight.value.dtype for u in units}  # the activations' type
        shapes = infer_shapes(model)
        self.ranks = {u.name: len(shapes.get(u.record) or [0] * 4) for u in units}
        graph = model.graph
        counts = len(graph.node), len(graph.input), len(graph.output)
        self.measured = _measured_outputs(graph)
        rewired = _insert_maps(graph, units, self.maps, self.ranks)
        graph.output.extend(
            onnx.ValueInfoProto(name=name)
            for name in self.measured
            if name not in {o.name for o in graph.output}
        )
        try:  # the maps are in the graph only while the session is created
            self.session = sessions.session(model, optimised=True)
        finally:
            del graph.node[counts[0] :]
            del graph.input[counts[1] :]
            del graph.output[counts[2] :]
            for node, position, name in rewired:
                node.input[position] = name
        fixed = self.session.get_inputs()[0].shape[0]
        self.fixed = isinstance(fixed, int) and fixed > 0
        self.batch = fixed if self.fixed else BATCH
        count = max(samples, self.batch) if self.fixed else samples
        self.inputs = {name: value[:count] for name, value in inputs.items()}
        self.reference = self._run({})

    def _feeds(self, applied: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        feeds = dict(self.inputs)
        for name, (map_name, offset_name) in self.maps.items():
            n = self.channels[name]
            t, e = applied.get(name, (np.eye(n), np.zeros(n)))
            if self.layout[name] is Layout.SPATIAL:  # a 1x1 Conv: weight [N, N, 1, ...], bias [N]
                ones = [1] * (self.ranks[name] - 2)
                feeds[map_name] = t.astype(self.dtypes[name]).reshape(n, n, *ones)
            else:  # MatMul by T^T on the channels-last axis
                feeds[map_name] = np.ascontiguousarray(t.T, dtype=self.dtypes[name])
            feeds[offset_name] = e.astype(self.dtypes[name])
        return feeds

    def _run(self, applied: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """The measured outputs on every input, run in batches of :data:`BATCH` (or the
        model's fixed batch, whose remainder is dropped), concatenated."""
        feeds = self._feeds(applied)
        count, step = len(next(iter(self.inputs.values()))), self.batch
        batches = []
        for start in range(0, count - step + 1 if self.fixed else count, step):
            part = {k: v[start : start + step] if k in self.inputs else v for k, v in feeds.items()}
            batches.append(self.session.run(self.measured, part))
        return [
            np.concatenate([np.atleast_1d(np.asarray(b[i], np.float64)) for b in batches])
            for i in range(len(batches[0]))
        ]

    def error(
        self, unit: Unit, kept: np.ndarray, scaling: np.ndarray, offsets: np.ndarray | None
    ) -> float:
        """``sum |y' - y|^2 / sum |y|^2`` over every measured output, with only ``unit``
        compensated (``T = S P^T``, ``e`` the offsets)."""
        n = unit.channels
        t = np.zeros((n, n))
        t[:, kept] = scaling
        e = np.zeros(n) if offsets is None else offsets
        outputs = self._run({unit.name: (t, e)})
        lost = sum(
            float(np.sum((a - b) ** 2)) for a, b in zip(outputs, self.reference, strict=True)
        )
        total = sum(float(np.sum(b**2)) for b in self.reference)
        return lost / total if total > 0 else 0.0


def _measured_outputs(graph: onnx.GraphProto) -> list[str]:
    """The model's outputs, each replaced by its producer's input where that producer is one
    of :data:`NORMALISERS`."""
    producer = {output: node for node in graph.node for output in node.output}
    measured = []
    for output in graph.output:
        node = producer.get(output.name)
        name = node.input[0] if node is not None and node.op_type in NORMALISERS else output.name
        if name not in measured:
            measured.append(name)
    return measured


def _insert_maps(
    graph: onnx.GraphProto,
    units: list[Unit],
    maps: dict[str, tuple[str, str]],
    ranks: dict[str, int],
) -> list[tuple[onnx.NodeProto, int, str]]:
    """Append, per unit, ``T r + e`` on the tensor its consumers read, and point every
    reader of that tensor to it; return ``(node, position, old name)`` of each rewired input.
    Appended nodes break the topological order, which onnxruntime restores itself."""
    rewired = []
    readers = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))
    for unit in units:
        map_name, offset_name = maps[unit.name]
        source, mapped = unit.record, f"{unit.record}_lbyl_mapped"
        for node, position in readers.get(source, []):
            rewired.append((node, position, source))
            node.input[position] = mapped
        if unit.layout is Layout.SPATIAL:
            graph.node.append(
                helper.make_node("Conv", [source, map_name, offset_name], [mapped], map_name)
            )
            weight_rank = ranks[unit.name]  # N x N x 1...
        else:
            product = f"{mapped}_product"
            graph.node.append(helper.make_node("MatMul", [source, map_name], [product]))
            graph.node.append(helper.make_node("Add", [product, offset_name], [mapped]))
            weight_rank = 2
        elem = helper.np_dtype_to_tensor_dtype(unit.weight.value.dtype)
        graph.input.append(_float_input(map_name, weight_rank, elem))
        graph.input.append(_float_input(offset_name, 1, elem))
    return rewired


def _float_input(name: str, rank: int, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None] * rank)
