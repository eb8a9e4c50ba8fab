"""Budgets instead of ratios: choose how many channels each unit keeps, globally.

Given, for each unit, the data-free damage of keeping ``m`` channels (the method's residual:
the error compensation leaves of the removed channels, as a fraction of the layer's total
filter energy) and an exact cost model of the network (every Conv/Gemm/MatMul's MACs scale
with the kept fraction of its input and of its output channels), a greedy allocation
repeatedly takes the step, in any unit, with the smallest increase in damage per unit of
cost saved, until the budget is met. Kept counts move along a grid: multiples of
``round_to`` (the unpruned count ``N`` is always allowed), never below ``min_keep``.

Taking steps in a fixed order makes the allocation monotone in the budget: a smaller budget
continues the same sequence, so no unit keeps more channels than under a larger budget.
A second cost that must also stay under a limit (latency under ``--target-latency`` with
``--target-macs``) is priced into that order (:func:`allocate_within`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CostTerm:
    """A node whose cost is ``base * (m_in / N_in) * (m_out / N_out)``; ``None`` when its input
    (or output) channels belong to no unit."""

    base: float
    input_unit: int | None = None
    output_unit: int | None = None


def candidate_counts(channels: int, round_to: int = 1, min_keep: float = 0.0) -> list[int]:
    """Kept counts a unit may take, from ``N`` down: multiples of ``round_to`` (and ``N``),
    at least ``max(round_to, ceil(min_keep * N))`` and at least 1."""
    floor = max(1, round_to, math.ceil(min_keep * channels - 1e-9))
    counts = [channels]
    m = (channels // round_to) * round_to
    if m == channels:
        m -= round_to
    while m >= floor:
        counts.append(m)
        m -= round_to
    return counts


def total_cost(terms: Sequence[CostTerm], kept: Sequence[int], channels: Sequence[int]) -> float:
    """The network's cost for kept counts ``kept`` (the exact bilinear model)."""
    total = 0.0
    for term in terms:
        factor = 1.0
        if term.input_unit is not None:
            factor *= kept[term.input_unit] / channels[term.input_unit]
        if term.output_unit is not None:
            factor *= kept[term.output_unit] / channels[term.output_unit]
        total += term.base * factor
    return total


@dataclass(frozen=True)
class Limit:
    """A second cost the allocation must also bring to at most ``target`` (``--target-latency``
    given with ``--target-macs``): its terms, priced like the budget's."""

    terms: Sequence[CostTerm]
    target: float


def allocate(
    channels: Sequence[int],
    damage: Sequence[Callable[[int], float]],
    terms: Sequence[CostTerm],
    target: float,
    round_to: int = 1,
    min_keep: float = 0.0,
    frozen: Sequence[bool] | None = None,
    priced: Sequence[CostTerm] = (),
    price: float = 0.0,
) -> list[int]:
    """Kept counts per unit whose total cost is at most ``target`` (or as low as the grid
    allows), choosing greedily by damage added per cost saved (module docstring).

    ``damage[u](m)`` is unit ``u``'s damage when it keeps ``m`` channels (0 at ``m = N``);
    ``frozen`` units keep all their channels. With a ``price``, a step's damage is lowered by
    ``price`` times what it saves of the ``priced`` terms' cost (:func:`allocate_within`).
    """
    grids = [
        [n] if frozen and frozen[u] else candidate_counts(n, round_to, min_keep)
        for u, n in enumerate(channels)
    ]
    position = [0] * len(channels)
    kept = list(channels)
    cost = total_cost(terms, kept, channels)
    by_unit = _terms_by_unit(terms)
    priced_by_unit = _terms_by_unit(priced)

    def unit_cost(u: int, m: int, grouped: dict[int, list[CostTerm]]) -> float:
        trial = list(kept)
        trial[u] = m
        return total_cost(grouped.get(u, []), trial, channels)

    neighbours = {
        u: sorted({v for t in by_unit.get(u, []) + priced_by_unit.get(u, []) for v in _units_of(t)})
        for u in range(len(channels))
    }
    version = [0] * len(channels)

    def step(u: int) -> tuple[float, int, int] | None:
        if position[u] + 1 >= len(grids[u]):
            return None
        m_now, m_next = grids[u][position[u]], grids[u][position[u] + 1]
        saved = unit_cost(u, m_now, by_unit) - unit_cost(u, m_next, by_unit)
        if saved <= 0:
            return None  # a step that saves nothing is never worth its damage
        added = damage[u](m_next) - damage[u](m_now)
        if price:
            added -= price * (
                unit_cost(u, m_now, priced_by_unit) - unit_cost(u, m_next, priced_by_unit)
            )
        return added / saved, u, version[u]

    heap = [s for u in range(len(channels)) if (s := step(u)) is not None]
    heapq.heapify(heap)
    while cost > target and heap:
        _, u, seen = heapq.heappop(heap)
        if seen != version[u]:
            continue  # stale: a neighbour moved since this step was priced
        m_next = grids[u][position[u] + 1]
        cost -= unit_cost(u, kept[u], by_unit) - unit_cost(u, m_next, by_unit)
        kept[u] = m_next
        position[u] += 1
        for v in {u, *neighbours[u]}:  # bilinear terms: the neighbours' steps changed price
            version[v] += 1
            if (entry := step(v)) is not None:
                heapq.heappush(heap, entry)
    return kept


