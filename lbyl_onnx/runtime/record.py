"""Record tensors of a model in onnxruntime: the one way the tool observes its activations.

A :class:`Recorder` is a session of a model cut to the recorded tensors
(:func:`~lbyl_onnx.graph.extract.cut`), run batch by batch over the samples
(:func:`~lbyl_onnx.runtime.sessions.batch_slices`: the model's own batch where it is fixed),
each batch's tensors handed over by name. Calibration, the sequential solve's passes and the
input normalisation's probe record through it.

For calibration mode, :func:`record_statistics` observes each unit's channels where its
consumers read them (:attr:`Unit.record`) and keeps only their first and second moments, so
memory is bounded by ``N x N`` per unit whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..graph import extract
from ..graph.index import GraphIndex
from ..graph.units import Unit
from ..methods.calibrated import ActivationStats
from . import sessions


class Recorder:
    """``tensors``, computed by ``session`` from the feeds it reads."""

    def __init__(self, session: ort.InferenceSession, tensors: Sequence[str]) -> None:
        self.session, self.tensors = session, list(tensors)
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def cut(
        cls,
        model: onnx.ModelProto,
        tensors: Sequence[str],
        frontier: Mapping[str, onnx.TypeProto] | None = None,
        *,
        in_place: bool = False,
        optimised: bool = False,
        index: GraphIndex | None = None,
    ) -> Recorder:
        """A recorder of ``tensors`` of ``model`` cut to them (from its inputs and the
        ``frontier`` tensors: :func:`~lbyl_onnx.graph.extract.cut`, a new model unless
        ``in_place``), in a session with onnxruntime's optimisations when ``optimised``."""
        with extract.cut(model, tensors, frontier, in_place=in_place, index=index) as sub:
            return cls(sessions.session(sub, optimised=optimised), tensors)

    def slices(self, count: int, batch: int) -> list[slice]:
        """``count`` samples in batches of ``batch``, or of the model's fixed batch."""
        return sessions.batch_slices(self.session, count, batch)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The tensors by name, on one batch (``feeds`` the session does not read are left)."""
        used = {name: feeds[name] for name in self.inputs if name in feeds}
        return dict(zip(self.tensors, self.session.run(self.tensors, used), strict=True))

    def batches(
        self,
        data: Mapping[str, np.ndarray],
        slices: Sequence[slice],
        given: Mapping[str, Sequence[np.ndarray]] | None = None,
        constants: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The tensors by name, batch after batch: batch ``i`` fed ``data``'s samples
        ``slices[i]``, the ``i``-th value of each tensor ``given`` (frontier tensors recorded
        batch by batch) and the ``constants`` whole."""
        for index, part in enumerate(slices):
            feeds = {name: value[part] for name, value in data.items()}
            feeds.update({name: values[index] for name, values in (given or {}).items()})
            feeds.update(constants or {})
            yield self.run(feeds)


def record_statistics(
    model: onnx.ModelProto,
    units: list[Unit],
    data: dict[str, np.ndarray],
    batch: int = 16,
) -> dict[str, ActivationStats]:
    """Per unit name, the moments of its channels over every sample and spatial position.

    ``model`` is run whole (an in-place cut: nothing copied, the units' nodes untouched)."""
    tensors = sorted({u.record for u in units})
    recorder = Recorder.cut(model, tensors, in_place=True)
    stats = {u.name: ActivationStats.empty(u.channels) for u in units}
    axis = {u.name: u.layout.channel_axis for u in units}
    count = len(next(iter(data.values())))
    for values in recorder.batches(data, recorder.slices(count, batch)):
        for unit in units:
            channels = np.moveaxis(values[unit.record], axis[unit.name], -1)
            stats[unit.name].add(channels.reshape(-1, unit.channels))
    return stats
