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

SAMPLES = 2048
"""Monte Carlo samples of the pre-activations (a 2048 x N array per unit)."""


def judged(layer: LayerArrays) -> bool:
    """Whether the judge can run: a BatchNormalization with running statistics."""
    return layer.bn is not None and layer.bn.statistics


def activation_samples(layer: LayerArrays, activation: Activation, seed: int = 0) -> np.ndarray:
    """``SAMPLES x N`` draws of ``r = act(u)`` under the Gaussian model of the module
    docstring (one Cholesky factor of ``C``): what :func:`activation_errors` judges on. They
    depend only on the unit, so one draw serves every choice of kept channels."""
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
    jitter = 1e-6 * max(float(np.trace(covariance)) / len(std), 1e-30)
    while True:  # C is singular when there are more channels than filter weights
        try:
            root = np.linalg.cholesky(covariance + jitter * np.eye(len(std)))
            break
        except np.linalg.LinAlgError:
            jitter *= 100
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((SAMPLES, len(std)), dtype=np.float32)
    u = bn.beta.astype(np.float32) + noise @ root.T.astype(np.float32)  # float32: a verdict
    return apply_activation(u, activation)  # needs a few digits, and this is the costly part


def activation_errors(
    samples: np.ndarray,
    kept: np.ndarray,
    solutions: list[tuple[np.ndarray, np.ndarray | None]],
) -> list[float]:
    """``E |r - S r_P - e|^2`` for each ``(S, e)``, on the same ``samples`` of ``r``
    (:func:`activation_samples`)."""
    errors = []
    for scaling, offsets in solutions:
        estimate = samples[:, kept] @ scaling.T.astype(np.float32)
        if offsets is not None:
            estimate += offsets.astype(np.float32)
        errors.append(float(np.mean(np.sum((samples - estimate) ** 2, axis=1, dtype=np.float64))))
    return errors
