"""Synthetic inputs with the structure of real ones, for data-free activation statistics.

Calibration mode (``prune(model, calibration_data=...)``) measures the activations each unit's
consumers read. Without user data, this module makes inputs that resemble real ones closely
enough for those measurements to be useful (issue #7), with NumPy only:

- :func:`synthetic_images`: images in ``[0, 1]`` built from Fourier-synthesised noise with a
  natural ``1/f^alpha`` power spectrum, random filled shapes (rectangles, ellipses) with soft
  edges, and random straight edges and lines, with colour channels correlated like those of
  photos;
- :func:`input_normalisation`: the per-channel affine map ``scale * x + shift`` that takes
  such images to the range the model was trained on, estimated from the model alone (fitted
  to the first BatchNormalization's running statistics, else the common convention that
  suits the first layer's bias, else :data:`FALLBACK`);
- :func:`synthetic_inputs`: one array per model input, ready for ``calibration_data``.

What is assumed, and where it can be wrong:

- An image input is a float tensor of rank 4, ``NCHW``, or ``NHWC`` when a
  ``Transpose(perm=[0, 3, 1, 2])`` reads it directly (as tf2onnx writes) or its last
  dimension is 1, 3 or 4 and its second is not. Other float inputs (rank 2 or 3, e.g. feature
  vectors) get standard normal values: their scale cannot be known without data.
- Images are natural photographs: the generator knows nothing of medical scans, documents
  or handwriting. Models trained on such inputs see synthetic statistics that differ from
  their data, and the measured moments differ accordingly.
- The normalisation is one affine map per input channel applied to ``[0, 1]`` images
  (:func:`fit_normalisation` states its assumptions). With BatchNormalization statistics
  after the first layer it is fitted to them; without (BN fused into the conv, or none at
  all) it is one of four common conventions, chosen by a heuristic on the first layer's
  bias that tells the scale (``[0, 255]`` or not) much better than the offset.
- Every sample is independent of the model beyond that map: the images are not optimised
  to excite the model's deeper features, so deep layers can see statistics far from those
  of real data (measure with ``scripts/statistics_diagnostic.py``).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import size_problem
from .images import synthetic_images
from .normalisation import fit_normalisation
from .specs import input_specs, to_layout

# --------------------------------------------------------------------------------------------
# images


# --------------------------------------------------------------------------------------------
# inputs of a model


# --------------------------------------------------------------------------------------------
# normalisation


def synthetic_inputs(
    model: onnx.ModelProto,
    n: int,
    seed: int = 0,
    input_shapes: dict[str, list[int]] | None = None,
    normalisation: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """``n`` synthetic samples per float input of ``model``, usable as ``calibration_data``.

    Image inputs (:func:`input_specs`) get :func:`synthetic_images` mapped by
    :func:`fit_normalisation` (or by ``normalisation[name] = (scale, shift)`` when given), in
    the input's layout; other inputs standard normal values. Symbolic sizes follow
    :func:`input_specs` (``input_shapes`` overrides them). Raises ``ValueError`` for inputs
    too large to make (:func:`lbyl_onnx.errors.size_problem`, at 8 bytes per element: they
    are made in float64).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    rng = np.random.default_rng(seed)
    out = {}
    specs = input_specs(model, input_shapes)
    for spec in specs:
        if problem := size_problem(
            f"{n} synthetic samples of '{spec.name}'", (n, *spec.shape[1:]), 8
        ):
            raise ValueError(problem)
    for k, spec in enumerate(specs):
        if spec.layout == "dense":
            out[spec.name] = rng.standard_normal((n, *spec.shape[1:])).astype(np.float32)
            continue
        if normalisation and spec.name in normalisation:
            scale, shift = (np.asarray(v, np.float64) for v in normalisation[spec.name])
        else:
            norm = fit_normalisation(model, spec.name, input_shapes=input_shapes)
            scale, shift = norm.scale, norm.shift
        h, w = spec.size
        images = synthetic_images(n, spec.channels, h, w, seed=seed + 7919 * k)
        images = images * scale[None, :, None, None] + shift[None, :, None, None]
        out[spec.name] = to_layout(images.astype(np.float32), spec.layout)
    return out