def allocate_within(
    channels: Sequence[int],
    damage: Sequence[Callable[[int], float]],
    terms: Sequence[CostTerm],
    target: float,
    limit: Limit,
    round_to: int = 1,
    min_keep: float = 0.0,
    frozen: Sequence[bool] | None = None,
) -> list[int]:
    """Kept counts that meet the budget (``terms`` at most ``target``) and ``limit`` with
    little damage: the Lagrangian relaxation of the limit.

    Minimising damage ``D`` subject to the budget ``C <= target`` and the limit
    ``L <= limit.target``, the limit enters the objective as ``D + mu * L``: the greedy
    allocation ranks each step by ``(damage added - mu * L saved) / C saved`` and stops at
    the budget. ``mu = 0`` is :func:`allocate`; as ``mu`` grows, the steps move to units
    whose limit cost falls faster than their budget cost, whatever their damage. ``mu`` is
    the smallest for which the allocation meets the limit at the budget (bracketed by
    doubling, then bisected :data:`PRICE_BISECTIONS` times); where none does, up to
    :data:`PRICE_DOUBLINGS` doublings, the allocation at the largest price is returned (the
    one that saves the most of the limit's cost at the budget; the caller sees that it
    misses the limit). Unlike :func:`allocate`, the result is not monotone in the budget:
    the price differs between budgets."""
    common = (round_to, min_keep, frozen)

    def meets(kept: list[int]) -> bool:
        return total_cost(limit.terms, kept, channels) <= limit.target

    kept = allocate(channels, damage, terms, target, *common)
    if meets(kept):
        return kept
    grids = [candidate_counts(n, round_to, min_keep) for n in channels]
    worst = max(abs(d(g[-1])) for d, g in zip(damage, grids, strict=True))
    full = total_cost(limit.terms, channels, channels)
    low, high = 0.0, max(worst, 1e-12) / max(full, 1e-12) / 2**10
    for _ in range(PRICE_DOUBLINGS):
        kept = allocate(channels, damage, terms, target, *common, limit.terms, high)
        if meets(kept):
            break
        low, high = high, 2 * high
    else:
        return kept  # no price meets the limit at the budget
    for _ in range(PRICE_BISECTIONS):
        middle = (low + high) / 2
        if meets(allocate(channels, damage, terms, target, *common, limit.terms, middle)):
            high = middle
        else:
            low = middle
    return allocate(channels, damage, terms, target, *common, limit.terms, high)


PRICE_DOUBLINGS = 40
"""How far :func:`allocate_within` raises the limit's price: from ``2**-10`` to ``2**30``
times the largest damage per the limit's whole cost."""

PRICE_BISECTIONS = 20
"""Bisections of the limit's price between the last that misses it and the first that meets it."""


def _terms_by_unit(terms: Sequence[CostTerm]) -> dict[int, list[CostTerm]]:
    """The terms each unit's kept count scales."""
    grouped: dict[int, list[CostTerm]] = {}
    for term in terms:
        for unit in _units_of(term):
            grouped.setdefault(unit, []).append(term)
    return grouped


def _units_of(term: CostTerm) -> set[int]:
    return {term.input_unit, term.output_unit} - {None}


def activation_damage(
    column_gram: np.ndarray,
    second_moment: np.ndarray,
    mean: np.ndarray,
    kept: np.ndarray,
    scaling: np.ndarray,
    offsets: np.ndarray | None = None,
) -> float:
    """The share of the consumers' output signal that keeping ``kept`` with ``S`` loses.

    A consumer with weight columns ``V`` (one per channel, ``M = V^T V`` summed over its
    outputs and kernel taps: ``column_gram``) reads ``r`` and, after pruning, ``S r_P + o``.
    Its output error is ``V e`` with ``e = r - S r_P - o = A r - o``, ``A = I - S P^T``
    (``P`` selects the kept channels), so with ``Q = E[r r^T]`` and ``mu = E[r]``::

        E[e e^T] = A Q A^T - A mu o^T - o mu^T A^T + o o^T
        damage   = tr(M E[e e^T]) / tr(M Q)

    exact when positions are uncorrelated (the consumer's taps see independent samples).
    ``S``'s kept rows are unit vectors, so only the removed rows of ``A`` are non-zero.
    Unlike the filter-space residual, this sees the activation: a mixed-sign combination
    of rectified channels is charged for what the rectifier does to it.
    """
    total = float(np.sum(column_gram * second_moment))
    removed = np.setdiff1d(np.arange(len(mean)), kept)
    if total <= 0.0 or len(removed) == 0:
        return 0.0
    a = np.zeros((len(removed), len(mean)))  # the removed rows of A (its kept rows are 0)
    a[np.arange(len(removed)), removed] = 1.0
    a[:, kept] -= scaling[removed]
    error = a @ second_moment @ a.T
    if offsets is not None:
        shift = np.outer(a @ mean, offsets[removed])
        error += np.outer(offsets[removed], offsets[removed]) - shift - shift.T
    lost = float(np.sum(column_gram[np.ix_(removed, removed)] * error))
    return max(lost, 0.0) / total
