"""The RAG of one block's interior in compiled passes: the blockwise fragments step's edge table.

:func:`interior_edge_table` equals :func:`affcons.segment.edge_table` of the block's fragments and uint8 affinities
(no context, no face links, no histogram) row for row and bit for bit, without sorting the voxel pairs: the block's
ids are ``first_id + 1 .. first_id + count``, so the pairs are bucketed by their smaller local id (a counting sort,
stable) and each bucket is sorted by the larger one (stable), which is the order of ``edge_table``'s lexsort; the
float sums then add the same values in the same order. Kept in its own module so that workers of steps without
compiled kernels do not import numba.
"""

import numba
import numpy as np

from affcons.segment.tables import EdgeTable


def interior_edge_table(fragments: np.ndarray, affs: np.ndarray, first_id: int, count: int) -> EdgeTable:
    """Edges of the voxel pairs with both voxels in the block.

    Args:
        fragments: uint64 (z, y, x), ids ``first_id + 1 .. first_id + count`` and 0 (no fragment).
        affs: uint8 (C >= 3, z, y, x) affinities aligned with ``fragments`` (channels 0-2 used).
        first_id, count: the block's id offset and number of fragments.
    """
    if affs.dtype != np.uint8 or affs.ndim != 4 or affs.shape[0] < 3 or affs.shape[1:] != fragments.shape:
        raise ValueError(f"need uint8 affinities (C >= 3,) + {fragments.shape}, got {affs.dtype} {affs.shape}")
    if fragments.dtype != np.uint64:
        raise ValueError(f"fragments must be uint64, got {fragments.dtype}")
    u, v, total, pairs, quantised = _interior_edges(fragments, affs, np.uint64(first_id), count)
    offset = np.uint64(first_id)
    return EdgeTable(u + offset, v + offset, total, pairs, np.zeros((len(u), 0), np.uint32), None, quantised)


@numba.njit(cache=True)
def _pair(fragments, channel, z, y, x):  # pragma: no cover - compiled
    """The voxel's partner ``p - e_channel`` (the caller keeps it inside the array)."""
    if channel == 0:
        return fragments[z - 1, y, x]
    if channel == 1:
        return fragments[z, y - 1, x]
    return fragments[z, y, x - 1]


@numba.njit(cache=True)
def _scan_pairs(fragments, affs, first_id, per_low, cursor, high_of, value_of, fill):  # pragma: no cover - compiled
    """Every pair ``(p, p - e_c)`` of two different fragments in (channel, raster) order: count it per smaller local
    id (``fill`` False: ``per_low``), or store its larger local id and affinity at ``cursor`` of its bucket."""
    nz, ny, nx = fragments.shape
    for channel in range(3):
        for z in range(1 if channel == 0 else 0, nz):
            for y in range(1 if channel == 1 else 0, ny):
                for x in range(1 if channel == 2 else 0, nx):
                    a = fragments[z, y, x]
                    b = _pair(fragments, channel, z, y, x)
                    if a != b and a != 0 and b != 0:
                        low = min(a, b) - first_id
                        if fill:
                            high_of[cursor[low]] = max(a, b) - first_id
                            value_of[cursor[low]] = affs[channel, z, y, x]
                            cursor[low] += 1
                        else:
                            per_low[low] += 1


@numba.njit(cache=True)
def _interior_edges(fragments, affs, first_id, count):  # pragma: no cover - compiled
    per_low = np.zeros(count + 2, np.int64)
    nothing = np.zeros(0, np.int64)
    _scan_pairs(fragments, affs, first_id, per_low, nothing, nothing, np.zeros(0, np.uint8), False)
    starts = np.zeros(count + 2, np.int64)
    for low in range(1, count + 1):
        starts[low + 1] = starts[low] + per_low[low]
    high_of = np.empty(starts[count + 1], np.int64)
    value_of = np.empty(starts[count + 1], np.uint8)
    _scan_pairs(fragments, affs, first_id, per_low, starts.copy(), high_of, value_of, True)
    n = starts[count + 1]
    u = np.empty(n, np.uint64)
    v = np.empty(n, np.uint64)
    total = np.zeros(n, np.float64)
    pairs = np.zeros(n, np.uint64)
    quantised = np.zeros(n, np.uint64)
    scale = np.float32(255.0)
    edges = 0
    for low in range(1, count + 1):  # pass 3: per bucket, stable by larger id, then one edge per run
        begin, end = starts[low], starts[low + 1]
        if begin == end:
            continue
        order = np.argsort(high_of[begin:end], kind="mergesort")
        previous = -1
        for k in order:
            j = begin + k
            high = high_of[j]
            if high != previous:
                u[edges] = low
                v[edges] = high
                edges += 1
                previous = high
            value = value_of[j]
            total[edges - 1] += np.float64(np.float32(value) / scale)
            pairs[edges - 1] += 1
            quantised[edges - 1] += value
    return u[:edges], v[:edges], total[:edges], pairs[:edges], quantised[:edges]
