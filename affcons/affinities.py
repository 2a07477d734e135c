"""Affinities from labels at arbitrary offsets, and the one place where uint8 and float affinities convert.

Convention: channel ``c`` with offset ``o`` (z, y, x in voxels, usually non-positive) holds the affinity between
voxel ``p`` and voxel ``p + o``. With ``o = (-1, 0, 0), (0, -1, 0), (0, 0, -1)`` the first three channels are the
nearest-neighbour affinities that waterz expects (channel c links a voxel with its neighbour at -1 along axis c).
"""

import numpy as np

from affcons.errors import VolumeError

NEAREST_NEIGHBOUR_OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))

#: The 12 offsets of CRAC (``DATA.shift_channels``): nearest neighbours, then three long-range groups.
CRAC_OFFSETS: tuple[tuple[int, int, int], ...] = (
    (-1, 0, 0),
    (0, -1, 0),
    (0, 0, -1),
    (-2, 0, 0),
    (0, -3, 0),
    (0, 0, -3),
    (-3, 0, 0),
    (0, -9, 0),
    (0, 0, -9),
    (-4, 0, 0),
    (0, -27, 0),
    (0, 0, -27),
)


def shifted_pair_slices(shape: tuple[int, ...], offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(at_p, at_p_plus_o)`` selecting every voxel p whose partner ``p + offset`` lies inside ``shape``."""
    at_p, at_partner = [], []
    for size, step in zip(shape, offset):
        if abs(step) >= size:
            return (slice(0, 0),) * len(shape), (slice(0, 0),) * len(shape)
        if step >= 0:
            at_p.append(slice(0, size - step))
            at_partner.append(slice(step, size))
        else:
            at_p.append(slice(-step, size))
            at_partner.append(slice(0, size + step))
    return tuple(at_p), tuple(at_partner)


def affinities_from_labels(
    labels: np.ndarray, offsets=NEAREST_NEIGHBOUR_OFFSETS, unlabelled: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Binary affinities and their validity mask.

    Args:
        labels: integer array (z, y, x) of instance ids.
        offsets: sequence of (dz, dy, dx) in voxels.
        unlabelled: the id that means "unlabelled / background" (0). Pairs with this id on either side get
            affinity 0 and mask 0. ``None`` treats every id as a label (then ``0 == 0`` is affinity 1).

    Returns:
        ``(affs, mask)``, both float32 of shape (len(offsets), z, y, x). ``affs`` is 1 where both voxels carry the
        same label, ``mask`` is 1 where the pair lies inside the volume and neither voxel is unlabelled.
    """
    if labels.ndim != 3:
        raise VolumeError(f"labels must be 3-D (z, y, x), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise VolumeError(f"labels must have an integer dtype, got {labels.dtype}")
    affs = np.zeros((len(offsets),) + labels.shape, dtype=np.float32)
    mask = np.zeros_like(affs)
    for channel, offset in enumerate(offsets):
        if len(offset) != 3:
            raise VolumeError(f"offset {offset} must have 3 components (z, y, x)")
        at_p, at_partner = shifted_pair_slices(labels.shape, offset)
        here, there = labels[at_p], labels[at_partner]
        valid = np.ones(here.shape, dtype=bool)
        if unlabelled is not None:
            valid = (here != unlabelled) & (there != unlabelled)
        affs[channel][at_p] = (here == there) & valid
        mask[channel][at_p] = valid
    return affs, mask


def affinities_to_uint8(affs: np.ndarray) -> np.ndarray:
    """Float affinities in [0, 1] -> uint8 0..255 (rounded, clipped)."""
    return np.rint(np.clip(affs, 0.0, 1.0) * 255.0).astype(np.uint8)


def affinities_to_float(affs: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float affinities -> float32 in [0, 1]. Other dtypes are an error."""
    if affs.dtype == np.uint8:
        return affs.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(affs.dtype, np.floating):
        return affs.astype(np.float32, copy=False)
    raise VolumeError(f"affinities must be uint8 (0-255) or float in [0, 1], got dtype {affs.dtype}")
