"""Stitching of fragments that block faces cut apart.

A blockwise watershed (:mod:`blockwise.fragments`) cuts every basin that crosses a block face into one fragment per
block. Agglomeration alone rejoins the pieces only once the face edge scores below the threshold, so at low
thresholds a blockwise run would split more than a watershed of the whole volume. But each block floods its write
ROI grown by the context, so it also sees the first voxel layer beyond each of its faces. For every voxel pair
``(p, q)`` across a face, the block owning ``p`` records whether *its* watershed put ``p`` and ``q`` in one basin,
and so does the block owning ``q`` (:func:`face_links`). The edges step counts, per edge, the pairs on which both
views agree (``EdgeTable.linked``). An edge whose pairs mostly agree (``2 * linked > count``) joins two pieces of
one basin: :func:`stitch_groups` unites them before agglomeration, and the merge tree records these unions as
merges at level ``-inf``, which every cut contains.

Link bits (uint8 per voxel ``p``): bit ``c`` (c = 0, 1, 2 for z, y, x) -- the pair ``(p - e_c, p)`` lies in one
basin in the view of ``p``'s block; bit ``3 + c`` -- the pair ``(p, p + e_c)`` does. Only voxels on a block face
carry bits, so a volume segmented in one piece has no links and nothing is stitched.
"""

import numpy as np

from affcons.segment.tables import EdgeTable


def face_links(basins: np.ndarray, crop: tuple[slice, ...], lower=(True,) * 3, upper=(True,) * 3) -> np.ndarray:
    """The link bits of one block: uint8 with the shape of ``basins[crop]``.

    Args:
        basins: watershed labels (z, y, x) of the block's write ROI grown by its context (0 = no fragment).
        crop: slices of the write ROI inside ``basins``.
        lower, upper: per axis, whether a neighbouring block lies below / above the write ROI. A face is linked
            only where ``basins`` reaches at least one voxel beyond it (context >= 1 on that side).
    """
    shape = tuple(s.stop - s.start for s in crop)
    links = np.zeros(shape, np.uint8)
    for axis in range(3):
        for is_upper, present in ((False, lower[axis]), (True, upper[axis])):
            inside = crop[axis].stop - 1 if is_upper else crop[axis].start
            outside = inside + 1 if is_upper else inside - 1
            if not present or not 0 <= outside < basins.shape[axis] or shape[axis] == 0:
                continue
            here = list(crop)
            here[axis] = slice(inside, inside + 1)
            there = list(crop)
            there[axis] = slice(outside, outside + 1)
            same = (basins[tuple(here)] == basins[tuple(there)]) & (basins[tuple(here)] != 0)
            layer = [slice(None)] * 3
            layer[axis] = slice(shape[axis] - 1, shape[axis]) if is_upper else slice(0, 1)
            links[tuple(layer)] |= same.astype(np.uint8) << np.uint8(3 + axis if is_upper else axis)
    return links


def pair_linked(links_p: np.ndarray, links_q: np.ndarray, axis: int) -> np.ndarray:
    """For pairs ``(q, p)`` with ``q = p - e_axis`` (arrays aligned pairwise): bool, both views put them in one
    basin."""
    return ((links_p >> np.uint8(axis)) & (links_q >> np.uint8(3 + axis)) & np.uint8(1)).astype(bool)


def stitched_edges(edges: EdgeTable) -> np.ndarray:
    """bool[E]: the edges that join two pieces of one basin (both views agree on most of their voxel pairs)."""
    return 2 * edges.linked > edges.count


def stitch_groups(edges: EdgeTable, ids: np.ndarray) -> np.ndarray:
    """Representative per fragment: int64[N] index into ``ids`` (sorted uint64) of the smallest fragment of its
    stitched group (itself when unstitched)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    stitched = stitched_edges(edges)
    if not stitched.any():
        return np.arange(len(ids), dtype=np.int64)
    u = np.searchsorted(ids, edges.u[stitched])
    v = np.searchsorted(ids, edges.v[stitched])
    graph = coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    first_of_component = np.unique(component, return_index=True)[1]  # ids are sorted: the first is the smallest
    return first_of_component[component].astype(np.int64)


def relabel_edges(edges: EdgeTable, ids: np.ndarray, representative: np.ndarray) -> EdgeTable:
    """The RAG of the stitched fragments: endpoints replaced by their representatives' ids, edges inside a group
    dropped, parallel edges combined (statistics added)."""
    u = ids[representative[np.searchsorted(ids, edges.u)]]
    v = ids[representative[np.searchsorted(ids, edges.v)]]
    keep = u != v
    low, high = np.minimum(u, v)[keep], np.maximum(u, v)[keep]
    return EdgeTable(
        low,
        high,
        edges.affinity_sum[keep],
        edges.count[keep],
        edges.histogram[keep],
        edges.linked[keep],
        edges.quantised_sum[keep],
    ).combine()
