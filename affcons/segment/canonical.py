"""The canonical exact linkage: integer statistics, exact comparisons, a strict and reducible total order.

An edge between clusters X and Y has the key ``(class, fraction, tie-break)``, smaller first:

- ``class`` 0 for a stitched edge (it contains a fragment edge with ``2 * linked > count``,
  :mod:`affcons.segment.stitch`; its score is ``-inf``), 1 otherwise;
- ``fraction`` = an affinity as an exact fraction ``num / den``, *larger first*: for mean scoring
  ``quantised_sum / count`` (uint8 affinities 0..255 summed in uint64), for ``quantileQ`` scoring the histogram bin
  at the rank ``Q * total // 100 + 1`` (``den = 1``); fractions are compared by 128-bit cross-multiplication
  (``num_a * den_b`` vs ``num_b * den_a``), never in floating point (a float64 quotient only short-cuts the
  comparison where it alone decides, which is exact while numerators and denominators stay below 2^53);
- ``tie-break`` = the two clusters' smallest fragment ids ``lo < hi``, *larger first*: ``(-lo, -hi)``.

Why this order is exact to distribute: it is *reducible*. If Z merges with W, the key of (X, Z ∪ W) is never below
the smaller of the keys of (X, Z) and (X, W) (a missing edge has key +inf): the mean of the union is a weighted mean
of the parts, the rank quantile of summed histograms lies between the parts' quantiles, a stitched part keeps the
union stitched, and the tie-break only grows because merging only lowers a cluster's smallest id (hence the
"larger first" direction; "smaller first" would not be reducible). So a pair of clusters that are each other's
best edge stays so until it merges, whatever else merges meanwhile, and merging such mutually-best pairs in any
order gives the same merges with the same keys (Müllner 2011); the keys of the merge sequence strictly increase.

:func:`canonical_merge_loop` runs the loop on flat arrays (numba): pop the best edge; if neither end is *frozen* it
is the best edge of both ends, so the two merge (a final merge); otherwise the edge is *deferred* and both ends
freeze (:mod:`affcons.segment.hierarchy` uses frozen clusters for the parts of a block that touch its boundary; a
global run freezes nothing). When X (smallest id ``lo``) absorbs Y (``hi``), Y's edges move to X; parallel edges add
their statistics. Keys only grow under merges (reducibility), so the heap is updated eagerly (an indexed heap
with sift up and down) and every pop is the current minimum: no stale scores.
"""

import numba
import numpy as np

#: Numerators and denominators below this make a float64 quotient a monotone function of the exact fraction.
EXACT_FLOAT_LIMIT = 2**53


@numba.njit(cache=True)
def _mul_128(a, b):  # pragma: no cover - compiled
    """The 128-bit product of two uint64 as (high, low) uint64."""
    mask = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)
    a_low, a_high = a & mask, a >> shift
    b_low, b_high = b & mask, b >> shift
    p0 = a_low * b_low
    p1 = a_low * b_high
    p2 = a_high * b_low
    p3 = a_high * b_high
    middle = (p0 >> shift) + (p1 & mask) + (p2 & mask)
    low = (p0 & mask) | (middle << shift)
    high = p3 + (p1 >> shift) + (p2 >> shift) + (middle >> shift)
    return high, low


@numba.njit(cache=True)
def compare_fractions(a, b, c, d):  # pragma: no cover - compiled
    """Sign of ``a / b - c / d`` for uint64 ``a, c >= 0`` and ``b, d > 0``, exactly (128-bit products)."""
    if b == d:  # common for ties: no products needed
        return 1 if a > c else (-1 if a < c else 0)
    left_high, left_low = _mul_128(np.uint64(a), np.uint64(d))
    right_high, right_low = _mul_128(np.uint64(c), np.uint64(b))
    if left_high != right_high:
        return 1 if left_high > right_high else -1
    if left_low != right_low:
        return 1 if left_low > right_low else -1
    return 0


@numba.njit(cache=True)
def key_before(
    cls_a, num_a, den_a, approx_a, lo_a, hi_a, cls_b, num_b, den_b, approx_b, lo_b, hi_b, use_approx
):  # pragma: no cover - compiled
    """Whether key a comes strictly before key b (see the module docstring); ``approx`` = ``num / den`` in float64,
    trusted to decide only when ``use_approx`` (all numerators and denominators < 2^53) and the two differ."""
    if cls_a != cls_b:
        return cls_a < cls_b
    if cls_a == 1:
        if use_approx and approx_a != approx_b:
            return approx_a > approx_b
        order = compare_fractions(num_a, den_a, num_b, den_b)
        if order != 0:
            return order > 0
    if lo_a != lo_b:
        return lo_a > lo_b
    return hi_a > hi_b


