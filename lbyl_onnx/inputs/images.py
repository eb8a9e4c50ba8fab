"""Synthetic images in ``[0, 1]``: ``1/f^alpha`` Fourier noise, soft-edged shapes, edges and
lines, colour channels correlated like a photo's; and the common input conventions."""

from __future__ import annotations

import functools

import numpy as np

IMAGE_SIDE = 224
"""Height and width used for a symbolic image dimension when no shape is given."""


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])


IMAGENET_STD = np.array([0.229, 0.224, 0.225])


CONVENTIONS = ("[0,1]", "[-1,1]", "imagenet", "[0,255]")
"""The named input conventions :func:`convention` knows."""


def convention(name: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` per channel of a named convention, applied to ``[0, 1]`` images:
    ``[0,1]`` (identity), ``[-1,1]`` (``(x - 0.5) / 0.5``), ``imagenet``
    (``(x - mean) / std`` with the ImageNet RGB constants; their averages for a channel count
    other than 3) and ``[0,255]``."""
    ones = np.ones(channels)
    if name == "[0,1]":
        return ones, 0 * ones
    if name == "[-1,1]":
        return 2 * ones, -ones
    if name == "[0,255]":
        return 255 * ones, 0 * ones
    if name == "imagenet":
        mean = IMAGENET_MEAN if channels == 3 else IMAGENET_MEAN.mean() * ones
        std = IMAGENET_STD if channels == 3 else IMAGENET_STD.mean() * ones
        return 1 / std, -mean / std
    raise ValueError(f"unknown convention {name!r} (choose from {', '.join(CONVENTIONS)})")


def spectral_noise(rng: np.random.Generator, height: int, width: int, alpha: float) -> np.ndarray:
    """A ``height x width`` field with power spectrum ``P(f) ~ 1/f^alpha``, zero mean, unit std.

    Fourier synthesis: every frequency gets a complex Gaussian coefficient of amplitude
    ``f^(-alpha/2)`` (``f`` in cycles per pixel), the zero frequency none; the inverse real FFT
    is the field. The field is periodic (it wraps around at the borders).
    """
    amplitude = _amplitude(height, width, alpha)
    shape = amplitude.shape
    coefficients = amplitude * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    field = np.fft.irfft2(coefficients, s=(height, width))
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


@functools.lru_cache(maxsize=4)
def _amplitude(height: int, width: int, alpha: float) -> np.ndarray:
    """``f^(-alpha/2)`` over the half-spectrum of a ``height x width`` field, 0 at ``f = 0``
    (cached: the channels of one image share ``alpha``)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amplitude = f ** (-alpha / 2)
    amplitude[0, 0] = 0.0
    amplitude.flags.writeable = False
    return amplitude


def _colour(rng: np.random.Generator, channels: int, level: float, spread: float) -> np.ndarray:
    """A colour: a common grey ``level`` plus a smaller per-channel deviation (chroma)."""
    return level + spread * rng.standard_normal(channels)


def _correlated_noise(
    rng: np.random.Generator, channels: int, height: int, width: int, alpha: float
) -> np.ndarray:
    """``channels`` fields of ``1/f^alpha`` noise sharing a luminance component: channel
    ``c`` is ``L + s * chroma_c`` with ``s ~ U(0.2, 0.6)``, so channels correlate at
    ``1 / (1 + s^2)`` (0.74-0.96, like the RGB channels of photos)."""
    luminance = spectral_noise(rng, height, width, alpha)
    if channels == 1:
        return luminance[None]
    s = rng.uniform(0.2, 0.6)
    chroma = np.stack([spectral_noise(rng, height, width, alpha) for _ in range(channels)])
    return (luminance[None] + s * chroma) / np.sqrt(1 + s**2)


def _soft(distance: np.ndarray, softness: float) -> np.ndarray:
    """Coverage of a shape from a signed distance in pixels (negative inside), with an edge
    blurred over about ``softness`` pixels (a logistic profile)."""
    return 1.0 / (1.0 + np.exp(np.clip(distance / max(softness, 1e-3), -50, 50)))


def _shape_mask(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, side: float):
    """Coverage of one random rectangle or ellipse, rotated, of size drawn log-uniformly
    between 3% and 60% of the image's short side (many small shapes, few large ones, as in
    the dead-leaves model of natural images). ``y`` is the column of row indices, ``x`` the
    row of column indices (the rotated coordinates are sums of a term along each)."""
    height, width = len(y), x.shape[-1]
    cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
    radius = side * np.exp(rng.uniform(np.log(0.03), np.log(0.6)))
    ry, rx = radius, radius * np.exp(rng.uniform(-1.0, 1.0))
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    if rng.random() < 0.5:  # ellipse: approximate signed distance
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        distance = (r - 1.0) * min(rx, ry)
    else:  # rectangle
        distance = np.maximum(np.abs(u) - rx, np.abs(v) - ry)
    return _soft(distance, rng.uniform(0.3, 1.5))


def _one_image(rng: np.random.Generator, channels: int, height: int, width: int) -> np.ndarray:
    """One ``[C, H, W]`` image in ``[0, 1]`` (see :func:`synthetic_images`)."""
    alpha = rng.uniform(1.5, 2.5)
    level = rng.uniform(0.25, 0.75)
    contrast = rng.uniform(0.05, 0.25)
    image = _colour(rng, channels, level, 0.08)[:, None, None] + contrast * _correlated_noise(
        rng, channels, height, width, alpha
    )
    # coordinates as a column and a row: every distance below is a sum of a term along
    # each, broadcast once to the image (the same values as on full grids, fewer operations)
    yy = np.arange(height, dtype=np.float64)[:, None]
    xx = np.arange(width, dtype=np.float64)[None, :]
    side = float(min(height, width))
    for _ in range(rng.integers(0, 4)):  # straight edges: a step across the whole image
        angle = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.4, 0.4) * side
        distance = (xx - width / 2) * np.cos(angle) + (yy - height / 2) * np.sin(angle) - offset
        step = _colour(rng, channels, rng.normal(0, 0.2), 0.05)
        image = image + step[:, None, None] * _soft(distance, rng.uniform(0.3, 2.0))[None]
    shapes = rng.integers(0, 16)
    if shapes:  # one texture field, shifted for every shape
        texture = _correlated_noise(rng, channels, height, width, rng.uniform(1.5, 2.5))
    for _ in range(shapes):  # filled shapes, textured, partly transparent
        mask = _shape_mask(rng, yy, xx, side)[None] * rng.uniform(0.6, 1.0)
        fill = _colour(rng, channels, rng.uniform(0, 1), 0.1)[:, None, None]
        shift = (int(rng.integers(0, height)), int(rng.integers(0, width)))
        fill = fill + rng.uniform(0, 0.1) * np.roll(texture, shift, axis=(1, 2))
        image = image * (1 - mask) + fill * mask
    for _ in range(rng.integers(0, 5)):  # thin lines
        angle = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        distance = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        distance = distance - rng.uniform(0.3, 1.5)
        mask = _soft(distance, 0.5)[None] * rng.uniform(0.5, 1.0)
        image = (
            image * (1 - mask)
            + _colour(rng, channels, rng.uniform(0, 1), 0.05)[:, None, None] * mask
        )
    return np.clip(image, 0.0, 1.0)


def synthetic_images(
    n: int, channels: int = 3, height: int = IMAGE_SIDE, width: int = IMAGE_SIDE, seed: int = 0
) -> np.ndarray:
    """``n`` images ``[n, channels, height, width]``, float32 in ``[0, 1]``, deterministic in
    ``seed``.

    Each image: a background of colour noise with power spectrum ``1/f^alpha``,
    ``alpha ~ U(1.5, 2.5)`` per image (natural images have ``alpha`` about 2), around a random
    grey level with a random contrast; 0-3 straight step edges across it (illumination
    boundaries); 0-15 filled rectangles and ellipses (rotated, log-uniform sizes, soft edges,
    partly transparent, with a faint noise texture) painted over one another; 0-4 thin lines;
    then clipped to ``[0, 1]``. Colours are a grey level plus a smaller per-channel deviation,
    so channels are strongly but not perfectly correlated. The mixture varies per image: some
    are mostly noise, some mostly shapes.
    """
    if n < 0 or channels < 1 or height < 1 or width < 1:
        raise ValueError(f"invalid image batch {n}x{channels}x{height}x{width}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, channels, height, width), dtype=np.float32)
    for i in range(n):
        out[i] = _one_image(rng, channels, height, width)
    return out
