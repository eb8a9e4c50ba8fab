"""Deterministic, realistic image inputs for output-agreement metrics.

The images come from photos that ship inside installed packages, so nothing is downloaded:

* ``skimage.data``: astronaut, chelsea, coffee, rocket, the left view of ``stereo_motorcycle``
  (skipped if unavailable), and the grayscale ``page`` and ``text`` scans for OCR;
* ``sklearn.datasets.load_sample_images()``: china, flower;
* matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``.

:func:`photo_batch` makes any number of distinct inputs from the colour photos by deterministic
random crops and flips; :func:`page_image` gives a document scan for text detectors.

Requires the ``bench`` extra (scikit-image, scikit-learn, matplotlib, Pillow).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

PPOCR_MEAN = (0.485, 0.456, 0.406)
"""ImageNet mean used by PP-OCR (on RGB/255)."""
PPOCR_STD = (0.229, 0.224, 0.225)
"""ImageNet std used by PP-OCR (on RGB/255)."""
EFFICIENTNET_LITE_MEAN = (0.498, 0.498, 0.498)
"""EfficientNet-Lite preprocessing mean (on RGB/255)."""
EFFICIENTNET_LITE_STD = (0.502, 0.502, 0.502)
"""EfficientNet-Lite preprocessing std (on RGB/255)."""

MIN_CROP = 0.35
"""Smallest random crop, as a fraction of the photo's short side."""


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle_left() -> np.ndarray:
    import skimage.data

    if hasattr(skimage.data, "motorcycle_left"):
        return skimage.data.motorcycle_left()
    return skimage.data.stereo_motorcycle()[0]


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib
    import matplotlib.cbook

    try:
        path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (OSError, ValueError):
        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


_COLOUR_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle_left,
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "grace_hopper": _grace_hopper,
}
"""Colour photos in the fixed order :func:`photo_batch` cycles over."""


def _as_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Return ``arr`` as an HxWx3 uint8 array (grayscale is replicated, alpha dropped)."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"unsupported image shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


@lru_cache(maxsize=1)
def _colour_photos() -> tuple[tuple[str, Image.Image], ...]:
    """Load the available colour photos once, skipping (with a warning) any that fail."""
    photos: list[tuple[str, Image.Image]] = []
    for name, load in _COLOUR_SOURCES.items():
        try:
            photos.append((name, Image.fromarray(_as_rgb_uint8(load()))))
        except Exception as exc:  # a missing optional photo must not break the benchmark
            warnings.warn(f"photo {name!r} unavailable: {exc}", RuntimeWarning, stacklevel=2)
    if not photos:
        raise RuntimeError("no sample photos available; install scikit-image/scikit-learn")
    return tuple(photos)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        height = width = size
    else:
        height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _normalise(
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float,
    layout: str,
) -> np.ndarray:
    """Normalise NHWC uint8 ``images`` as ``(x*scale - mean)/std`` and lay them out."""
    layout = layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_arr.size not in (1, 3) or std_arr.size not in (1, 3):
        raise ValueError("mean and std must have 1 or 3 values")
    out = images.astype(np.float32) * np.float32(scale)
    out -= mean_arr
    out /= std_arr
    if layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def photo_batch(
    n: int,
    size: int | tuple[int, int] = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    layout: str = "NCHW",
    scale: float = 1 / 255,
    seed: int = 0,
) -> np.ndarray:
    """Make ``n`` realistic RGB inputs from the bundled photos, deterministically.

    Image ``i`` is taken from colour photo ``i % len(photos)`` (module docstring): a crop
    with the target aspect ratio whose short side is a random 35-100 % of the photo's short side,
    at a random position, flipped horizontally with probability 1/2, and resized (antialiased
    bilinear, Pillow) to ``size``. Pixels are RGB in 0..255 before normalisation.

    Args:
        n: number of images.
        size: output ``H`` (= ``W``) or ``(H, W)``.
        mean: per-channel (RGB) mean subtracted after scaling.
        std: per-channel (RGB) divisor applied after subtracting ``mean``.
        layout: ``"NCHW"`` or ``"NHWC"``.
        scale: factor applied to the 0..255 pixels first.
        seed: seed of the crop/flip generator; the same arguments give an identical array.

    Returns:
        float32 array ``[n, 3, H, W]`` (NCHW) or ``[n, H, W, 3]`` (NHWC) holding
        ``(pixel * scale - mean) / std``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    height, width = _size_hw(size)
    photos = _colour_photos()
    rng = np.random.default_rng(seed)
    batch = np.empty((n, height, width, 3), dtype=np.uint8)
    aspect = width / height
    for i in range(n):
        _, img = photos[i % len(photos)]
        img_w, img_h = img.size
        frac, fx, fy, flip = rng.random(4)
        short = (MIN_CROP + (1.0 - MIN_CROP) * frac) * min(img_w, img_h)
        crop_h, crop_w = (short, short * aspect) if aspect >= 1 else (short / aspect, short)
        fit = min(1.0, img_w / crop_w, img_h / crop_h)  # keep the crop inside the photo
        crop_w, crop_h = crop_w * fit, crop_h * fit
        x0 = fx * (img_w - crop_w)
        y0 = fy * (img_h - crop_h)
        out = img.resize(
            (width, height),
            resample=Image.Resampling.BILINEAR,
            box=(x0, y0, x0 + crop_w, y0 + crop_h),
        )
        arr = np.asarray(out)
        batch[i] = arr[:, ::-1] if flip < 0.5 else arr
    return _normalise(batch, mean, std, scale, layout)


def page_image(
    height: int,
    width: int,
    mean: Sequence[float] = PPOCR_MEAN,
    std: Sequence[float] = PPOCR_STD,
    scale: float = 1 / 255,
    *,
    source: str = "page",
    layout: str = "NCHW",
) -> np.ndarray:
    """Return a document scan for text detectors such as PP-OCR, as a 3-channel input.

    ``skimage.data.page()`` (or ``text()`` with ``source="text"``) is a grayscale scan; it is
    replicated to 3 channels, resized (antialiased bilinear) to ``height`` x ``width`` and
    normalised as ``(pixel * scale - mean) / std``. The defaults are PP-OCR's preprocessing.

    Args:
        height: output height, a multiple of 32 (as DB text detectors require).
        width: output width, a multiple of 32.
        mean: per-channel mean subtracted after scaling.
        std: per-channel divisor.
        scale: factor applied to the 0..255 pixels first.
        source: ``"page"`` or ``"text"`` (the two grayscale scans of ``skimage.data``).
        layout: ``"NCHW"`` or ``"NHWC"``.

    Returns:
        float32 array ``[1, 3, height, width]`` (or ``[1, height, width, 3]`` for NHWC).
    """
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ValueError(f"height and width must be positive multiples of 32, got {height}x{width}")
    if source not in ("page", "text"):
        raise ValueError(f"source must be 'page' or 'text', got {source!r}")
    gray = _as_rgb_uint8(_skimage(source)())[:, :, 0]
    resized = Image.fromarray(gray).resize((width, height), resample=Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(resized)[None, :, :, None], 3, axis=3)
    return _normalise(rgb, mean, std, scale, layout)