@numba.njit(cache=True)
def quantile_bin(histogram, row, quantile):  # pragma: no cover - compiled
    """The bin at rank ``quantile * total // 100 + 1`` of ``histogram[row]`` (the last bin if never reached), as
    waterz's ``HistogramQuantileProvider`` picks it."""
    bins = histogram.shape[1]
    total = 0
    for b in range(bins):
        total += histogram[row, b]
    pivot = quantile * total // 100 + 1
    cumulative = 0
    for b in range(bins):
        cumulative += histogram[row, b]
        if cumulative >= pivot:
            return b
    return bins - 1


# --------------------------------------------------------------------------------------- the loop's indexed heap
# Entry i: heap_edge[i], heap_key[i] (the edge's float64 primary key: -inf for a stitched edge, else -num/den) and
# heap_tie[i] (the tie-break packed as lo * 2^32 + hi, larger first; used when num_nodes < 2^32, else read from
# ends). position[e] is the entry of edge e (-1: not in the heap). The primary key decides where it differs (and
# use_approx holds). Equal primary keys mean equal fractions for quantile scoring (integers over 1); for mean
# scoring they fall back to the exact fraction comparison, then the tie-break.
#
# An edge that moves to the merged cluster keeps its fraction; only its tie-break rises. With packed tie-breaks its
# entry keeps the old one (a snapshot below its key, so the heap order of the snapshots stays valid) and is marked
# stale; when a stale entry reaches the top it is refiled with its current tie-break. A popped entry that is not
# stale is then the true minimum: every other entry is at or below its edge's key. Edges whose statistics change
# (parallel edges joining) are refiled at once. The heap is 4-ary: half the depth of a binary heap, and the four
# children of an entry share a cache line or two (the loop is bound by memory latency, not by comparisons).

ARITY = 4


@numba.njit(cache=True)
def _before(key_e, tie_e, e, key_f, tie_f, f, num, den, ends, settings):  # pragma: no cover - compiled
    """Whether heap entry (key_e, tie_e) of edge e comes strictly before entry (key_f, tie_f) of edge f.
    ``settings`` = (use_approx, exact fractions needed on equal keys, tie-breaks packed)."""
    use_approx, compare_equal, packed = settings
    if use_approx and key_e != key_f:
        return key_e < key_f
    stitched_e, stitched_f = key_e == -np.inf, key_f == -np.inf
    if stitched_e != stitched_f:
        return stitched_e
    if not stitched_e and (compare_equal or not use_approx):
        order = compare_fractions(num[e], den[e], num[f], den[f])
        if order != 0:
            return order > 0
    if packed:
        return tie_e > tie_f
    lo_e, lo_f = min(ends[e, 0], ends[e, 1]), min(ends[f, 0], ends[f, 1])
    if lo_e != lo_f:
        return lo_e > lo_f
    return max(ends[e, 0], ends[e, 1]) > max(ends[f, 0], ends[f, 1])


@numba.njit(cache=True)
def _tie(e, ends):  # pragma: no cover - compiled
    lo, hi = min(ends[e, 0], ends[e, 1]), max(ends[e, 0], ends[e, 1])
    return (np.uint64(lo) << np.uint64(32)) | np.uint64(hi)


@numba.njit(cache=True)
def _move(heap_edge, heap_key, heap_tie, position, target, source):  # pragma: no cover - compiled
    heap_edge[target], heap_key[target], heap_tie[target] = heap_edge[source], heap_key[source], heap_tie[source]
    position[heap_edge[target]] = target


@numba.njit(cache=True)
def _sift_down(
    heap_edge, heap_key, heap_tie, position, size, hole, num, den, ends, settings
):  # pragma: no cover - compiled
    edge, key, tie = heap_edge[hole], heap_key[hole], heap_tie[hole]
    while True:
        first = ARITY * hole + 1
        if first >= size:
            break
        child = first
        for other in range(first + 1, min(first + ARITY, size)):
            if _before(
                heap_key[other],
                heap_tie[other],
                heap_edge[other],
                heap_key[child],
                heap_tie[child],
                heap_edge[child],
                num,
                den,
                ends,
                settings,
            ):
                child = other
        if not _before(heap_key[child], heap_tie[child], heap_edge[child], key, tie, edge, num, den, ends, settings):
            break
        _move(heap_edge, heap_key, heap_tie, position, hole, child)
        hole = child
    heap_edge[hole], heap_key[hole], heap_tie[hole] = edge, key, tie
    position[edge] = hole


