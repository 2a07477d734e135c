"""Hierarchical agglomeration of a RAG into a merge tree, and cheap cuts of that tree at any threshold.

Two orders, chosen by ``build_merge_tree(..., order=...)``:

- ``"canonical"`` (the default): the exact linkage of :mod:`affcons.segment.canonical` -- integer statistics,
  exact comparisons, a strict reducible total order on ties. Its merge keys strictly increase, so ``level`` is the
  merge's own score. The same tree comes out of the block-by-block :mod:`affcons.segment.hierarchy`.
- ``"waterz"``: the compatibility replay of waterz described below.

The waterz replay follows waterz's iterative region merging (``IterativeRegionMerging.hpp``) step for step, on the RAG
alone: edges are scored ``1 - mean affinity`` or ``1 - histogram quantile``; the lowest-scored edge is merged;
edges whose statistics changed are marked stale and rescored lazily when they reach the top of the queue; of two
parallel edges the lower-scored one survives. The tree is built once, to the end. Because a rescored edge can
score lower than earlier merges, the segmentation at threshold ``t`` is the prefix of the merge sequence before
the first queue entry scoring ``>= t`` -- what ``waterz.agglomerate`` yields at ``t``. Every merge records that
running maximum as its ``level``; a cut keeps the merges with ``level < t``.

All state lives in flat numpy arrays (bytes per edge: see :func:`merge_tree_bytes_per_edge`); the loop is
compiled with numba.
"""

from dataclasses import dataclass

import numba
import numpy as np

from affcons.errors import ConfigError
from affcons.segment.canonical import (
    canonical_bytes_per_edge,
    canonical_merge_loop,
    fits_float_shortcut,
    merge_scores,
)
from affcons.segment.scoring import parse_scoring
from affcons.segment.stitch import relabel_edges, stitch_groups, stitched_edges
from affcons.segment.tables import EdgeTable

#: Merge orders of :func:`build_merge_tree`; the first is the default.
ORDERS = ("canonical", "waterz")


@dataclass(frozen=True)
class MergeTree:
    """The merges of a RAG in the order they happened.

    ``ids`` uint64[N]: the fragment ids (sorted); ``kept``/``absorbed`` int64[K]: indices into ``ids`` of the
    two regions (by their representative fragment) joined by merge k; ``score`` float32[K]: the edge score at
    merge k; ``level`` float32[K]: non-decreasing, ``-inf`` for the face stitches, which come first. In the
    canonical order ``level == score`` (scores never decrease) and ``kept``/``absorbed`` are the two clusters'
    smallest fragments; in the waterz order ``level`` is the running maximum of popped queue scores.

    A cut at ``t`` keeps the merges with ``level < t``, compared in float32: a merge whose score equals
    ``float32(t)`` exactly is *not* in the cut (waterz stops at the first score ``>= t`` too).
    """

    ids: np.ndarray
    kept: np.ndarray
    absorbed: np.ndarray
    score: np.ndarray
    level: np.ndarray

    def __len__(self) -> int:
        return len(self.kept)

    def merges_below(self, threshold: float) -> int:
        """Number of merges of the cut at ``threshold`` (those with ``level < threshold``)."""
        return int(np.searchsorted(self.level, np.float32(threshold), side="left"))

    def lookup(self, threshold: float) -> np.ndarray:
        """Segment id per fragment (uint64[N], aligned with ``ids``) at ``threshold``.

        A segment is named by its smallest fragment id, so the names do not depend on merge directions.
        """
        return self._lookup_prefix(self.merges_below(threshold))

    @property
    def num_stitches(self) -> int:
        """Number of face stitches (:mod:`affcons.segment.stitch`): the merges at level ``-inf``, which come first."""
        return int(np.count_nonzero(np.isneginf(self.level)))

    def stitched_lookup(self) -> np.ndarray:
        """Stitched fragment per fragment (uint64[N], aligned with ``ids``): the cut after the face stitches only."""
        return self._lookup_prefix(self.num_stitches)

    def _lookup_prefix(self, count: int) -> np.ndarray:
        root = _cut(len(self.ids), self.kept[:count], self.absorbed[:count])
        smallest = np.full(len(self.ids), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, root, np.arange(len(self.ids)))
        return self.ids[smallest[root]]

    def save(self, path) -> None:
        np.savez(path, ids=self.ids, kept=self.kept, absorbed=self.absorbed, score=self.score, level=self.level)

    @staticmethod
    def load(path) -> "MergeTree":
        with np.load(path) as data:
            return MergeTree(*(data[key] for key in ("ids", "kept", "absorbed", "score", "level")))


