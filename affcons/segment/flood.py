"""Seeded watershed by priority flooding with a bucket queue (numba), O(voxels), deterministic.

Boundary values are quantised to 256 levels. Voxels are processed level by level in FIFO order; each processed
voxel hands its label to its unlabelled face neighbours inside the mask, which enter the queue at the higher of
the current level and their own. Ties are thus broken by arrival order, which depends only on the input.
"""

import numba
import numpy as np

LEVELS = 256


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


def flood(boundary: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None = None, per_slice: bool = False):
    """Grow ``seeds`` (int (z, y, x), 0 = unlabelled) over ``boundary`` (float in [0, 1]) within ``mask``.

    Returns uint64 labels of the same shape; voxels outside the mask, or unreachable from a seed, stay 0.
    """
    levels = np.clip(np.rint(boundary * (LEVELS - 1)), 0, LEVELS - 1).astype(np.uint8)
    labels = np.ascontiguousarray(seeds, dtype=np.uint64).copy()
    if mask is None:
        mask = np.ones(boundary.shape, dtype=np.bool_)
    else:
        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        labels[~mask] = 0
    return _flood(np.ascontiguousarray(levels), labels, mask, per_slice)