@numba.njit(cache=True)
def _sift(heap_edge, heap_key, heap_tie, position, size, hole, num, den, ends, settings):  # pragma: no cover - compiled
    """Restore the heap order around entry ``hole`` after its key rose or fell."""
    edge, key, tie = heap_edge[hole], heap_key[hole], heap_tie[hole]
    start = hole
    while hole > 0:
        parent = (hole - 1) // ARITY
        if not _before(key, tie, edge, heap_key[parent], heap_tie[parent], heap_edge[parent], num, den, ends, settings):
            break
        _move(heap_edge, heap_key, heap_tie, position, hole, parent)
        hole = parent
    heap_edge[hole], heap_key[hole], heap_tie[hole] = edge, key, tie
    position[edge] = hole
    if hole == start:
        _sift_down(heap_edge, heap_key, heap_tie, position, size, hole, num, den, ends, settings)


@numba.njit(cache=True)
def _remove(
    heap_edge, heap_key, heap_tie, position, size, edge, num, den, ends, settings
):  # pragma: no cover - compiled
    """Remove ``edge`` from the heap; returns the new size."""
    hole = position[edge]
    position[edge] = -1
    size -= 1
    if hole != size:
        _move(heap_edge, heap_key, heap_tie, position, hole, size)
        _sift(heap_edge, heap_key, heap_tie, position, size, hole, num, den, ends, settings)
    return size


@numba.njit(cache=True)
def _primary(e, stitched, num, den):  # pragma: no cover - compiled
    if stitched[e] > 0:
        return -np.inf
    return -(np.float64(num[e]) / np.float64(den[e]))


# --------------------------------------------------------------------------------------- the loop's pair lookup
# Which live edge joins two clusters: an open-addressing hash table on flat arrays (linear probing, backward-shift
# deletion, so no tombstones), from the pair key ``lo * num_nodes + hi`` to the edge; ``keys`` holds -1 in empty
# slots. Twice as many slots as edges (the live pairs only ever decrease), 16 B each.

_MIX = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True)
def _home(key, capacity):  # pragma: no cover - compiled
    mixed = np.uint64(key) * _MIX
    return np.int64((mixed ^ (mixed >> np.uint64(29))) % np.uint64(capacity))


@numba.njit(cache=True)
def _find(keys, key):  # pragma: no cover - compiled
    """The slot holding ``key``, or the empty slot where it would go."""
    capacity = len(keys)
    slot = _home(key, capacity)
    while keys[slot] != -1 and keys[slot] != key:
        slot += 1
        if slot == capacity:
            slot = 0
    return slot


@numba.njit(cache=True)
def _erase(keys, values, slot):  # pragma: no cover - compiled
    """Empty ``slot`` and move later entries of its probe run back into the gap (no tombstones)."""
    capacity = len(keys)
    hole = slot
    slot = hole + 1 if hole + 1 < capacity else 0
    while keys[slot] != -1:
        home = _home(keys[slot], capacity)
        # the entry may move to the hole unless its home lies cyclically in (hole, slot]
        if (hole < slot and (home <= hole or home > slot)) or (slot < hole and slot < home <= hole):
            keys[hole], values[hole] = keys[slot], values[slot]
            hole = slot
        slot = slot + 1 if slot + 1 < capacity else 0
    keys[hole] = -1


