"""A data-free judge of a compensation after the activation, from BatchNormalization statistics.

The methods solve for ``S`` before the activation (filter space), where the kept channels may
reproduce a removed one with mixed-sign coefficients that the activation then breaks. The
judge estimates what the consumers actually see. After a BatchNormalization with running
statistics, the pre-activations are modelled as jointly Gaussian::

    u ~ N(beta, C),   C_ik = |gamma_i| |gamma_k| G_ik / sqrt(G_ii G_kk)

(BN maps each channel's mean and standard deviation to ``beta`` and ``|gamma|``; the
correlations are those of the filters ``G = W W^T`` for inputs with no correlation of their
own). With ``r = act(u)``, a solution ``(S, e)`` leaves the error
``E |r - S r_P - e|^2`` summed over channels (kept rows of ``S`` are unit vectors: no
error there), estimated by Monte Carlo on a fixed seed, so the verdict is reproducible.
"""

from __future__ import annotations

import numpy as np

from .base import LayerArrays
from .moments import Activation, apply_activation

SAMPLES = 4096
"""Monte Carlo samples of the pre-activations (a 4096 x N array per unit)."""


def judged(layer: LayerArrays) -> bool:
    """Whether the judge can run: a BatchNormalization with running statistics."""
    return layer.bn is not None and layer.bn.statistics


def activation_error(
    layer: LayerArrays,
    activation: Activation,
    kept: np.ndarray,
    scaling: np.ndarray,
    offsets: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """``E |r - S r_P - e|^2`` for the Gaussian model of the module docstring."""
    bn = layer.bn
    if bn is None:
        raise ValueError("the judge needs BatchNormalization statistics")
    gram = layer.raw_gram
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    alive = norms > 0
    correlation = np.eye(len(norms))
    scale = np.outer(norms[alive], norms[alive])
    correlation[np.ix_(alive, alive)] = gram[np.ix_(alive, alive)] / scale
    std = np.abs(bn.gamma.astype(np.float64))
    covariance = correlation * np.outer(std, std)
    values, vectors = np.linalg.eigh(covariance)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    rng = np.random.default_rng(seed)
    u = bn.beta.astype(np.float64) + rng.standard_normal((SAMPLES, len(std))) @ root.T
    r = apply_activation(u, activation)
    estimate = r[:, kept] @ scaling.T
    if offsets is not None:
        estimate += offsets
    return float(np.mean(np.sum((r - estimate) ** 2, axis=1)))
