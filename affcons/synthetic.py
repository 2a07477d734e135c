"""Test data with known answers: EM-like synthetic volumes, and network-like affinities degraded from labels.

Synthetic volumes are for unit tests only; quality claims use the real volumes in ``data/``.
"""

import numpy as np
from scipy import ndimage

from affcons.affinities import NEAREST_NEIGHBOUR_OFFSETS, affinities_from_labels


def widen_boundaries(labels: np.ndarray) -> np.ndarray:
    """A copy of ``labels`` where every voxel with a face neighbour of a different label becomes 0 (3-D)."""
    widened = labels.copy()
    for axis in range(labels.ndim):
        low = [slice(None)] * labels.ndim
        high = [slice(None)] * labels.ndim
        low[axis], high[axis] = slice(0, -1), slice(1, None)
        differs = labels[tuple(low)] != labels[tuple(high)]
        widened[tuple(low)][differs] = 0
        widened[tuple(high)][differs] = 0
    return widened


def degraded_affinities(labels: np.ndarray, sigma: float = 1.0, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Nearest-neighbour affinities (float32 (3, z, y, x) in [0, 1]) that look like a network's output.

    Recipe: widen the boundaries, take the affinities of that (background gives 0), blur each channel with a
    Gaussian of ``sigma`` voxels, add Gaussian noise of standard deviation ``noise`` (fixed ``seed``), clip.
    """
    affs, _ = affinities_from_labels(widen_boundaries(labels), NEAREST_NEIGHBOUR_OFFSETS, unlabelled=0)
    rng = np.random.default_rng(seed)
    for channel in range(len(affs)):
        if sigma > 0:
            affs[channel] = ndimage.gaussian_filter(affs[channel], sigma=sigma)
        affs[channel] += rng.normal(0.0, noise, affs[channel].shape).astype(np.float32)
    return np.clip(affs, 0.0, 1.0, out=affs)


def synthetic_cells(
    shape=(32, 96, 96), num_cells: int = 40, seed: int = 0, anisotropy=(1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like volume of Voronoi cells: ``(raw uint8 (z, y, x), labels uint64 (z, y, x))``.

    Labels are dense cell ids 1..num_cells (0 on the one-voxel membranes between cells); the raw image has dark
    membranes, textured cytoplasm, blur and noise. ``anisotropy`` scales distances per axis (z, y, x).
    """
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (num_cells, 3)) * np.asarray(shape)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    scale = np.asarray(anisotropy, np.float32)
    nearest = np.zeros(len(grid), np.int64)
    best = np.full(len(grid), np.inf, np.float32)
    for index, centre in enumerate(centres.astype(np.float32)):
        distance = (((grid - centre) * scale) ** 2).sum(axis=1)
        closer = distance < best
        best[closer] = distance[closer]
        nearest[closer] = index + 1
    cells = nearest.reshape(shape).astype(np.uint64)
    labels = widen_boundaries(cells)
    membrane = labels == 0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    raw = 170 + 25 * texture / (texture.std() + 1e-6)
    raw[ndimage.binary_dilation(membrane, iterations=1)] = 60
    raw = ndimage.gaussian_filter(raw, 0.8) + rng.normal(0, 8, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels
