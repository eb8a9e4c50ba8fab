"""Which channels go: per-filter scores on the producer's raw filters, lowest removed first."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.distance import cdist


def l2_score(weight: np.ndarray) -> np.ndarray:
    """``|w_i|_2``: the paper's default criterion."""
    return np.sqrt(np.sum(weight.astype(np.float64) ** 2, axis=1))


def l1_score(weight: np.ndarray) -> np.ndarray:
    """``|w_i|_1``."""
    return np.sum(np.abs(weight.astype(np.float64)), axis=1)


def geometric_median_score(weight: np.ndarray) -> np.ndarray:
    """``sum_k |w_i - w_k|_2``: filters nearest the geometric median score lowest (FPGM)."""
    w = weight.astype(np.float64)
    return cdist(w, w).sum(axis=1)


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

    Ties are broken by index (a stable sort), so the choice is deterministic.
    """
    scores = CRITERIA[criterion](weight.reshape(weight.shape[0], -1))
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:m])
