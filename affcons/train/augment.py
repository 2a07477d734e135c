"""Training augmentations (method.md section 1), each a small function of ``(raw, labels, rng)``.

``raw`` is float32 (z, y, x) in [0, 1]; ``labels`` is an integer (z, y, x) array or None (unlabelled crops). Every
function returns new arrays ``(raw, labels)`` of the same shapes and dtypes; geometric ones move labels with nearest
interpolation, so no new ids appear. All randomness comes from the ``numpy.random.Generator`` passed in.

:func:`augment` applies the mix: with ``cfg.probability`` the enabled augmentations fire independently with
``cfg.p_each``, in the order flip, rotate, elastic, grayscale, noise, blur, missing section, misalignment.
"""

import numpy as np
from scipy import ndimage

from affcons.errors import VolumeError

Labels = np.ndarray | None


def _check(raw: np.ndarray, labels: Labels) -> None:
    if raw.ndim != 3:
        raise VolumeError(f"augmentations expect (z, y, x) raw, got shape {raw.shape}")
    if labels is not None and labels.shape != raw.shape:
        raise VolumeError(f"labels shape {labels.shape} differs from raw shape {raw.shape}")


def flip_transpose(raw: np.ndarray, labels: Labels, rng: np.random.Generator) -> tuple[np.ndarray, Labels]:
    """Flip z, y and x and transpose y<->x, each with probability 1/2 (the transpose needs a square crop)."""
    _check(raw, labels)
    flips = rng.random(4) < 0.5
    axes = tuple(axis for axis in range(3) if flips[axis])
    raw = np.flip(raw, axis=axes) if axes else raw
    labels = np.flip(labels, axis=axes) if axes and labels is not None else labels
    if flips[3] and raw.shape[1] == raw.shape[2]:
        raw = raw.transpose(0, 2, 1)
        labels = labels.transpose(0, 2, 1) if labels is not None else None
    return np.ascontiguousarray(raw), (np.ascontiguousarray(labels) if labels is not None else None)


def _warp(raw: np.ndarray, labels: Labels, coords_y: np.ndarray, coords_x: np.ndarray, mode: str):
    """Resample every section at the 2-D coordinates (linear raw, nearest labels); outside = 0 or reflection."""
    out_raw = np.empty_like(raw)
    out_labels = np.empty_like(labels) if labels is not None else None
    # snap coordinates within 1e-6 of the grid, so exact angles (90 degrees) do not fall off the edge by rounding
    coords = np.round(np.stack([coords_y, coords_x]), 6)
    for z in range(raw.shape[0]):
        out_raw[z] = ndimage.map_coordinates(raw[z], coords, order=1, mode=mode, cval=0.0)
        if labels is not None:
            out_labels[z] = ndimage.map_coordinates(labels[z], coords, order=0, mode=mode, cval=0)
    return out_raw, out_labels


def rotate(raw: np.ndarray, labels: Labels, rng: np.random.Generator, angle: float | None = None):
    """In-plane rotation by a uniform angle in [0, 360) degrees about the section centre; constant-0 border."""
    _check(raw, labels)
    angle = rng.uniform(0.0, 360.0) if angle is None else angle
    theta = np.deg2rad(angle)
    height, width = raw.shape[1:]
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # inverse mapping: output (y, x) samples the input at the point rotated by -theta
    source_y = cy + np.cos(theta) * (yy - cy) - np.sin(theta) * (xx - cx)
    source_x = cx + np.sin(theta) * (yy - cy) + np.cos(theta) * (xx - cx)
    return _warp(raw, labels, source_y, source_x, mode="constant")


def elastic(raw: np.ndarray, labels: Labels, rng: np.random.Generator, alpha: float = 16.0, sigma: float = 4.0):
    """Elastic deformation by one 2-D displacement field shared by all sections.

    The field is Gaussian-smoothed (``sigma``) uniform noise in [-1, 1], scaled by ``alpha`` voxels; borders reflect.
    """
    _check(raw, labels)
    height, width = raw.shape[1:]
    dy = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (height, width)), sigma, mode="constant") * alpha
    dx = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (height, width)), sigma, mode="constant") * alpha
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return _warp(raw, labels, yy + dy, xx + dx, mode="reflect")


