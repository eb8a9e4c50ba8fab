"""Measure the activation statistics of units by running the original model in onnxruntime.

For calibration mode: each unit's channels are observed where its consumers read them
(:attr:`Unit.record`), in batches, and only their first and second moments are kept, so
memory is bounded by ``N x N`` per unit whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..graph.units import Unit
from ..methods.calibrated import ActivationStats
from . import sessions
from .sessions import batch_slices


def record_statistics(
    model: onnx.ModelProto,
    units: list[Unit],
    data: dict[str, np.ndarray],
    batch: int = 16,
) -> dict[str, ActivationStats]:
    """Per unit name, the moments of its channels over every sample and spatial position."""
    graph = model.graph
    existing = {o.name for o in graph.output}
    tensors = sorted({u.record for u in units})
    count_outputs = len(graph.output)
    graph.output.extend(
        helper.make_empty_tensor_value_info(name) for name in tensors if name not in existing
    )
    try:  # the recorded tensors are outputs only while the session is created
        session = sessions.session(model)
    finally:
        del graph.output[count_outputs:]
    stats = {u.name: ActivationStats.empty(u.channels) for u in units}
    axis = {u.name: u.layout.channel_axis for u in units}
    for feeds in batches(session, data, batch):
        values = dict(zip(tensors, session.run(tensors, feeds), strict=True))
        for unit in units:
            channels = np.moveaxis(values[unit.record], axis[unit.name], -1)
            stats[unit.name].add(channels.reshape(-1, unit.channels))
    return stats


def batches(
    session: ort.InferenceSession, data: dict[str, np.ndarray], batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """``data`` as feeds of ``batch`` samples (:func:`batch_slices`)."""
    count = len(next(iter(data.values())))
    for part in batch_slices(session, count, batch):
        yield {name: value[part] for name, value in data.items()}
