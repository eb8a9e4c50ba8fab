"""Records shared by the methods: a unit's arrays, the options, and a solution."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class BatchNormParams:
    """Per-channel BatchNormalization: ``y = gamma (z - mean) / sqrt(var + eps) + beta``."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    statistics: bool = True
    """False for a scale and shift without running statistics (BN written as Mul/Add)."""

    @property
    def sigma(self) -> np.ndarray:
        """``sigma_i = sqrt(var_i + eps)``."""
        return np.sqrt(self.var.astype(np.float64) + self.eps)

    @property
    def rho(self) -> np.ndarray:
        """``rho_i = gamma_i / sigma_i``: the factor BN applies to channel ``i``."""
        return self.gamma.astype(np.float64) / self.sigma


COLUMN_BLOCK = 8192
"""Columns of the filters converted to float64 at a time: memory stays O(N^2 + N * block)."""


def filter_gram(weight: np.ndarray) -> np.ndarray:
    """``G = W W^T`` in float64 for filters ``W`` (``N x d``), accumulated over column blocks
    so that no float64 copy of the whole weight is made."""
    rows = weight.reshape(weight.shape[0], -1)
    gram = np.zeros((rows.shape[0], rows.shape[0]))
    for start in range(0, rows.shape[1], COLUMN_BLOCK):
        block = rows[:, start : start + COLUMN_BLOCK].astype(np.float64)
        gram += block @ block.T
    return gram


@dataclass(frozen=True)
class LayerArrays:
    """The producer of one unit, as arrays.

    ``weight`` holds the raw filters as rows (``N x d``), ``bias`` the raw biases (``N``),
    ``bn`` the BatchNormalization that follows, if any. The folded filters are
    ``wt_i = rho_i * w_i`` and ``bt_i = beta_i + rho_i * (b_i - mean_i)`` (LBYL.md section 2);
    without BN they are the raw ones.
    """

    weight: np.ndarray
    bias: np.ndarray
    bn: BatchNormParams | None = None

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @cached_property
    def raw_gram(self) -> np.ndarray:
        """``w_i . w_k`` for the raw filters (``N x N``, float64)."""
        return filter_gram(self.weight)

    @cached_property
    def gram(self) -> np.ndarray:
        """``wt_i . wt_k`` for the folded filters: ``rho_i rho_k (w_i . w_k)`` with BN.

        Every method needs the filters only through these inner products, so memory is
        ``O(N^2)`` whatever the filter size ``d``."""
        if self.bn is None:
            return self.raw_gram
        return self.raw_gram * np.outer(self.bn.rho, self.bn.rho)

    @cached_property
    def folded_weight(self) -> np.ndarray:
        w = self.weight.astype(np.float64)
        if self.bn is None:
            return w
        return self.bn.rho[:, None] * w

    @cached_property
    def folded_bias(self) -> np.ndarray:
        b = self.bias.astype(np.float64)
        if self.bn is None:
            return b
        return self.bn.beta.astype(np.float64) + self.bn.rho * (b - self.bn.mean)

    def input_second_moment(self) -> float:
        """Data-free estimate of ``E[x_k^2]``, the layer input's mean square per element.

        With BN, channel ``i``'s pre-BN output has variance ``var_i`` while ``|w_i|^2 E[x^2]``
        is its variance for independent inputs; the median ratio estimates ``E[x^2]``.
        Without BN nothing is known and the inputs are taken as unit scale (1.0).
        """
        if self.bn is None or not self.bn.statistics:
            return 1.0
        norms = np.diag(self.raw_gram)
        alive = norms > 1e-12 * max(float(norms.max()), 1e-30)
        if not np.any(alive):
            return 1.0
        ratios = self.bn.var.astype(np.float64)[alive] / norms[alive]
        value = float(np.median(ratios))
        return value if np.isfinite(value) and value > 0 else 1.0


@dataclass(frozen=True)
class MethodOptions:
    """Options of the methods.

    ``bias_weight`` and ``ridge`` are LBYL's ``lam1`` and ``lam2`` expressed relative to the
    layer itself (see :func:`lbyl_onnx.methods.lbyl.regularisers`). ``nm_threshold`` and
    ``nm_lambda`` are Neuron Merging's cosine threshold ``t`` and trade-off ``lam``.
    """

    bias_weight: float = 1.0
    ridge: float = 0.3
    nm_threshold: float = 0.1
    nm_lambda: float = 0.85


@dataclass
class Solution:
    """What a method found for one unit.

    ``scaling`` is ``S`` (``N x m``): ``r_j ~ sum_t S[j, t] r_kept[t]``. ``residual`` is the
    data-free reconstruction error of the removed folded filters (filter and bias terms of
    the LBYL objective, without the ridge) relative to plain removal: 1.0 means no better than
    removing, 0.0 means the kept channels reproduce the removed ones exactly.
    """

    scaling: np.ndarray
    residual: float
    notes: list[str] = field(default_factory=list)
    offsets: np.ndarray | None = None
    """Per channel, the constant part of a removed channel that ``S`` does not carry and the
    consumers' biases absorb (bias correction); None when the method has none."""


class NonFiniteStatistics(ValueError):
    """Activation statistics that hold NaN or Inf: the data, or the model before the unit,
    computed them (an overflow, a logarithm or a division outside the model's domain); no
    compensation can be solved from them."""