def _contrast_brightness_gamma(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values = values * (1.0 + (rng.random() - 0.5) * 0.3)
    values = values + (rng.random() - 0.5) * 0.3
    values = np.clip(values, 0.0, 1.0)
    return values ** (2.0 ** (2.0 * rng.random() - 1.0))


def grayscale(raw: np.ndarray, labels: Labels, rng: np.random.Generator):
    """Contrast x(1 + (u - 0.5) 0.3), brightness +(u - 0.5) 0.3, clip to [0, 1], gamma 2^(2u - 1); per section (2-D)
    or for the whole crop (3-D) with probability 1/2 each. Labels are untouched."""
    _check(raw, labels)
    if rng.random() < 0.5:
        out = np.stack([_contrast_brightness_gamma(section, rng) for section in raw])
    else:
        out = _contrast_brightness_gamma(raw, rng)
    return out.astype(np.float32), labels


def noise(raw: np.ndarray, labels: Labels, rng: np.random.Generator, max_std: float = 0.05):
    """Additive Gaussian noise with a standard deviation uniform in [0, max_std], clipped to [0, 1]."""
    _check(raw, labels)
    std = rng.uniform(0.0, max_std)
    return np.clip(raw + rng.normal(0.0, std, raw.shape), 0.0, 1.0).astype(np.float32), labels


def blur(raw: np.ndarray, labels: Labels, rng: np.random.Generator, max_sigma: float = 1.5):
    """In-plane Gaussian blur with a sigma uniform in [0, max_sigma] (no blur across sections)."""
    _check(raw, labels)
    sigma = rng.uniform(0.0, max_sigma)
    return ndimage.gaussian_filter(raw, (0.0, sigma, sigma)).astype(np.float32), labels


def missing_section(raw: np.ndarray, labels: Labels, rng: np.random.Generator, max_sections: int = 2):
    """Blank 1..max_sections random sections of the raw (set to 0); labels keep the true objects."""
    _check(raw, labels)
    count = int(rng.integers(1, max(1, min(max_sections, raw.shape[0])) + 1))
    out = raw.copy()
    out[rng.choice(raw.shape[0], size=count, replace=False)] = 0.0
    return out, labels


def misalignment(raw: np.ndarray, labels: Labels, rng: np.random.Generator, max_shift: int = 10):
    """Translate all sections from a random z >= 1 onwards by an integer (dy, dx) in [-max_shift, max_shift]; both
    raw and labels move, uncovered voxels become 0. Keep ``max_shift`` within the crop margin."""
    _check(raw, labels)
    if raw.shape[0] < 2:
        return raw.copy(), (labels.copy() if labels is not None else None)
    start = int(rng.integers(1, raw.shape[0]))
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))

    def shift(volume: np.ndarray) -> np.ndarray:
        out = volume.copy()
        moved = np.zeros_like(volume[start:])
        height, width = volume.shape[1:]
        src_y = slice(max(0, -dy), min(height, height - dy))
        dst_y = slice(max(0, dy), min(height, height + dy))
        src_x = slice(max(0, -dx), min(width, width - dx))
        dst_x = slice(max(0, dx), min(width, width + dx))
        moved[:, dst_y, dst_x] = volume[start:, src_y, src_x]
        out[start:] = moved
        return out

    return shift(raw), (shift(labels) if labels is not None else None)


def augment(raw: np.ndarray, labels: Labels, cfg, rng: np.random.Generator) -> tuple[np.ndarray, Labels]:
    """Apply the configured mix (:class:`~affcons.train.config.AugmentConfig`) to one crop."""
    if rng.random() >= cfg.probability:
        return raw, labels
    steps = [
        (cfg.flip, lambda r, lab: flip_transpose(r, lab, rng)),
        (cfg.rotate, lambda r, lab: rotate(r, lab, rng)),
        (cfg.elastic, lambda r, lab: elastic(r, lab, rng, cfg.elastic_alpha, cfg.elastic_sigma)),
        (cfg.grayscale, lambda r, lab: grayscale(r, lab, rng)),
        (cfg.noise, lambda r, lab: noise(r, lab, rng, cfg.noise_std)),
        (cfg.blur, lambda r, lab: blur(r, lab, rng, cfg.blur_sigma)),
        (cfg.missing_section, lambda r, lab: missing_section(r, lab, rng, cfg.missing_max)),
        (cfg.misalignment, lambda r, lab: misalignment(r, lab, rng, cfg.misalignment_max)),
    ]
    for enabled, step in steps:
        if enabled and rng.random() < cfg.p_each:
            raw, labels = step(raw, labels)
    return raw, labels
