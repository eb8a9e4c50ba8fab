"""What each unit's channels cost in onnxruntime time (``--target-latency``).

A MAC budget assumes time falls with MACs everywhere alike; measured, it does not: a
depthwise layer spends more time per MAC than a pointwise one, and a small layer's time is
largely per-call overhead that no width removes (docs/benchmarks.md, "Budgets"). This module
profiles the model in onnxruntime twice, as it is and with every unit cut to about half its
channels (plain removal: the time does not depend on which channels stay), and splits each
kernel's time ``t`` into a fixed part and a part that scales like its MACs::

    t(m_in, m_out) = fixed + variable * (m_in / N_in) * (m_out / N_out)

where ``m_in`` (``m_out``) is the kept count of the unit its input (output) channels belong
to, the factor 1 where they belong to none. From the two profiles, with ``f`` the factor at
the probe's counts, ``variable = (t_full - t_probe) / (1 - f)``, clipped to ``[0, t_full]``.
The variable parts are :class:`~lbyl_onnx.methods.allocation.CostTerm` bases, so the budget's
allocation treats time exactly as it treats MACs.

Kernels are matched to the graph by name: onnxruntime names a kernel after its node
(``fused `` prefixed where it fused an activation into it) or, for its blocked (NCHWc)
convolutions, after the output tensor with ``_nchwc`` appended. Nodes are renamed uniquely
in the profiled copies so that every name resolves. A kernel that fused a convolution with
what follows it (activation, normalisation, residual sum) carries the convolution's factor;
a pooling or other channel-wise kernel after a unit's producer scales with that unit alone.
A kernel that resolves to nothing is fixed time.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.ops import ops_where
from ..graph.rewrite import Plan, apply_plans
from ..graph.units import Unit, units_by_tensor
from ..methods.allocation import CostTerm, candidate_counts
from ..methods.base import identity_rows
from . import sessions

FUSED_INTO_CONV = ops_where(lambda spec: spec.fused_into_conv)
"""Ops onnxruntime fuses into the convolution (or matrix product) they follow (the op
table's ``fused_into_conv``)."""

CHANNELWISE = ops_where(lambda spec: spec.channelwise)
"""Ops whose output keeps their first input's channels (the op table's ``channelwise``)."""

MATRIX_OPS = ops_where(lambda spec: spec.producer is not None)
"""The matrix ops (the op table's producers)."""

PROFILE_SECONDS = 1.0
"""About how long each model is profiled (at least :data:`PROFILE_RUNS`)."""

PROFILE_RUNS = (10, 200)
"""The fewest and the most runs whose per-kernel medians are taken."""

WARM_UP_RUNS = 2
"""Runs before those measured (allocation, caches)."""


@dataclass(frozen=True)
class LatencyCosts:
    """The model's time split into per-node terms that scale with the kept counts, and the
    rest. ``total`` is the median run's time; ``terms`` the variable parts (bases in
    microseconds, units indexed as in the list the costs were measured for)."""

    terms: list[CostTerm]
    total: float
    inputs: str
    """The inputs' shapes it was measured at (``name:1x3x224x224``)."""
    kernels: int
    """Kernels profiled in a run; of them, ``resolved`` scale with some unit."""
    resolved: int


def latency_costs(
    model: onnx.ModelProto,
    units: list[Unit],
    feeds: dict[str, np.ndarray],
    round_to: int = 1,
) -> LatencyCosts:
    """Profile ``model`` and a copy with every unit at about half its channels (on
    ``feeds``, one thread, onnxruntime's default optimisations) and split each kernel's time
    as the module docstring says. ``units`` are ``model``'s."""
    named = _renamed(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(named)
    halves = [_half(u.channels, round_to) for u in units]
    plans = [
        Plan(unit, np.arange(half), identity_rows(unit.channels, np.arange(half)))
        for unit, half in zip(units, halves, strict=True)
        if half < unit.channels
    ]
    apply_plans(probe, plans)  # the units refer to nodes by their outputs: found in the copy
    full_times, total = kernel_times(named, feeds)
    probe_times, _ = kernel_times(probe, feeds)
    factors = kernel_factors(named, units)
    terms = split_times(full_times, probe_times, factors, halves, [u.channels for u in units])
    resolved = sum(k in factors for k in full_times)
    return LatencyCosts(terms, total, sessions.shapes_text(feeds), len(full_times), resolved)


def split_times(
    full: dict[str, float],
    probe: dict[str, float],
    factors: dict[str, tuple[int | None, int | None]],
    probe_counts: list[int],
    channels: list[int],
) -> list[CostTerm]:
    """Each kernel's variable time as a :class:`CostTerm`: with ``f`` its factor
    (:func:`factor_at`) at ``probe_counts``, ``(t_full - t_probe) / (1 - f)`` within
    ``[0, t_full]`` (a kernel that got slower in the probe, or no smaller, has none).
    Kernels without a factor, missing from the probe, or not shrunk by it are fixed time."""
    terms = []
    for kernel, spent in full.items():
        factor = factors.get(kernel)
        if factor is None or kernel not in probe:
            continue
        shrink = factor_at(factor, probe_counts, channels)
        if shrink >= 1.0:
            continue
        variable = min(max((spent - probe[kernel]) / (1.0 - shrink), 0.0), spent)
        terms.append(CostTerm(variable, *factor))
    return terms


def factor_at(factor: tuple[int | None, int | None], kept: list[int], channels: list[int]) -> float:
    """``(m_in / N_in) * (m_out / N_out)`` for a kernel reading ``factor[0]``'s channels and
    writing ``factor[1]``'s (1 for ``None``)."""
    return float(np.prod([kept[u] / channels[u] for u in factor if u is not None]))


def _half(channels: int, round_to: int) -> int:
    """The allowed count (:func:`candidate_counts`) nearest half the channels."""
    return min(candidate_counts(channels, round_to), key=lambda m: abs(m - channels / 2))


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes are named ``lbyl_node_<i>`` by position (unique and resolvable)."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for i, node in enumerate(named.graph.node):
        node.name = f"lbyl_node_{i}"
    return named


def kernel_factors(
    named: onnx.ModelProto, units: list[Unit]
) -> dict[str, tuple[int | None, int | None]]:
    """For each kernel name the profile can show for ``named``'s nodes, the units whose
    kept counts its time scales with (input, output), where any (module docstring)."""
    producer_of, consumer_of = units_by_tensor(units)
    writer = {out: node for node in named.graph.node for out in node.output}
    factors = {}
    for node in named.graph.node:
        factor = _factor(node, writer, producer_of, consumer_of)
        if factor is None:
            continue
        for key in (node.name, f"fused {node.name}", f"{node.output[0]}_nchwc"):
            factors[key] = factor
    return factors


def _factor(
    node: onnx.NodeProto,
    writer: dict[str, onnx.NodeProto],
    producer_of: dict[str, int],
    consumer_of: dict[str, int],
) -> tuple[int | None, int | None] | None:
    """Walk back from ``node`` through channel-wise ops to a matrix op; its units, or only its
    output unit where a kernel other than a fused activation lies between."""
    fused = True
    current = node
    for _ in range(16):
        if current.op_type in MATRIX_OPS:
            out = current.output[0]
            pair = (consumer_of.get(out) if fused else None, producer_of.get(out))
            return pair if pair != (None, None) else None
        if current.op_type not in CHANNELWISE or not current.input:
            return None
        fused = fused and current.op_type in FUSED_INTO_CONV
        current = writer.get(current.input[0])
        if current is None:
            return None
    return None


def kernel_times(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> tuple[dict[str, float], float]:
    """Per kernel, its median time per run in microseconds (summed where a name repeats in
    a run), and the median run's time, from onnxruntime's profile of about
    :data:`PROFILE_SECONDS` of runs after :data:`WARM_UP_RUNS` unprofiled ones."""
    with tempfile.TemporaryDirectory(prefix="lbyl-onnx-profile-") as folder:
        session = sessions.session(model, profile_prefix=os.path.join(folder, "profile"))
        fewest, most = PROFILE_RUNS
        spent, runs = 0.0, 0
        while runs < WARM_UP_RUNS + most and (
            runs < WARM_UP_RUNS + fewest or spent < PROFILE_SECONDS
        ):
            began = time.perf_counter()
            session.run(None, feeds)
            if runs >= WARM_UP_RUNS:
                spent += time.perf_counter() - began
            runs += 1
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[
        WARM_UP_RUNS:
    ]
    starts = [start for start, _ in runs]
    per_run: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, event["ts"]) - 1
        if run < 0 or event["ts"] > runs[run][1]:
            continue
        name = event["name"].removesuffix("_kernel_time")
        per_run.setdefault(name, [0.0] * len(runs))[run] += event["dur"]
    medians = {name: float(np.median(times)) for name, times in per_run.items()}
    return medians, float(np.median([end - start for start, end in runs]))