@numba.njit(cache=True)
def _cut(num_nodes, kept, absorbed):  # pragma: no cover - compiled
    parent = np.arange(num_nodes)
    for k in range(len(kept)):
        parent[absorbed[k]] = kept[k]
    root = np.empty(num_nodes, np.int64)
    for node in range(num_nodes):
        r = node
        while parent[r] != r:
            r = parent[r]
        root[node] = r
        # path compression
        n = node
        while parent[n] != r:
            following = parent[n]
            parent[n] = r
            n = following
    return root


@numba.njit(cache=True)
def _score(edge, affinity_sum, count, histogram, quantile):  # pragma: no cover - compiled
    """Edge score in float32, as waterz's ``OneMinus<...>`` computes it with ``ScoreValue = float``."""
    if quantile < 0:
        return np.float32(1.0) - np.float32(affinity_sum[edge] / max(count[edge], 1.0))
    bins = histogram.shape[1]
    total = 0
    for b in range(bins):
        total += histogram[edge, b]
    pivot = quantile * total // 100 + 1
    cumulative = 0
    chosen = bins - 1
    for b in range(bins):
        cumulative += histogram[edge, b]
        if cumulative >= pivot:
            chosen = b
            break
    return np.float32(1.0) - np.float32((chosen + 0.5) / bins)


# A binary min-heap of (score, edge) that moves entries exactly as libstdc++'s std::priority_queue with
# std::greater does (push_heap / pop_heap), so that ties between equal scores resolve as in waterz.
@numba.njit(cache=True)
def _sift_up(scores, edges, hole, top, score, edge):  # pragma: no cover - compiled
    parent = (hole - 1) // 2
    while hole > top and scores[parent] > score:
        scores[hole] = scores[parent]
        edges[hole] = edges[parent]
        hole = parent
        parent = (hole - 1) // 2
    scores[hole] = score
    edges[hole] = edge


@numba.njit(cache=True)
def _heap_push(scores, edges, size, score, edge):  # pragma: no cover - compiled
    _sift_up(scores, edges, size, 0, score, edge)
    return size + 1


@numba.njit(cache=True)
def _heap_pop(scores, edges, size):  # pragma: no cover - compiled
    """Remove the top entry (returned by the caller beforehand as scores[0], edges[0]); returns the new size."""
    last = size - 1
    if last > 0:
        score, edge = scores[last], edges[last]
        scores[last], edges[last] = scores[0], edges[0]
        length = last
        hole = 0
        child = 0
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if scores[child] > scores[child - 1]:
                child -= 1
            scores[hole] = scores[child]
            edges[hole] = edges[child]
            hole = child
        if (length & 1) == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            scores[hole] = scores[child - 1]
            edges[hole] = edges[child - 1]
            hole = child - 1
        _sift_up(scores, edges, hole, 0, score, edge)
    return last


@numba.njit(cache=True)
def _add_statistics(target, source, affinity_sum, count, histogram):  # pragma: no cover - compiled
    affinity_sum[target] += affinity_sum[source]
    count[target] += count[source]
    for bin_ in range(histogram.shape[1]):
        histogram[target, bin_] += histogram[source, bin_]


