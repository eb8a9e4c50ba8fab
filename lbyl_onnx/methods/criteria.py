"""Which channels go: per-filter scores on the producer's raw filters, lowest removed first."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import COLUMN_BLOCK, filter_gram


def _row_sums(weight: np.ndarray, transform) -> np.ndarray:
    """``sum_k transform(w_ik)`` per row in float64, over column blocks (no full copy)."""
    total = np.zeros(weight.shape[0])
    for start in range(0, weight.shape[1], COLUMN_BLOCK):
        total += transform(weight[:, start : start + COLUMN_BLOCK].astype(np.float64)).sum(1)
    return total


def l2_score(weight: np.ndarray) -> np.ndarray:
    """``|w_i|_2``: the paper's default criterion."""
    return np.sqrt(_row_sums(weight, np.square))


def l1_score(weight: np.ndarray) -> np.ndarray:
    """``|w_i|_1``."""
    return _row_sums(weight, np.abs)


def geometric_median_score(weight: np.ndarray) -> np.ndarray:
    """``sum_k |w_i - w_k|_2``: filters nearest the geometric median score lowest (FPGM).

    Distances from the Gram matrix: ``|w_i - w_k|^2 = G_ii + G_kk - 2 G_ik``."""
    g = filter_gram(weight)
    diag = np.diag(g)
    squared = diag[:, None] + diag[None, :] - 2.0 * g
    # cancellation leaves ~1e-16 |w|^2 where filters are equal: that is a distance of 0
    squared[squared <= 1e-12 * max(float(diag.max(initial=0.0)), 1e-300)] = 0.0
    np.fill_diagonal(squared, 0.0)
    return np.sqrt(squared).sum(axis=1)


CRITERIA: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "l2": l2_score,
    "l1": l1_score,
    "l2-gm": geometric_median_score,
}


def kept_count(channels: int, ratio: float) -> int:
    """``m = int(N * (1 - ratio))``, never fewer than 1 (a tolerance absorbs float noise)."""
    return max(1, min(channels, int(channels * (1.0 - ratio) + 1e-9)))


def choose_kept(weight: np.ndarray, ratio: float, criterion: str = "l2") -> np.ndarray:
    """Sorted indices of the ``kept_count`` filters with the highest score."""
    return keep_best(weight, kept_count(weight.shape[0], ratio), criterion)


def keep_best(weight: np.ndarray, m: int, criterion: str = "l2") -> np.ndarray:
    """Sorted indices of the ``m`` filters with the highest score.

    Scores equal to 12 significant digits are ties (floating-point noise, e.g. between
    duplicate filters, must not decide), broken by index: the choice is deterministic.
    """
    scores = CRITERIA[criterion](weight.reshape(weight.shape[0], -1))
    scale = float(np.max(np.abs(scores))) if scores.size else 0.0
    if scale > 0:
        scores = np.round(scores / scale, 12)
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:m])
