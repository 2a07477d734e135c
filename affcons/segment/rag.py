"""Region adjacency graphs with mergeable statistics, from fragments and nearest-neighbour affinities.

An edge (u, v) collects the affinity ``affs[c, p]`` of every voxel ``p`` whose neighbour ``p - e_c`` (c = z, y, x)
lies in another fragment, both non-zero: the region graph waterz builds. Each voxel pair is attributed to the
voxel ``p``, so the tables of disjoint pieces of a volume concatenate and :meth:`EdgeTable.combine` into exactly
the table of the whole.
"""

import numpy as np

from affcons.affinities import affinities_to_float, affinities_to_uint8
from affcons.errors import VolumeError
from affcons.segment.stitch import pair_linked
from affcons.segment.tables import EdgeTable, NodeTable


def histogram_bin(affinities: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in ``0..bins-1`` of affinities in [0, 1] (values <= 0 -> 0, >= 1 -> bins-1), as waterz bins."""
    scaled = np.where(affinities > 0, affinities, 0.0).astype(np.float64) * bins
    return np.minimum(scaled.astype(np.int64), bins - 1)


def edge_table(
    fragments: np.ndarray,
    affs: np.ndarray,
    histogram_bins: int = 0,
    lower_context=(0, 0, 0),
    links: np.ndarray | None = None,
    channels=(0, 1, 2),
) -> EdgeTable:
    """The RAG of ``fragments`` with statistics of ``affs`` (channels 0-2 used).

    Args:
        fragments: uint64 (z, y, x), 0 = no fragment.
        affs: (C >= 3, z, y, x) affinities aligned with ``fragments``: uint8 (0..255, as stored) or float in
            [0, 1]. The float statistics (``affinity_sum``, ``histogram``) see uint8 values as
            :func:`affcons.affinities.affinities_to_float` converts them, so uint8 input gives the same table as its
            float32 conversion; ``quantised_sum`` adds the uint8 values exactly (float input is quantised first,
            ``round(a * 255)``, :func:`affcons.affinities.affinities_to_uint8`). Pass uint8 affinities as they are.
        histogram_bins: number of histogram bins per edge (0: no histogram).
        lower_context: per axis 0 or 1: the arrays start with that many voxels of context at the low end, which
            serve only as partners ``p - e_c`` and are never ``p`` themselves (blockwise: the face of the
            neighbouring block below).
        links: optional uint8 (z, y, x) face-link bits aligned with ``fragments`` (see
            :func:`affcons.segment.stitch.face_links`); fills the table's ``linked`` column.
        channels: the axes (0 z, 1 y, 2 x) whose voxel pairs are counted; e.g. ``(0,)`` with ``lower_context`` (1,
            0, 0) on a slab of two z-sections: the pairs across one face between two blocks.
    """
    if affs.ndim != 4 or affs.shape[0] < 3 or affs.shape[1:] != fragments.shape:
        raise VolumeError(f"affinities {affs.shape} must be (C >= 3,) + fragments shape {fragments.shape}")
    starts = [int(c) for c in lower_context]
    if any(c not in (0, 1) for c in starts):
        raise ValueError(f"lower_context must be 0 or 1 per axis, got {lower_context}")
    if links is not None and links.shape != fragments.shape:
        raise VolumeError(f"face links {links.shape} must have the fragments' shape {fragments.shape}")
    if affs.dtype != np.uint8 and not np.issubdtype(affs.dtype, np.floating):
        raise VolumeError(f"affinities must be uint8 (0-255) or float in [0, 1], got dtype {affs.dtype}")
    if not set(channels) <= {0, 1, 2}:
        raise ValueError(f"channels must be axes among 0, 1, 2, got {channels}")
    pieces_u, pieces_v, pieces_aff, pieces_quantised, pieces_linked = [], [], [], [], []
    for channel in sorted(set(channels)):
        # p ranges over voxels outside the context whose partner p - e_channel lies inside the array
        low = [max(starts[axis], int(axis == channel)) for axis in range(3)]
        p_slices = tuple(slice(low[axis], size) for axis, size in enumerate(fragments.shape))
        q_slices = tuple(
            slice(low[axis] - (axis == channel), size - (axis == channel)) for axis, size in enumerate(fragments.shape)
        )
        here, there = fragments[p_slices], fragments[q_slices]
        crossing = (here != there) & (here != 0) & (there != 0)
        a, b = here[crossing], there[crossing]
        pieces_u.append(np.minimum(a, b))
        pieces_v.append(np.maximum(a, b))
        values = affs[channel][p_slices][crossing]
        if values.dtype == np.uint8:
            pieces_aff.append(affinities_to_float(values).astype(np.float64))
            pieces_quantised.append(values)
        else:
            pieces_aff.append(values.astype(np.float64))
            pieces_quantised.append(affinities_to_uint8(values))
        if links is not None:
            pieces_linked.append(pair_linked(links[p_slices], links[q_slices], channel)[crossing])
    if not pieces_u:
        return EdgeTable.empty(histogram_bins)
    u = np.concatenate(pieces_u)
    v = np.concatenate(pieces_v)
    values = np.concatenate(pieces_aff)
    if len(u) == 0:
        return EdgeTable.empty(histogram_bins)
    order = np.lexsort((v, u))
    u, v, values = u[order], v[order], values[order]
    quantised = np.concatenate(pieces_quantised)[order].astype(np.uint64)
    starts_of_edges = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
    counts = np.diff(np.r_[starts_of_edges, len(u)]).astype(np.uint64)
    if histogram_bins:
        edge_index = np.repeat(np.arange(len(starts_of_edges)), counts.astype(np.int64))
        flat = edge_index * histogram_bins + histogram_bin(values, histogram_bins)
        histogram = np.bincount(flat, minlength=len(starts_of_edges) * histogram_bins)
        histogram = histogram.reshape(len(starts_of_edges), histogram_bins)
    else:
        histogram = np.zeros((len(starts_of_edges), 0), np.uint32)
    linked = None
    if links is not None:
        linked = np.add.reduceat(np.concatenate(pieces_linked)[order].astype(np.uint64), starts_of_edges)
    return EdgeTable(
        u[starts_of_edges],
        v[starts_of_edges],
        np.add.reduceat(values, starts_of_edges),
        counts,
        histogram,
        linked,
        np.add.reduceat(quantised, starts_of_edges),
    )


def node_table(fragments: np.ndarray, voxel_size=(1, 1, 1), offset=(0, 0, 0)) -> NodeTable:
    """Ids, centres of mass (nm, world coordinates) and sizes (voxels) of the non-zero fragments, sorted by id.

    Args:
        fragments: non-negative integer ids (z, y, x), 0 = no fragment.
        voxel_size: (z, y, x) nm.
        offset: world coordinate (nm) of voxel (0, 0, 0).

    Dense ids (as the watershed makes them) index the sums directly; sparse ids are first made dense with
    ``np.unique``. One compiled pass adds sizes and float64 coordinates in raster order (the order ``bincount``
    adds them in, so the centres are the same to the bit).
    """
    from affcons.segment.moments import sizes_and_coordinate_sums

    if fragments.ndim != 3 or not np.issubdtype(fragments.dtype, np.integer):
        raise VolumeError(f"fragments must be a 3-D integer array, got shape {fragments.shape}, {fragments.dtype}")
    flat = fragments.ravel()
    if np.issubdtype(fragments.dtype, np.signedinteger) and flat.min(initial=0) < 0:
        raise VolumeError("fragment ids must be non-negative")
    largest = int(flat.max(initial=0))
    if largest <= 4 * flat.size:
        ids, index = np.arange(largest + 1, dtype=np.uint64), fragments
    else:
        ids, index = np.unique(flat, return_inverse=True)
        index = index.reshape(fragments.shape)
    sizes, sums = sizes_and_coordinate_sums(index, len(ids))
    keep = (sizes > 0) & (ids != 0)
    centres = sums[keep] / sizes[keep][:, None]
    centres = centres * np.asarray(voxel_size, np.float64) + np.asarray(offset, np.float64)
    return NodeTable(ids[keep], centres, sizes[keep])
