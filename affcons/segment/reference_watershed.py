"""The watershed as scipy and a plain bucket queue compute it: the definition the compiled kernels of
:mod:`affcons.segment.watershed` reproduce bit for bit.

It is the oracle of the exactness tests and the baseline of ``benchmarks/fragments_kernel.py``, and the kernels
fall back to its seeds where their integer arithmetic would not be exact (non-integer voxel sizes, a volume or
section without any boundary voxel).
"""

import fastremap
import numba
import numpy as np

from affcons.errors import VolumeError

#: Boundary values are quantised to this many levels by the flood.
LEVELS = 256


def boundary_map(affs: np.ndarray, per_slice: bool = False) -> np.ndarray:
    """``1 - mean`` of the nearest-neighbour affinities: float32 (z, y, x), high on membranes.

    Args:
        affs: float32 (C >= 3, z, y, x); channels 0, 1, 2 are the z, y, x nearest-neighbour affinities.
        per_slice: ignore the z channel (for anisotropic data, as CRAC does: ``1 - (A_y + A_x) / 2``).
    """
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise VolumeError(f"affinities must have shape (C >= 3, z, y, x), got {affs.shape}")
    channels = affs[1:3] if per_slice else affs[0:3]
    return (1.0 - channels.mean(axis=0, dtype=np.float32)).astype(np.float32)


def reference_levels(boundary: np.ndarray) -> np.ndarray:
    """The flood's 8-bit levels of a float boundary map: ``rint(255 b)`` clipped to 0..255."""
    return np.clip(np.rint(boundary * (LEVELS - 1)), 0, LEVELS - 1).astype(np.uint8)


def distance_maxima_seeds(
    interior: np.ndarray, voxel_size=(1, 1, 1), per_slice: bool = False, min_seed_distance: float = 0.0
) -> np.ndarray:
    """Seeds at the plateaus of maximal distance to the boundary, labelled 1..n (int32 (z, y, x)).

    Args:
        interior: bool (z, y, x), True inside cells.
        voxel_size: anisotropy for the distance transform (z, y, x); only ratios matter.
        per_slice: 2-D distance transforms and seeds per z-slice.
        min_seed_distance: maxima closer than this to the boundary (in the units of ``voxel_size``) are no seeds.
    """
    from scipy import ndimage  # here, not at the top: the compiled kernels' workers need it only in this fallback

    if per_slice:
        distance = np.stack([ndimage.distance_transform_edt(s, sampling=voxel_size[1:]) for s in interior])
        footprint = np.zeros((3, 3, 3), dtype=bool)
        footprint[1] = True
    else:
        distance = ndimage.distance_transform_edt(interior, sampling=voxel_size)
        footprint = np.ones((3, 3, 3), dtype=bool)
    maxima = (ndimage.maximum_filter(distance, footprint=footprint) == distance) & (distance > min_seed_distance)
    seeds, _ = ndimage.label(maxima, structure=footprint)
    return seeds


@numba.njit(cache=True)
def _flood(levels, labels, mask, per_slice):  # pragma: no cover - compiled
    nz, ny, nx = levels.shape
    n = nz * ny * nx
    flat_levels = levels.ravel()
    flat_labels = labels.ravel()
    flat_mask = mask.ravel()
    following = np.full(n, -1, np.int64)
    head = np.full(LEVELS, -1, np.int64)
    tail = np.full(LEVELS, -1, np.int64)
    for index in range(n):
        if flat_labels[index] != 0:
            level = flat_levels[index]
            if tail[level] == -1:
                head[level] = index
            else:
                following[tail[level]] = index
            tail[level] = index
    strides = (ny * nx, nx, 1)
    level = 0
    while level < LEVELS:
        index = head[level]
        if index == -1:
            level += 1
            continue
        head[level] = following[index]
        if head[level] == -1:
            tail[level] = -1
        z = index // strides[0]
        y = (index // strides[1]) % ny
        x = index % nx
        label = flat_labels[index]
        for axis in range(3):
            if axis == 0 and per_slice:
                continue
            coordinate = z if axis == 0 else (y if axis == 1 else x)
            size = nz if axis == 0 else (ny if axis == 1 else nx)
            for step in (-1, 1):
                if coordinate + step < 0 or coordinate + step >= size:
                    continue
                neighbour = index + step * strides[axis]
                if flat_labels[neighbour] != 0 or not flat_mask[neighbour]:
                    continue
                flat_labels[neighbour] = label
                neighbour_level = max(level, flat_levels[neighbour])
                if tail[neighbour_level] == -1:
                    head[neighbour_level] = neighbour
                else:
                    following[tail[neighbour_level]] = neighbour
                tail[neighbour_level] = neighbour
    return labels


def reference_flood(boundary: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None, per_slice=False):
    """Grow ``seeds`` (int (z, y, x), 0 = unlabelled) over ``boundary`` (float in [0, 1]) within ``mask``: uint64
    labels, 0 outside the mask or where no seed reaches."""
    levels = reference_levels(boundary)
    labels = np.ascontiguousarray(seeds, dtype=np.uint64).copy()
    if mask is None:
        mask = np.ones(boundary.shape, dtype=np.bool_)
    else:
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        labels[~mask] = 0
    return _flood(np.ascontiguousarray(levels), labels, mask, per_slice)


def reference_watershed(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    per_slice: bool = False,
    voxel_size=(1, 1, 1),
) -> tuple[np.ndarray, int]:
    """:func:`affcons.segment.watershed_from_affinities` by scipy and the plain bucket queue (float32 affinities;
    the same arguments and result)."""
    boundary = boundary_map(affs, per_slice)
    if mask is not None and mask.shape != boundary.shape:
        raise VolumeError(f"mask shape {mask.shape} differs from the affinities' spatial shape {boundary.shape}")
    interior = boundary < boundary_threshold
    if mask is not None:
        interior &= mask.astype(bool)
    seeds = distance_maxima_seeds(interior, voxel_size, per_slice)
    fragments = reference_flood(boundary, seeds, mask, per_slice)
    if min_size > 0:
        sizes = np.bincount(fragments.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            fragments[small[fragments]] = 0
            fragments = reference_flood(boundary, fragments, mask, per_slice)
    fragments, remapping = fastremap.renumber(fragments, in_place=True, preserve_zero=True)
    return fragments.astype(np.uint64, copy=False), len(remapping) - (1 if 0 in remapping else 0)
