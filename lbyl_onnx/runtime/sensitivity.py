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

from ..graph.extract import cut
from ..graph.index import GraphIndex
from ..graph.names import all_names, fresh_name
from ..graph.shapes import infer_shapes
from ..graph.units import Layout, Unit
from . import sessions
from .record import Recorder

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
        names = all_names(model)  # what the maps add must be new anywhere in the model
        self.maps = {
            u.name: (
                fresh_name(names, f"lbyl_onnx.map.{i}"),
                fresh_name(names, f"lbyl_onnx.offset.{i}"),
                fresh_name(names, f"{u.record}_lbyl_mapped"),
                fresh_name(names, f"{u.record}_lbyl_product"),
            )
            for i, u in enumerate(units)
        }
        self.channels = {u.name: u.channels for u in units}
        self.layout = {u.name: u.layout for u in units}
        self.dtypes = {u.name: u.weight.value.dtype for u in units}  # the activations' type
        shapes = infer_shapes(model)
        self.ranks = {u.name: len(shapes.get(u.record) or [0] * 4) for u in units}
        index = GraphIndex(model)
        self.measured = _measured_outputs(index)
        with cut(model, self.measured, in_place=True) as graph_cut:  # the whole model: no copy
            graph = graph_cut.graph
            counts = len(graph.node), len(graph.input)
            rewired = _insert_maps(graph, index, units, self.maps, self.ranks)
            try:  # the maps are in the graph only while the session is created
                self.recorder = Recorder(sessions.session(graph_cut, optimised=True), self.measured)
            finally:
                del graph.node[counts[0] :]
                del graph.input[counts[1] :]
                for node, position, name in rewired:
                    node.input[position] = name
        fixed = sessions.fixed_batch(self.recorder.session)
        count = max(samples, fixed) if fixed else samples
        self.inputs = {name: value[:count] for name, value in inputs.items()}
        count = len(next(iter(self.inputs.values())))
        # a free batch of fewer than BATCH inputs is run as one
        self.slices = self.recorder.slices(count, min(BATCH, count))
        self.reference = self._run({})

    def _feeds(self, applied: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """The maps' ``T`` and ``e`` as the session's inputs: ``applied``'s, else the identity
        and zero."""
        feeds = {}
        for name, (map_name, offset_name, _, _) in self.maps.items():
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
        maps = self._feeds(applied)
        batches = list(self.recorder.batches(self.inputs, self.slices, constants=maps))
        return [
            np.concatenate([np.atleast_1d(np.asarray(b[name], np.float64)) for b in batches])
            for name in self.measured
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


def _measured_outputs(index: GraphIndex) -> list[str]:
    """The model's outputs, each replaced by its producer's input where that producer is one
    of :data:`NORMALISERS`."""
    measured = []
    for output in index.model.graph.output:
        node = index.producer.get(output.name)
        name = node.input[0] if node is not None and node.op_type in NORMALISERS else output.name
        if name not in measured:
            measured.append(name)
    return measured


def _insert_maps(
    graph: onnx.GraphProto,
    index: GraphIndex,
    units: list[Unit],
    maps: dict[str, tuple[str, str, str, str]],
    ranks: dict[str, int],
) -> list[tuple[onnx.NodeProto, int, str]]:
    """Append, per unit, ``T r + e`` on the tensor its consumers read, and point every
    reader of that tensor (``index``'s, outside subgraphs) to it; return ``(node, position,
    old name)`` of each rewired input. Appended nodes break the topological order, which
    onnxruntime restores itself."""
    rewired = []
    for unit in units:
        map_name, offset_name, mapped, product = maps[unit.name]
        source = unit.record
        for reader in index.readers.get(source, []):
            if reader.index >= 0:
                rewired.append((reader.node, reader.index, source))
                reader.node.input[reader.index] = mapped
        if unit.layout is Layout.SPATIAL:
            graph.node.append(
                helper.make_node("Conv", [source, map_name, offset_name], [mapped], map_name)
            )
            weight_rank = ranks[unit.name]  # N x N x 1...
        else:
            graph.node.append(helper.make_node("MatMul", [source, map_name], [product]))
            graph.node.append(helper.make_node("Add", [product, offset_name], [mapped]))
            weight_rank = 2
        elem = helper.np_dtype_to_tensor_dtype(unit.weight.value.dtype)
        graph.input.append(_float_input(map_name, weight_rank, elem))
        graph.input.append(_float_input(offset_name, 1, elem))
    return rewired


def _float_input(name: str, rank: int, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None] * rank)