def require_finite(*arrays: np.ndarray) -> None:
    """Raise :class:`NonFiniteStatistics` where any of ``arrays`` holds NaN or Inf (before
    a solver turns them into a crash or into NaN weights)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise NonFiniteStatistics("the activations it reads hold NaN or Inf")


def identity_rows(channels: int, kept: np.ndarray) -> np.ndarray:
    """``S`` with ``S[kept[t], t] = 1`` and zero rows for the removed channels."""
    scaling = np.zeros((channels, len(kept)), dtype=np.float64)
    scaling[kept, np.arange(len(kept))] = 1.0
    return scaling


def removed_channels(channels: int, kept: np.ndarray) -> np.ndarray:
    """The sorted indices not in ``kept``."""
    mask = np.ones(channels, dtype=bool)
    mask[kept] = False
    return np.flatnonzero(mask)


def _removed_error(
    layer: LayerArrays, kept: np.ndarray, scaling: np.ndarray, lam1: float
) -> tuple[float, np.ndarray]:
    """``sum_j |wt_j - Wt_P^T s_j|^2 + lam1 (bt_j - bt_P^T s_j)^2`` over removed ``j``, from
    the Gram matrix (``|a - b|^2 = G_aa - 2 G_ab + G_bb``), and the removed rows of ``S``."""
    removed = removed_channels(layer.channels, kept)
    g, bt = layer.gram, layer.folded_bias
    coeffs = scaling[removed]  # (r, m)
    error = (
        np.trace(g[np.ix_(removed, removed)])
        - 2.0 * np.sum(coeffs * g[np.ix_(removed, kept)])
        + np.sum((coeffs @ g[np.ix_(kept, kept)]) * coeffs)
    )
    error += lam1 * np.sum((bt[removed] - coeffs @ bt[kept]) ** 2)
    return max(float(error), 0.0), coeffs


def relative_residual(
    layer: LayerArrays, kept: np.ndarray, scaling: np.ndarray, lam1: float
) -> float:
    """``sum_j (|wt_j - Wt_P^T s_j|^2 + lam1 (bt_j - bt_P^T s_j)^2)`` over removed ``j``,
    divided by the same sum at ``s_j = 0`` (plain removal). 0.0 when nothing is removed."""
    removed = removed_channels(layer.channels, kept)
    if len(removed) == 0:
        return 0.0
    error, _ = _removed_error(layer, kept, scaling, lam1)
    bt = layer.folded_bias
    baseline = float(
        np.trace(layer.gram[np.ix_(removed, removed)]) + lam1 * np.sum(bt[removed] ** 2)
    )
    return error / baseline if baseline > 0.0 else 0.0


def layer_damage(
    layer: LayerArrays, kept: np.ndarray, scaling: np.ndarray, lam1: float, lam2: float
) -> float:
    """The LBYL objective of the removed channels at ``S`` (filter, bias and ridge terms), as
    a fraction of the whole layer's ``sum_i |wt_i|^2 + lam1 bt_i^2``: a data-free measure of
    how much of the layer's signal a choice of ``kept`` loses. The ridge term stands for the
    activation's share: a combination ``s`` of rectified channels misses ``relu(s^T z)`` by
    about ``0.34 sum_t s_t^2 |wt_t|^2`` (zero-mean Gaussian pre-activations), which is what
    ``lam2 |s|^2`` with the default ridge measures; without it, filter reconstructions that
    mix signs would look free (see docs/method.md)."""
    removed = removed_channels(layer.channels, kept)
    total = float(np.trace(layer.gram) + lam1 * np.sum(layer.folded_bias**2))
    if len(removed) == 0 or total <= 0:
        return 0.0
    error, coeffs = _removed_error(layer, kept, scaling, lam1)
    return (error + lam2 * float(np.sum(coeffs**2))) / total


def offsets_from_means(means: np.ndarray, scaling: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Bias correction for any ``S``: ``e_j = E[r_j] - S_j^T E[r_P]``, what the kept channels
    do not carry of a removed channel's mean (0 on kept rows, where ``S_j`` is a unit
    vector)."""
    return means - scaling @ means[kept]


def regularisers(
    layer: LayerArrays, kept: np.ndarray, options: MethodOptions
) -> tuple[float, float]:
    """LBYL's ``(lam1, lam2)`` for one layer, from scale-free options.

    The error a removed channel leaves in the pre-activation is
    ``e(x) = dw . x + db``; for inputs with per-element mean square ``mu2`` and little
    correlation, ``E[e^2] ~ mu2 |dw|^2 + db^2``. Dividing by ``mu2`` gives the filter term
    weight 1 and the bias term ``lam1 = bias_weight / mu2``
    (:meth:`LayerArrays.input_second_moment` estimates ``mu2``).

    The ridge is relative to the kept filters' mean square norm:
    ``lam2 = ridge * trace(Wt_P Wt_P^T) / m``, so it means the same in every layer.
    """
    scale = float(np.trace(layer.gram[np.ix_(kept, kept)])) / max(len(kept), 1)
    lam1 = options.bias_weight / layer.input_second_moment()
    lam2 = options.ridge * scale
    return lam1, lam2
