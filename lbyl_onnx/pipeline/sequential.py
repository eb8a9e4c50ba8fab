"""Sequential calibration: each unit solved against the original model's activations, with
the units before it already pruned (calibration mode's default for LBYL; ``--independent``
solves every unit alone instead).

Calibration mode solves every unit on the original model's statistics, as if it were the only
one pruned. In the pruned model, a unit's channels differ from the original's by what the
earlier units' removal left uncompensated, and those errors compound with depth. Solving the
units in graph order, each against the original's channels ``r`` from the kept channels ``x``
as the model pruned so far computes them (:func:`~lbyl_onnx.methods.calibrated.
solve_sequential`), lets every unit also undo what the earlier ones changed.

What it runs in onnxruntime, over the calibration data:

- the original, recording ``r`` for as many units as :data:`RECORDED_BYTES` holds per pass
  (one pass when they all fit), at :data:`POSITIONS` sampled spatial positions per sample;
- per unit, the model pruned so far, up to the unit only and from the tensors the previous
  passes left: a later plan changes only its own producers and what lies downstream of them,
  so a tensor computed without them is still valid once they are applied. Those tensors
  (the frontier between what is final and what a later plan may change) are kept while they
  fit in :data:`FRONTIER_BYTES`; beyond it the pass starts from the model's inputs.

``x`` is observed at the positions ``r`` was; only moments are kept, separately for the
even and the odd samples, so that each unit's ridge can be cross-validated
(:func:`~lbyl_onnx.methods.calibrated.cross_validated_ridge`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from ..graph.extract import has_subgraphs, needed_nodes, tensor_type
from ..graph.index import GraphIndex
from ..graph.rewrite import Plan, apply_plans, consumer_column_gram
from ..graph.units import Layout, Unit
from ..methods.base import Solution, identity_rows
from ..methods.calibrated import (
    SEQUENTIAL_RIDGE,
    CrossStats,
    cross_validated_ridge,
    solve_sequential,
)
from ..methods.selection import reconstruction_keep
from ..runtime.record import Recorder

POSITIONS = 256
"""Spatial positions per sample at which a unit's channels are observed, drawn at random
without replacement (all of them where there are fewer)."""

RECORDED_BYTES = 512 * 2**20
"""The most bytes of the original's sampled activations held at once (a larger model's are
recorded in several passes: docs/benchmarks.md, "Sequential calibration")."""

FRONTIER_BYTES = 1024 * 2**20
"""The most bytes of the pruned model's frontier tensors held at once (a smaller budget made
VGG16's passes start from its inputs: docs/benchmarks.md, "Sequential calibration")."""