@numba.njit(cache=True)
def canonical_merge_loop(
    num_nodes, u, v, quantised_sum, count, stitched, histogram, quantile, frozen, use_approx
):  # pragma: no cover - compiled
    """Agglomerate in canonical key order; frozen clusters defer their edges instead of merging.

    Args (modified in place: the statistics, ``frozen``):
        num_nodes: nodes ``0..num_nodes-1``, ordered like their smallest fragment ids.
        u, v: int64[E] node indices, ``u < v``, no pair twice.
        quantised_sum, count, stitched: uint64[E] statistics (``stitched`` > 0: the edge has class 0).
        histogram: int64[E, B] (B = 0 for mean scoring).
        quantile: -1 for mean scoring, else Q.
        frozen: bool[num_nodes], True for nodes that touch the boundary.
        use_approx: all numerators and denominators stay below 2^53 (see :data:`EXACT_FLOAT_LIMIT`).

    Returns ``(merge_lo, merge_hi, merge_num, merge_den, merge_stitched, deferred, ends)``: the merges in key order
    (node indices of the two clusters' smallest members, the fraction of the key, class 0 or not); a bool[E] mask
    of the deferred edges and the int64[E, 2] clusters each edge joins at the end (valid for deferred edges, whose
    statistics are then final).
    """
    num_edges = len(u)
    if quantile < 0:  # the key's fraction is the mean itself
        num, den = quantised_sum, count
    else:  # the quantile's bin over 1
        num = np.empty(num_edges, np.uint64)
        den = np.ones(num_edges, np.uint64)
        for e in range(num_edges):
            num[e] = quantile_bin(histogram, e, quantile)
    ends = np.empty((num_edges, 2), np.int64)
    deleted = np.zeros(num_edges, np.bool_)
    deferred = np.zeros(num_edges, np.bool_)
    following = np.full(2 * num_edges, -1, np.int64)  # slot 2e: edge e at its end 0, 2e+1: at its end 1
    head = np.full(num_nodes, -1, np.int64)
    tail = np.full(num_nodes, -1, np.int64)
    pair_keys = np.full(max(2 * num_edges, 1), -1, np.int64)  # (lo * num_nodes + hi) -> live edge
    pair_edges = np.empty(len(pair_keys), np.int64)
    heap_edge = np.arange(num_edges)
    heap_key = np.empty(num_edges, np.float64)
    heap_tie = np.empty(num_edges, np.uint64)
    position = np.arange(num_edges)
    packed = num_nodes < 2**32
    settings = (use_approx, quantile < 0, packed)
    stale = np.zeros(num_edges, np.bool_)
    for e in range(num_edges):
        ends[e, 0] = u[e]
        ends[e, 1] = v[e]
        heap_key[e] = _primary(e, stitched, num, den)
        heap_tie[e] = _tie(e, ends)
        for side in range(2):
            slot = 2 * e + side
            node = ends[e, side]
            if tail[node] == -1:
                head[node] = slot
            else:
                following[tail[node]] = slot
            tail[node] = slot
        key = u[e] * num_nodes + v[e]
        slot = _find(pair_keys, key)
        pair_keys[slot], pair_edges[slot] = key, e
    size = num_edges
    for hole in range((num_edges - 2) // ARITY, -1, -1):
        _sift_down(heap_edge, heap_key, heap_tie, position, size, hole, num, den, ends, settings)
    capacity = max(num_nodes - 1, 0)
    merge_lo = np.empty(capacity, np.int64)
    merge_hi = np.empty(capacity, np.int64)
    merge_num = np.empty(capacity, np.uint64)
    merge_den = np.empty(capacity, np.uint64)
    merge_stitched = np.empty(capacity, np.bool_)
    merges = 0
    while size > 0:
        e = heap_edge[0]
        if stale[e]:  # its tie-break rose since it was filed: refile it (it may still be the minimum)
            stale[e] = False
            heap_tie[0] = _tie(e, ends)
            _sift_down(heap_edge, heap_key, heap_tie, position, size, 0, num, den, ends, settings)
            continue
        size = _remove(heap_edge, heap_key, heap_tie, position, size, e, num, den, ends, settings)
        a, b = min(ends[e, 0], ends[e, 1]), max(ends[e, 0], ends[e, 1])
        if frozen[a] or frozen[b]:
            frozen[a] = True
            frozen[b] = True
            deferred[e] = True
            continue
        merge_lo[merges] = a
        merge_hi[merges] = b
        merge_num[merges] = num[e]
        merge_den[merges] = den[e]
        merge_stitched[merges] = stitched[e] > 0
        merges += 1
        deleted[e] = True
        _erase(pair_keys, pair_edges, _find(pair_keys, a * num_nodes + b))
        # neither a nor b is frozen, so none of their edges is deferred: all live ones are in the heap
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
            _erase(pair_keys, pair_edges, _find(pair_keys, min(b, c) * num_nodes + max(b, c)))
            key = min(a, c) * num_nodes + max(a, c)
            found = _find(pair_keys, key)
            g = pair_edges[found] if pair_keys[found] == key else np.int64(-1)
            if g != -1:  # parallel edges: f leaves the heap (keys untouched meanwhile), its statistics join g
                deleted[f] = True
                size = _remove(heap_edge, heap_key, heap_tie, position, size, f, num, den, ends, settings)
                stitched[g] += stitched[f]
                quantised_sum[g] += quantised_sum[f]  # for mean scoring, the key's num and den
                count[g] += count[f]
                if quantile >= 0:
                    for bin_ in range(histogram.shape[1]):
                        histogram[g, bin_] += histogram[f, bin_]
                    num[g] = quantile_bin(histogram, g, quantile)
                heap_key[position[g]] = _primary(g, stitched, num, den)
                heap_tie[position[g]] = _tie(g, ends)
                stale[g] = False
                _sift(heap_edge, heap_key, heap_tie, position, size, position[g], num, den, ends, settings)
                if previous == -1:
                    head[b] = next_slot
                else:
                    following[previous] = next_slot
            else:  # f now joins a: only its tie-break changed, and only upwards
                ends[f, side] = a
                pair_keys[found], pair_edges[found] = key, f
                if packed:  # its entry (a snapshot) stays below its key: refile lazily when it reaches the top
                    stale[f] = True
                else:
                    _sift_down(heap_edge, heap_key, heap_tie, position, size, position[f], num, den, ends, settings)
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
    return (
        merge_lo[:merges],
        merge_hi[:merges],
        merge_num[:merges],
        merge_den[:merges],
        merge_stitched[:merges],
        deferred,
        ends,
    )


@numba.njit(cache=True)
def argsort_keys(stitched, num, den, lo, hi, use_approx):  # pragma: no cover - compiled
    """Indices that order merges by their keys (class 0 first, larger fraction first, then larger (lo, hi)):
    a bottom-up merge sort with the exact comparison."""
    n = len(num)
    approx = np.empty(n, np.float64)
    for i in range(n):
        approx[i] = np.float64(num[i]) / np.float64(den[i])
    order = np.arange(n)
    buffer = np.empty(n, np.int64)
    width = 1
    while width < n:
        for start in range(0, n, 2 * width):
            middle = min(start + width, n)
            end = min(start + 2 * width, n)
            i, j, k = start, middle, start
            while i < middle and j < end:
                a, b = order[i], order[j]
                if key_before(
                    0 if stitched[b] else 1,
                    num[b],
                    den[b],
                    approx[b],
                    lo[b],
                    hi[b],
                    0 if stitched[a] else 1,
                    num[a],
                    den[a],
                    approx[a],
                    lo[a],
                    hi[a],
                    use_approx,
                ):
                    buffer[k] = b
                    j += 1
                else:
                    buffer[k] = a
                    i += 1
                k += 1
            while i < middle:
                buffer[k] = order[i]
                i += 1
                k += 1
            while j < end:
                buffer[k] = order[j]
                j += 1
                k += 1
        order, buffer = buffer, order
        width *= 2
    return order


def merge_scores(num: np.ndarray, den: np.ndarray, stitched: np.ndarray, quantile: int, bins: int) -> np.ndarray:
    """float32 scores of merges with key fractions ``num / den``: ``1 - num / (255 den)`` for mean scoring,
    ``1 - (bin + 0.5) / B`` for quantile scoring (``num`` = bin), ``-inf`` for stitches. Monotone in the key (every
    step rounds correctly and monotonically), so a canonical merge sequence has non-decreasing scores."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    if quantile < 0:
        affinity = np.divide(num, 255.0 * den, out=np.zeros_like(num), where=den > 0).astype(np.float32)
    else:
        affinity = ((num + 0.5) / max(bins, 1)).astype(np.float32)
    score = np.float32(1.0) - affinity
    score[np.asarray(stitched, bool)] = -np.inf
    return score.astype(np.float32)


def fits_float_shortcut(*columns: np.ndarray) -> bool:
    """Whether every value a loop can reach (at most a column's total) stays below 2^53 (totals summed in float64,
    with a factor 2 of margin for its rounding)."""
    return all(float(np.sum(c, dtype=np.float64)) < EXACT_FLOAT_LIMIT / 2 for c in columns)


def canonical_bytes_per_edge(histogram_bins: int, quantile: bool) -> int:
    """Peak bytes per RAG edge of a canonical build, counted from the arrays it allocates (the edge table itself not
    included): node-index endpoints (2 x int64); the statistics the loop works on (quantised sum, count, stitched:
    3 x uint64, plus a bool while the flags are made) and, for quantile scoring, the histogram as int64 (a sort
    order and a uint32 copy of the histogram join them when a table comes unsorted); in the loop: current ends
    (2 x int64), three flags, two incidence slots (2 x int64), the heap entry (edge, primary key, packed tie-break,
    position: 4 x 8 B), two slots of the pair lookup (2 x 16 B) and, for quantile scoring, the
    key's bin and denominator (2 x 8 B)."""
    bins = histogram_bins if quantile else 0
    statistics = 3 * 8 + 1 + 8 * bins
    loop = 2 * 8 + 3 + 2 * 8 + 4 * 8 + 2 * 16 + (2 * 8 if quantile else 0)
    return 2 * 8 + statistics + loop
