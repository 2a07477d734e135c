"""Watershed fragments from affinities (in memory; the blockwise fragments step calls this per block).

The boundary map is ``1 - mean`` of the nearest-neighbour affinity channels; seeds are the maxima of the distance
transform of the confident interior (``boundary < boundary_threshold``); the watershed floods the boundary map from
those seeds. Output ids are dense from 1 in raster order of first appearance, so the result is deterministic.
"""

import fastremap
import numpy as np
from scipy import ndimage

from affcons.errors import VolumeError
from affcons.segment.flood import flood


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


def distance_maxima_seeds(
    interior: np.ndarray, voxel_size=(1, 1, 1), per_slice: bool = False, min_seed_distance: float = 0.0
) -> np.ndarray:
    """Seeds at the plateaus of maximal distance to the boundary, labelled 1..n (int64 (z, y, x)).

    Args:
        interior: bool (z, y, x), True inside cells.
        voxel_size: anisotropy for the distance transform (z, y, x); only ratios matter.
        per_slice: 2-D distance transforms and seeds per z-slice.
        min_seed_distance: maxima closer than this to the boundary (in the units of ``voxel_size``) are no seeds.
    """
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


def watershed_from_affinities(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    per_slice: bool = False,
    voxel_size=(1, 1, 1),
) -> tuple[np.ndarray, int]:
    """Fragments (uint64 (z, y, x), 0 outside ``mask``, ids dense 1..n) and n.

    Args:
        affs: float32 (C >= 3, z, y, x) affinities in [0, 1].
        mask: optional bool (z, y, x); voxels outside stay 0.
        boundary_threshold: boundary values below this count as cell interior for the seeds.
        min_size: fragments of fewer voxels are dissolved and flooded by their neighbours.
        per_slice: 2-D fragments per z-slice (anisotropic data).
        voxel_size: (z, y, x) nm, for an anisotropic distance transform.
    """
    boundary = boundary_map(affs, per_slice)
    if mask is not None and mask.shape != boundary.shape:
        raise VolumeError(f"mask shape {mask.shape} differs from the affinities' spatial shape {boundary.shape}")
    interior = boundary < boundary_threshold
    if mask is not None:
        interior &= mask.astype(bool)
    seeds = distance_maxima_seeds(interior, voxel_size, per_slice)
    fragments = flood(boundary, seeds, mask, per_slice)
    if min_size > 0:
        sizes = np.bincount(fragments.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            fragments[small[fragments]] = 0
            fragments = flood(boundary, fragments, mask, per_slice)
    fragments, remapping = fastremap.renumber(fragments, in_place=True, preserve_zero=True)
    return fragments.astype(np.uint64, copy=False), len(remapping) - (1 if 0 in remapping else 0)