class SequentialCalibration:
    """Solves ``units`` (those to be pruned, in graph order) against ``original`` (never
    modified) on ``data``, each with ``ridge``, or with the ridge cross-validated on its own
    observations where ``ridge`` is None."""

    def __init__(
        self,
        original: onnx.ModelProto,
        units: list[Unit],
        data: dict[str, np.ndarray],
        ridge: float | None = None,
        batch: int = 16,
        positions: int = POSITIONS,
        recorded_bytes: int = RECORDED_BYTES,
        frontier_bytes: int = FRONTIER_BYTES,
    ):
        self.original, self.units, self.data = original, units, data
        self.ridge, self.batch = ridge, batch
        self.positions = positions
        self.recorded_bytes, self.frontier_bytes = recorded_bytes, frontier_bytes
        self._slices: list[slice] = []  # the batches, the same in every pass
        self._chosen: dict[str, np.ndarray | None] = {}  # sampled positions per unit
        self._rows_per_sample: dict[str, int] = {}
        self._recorded: dict[str, list[np.ndarray]] = {}  # r's sampled rows, per batch
        self._frontier: dict[str, list[np.ndarray]] = {}  # pruned model's tensors, per batch
        self._final: set[str] = set()  # nodes (by first output) no later plan changes
        self._cacheable = not has_subgraphs(original.graph)

    def solve(
        self, unit: Unit, count: int, earlier: list[Plan], kept: np.ndarray | None = None
    ) -> tuple[np.ndarray, Solution]:
        """``unit``'s kept channels and solution, with the ``earlier`` plans (of the units
        before it, in order) applied to the model its channels are observed in. ``kept``:
        the ``count`` channels that stay, or None to choose them from the observations (the
        ``reconstruction`` criterion, :func:`~lbyl_onnx.methods.selection.reconstruction_keep`).
        A unit that keeps every channel is left as it is (nothing measured)."""
        if count == unit.channels:
            everything = np.arange(count)
            return everything, Solution(identity_rows(count, everything), 0.0)
        if unit.name not in self._recorded:
            self._record_original(unit)
        recorded = self._recorded.pop(unit.name)
        observed = np.arange(unit.channels) if kept is None else kept
        folds = (
            CrossStats.empty(len(observed), unit.channels),
            CrossStats.empty(len(observed), unit.channels),
        )  # the even and the odd samples

        def add(index: int, values: np.ndarray) -> None:
            start = self._slices[index].start
            x = self._rows(unit, values, start)[:, observed]
            per_sample = self._rows_per_sample[unit.name]
            x = x.reshape(-1, per_sample, len(observed))
            r = recorded[index].reshape(-1, per_sample, unit.channels)
            for parity, fold in enumerate(folds):
                first = (parity - start) % 2
                fold.add(
                    x[first::2].reshape(-1, len(observed)), r[first::2].reshape(-1, unit.channels)
                )

        self._current(unit, earlier, add)
        if kept is None:
            cxx, cxr = (folds[0] + folds[1]).covariances()
            kept = reconstruction_keep(cxx, cxr, consumer_column_gram(unit), count)
            folds = (folds[0].of_kept(kept), folds[1].of_kept(kept))
        ridge, notes = self.ridge, []
        if ridge is None:
            if folds[1].count:
                ridge = cross_validated_ridge(folds, kept)
                notes.append(f"ridge {ridge:g} (cross-validated)")
            else:
                ridge = SEQUENTIAL_RIDGE  # one sample: nothing to validate on
        solution = solve_sequential(folds[0] + folds[1], kept, ridge)
        solution.notes += notes
        return kept, solution

    def _record_original(self, first: Unit) -> None:
        """One pass of the original recording ``r`` for ``first`` and as many of the units
        after it as fit in :attr:`recorded_bytes` (``first`` always)."""
        if not self._slices:
            self._sample_positions()
        count = sum(s.stop - s.start for s in self._slices)
        names = [u.name for u in self.units]
        window, size = [], 0
        for unit in self.units[names.index(first.name) :]:
            size += count * self._rows_per_sample[unit.name] * unit.channels * 4
            if window and size > self.recorded_bytes:
                break
            window.append(unit)
        tensors = sorted({u.record for u in window})
        self._recorded.update({u.name: [] for u in window})
        passes = self._recorder(self.original, tensors).batches(self.data, self._slices)
        for part, named in zip(self._slices, passes, strict=True):
            for unit in window:
                rows = self._rows(unit, named[unit.record], part.start)
                self._recorded[unit.name].append(rows.astype(np.float32))

    def _sample_positions(self) -> None:
        """The batches, every unit's spatial size (from the original's outputs on the first
        batch) and the positions observed in each sample (None: all)."""
        recorder = self._recorder(self.original, sorted({u.record for u in self.units}))
        count = len(next(iter(self.data.values())))
        self._slices = recorder.slices(count, self.batch)
        named = recorder.run({name: value[self._slices[0]] for name, value in self.data.items()})
        rng = np.random.default_rng(0)
        for unit in self.units:
            value = named[unit.record]
            spatial = value.size // (value.shape[0] * unit.channels)
            self._rows_per_sample[unit.name] = min(spatial, self.positions)
            if spatial <= self.positions:
                self._chosen[unit.name] = None
                continue
            ranks = rng.random((count, spatial))
            chosen = np.argpartition(ranks, self.positions, axis=1)[:, : self.positions]
            self._chosen[unit.name] = np.sort(chosen, axis=1)

    def _rows(self, unit: Unit, values: np.ndarray, start: int) -> np.ndarray:
        """``unit``'s channels in ``values`` (samples ``start`` onward) as rows, one per
        sample and sampled position."""
        b = values.shape[0]
        if unit.layout is Layout.SPATIAL:  # samples x channels x positions
            grid = values.reshape(b, unit.channels, -1)
        else:
            grid = np.swapaxes(values.reshape(b, -1, unit.channels), 1, 2)
        chosen = self._chosen.get(unit.name)
        if chosen is not None:
            grid = np.take_along_axis(grid, chosen[start : start + b, None, :], axis=2)
        return np.swapaxes(grid, 1, 2).reshape(-1, unit.channels)

    def _current(
        self, unit: Unit, earlier: list[Plan], each: Callable[[int, np.ndarray], None]
    ) -> None:
        """``unit.record`` in the model pruned by ``earlier``, passed to ``each`` batch by
        batch, computed from the frontier the previous passes left; the frontier is then
        moved past what this pass computed, where it fits in :attr:`frontier_bytes`."""
        model = self._pruned(earlier)
        if not self._cacheable:
            passes = self._recorder(model, [unit.record]).batches(self.data, self._slices)
            for index, values in enumerate(passes):
                each(index, values[unit.record])
            return
        index = GraphIndex(model)
        names = [u.name for u in self.units]
        changing = _downstream(index, self.units[names.index(unit.name) :])
        computed = needed_nodes(index, [unit.record], self._frontier)
        final = (self._final | {n.output[0] for n in computed}) - changing
        varying = _input_dependent(model.graph)  # the rest (Constant nodes' weights): recomputed

        def needed(tensor: str, final: set[str]) -> bool:
            return any(r.node.output[0] not in final for r in index.readers.get(tensor, ()))

        new = [
            t
            for node in computed
            if node.output[0] not in changing and node.output[0] in varying
            for t in node.output
            if t and t not in self._frontier and needed(t, final)
        ]
        given = {
            t: self._frontier[t] for node in computed for t in node.input if t in self._frontier
        }
        frontier = {t: tensor_type(values[0].dtype) for t, values in given.items()}
        recorder = self._recorder(model, [unit.record, *new], frontier, index)
        held = sum(v.nbytes for values in self._frontier.values() for v in values)
        store: dict[str, list[np.ndarray]] | None = {t: [] for t in new}
        for batch, values in enumerate(recorder.batches(self.data, self._slices, given)):
            each(batch, values[unit.record])
            if batch == 0 and held + sum(values[t].nbytes for t in new) * len(self._slices) > (
                self.frontier_bytes
            ):
                store = None
            if store is not None:
                for tensor in new:
                    store[tensor].append(values[tensor])
        if store is not None:
            self._frontier.update(store)
            self._final = final
        self._frontier = {t: v for t, v in self._frontier.items() if needed(t, self._final)}

    def _pruned(self, plans: list[Plan]) -> onnx.ModelProto:
        """A copy of the original with ``plans`` applied (units refer to nodes by name)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.original)
        if plans:
            apply_plans(model, plans)
        return model

    def _recorder(
        self,
        model: onnx.ModelProto,
        tensors: list[str],
        frontier: dict[str, onnx.TypeProto] | None = None,
        index: GraphIndex | None = None,
    ) -> Recorder:
        """A recorder of ``tensors`` computed by ``model`` cut to them, from its inputs and the
        ``frontier`` tensors; where the graph has control flow, by the whole model (nothing is
        cut or held)."""
        in_place = not self._cacheable
        return Recorder.cut(
            model, tensors, frontier, in_place=in_place, optimised=True, index=index
        )


def _input_dependent(graph: onnx.GraphProto) -> set[str]:
    """The nodes (by first output) that depend on the graph's real inputs. The others compute
    weights (Constant nodes and what reads only them), which a plan may edit in place: they
    are never held in the frontier."""
    weights = {t.name for t in graph.initializer}
    reached = {i.name for i in graph.input if i.name not in weights}
    nodes = set()
    for node in graph.node:  # topologically sorted, as the checker requires
        if any(name in reached for name in node.input):
            nodes.add(node.output[0])
            reached.update(node.output)
    return nodes


def _downstream(index: GraphIndex, units: list[Unit]) -> set[str]:
    """The nodes (by first output) that the plans of ``units`` may change: their producers
    and everything downstream of them. (A rewrite gives every constant it changes a fresh
    name, or edits in place one that no other node reads: units whose constants are shared
    are declined.)"""
    starts = {p.output[0] for u in units for p in u.producers}
    roots = [node for node in index.model.graph.node if node.output[0] in starts]
    reached: dict[str, onnx.NodeProto] = {}
    while roots:
        node = roots.pop()
        if node.output[0] in reached:
            continue
        reached[node.output[0]] = node
        roots.extend(r.node for t in node.output for r in index.readers.get(t, ()))
    return set(reached)
