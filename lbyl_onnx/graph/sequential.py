"""Sequential calibration: each unit solved against the original model's activations, with
the units before it already pruned (``--sequential``).

Calibration mode solves every unit on the original model's statistics, as if it were the only
one pruned. In the pruned model, a unit's channels differ from the original's by what the
earlier units' removal left uncompensated, and those errors compound with depth. Solving the
units in graph order, each against the original's channels ``r`` from the kept channels ``x``
as the model pruned so far computes them (:func:`~lbyl_onnx.methods.calibrated.
solve_sequential`), lets every unit also undo what the earlier ones changed. It costs two
onnxruntime passes over the calibration data per unit (the original and the model pruned so
far, each computed only up to the unit); only moments are kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import helper

from .. import check
from ..methods.base import Solution, identity_rows
from ..methods.calibrated import SEQUENTIAL_RIDGE, CrossStats, solve_sequential
from .record import batches
from .rewrite import Plan, apply_plans
from .shapes import infer_shapes
from .units import Unit, find_units


class SequentialCalibration:
    """Solves units in graph order against ``original`` (never modified) on ``data``."""

    def __init__(
        self,
        original: onnx.ModelProto,
        data: dict[str, np.ndarray],
        prune_residual: bool,
        ridge: float = SEQUENTIAL_RIDGE,
        batch: int = 16,
    ):
        self.original, self.data = original, data
        self.prune_residual, self.ridge, self.batch = prune_residual, ridge, batch

    def solve(self, unit: Unit, kept: np.ndarray, earlier: list[Plan]) -> Solution:
        """``unit``'s solution, with the ``earlier`` plans (of units before it in the graph)
        applied to the model its kept channels are observed in. A unit that keeps every
        channel is left as it is (nothing measured)."""
        if len(kept) == unit.channels:
            return Solution(identity_rows(unit.channels, kept), 0.0)
        stats = CrossStats.empty(len(kept), unit.channels)
        axis = 1 if unit.kind == "conv" else -1
        pairs = zip(
            self._outputs(self._probe([], unit.record), unit.record),
            self._outputs(self._probe(earlier, unit.record), unit.record),
            strict=True,
        )
        for original, current in pairs:
            r = np.moveaxis(original, axis, -1).reshape(-1, unit.channels)
            x = np.moveaxis(current, axis, -1).reshape(-1, unit.channels)[:, kept]
            stats.add(x, r)
        return solve_sequential(stats, kept, self.ridge)

    def _probe(self, plans: list[Plan], tensor: str) -> onnx.ModelProto:
        """A copy of the original with ``plans`` applied (their units found again in it),
        computing ``tensor`` only (:func:`_truncate`)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.original)
        if plans:
            found, _ = find_units(model, infer_shapes(model), self.prune_residual)
            units = {u.name: u for u in found}
            apply_plans(
                model, [Plan(units[p.unit.name], p.kept, p.scaling, p.offsets) for p in plans]
            )
        _truncate(model.graph, tensor)
        return model

    def _outputs(self, probe: onnx.ModelProto, tensor: str) -> Iterator[np.ndarray]:
        """``tensor`` computed by ``probe`` on the data, one batch at a time."""
        session = check.session(probe, optimised=True)
        for feeds in batches(session, self.data, self.batch):
            yield session.run([tensor], feeds)[0]


def _truncate(graph: onnx.GraphProto, tensor: str) -> None:
    """Make ``tensor`` the graph's only output and drop the nodes it does not depend on
    (onnxruntime runs every node whatever the outputs asked for). A graph with control flow
    (a node holding a subgraph, which may read outer tensors) keeps all its nodes."""
    del graph.output[:]
    graph.output.append(helper.make_empty_tensor_value_info(tensor))
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for a in node.attribute
    ):
        return
    producer = {output: node for node in graph.node for output in node.output}
    needed, stack = set(), [tensor]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(name for name in node.input if name)
    kept = [node for node in graph.node if id(node) in needed]
    del graph.node[:]
    graph.node.extend(kept)