@numba.njit(cache=True)
def _merge_loop(num_nodes, u, v, affinity_sum, count, histogram, quantile):  # pragma: no cover - compiled
    num_edges = len(u)
    score = np.empty(num_edges, np.float32)
    stale = np.zeros(num_edges, np.bool_)
    deleted = np.zeros(num_edges, np.bool_)
    ends = np.empty((num_edges, 2), np.int64)  # current regions of each edge; column = slot side
    # incidence lists: slot 2e is edge e at its u side, 2e+1 at its v side; singly linked, concatenable
    following = np.full(2 * num_edges, -1, np.int64)
    head = np.full(num_nodes, -1, np.int64)
    tail = np.full(num_nodes, -1, np.int64)
    lookup = {np.int64(0): np.int64(0)}  # (smaller * num_nodes + larger) -> live edge
    del lookup[np.int64(0)]
    for e in range(num_edges):
        ends[e, 0] = u[e]
        ends[e, 1] = v[e]
        for side in range(2):
            slot = 2 * e + side
            node = ends[e, side]
            if tail[node] == -1:
                head[node] = slot
            else:
                following[tail[node]] = slot
            tail[node] = slot
        lookup[u[e] * num_nodes + v[e]] = e
    # each edge has exactly one queue entry at any time: 'num_edges' entries suffice
    queue_scores = np.empty(num_edges, np.float32)
    queue_edges = np.empty(num_edges, np.int64)
    size = 0
    for e in range(num_edges):
        score[e] = _score(e, affinity_sum, count, histogram, quantile)
        size = _heap_push(queue_scores, queue_edges, size, score[e], e)
    capacity = max(num_nodes - 1, 0)
    kept_out = np.empty(capacity, np.int64)
    absorbed_out = np.empty(capacity, np.int64)
    score_out = np.empty(capacity, np.float32)
    level_out = np.empty(capacity, np.float32)
    merges = 0
    level = np.float32(-np.inf)
    while size > 0:
        popped_score, e = queue_scores[0], queue_edges[0]
        size = _heap_pop(queue_scores, queue_edges, size)
        level = max(level, popped_score)
        if deleted[e]:
            continue
        if stale[e]:
            stale[e] = False
            score[e] = _score(e, affinity_sum, count, histogram, quantile)
            size = _heap_push(queue_scores, queue_edges, size, score[e], e)
            continue
        a, b = min(ends[e, 0], ends[e, 1]), max(ends[e, 0], ends[e, 1])  # b joins a, as in waterz
        kept_out[merges] = a
        absorbed_out[merges] = b
        score_out[merges] = popped_score
        level_out[merges] = level
        merges += 1
        deleted[e] = True
        del lookup[a * num_nodes + b]
        previous = -1
        slot = head[b]
        while slot != -1:
            f = slot // 2
            next_slot = following[slot]
            if deleted[f]:  # unlink dead slots while walking
                if previous == -1:
                    head[b] = next_slot
                else:
                    following[previous] = next_slot
                slot = next_slot
                continue
            side = slot % 2
            c = ends[f, 1 - side]
            del lookup[min(b, c) * num_nodes + max(b, c)]
            key = min(a, c) * num_nodes + max(a, c)
            g = lookup[key] if key in lookup else np.int64(-1)
            if g != -1 and score[f] > score[g]:
                # the parallel edge of a survives with the lower score
                _add_statistics(g, f, affinity_sum, count, histogram)
                deleted[f] = True
                stale[g] = True
            else:
                if g != -1:
                    _add_statistics(f, g, affinity_sum, count, histogram)
                    deleted[g] = True
                    stale[f] = True
                ends[f, side] = a
                lookup[key] = f
            previous = slot
            slot = next_slot
        tail[b] = previous
        if head[b] != -1:  # append b's live slots to a's list
            if tail[a] == -1:
                head[a] = head[b]
            else:
                following[tail[a]] = head[b]
            tail[a] = tail[b]
        head[b] = -1
        tail[b] = -1
    return kept_out[:merges], absorbed_out[:merges], score_out[:merges], level_out[:merges]


def parse_order(order: str) -> str:
    """Check a merge order name (:data:`ORDERS`)."""
    if order not in ORDERS:
        raise ConfigError(f"unknown merge order {order!r}: use one of {', '.join(ORDERS)}")
    return order


def build_merge_tree(
    edges: EdgeTable, scoring: str = "mean", node_ids: np.ndarray | None = None, order: str = "canonical"
) -> MergeTree:
    """Agglomerate the RAG ``edges`` to the end and return its merge tree.

    Args:
        edges: combined edge table (unique (u, v) rows, u < v).
        scoring: ``"mean"`` (``1 - mean affinity``) or ``"quantileQ"`` (``1 - Q-th percentile`` from the
            histograms, which the table must then have).
        node_ids: all fragment ids, including isolated ones (default: the ids that occur in ``edges``).
        order: ``"canonical"`` (exact; mean scoring uses ``edges.quantised_sum``) or ``"waterz"`` (the replay of
            ``waterz.agglomerate``; mean scoring uses ``edges.affinity_sum``).

    Edges that join two pieces of one watershed basin cut by a block face (``2 * linked > count``, see
    :mod:`affcons.segment.stitch`) are united first; the tree records those unions as merges at level ``-inf``.
    """
    quantile = parse_scoring(scoring)
    parse_order(order)
    if quantile >= 0 and edges.histogram_bins == 0:
        raise ConfigError(f"scoring {scoring!r} needs edge histograms; compute the RAG with histogram_bins > 0")
    if node_ids is None:
        ids = np.union1d(edges.u, edges.v)
    else:
        ids = np.asarray(node_ids, np.uint64)
        if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):  # a store's read is sorted and unique already
            ids = np.unique(ids)
    ids = ids.astype(np.uint64)
    endpoints = []
    for endpoint in (edges.u, edges.v):
        found = np.searchsorted(ids, endpoint)
        if len(ids) and np.any(ids[np.minimum(found, len(ids) - 1)] != endpoint):
            raise ValueError("edges refer to fragment ids missing from node_ids")
        endpoints.append(found.astype(np.int64))
    if order == "canonical":
        return _canonical_tree(edges, ids, quantile, *endpoints)
    representative = stitch_groups(edges, ids)
    stitched = representative != np.arange(len(ids))
    if stitched.any():
        edges = relabel_edges(edges, ids, representative)
        roots = np.flatnonzero(~stitched)
        tree = _agglomerate(edges, ids[roots], quantile)
        never = np.full(int(stitched.sum()), -np.inf, np.float32)
        return MergeTree(
            ids,
            np.concatenate([representative[stitched], roots[tree.kept]]),
            np.concatenate([np.flatnonzero(stitched), roots[tree.absorbed]]),
            np.concatenate([never, tree.score]),
            np.concatenate([never, tree.level]),
        )
    return _agglomerate(edges, ids, quantile)


def loop_statistics(edges: EdgeTable, quantile: int, order: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The canonical loop's statistics of ``edges`` in row order ``order`` (None: as they are), as new arrays the
    loop may modify: quantised sums, counts, stitched flags (uint64) and histograms (int64[E, B] for quantile
    scoring, [E, 0] for mean). Refuses what the loop cannot order."""
    if len(edges) and np.any(edges.u >= edges.v):
        raise ValueError("edge table rows need u < v")
    if quantile < 0 and np.any(edges.count == 0):
        raise ValueError("mean scoring needs count >= 1 on every edge (a mean of no voxel pairs is undefined)")
    rows = slice(None) if order is None else order
    if quantile >= 0:
        histogram = edges.histogram[rows].astype(np.int64)
    else:
        histogram = np.zeros((len(edges), 0), np.int64)
    return (
        edges.quantised_sum[rows].copy(),
        edges.count[rows].copy(),
        stitched_edges(edges)[rows].astype(np.uint64),
        histogram,
    )


def sorted_pairs(u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """The order that sorts node index pairs (u, v), or None where they are sorted already (as combined tables and
    store reads are); a pair twice is a ValueError."""
    if len(u) < 2 or np.all((u[1:] > u[:-1]) | ((u[1:] == u[:-1]) & (v[1:] > v[:-1]))):
        return None
    order = np.lexsort((v, u))
    su, sv = u[order], v[order]
    if np.any((su[1:] == su[:-1]) & (sv[1:] == sv[:-1])):
        raise ValueError("edge table has an (u, v) pair twice; combine() it first")
    return order


def _canonical_tree(edges: EdgeTable, ids: np.ndarray, quantile: int, u: np.ndarray, v: np.ndarray) -> MergeTree:
    """The canonical merge tree of ``edges`` (combined) over the sorted fragment ``ids``; ``u``, ``v``: the
    endpoints' indices into ``ids`` (int64)."""
    order = sorted_pairs(u, v)
    if order is not None:
        u, v = u[order], v[order]
    quantised_sum, count, stitched, histogram = loop_statistics(edges, quantile, order)
    lo, hi, num, den, is_stitch, _, _ = canonical_merge_loop(
        len(ids),
        u,
        v,
        quantised_sum,
        count,
        stitched,
        histogram,
        quantile,
        np.zeros(len(ids), np.bool_),
        fits_float_shortcut(quantised_sum, count),
    )
    score = merge_scores(num, den, is_stitch, quantile, edges.histogram_bins)
    return MergeTree(ids, lo, hi, score, score.copy())


def _agglomerate(edges: EdgeTable, ids: np.ndarray, quantile: int) -> MergeTree:
    """The merge tree of ``edges`` over the sorted fragment ``ids``, without stitching."""
    u = np.searchsorted(ids, edges.u)
    v = np.searchsorted(ids, edges.v)
    order = np.lexsort((v, u))
    kept, absorbed, score, level = _merge_loop(
        len(ids),
        u[order].astype(np.int64),
        v[order].astype(np.int64),
        edges.affinity_sum[order].copy(),
        edges.count[order].astype(np.float64),
        edges.histogram[order].astype(np.int64),
        quantile,
    )
    return MergeTree(ids, kept, absorbed, score, level)


def merge_tree_bytes_per_edge(histogram_bins: int, order: str = "canonical", quantile: bool | None = None) -> int:
    """Peak bytes per RAG edge inside :func:`build_merge_tree`, counted from the arrays it allocates.

    ``quantile``: whether the scoring is a quantile (default: ``histogram_bins > 0``). Canonical order: see
    :func:`affcons.segment.canonical.canonical_bytes_per_edge`. Waterz order, per edge: endpoints (2 x int64) and
    statistics (sum, count: float64; histogram: int64 per bin) handed to the loop; current endpoints (2 x int64);
    two incidence slots (2 x int64); score (float32), stale and deleted flags; one heap entry (float32 + int64); one
    typed-dict entry of the pair lookup (hash, key, value: 3 x int64, plus about 2 x int64 of index table).
    Stitching (when a block face cut fragments) adds the relabelled table (endpoints, sum, count, linked: 5 x 8 B,
    histogram: 4 B per bin) and its sort order (int64).
    """
    if quantile is None:
        quantile = histogram_bins > 0
    if parse_order(order) == "canonical":
        return canonical_bytes_per_edge(histogram_bins, quantile)
    stitched_copy = 5 * 8 + 4 * histogram_bins + 8
    inputs = 2 * 8 + 8 + 8 + 8 * histogram_bins + stitched_copy
    loop_state = 2 * 8 + 2 * 8 + 4 + 1 + 1 + (4 + 8)
    pair_lookup = 3 * 8 + 2 * 8
    return inputs + loop_state + pair_lookup
