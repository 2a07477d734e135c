"""Exact hierarchical (frozen-boundary) agglomeration: the canonical merge tree computed block by block.

ABISS's frozen rule (Lu, Zlateski, Seung 2021) made exact for the canonical linkage of
:mod:`affcons.segment.canonical`. A block runs the canonical loop on its own edges with every cluster that contains
a *boundary* fragment (one with an edge leaving the block) frozen: the best remaining edge merges when neither end
is frozen -- it is then the best edge of both clusters in the whole graph, and by reducibility stays so, so the
global run makes the same merge -- and is otherwise *deferred*, freezing both ends. What is left is a
:class:`BlockState`: the final merges (with the exact keys that order them globally), the frozen clusters, the
cluster of each boundary fragment, and the deferred edges between frozen clusters with their integer statistics.

A parent block joins its children's states with the raw fragment edges across the children's shared faces
(mapped to clusters through the children's boundary members, parallel edges added), freezes the clusters that
touch its own boundary, and runs the same loop (:func:`parent_state`). The root has no boundary and finishes; so
does :func:`finish`, which hands the residual of any level to one process (a "stop level"). The union of all
states' merges, sorted by key, is the global canonical merge sequence (:func:`merge_tree_from_states`): the same
``MergeTree`` byte for byte as ``build_merge_tree(order="canonical")``.

:func:`hierarchical_merge_tree` drives the levels in memory over an octree of blocks; the blockwise pipeline runs
the same functions as daisy tasks (``docs/design/hierarchical-agglomeration.md``).
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from affcons.errors import AgglomerationError, ConfigError
from affcons.segment.agglomerate import MergeTree, loop_statistics, parse_scoring, sorted_pairs
from affcons.segment.canonical import (
    EXACT_FLOAT_LIMIT,
    argsort_keys,
    canonical_merge_loop,
    fits_float_shortcut,
    merge_scores,
)
from affcons.segment.tables import EdgeTable

#: Version of the ``.npz`` layout of :class:`BlockState`.
STATE_FORMAT = 1

_U64 = np.uint64


@dataclass(frozen=True)
class BlockMerges:
    """The final merges of a block and its scoring: all that the assembly of the merge tree needs (see
    :class:`BlockState`, which adds what a parent block needs)."""

    quantile: int
    histogram_bins: int
    merge_lo: np.ndarray
    merge_hi: np.ndarray
    merge_num: np.ndarray
    merge_den: np.ndarray
    merge_stitched: np.ndarray

    @staticmethod
    def load(file) -> "BlockMerges":
        """The merges of the state file ``file`` (:meth:`BlockState.save`), without its frozen clusters, members
        and deferred edges; checked as :meth:`BlockState.load` checks them."""
        return _loaded(BlockMerges, file)

    def _checked(self) -> "BlockMerges":
        """Dtypes and lengths of the merge arrays as documented, else AgglomerationError."""
        merges = {"merge_lo": _U64, "merge_hi": _U64, "merge_num": _U64, "merge_den": _U64, "merge_stitched": np.bool_}
        _check_group(self, merges)
        return self


@dataclass(frozen=True)
class BlockState(BlockMerges):
    """What a block leaves for its parent (all ids uint64 fragment ids; a cluster is named by its smallest fragment).

    - ``level``, ``quantile`` (-1: mean scoring, else Q), ``histogram_bins`` (B of the histograms, 0 for mean).
    - Final merges ``merge_lo < merge_hi`` [K]: the two clusters joined; their key: ``merge_num / merge_den``
      (uint64: quantised affinity sum / pair count for mean, histogram bin / 1 for quantile) and
      ``merge_stitched`` (bool: a face stitch, score -inf). Sorted by key.
    - Frozen clusters ``cluster_ids`` [F] (sorted smallest fragments).
    - Boundary members ``member_ids`` [M] (sorted): the block's fragments with edges leaving it, the only ones
      a later crossing edge can reach. Each is a frozen cluster of its own (frozen from the start, it never
      merges inside the block), so a crossing edge joins the clusters named by its two fragments.
    - Deferred edges ``edge_u < edge_v`` [D] between frozen clusters, with ``edge_quantised_sum``, ``edge_count``,
      ``edge_stitched`` (number of stitched fragment edges in it), all uint64, and ``edge_histogram`` [D, B]
      (uint32, or uint64 where a bin exceeds 2^32 - 1).
    """

    level: int
    cluster_ids: np.ndarray
    member_ids: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    edge_quantised_sum: np.ndarray
    edge_count: np.ndarray
    edge_stitched: np.ndarray
    edge_histogram: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes of the state's arrays (what it costs in memory and, uncompressed, on disk)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    def sizes(self) -> dict[str, int]:
        """Counts for a driver's log: merges, frozen clusters, boundary members, deferred edges, bytes."""
        return {
            "merges": len(self.merge_lo),
            "frozen_clusters": len(self.cluster_ids),
            "members": len(self.member_ids),
            "deferred_edges": len(self.edge_u),
            "bytes": self.nbytes,
        }

    def save(self, file) -> None:
        """Write the state as one compressed ``.npz`` (numpy arrays only) to ``file`` (a path or a binary file
        object). Atomicity is the caller's: write to a temporary name and rename."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays.update(format=STATE_FORMAT, level=self.level, quantile=self.quantile, histogram_bins=self.histogram_bins)
        np.savez_compressed(file, **{name: np.asarray(value) for name, value in arrays.items()})

    @staticmethod
    def load(file) -> "BlockState":
        """Read a state written by :meth:`save`; a file of another format or with wrong arrays is an
        :class:`~affcons.errors.AgglomerationError` naming it."""
        return _loaded(BlockState, file)

    def _checked(self) -> "BlockState":
        """Dtypes and shapes as documented, else AgglomerationError."""
        super()._checked()
        _check_group(self, {"cluster_ids": _U64})
        _check_group(self, {"member_ids": _U64})
        edges = {"edge_u": _U64, "edge_v": _U64, "edge_quantised_sum": _U64, "edge_count": _U64, "edge_stitched": _U64}
        _check_group(self, edges, also=("edge_histogram",))
        if self.edge_histogram.dtype not in (np.uint32, _U64):
            raise AgglomerationError(f"block state array edge_histogram has dtype {self.edge_histogram.dtype}")
        if self.edge_histogram.ndim != 2 or self.edge_histogram.shape[1] != self.histogram_bins:
            raise AgglomerationError(
                f"block state edge_histogram has shape {self.edge_histogram.shape}, expected (D, {self.histogram_bins})"
            )
        return self


def _check_group(state, dtypes: dict, also: tuple[str, ...] = ()) -> None:
    """AgglomerationError unless the arrays named in ``dtypes`` have those dtypes and, with ``also``, one length."""
    for name, dtype in dtypes.items():
        if getattr(state, name).dtype != dtype:
            raise AgglomerationError(f"block state array {name} has dtype {getattr(state, name).dtype}, not {dtype}")
    group = (*dtypes, *also)
    if len(group) > 1 and len({getattr(state, name).shape[0] for name in group}) != 1:
        raise AgglomerationError(f"block state arrays {', '.join(group)} differ in length")


def _loaded(kind: type, file):
    """The ``kind`` (:class:`BlockMerges` or :class:`BlockState`) of the state file ``file``, checked."""
    values = _load_arrays(file, [f.name for f in fields(kind)])
    for name in ("level", "quantile", "histogram_bins"):
        if name in values:
            values[name] = int(values[name])
    try:
        return kind(**values)._checked()
    except AgglomerationError as error:
        raise AgglomerationError(f"{file}: {error}") from None


def block_state(
    node_ids: np.ndarray, edges: EdgeTable, boundary: np.ndarray, scoring: str = "mean", level: int = 0
) -> BlockState:
    """Level 0: agglomerate one block with the frozen rule.

    Args:
        node_ids: the block's fragment ids (uint64).
        edges: the combined edges with both endpoints in the block (``quantised_sum`` for mean scoring, histograms
            for quantile scoring, ``linked`` for stitching).
        boundary: the block's fragments with an edge leaving the block (any subset of ``node_ids``; empty for a
            block that is the whole volume).
        scoring: ``"mean"`` or ``"quantileQ"``.
        level: recorded in the state.
    """
    quantile = _scoring(scoring, edges.histogram_bins)
    ids = np.unique(np.asarray(node_ids, _U64))
    u = _positions(ids, edges.u, "an edge endpoint", "the block's fragments")
    v = _positions(ids, edges.v, "an edge endpoint", "the block's fragments")
    boundary = np.unique(np.asarray(boundary, _U64))
    frozen = np.zeros(len(ids), np.bool_)
    frozen[_positions(ids, boundary, "boundary fragment", "the block's fragments")] = True
    order = sorted_pairs(u, v)
    if order is not None:
        u, v = u[order], v[order]
    statistics = loop_statistics(edges, quantile, order)
    bins = edges.histogram_bins if quantile >= 0 else 0
    return _run(level, quantile, bins, ids, u, v, *statistics, frozen, boundary)


def parent_state(
    children: Sequence[BlockState],
    crossing: EdgeTable,
    boundary: np.ndarray,
    scoring: str = "mean",
    level: int | None = None,
) -> BlockState:
    """Level k: join the children's states and agglomerate the parent block with the frozen rule.

    Args:
        children: the states of the child blocks (any number, empty ones included).
        crossing: the raw fragment edges between different children (across their shared faces); both endpoints
            must be boundary members of the children.
        boundary: the parent's fragments with an edge leaving the parent (empty at the root).
        scoring: as for the children.
        level: recorded in the state (default: one above the highest child).
    """
    quantile = _scoring(scoring, crossing.histogram_bins if len(crossing) else None)
    bins = _bins(children, quantile, crossing)
    for child in children:
        if child.quantile != quantile:
            raise AgglomerationError(f"a child state was agglomerated with another scoring than {scoring!r}")
    ids = np.sort(np.concatenate([c.cluster_ids for c in children]) if children else np.zeros(0, _U64))
    if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
        raise AgglomerationError(f"cluster {ids[1:][ids[1:] == ids[:-1]][0]} is frozen in two child states")
    member_ids = np.concatenate([c.member_ids for c in children]) if children else np.zeros(0, _U64)
    member_child = np.repeat(np.arange(len(children)), [len(c.member_ids) for c in children])
    order = np.argsort(member_ids, kind="stable")
    member_ids, member_child = member_ids[order], member_child[order]
    if len(member_ids) > 1 and np.any(member_ids[1:] == member_ids[:-1]):
        raise AgglomerationError(f"fragment {member_ids[1:][member_ids[1:] == member_ids[:-1]][0]} is in two blocks")
    if len(crossing) and np.any(crossing.u >= crossing.v):
        raise ValueError("crossing edge rows need u < v")
    if quantile < 0 and np.any(crossing.count == 0):
        raise ValueError("mean scoring needs count >= 1 on every edge (a mean of no voxel pairs is undefined)")
    # boundary members are frozen singletons, named by their own id; a crossing edge joins two children
    child_u = member_child[
        _positions(member_ids, crossing.u, "crossing edge endpoint", "the children's boundary members")
    ]
    child_v = member_child[
        _positions(member_ids, crossing.v, "crossing edge endpoint", "the children's boundary members")
    ]
    if np.any(child_u == child_v):
        i = int(np.flatnonzero(child_u == child_v)[0])
        raise AgglomerationError(f"crossing edge ({crossing.u[i]}, {crossing.v[i]}) lies inside one child block")
    boundary = np.unique(np.asarray(boundary, _U64))
    _positions(member_ids, boundary, "boundary fragment", "the children's boundary members")
    # the children's deferred edges and the crossing fragment edges, parallel edges added
    crossing_histogram = crossing.histogram.astype(_U64) if quantile >= 0 else np.zeros((len(crossing), 0), _U64)
    a = np.concatenate([crossing.u] + [c.edge_u for c in children])
    b = np.concatenate([crossing.v] + [c.edge_v for c in children])
    quantised_sum = np.concatenate([crossing.quantised_sum] + [c.edge_quantised_sum for c in children])
    count = np.concatenate([crossing.count] + [c.edge_count for c in children])
    stitched = np.concatenate(
        [(2 * crossing.linked > crossing.count).astype(_U64)] + [c.edge_stitched for c in children]
    )
    histogram = np.concatenate([crossing_histogram] + [c.edge_histogram for c in children]).reshape(len(a), bins)
    u = _positions(ids, a, "an edge's cluster", "the children's frozen clusters")
    v = _positions(ids, b, "an edge's cluster", "the children's frozen clusters")
    u, v, quantised_sum, count, stitched, histogram = _combine(u, v, quantised_sum, count, stitched, histogram)
    frozen = np.zeros(len(ids), np.bool_)
    frozen[_positions(ids, boundary, "boundary fragment", "the children's frozen clusters")] = True
    if level is None:
        level = max((c.level for c in children), default=-1) + 1
    return _run(level, quantile, bins, ids, u, v, quantised_sum, count, stitched, histogram, frozen, boundary)


def finish(children: Sequence[BlockState], crossing: EdgeTable, scoring: str = "mean") -> BlockState:
    """Agglomerate the residual of ``children`` (the states of a level) to the end in one process: a parent without
    boundary. The result has no frozen clusters and no deferred edges."""
    return parent_state(children, crossing, np.zeros(0, _U64), scoring)


def _load_arrays(file, names: list[str]) -> dict:
    """The arrays ``names`` of a state file written by :meth:`BlockState.save` (read one by one: a reader that needs
    some of them never decompresses the others); a file of another format or without them is an
    :class:`~affcons.errors.AgglomerationError` naming it."""
    try:
        with np.load(file, allow_pickle=False) as data:
            if "format" not in data.files or int(data["format"]) != STATE_FORMAT:
                found = data["format"] if "format" in data.files else None
                raise AgglomerationError(f"{file}: block state format {found}, this affcons reads {STATE_FORMAT}")
            missing = [name for name in names if name not in data.files]
            if missing:
                raise AgglomerationError(f"{file}: block state lacks {', '.join(missing)}")
            return {name: data[name] for name in names}
    except AgglomerationError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise AgglomerationError(f"{file}: not a readable block state: {error}") from None


def merge_tree_from_states(states: Sequence[BlockMerges], node_ids: np.ndarray, scoring: str = "mean") -> MergeTree:
    """The merge tree of all merges of ``states`` (every block of every level, root included), over all fragment
    ``node_ids``: the canonical global tree (``build_merge_tree(order="canonical")``), byte for byte."""
    quantile = parse_scoring(scoring)
    ids = np.unique(np.asarray(node_ids, _U64))
    bins = {s.histogram_bins for s in states}
    if any(s.quantile != quantile for s in states) or len(bins) > 1:
        raise AgglomerationError(f"block states differ in scoring (expected {scoring!r}) or histogram bins")
    lo = np.concatenate([s.merge_lo for s in states]) if states else np.zeros(0, _U64)
    hi = np.concatenate([s.merge_hi for s in states]) if states else np.zeros(0, _U64)
    num = np.concatenate([s.merge_num for s in states]) if states else np.zeros(0, _U64)
    den = np.concatenate([s.merge_den for s in states]) if states else np.zeros(0, _U64)
    stitched = np.concatenate([s.merge_stitched for s in states]) if states else np.zeros(0, np.bool_)
    if len(hi) and len(np.unique(hi)) != len(hi):
        raise AgglomerationError("a cluster is absorbed twice: the states overlap (a block counted twice?)")
    if np.any(den == 0):
        raise AgglomerationError("a merge key has denominator 0")
    use_approx = bool(len(num) == 0 or (int(num.max()) < EXACT_FLOAT_LIMIT and int(den.max()) < EXACT_FLOAT_LIMIT))
    order = argsort_keys(stitched, num, den, lo, hi, use_approx)
    kept = _positions(ids, lo[order], "a merged cluster", "node_ids")
    absorbed = _positions(ids, hi[order], "a merged cluster", "node_ids")
    score = merge_scores(num[order], den[order], stitched[order], quantile, bins.pop() if bins else 0)
    return MergeTree(ids, kept, absorbed, score, score.copy())


def hierarchical_merge_tree(
    edges: EdgeTable,
    node_ids: np.ndarray,
    cells: np.ndarray,
    scoring: str = "mean",
    stop_level: int | None = None,
) -> tuple[MergeTree, list[dict]]:
    """The canonical merge tree computed level by level over an octree of blocks, in memory.

    Args:
        edges: the combined RAG of the whole volume.
        node_ids: all fragment ids (uint64[N]).
        cells: int[N, 3], the level-0 block (z, y, x grid coordinates) of each fragment of ``node_ids``. A
            level-k block is the set of cells with equal ``cells >> k``.
        scoring: ``"mean"`` or ``"quantileQ"``.
        stop_level: finish the residual of level ``stop_level - 1`` in one process at that level (0: one block for
            everything); default: run up to the root (the level where one block covers the grid).

    Returns the tree and, per level, ``{"level", "blocks", "merges", "frozen_clusters", "members",
    "deferred_edges", "bytes", "max_block_bytes"}`` summed over the level's blocks.
    """
    ids = np.asarray(node_ids, _U64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    cells = np.asarray(cells, np.int64).reshape(-1, 3)[order]
    if len(cells) != len(ids) or (len(cells) and cells.min() < 0):
        raise ValueError("cells must hold one non-negative (z, y, x) block coordinate per node id")
    if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
        raise ValueError("node_ids holds an id twice")
    cell_u = cells[_positions(ids, edges.u, "an edge endpoint", "node_ids")]
    cell_v = cells[_positions(ids, edges.v, "an edge endpoint", "node_ids")]
    depth = 0
    extent = int(cells.max(initial=0)) + 1
    while (1 << depth) < extent:
        depth += 1
    last = depth if stop_level is None else min(stop_level, depth)
    report = []
    if last == 0:
        state = block_state(ids, edges, np.zeros(0, _U64), scoring)
        report.append(_level_report(0, [state]))
        return merge_tree_from_states([state], ids, scoring), report
    all_states = []
    states = {}
    for cell in itertools.product(*(range(n) for n in cells.max(axis=0, initial=0) + 1)):  # empty blocks too
        inside = np.all(cells == cell, axis=1)
        internal = np.all(cell_u == cell, axis=1) & np.all(cell_v == cell, axis=1)
        leaving = np.all(cell_u == cell, axis=1) != np.all(cell_v == cell, axis=1)
        boundary = np.union1d(
            edges.u[leaving & np.all(cell_u == cell, axis=1)], edges.v[leaving & np.all(cell_v == cell, axis=1)]
        )
        states[cell] = block_state(ids[inside], edges.rows(internal), boundary, scoring)
    report.append(_level_report(0, list(states.values())))
    all_states.extend(states.values())
    for level in range(1, last + 1):
        child_u, child_v = cell_u >> (level - 1), cell_v >> (level - 1)
        between_children = np.any(child_u != child_v, axis=1)
        if level == last and (stop_level is not None or level == depth):
            residual = finish(list(states.values()), edges.rows(between_children), scoring)
            report.append(_level_report(level, [residual]))
            all_states.append(residual)
            break
        parent_u, parent_v = cell_u >> level, cell_v >> level
        parents = {}
        for key, child in states.items():
            parents.setdefault(tuple(np.asarray(key) >> 1), []).append(child)
        states = {}
        for parent, children in parents.items():
            in_u = np.all(parent_u == parent, axis=1)
            in_v = np.all(parent_v == parent, axis=1)
            crossing = between_children & in_u & in_v
            boundary = np.union1d(edges.u[in_u & ~in_v], edges.v[in_v & ~in_u])
            states[parent] = parent_state(children, edges.rows(crossing), boundary, scoring, level)
        report.append(_level_report(level, list(states.values())))
        all_states.extend(states.values())
    return merge_tree_from_states(all_states, ids, scoring), report


def block_state_from_store(store, grid_shape, begin, end, scoring: str = "mean", counts=None) -> BlockState:
    """Level 0 for the box ``[begin, end)`` of the fragment-block grid ``grid_shape``, read from a
    :class:`~affcons.store.RagStore` whose nodes and edges were written under C-order grid indices: the box's
    nodes, the edges between them, and the boundary from the edges across the box's faces. ``counts`` (a dict, if
    given) receives ``block_edges`` and ``leaving_edges`` (the edges across the box's faces), the memory model's
    inputs."""
    blocks = _box_blocks(grid_shape, begin, end)
    nodes = store.read_block_nodes(blocks)
    outer, _ = face_pairs(grid_shape, begin, end)
    leaving = store.read_face_edges(outer)
    boundary = np.intersect1d(np.union1d(leaving.u, leaving.v), nodes.ids)
    edges = store.read_block_edges(blocks)
    if counts is not None:
        counts.update(block_edges=len(edges), leaving_edges=len(leaving))
    return block_state(nodes.ids, edges, boundary, scoring)


def parent_state_from_store(
    store,
    grid_shape,
    begin,
    end,
    child_shape,
    children: Sequence[BlockState],
    scoring: str = "mean",
    level=None,
    counts=None,
) -> BlockState:
    """Level k for the box ``[begin, end)`` whose children are its cells of ``child_shape`` blocks per axis (their
    states in ``children``): reads only the edges across the children's shared faces and across the box's faces.
    The box of the whole grid has no boundary: it is the root, or the one-process finish of a stop level.
    ``counts`` (a dict, if given) receives ``crossing_edges`` (across the children's shared faces) and
    ``leaving_edges`` (across the box's faces)."""
    outer, inner = face_pairs(grid_shape, begin, end, child_shape)
    leaving = store.read_face_edges(outer)
    members = np.concatenate([c.member_ids for c in children]) if children else np.zeros(0, _U64)
    boundary = np.intersect1d(np.union1d(leaving.u, leaving.v), members)
    crossing = store.read_face_edges(inner)
    if counts is not None:
        counts.update(crossing_edges=len(crossing), leaving_edges=len(leaving))
    return parent_state(children, crossing, boundary, scoring, level)


def face_pairs(grid_shape, begin, end, cell=None) -> tuple[np.ndarray, np.ndarray]:
    """Face-adjacent pairs of blocks of a grid around and inside the box ``[begin, end)`` (grid coordinates per
    axis), as linear C-order block indices (``(z * ny + y) * nx + x``, the blockwise grid index).

    Returns ``(outer, inner)``, int64[P, 2] each: ``outer`` pairs (block inside the box, block outside it) across
    the box's faces, clipped to the grid -- the faces edges leave the box through; ``inner`` pairs of blocks inside
    the box that lie in different cells of the partition of the box into cells of ``cell`` blocks per axis (an int
    or one per axis, aligned at ``begin``; default: no partition, no pairs) -- the faces between a parent's
    children.
    """
    shape = np.asarray(grid_shape, np.int64)
    begin = np.maximum(np.asarray(begin, np.int64), 0)
    end = np.minimum(np.asarray(end, np.int64), shape)
    outer, inner = [], []
    for axis in range(3):
        others = [np.arange(begin[a], end[a]) if a != axis else None for a in range(3)]
        planes = []  # (low side coordinate along axis, list to append to)
        if begin[axis] > 0:
            planes.append((begin[axis] - 1, outer, True))
        if end[axis] < shape[axis]:
            planes.append((end[axis] - 1, outer, False))
        if cell is not None:
            step = int(np.broadcast_to(np.asarray(cell, np.int64), (3,))[axis])
            planes += [(c - 1, inner, False) for c in range(begin[axis] + step, end[axis], step)]
        for low, target, inside_is_high in planes:
            grids = np.meshgrid(*[np.array([low]) if a == axis else others[a] for a in range(3)], indexing="ij")
            low_index = np.ravel_multi_index(tuple(g.ravel() for g in grids), tuple(shape))
            high_index = low_index + int(np.prod(shape[axis + 1 :]))
            pair = (high_index, low_index) if inside_is_high else (low_index, high_index)
            target.append(np.stack(pair, axis=1))
    empty = np.zeros((0, 2), np.int64)
    return (np.concatenate(outer) if outer else empty, np.concatenate(inner) if inner else empty)


def level_bytes_per_edge(histogram_bins: int, quantile: bool) -> int:
    """Upper bound of the peak bytes per edge of the graph a block agglomerates (its own edges at level 0; its
    children's deferred edges plus the crossing edges above), beyond the inputs: the joined statistics (endpoints,
    quantised sum, count, stitched: 5 x 8 B; int64 histogram), node-index endpoints (2 x int64), the combined
    copy and its sort order (6 x 8 B; histogram), the canonical loop (see
    :func:`affcons.segment.canonical.canonical_bytes_per_edge`) and the state it writes (at most every edge
    deferred: 5 x 8 B; int64 histogram before narrowing). Inputs: a crossing edge costs
    ``EdgeTable.bytes_per_edge`` and a deferred edge of a child state 5 x 8 B plus 4 B per bin; a frozen cluster
    16 B."""
    bins = histogram_bins if quantile else 0
    joined = 5 * 8 + 8 * bins
    combined = 6 * 8 + 8 * bins
    loop = 2 * 8 + 3 + 2 * 8 + 4 * 8 + 5 * 8 + (2 * 8 if quantile else 0)
    state = 5 * 8 + 8 * bins
    return joined + 2 * 8 + combined + loop + state


# ------------------------------------------------------------------------------------------------------ helpers


def _box_blocks(grid_shape, begin, end) -> np.ndarray:
    """C-order grid indices of the blocks in the box ``[begin, end)`` (clipped to the grid)."""
    shape = tuple(int(n) for n in grid_shape)
    ranges = [np.arange(max(int(b), 0), min(int(e), n)) for b, e, n in zip(begin, end, shape)]
    grids = np.meshgrid(*ranges, indexing="ij")
    return np.ravel_multi_index(tuple(g.ravel() for g in grids), shape).astype(np.int64)


def _scoring(scoring: str, histogram_bins: int | None) -> int:
    quantile = parse_scoring(scoring)
    if quantile >= 0 and histogram_bins == 0:
        raise ConfigError(f"scoring {scoring!r} needs edge histograms; compute the RAG with histogram_bins > 0")
    return quantile


def _bins(children: Sequence[BlockState], quantile: int, crossing: EdgeTable) -> int:
    """The histogram width the parent works with: 0 for mean scoring, else the children's and crossing edges'."""
    if quantile < 0:
        return 0
    widths = {c.histogram_bins for c in children} | (
        {crossing.histogram_bins} if len(crossing) or not children else set()
    )
    if len(widths) != 1:
        raise AgglomerationError(f"child states and crossing edges differ in histogram bins: {sorted(widths)}")
    return widths.pop()


def _positions(ids: np.ndarray, values: np.ndarray, what: str, where: str) -> np.ndarray:
    """int64 positions of ``values`` in the sorted ``ids``; a value not there is an AgglomerationError."""
    values = np.asarray(values, _U64)
    found = np.searchsorted(ids, values)
    inside = found < len(ids)
    missing = ~inside
    missing[inside] = ids[found[inside]] != values[inside]
    if missing.any():
        raise AgglomerationError(f"{what} {values[missing][0]} is not among {where}")
    return found.astype(np.int64)


def _combine(u, v, *columns):
    """Rows sorted by (u, v) with the columns of equal (u, v) added."""
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    if len(u) == 0:
        return (u, v) + tuple(c[order] for c in columns)
    starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
    added = []
    for column in columns:
        column = column[order]
        if column.ndim == 2 and column.shape[1] == 0:
            added.append(column[starts])
        else:
            added.append(np.add.reduceat(column, starts, axis=0))
    return (u[starts], v[starts]) + tuple(added)


def _run(level, quantile, bins, ids, u, v, quantised_sum, count, stitched, histogram, frozen, boundary):
    """Run the canonical loop with the frozen rule over nodes ``ids`` on edges sorted by (u, v) (unique), whose
    statistic arrays it may modify, and package the state."""
    histogram = np.ascontiguousarray(histogram, np.int64)
    lo, hi, num, den, is_stitch, deferred, ends = canonical_merge_loop(
        len(ids),
        u,
        v,
        quantised_sum,
        count,
        stitched,
        histogram,
        quantile,
        frozen,
        fits_float_shortcut(quantised_sum, count),
    )
    clusters = np.flatnonzero(frozen)
    edge_u = ids[np.minimum(ends[deferred, 0], ends[deferred, 1])]
    edge_v = ids[np.maximum(ends[deferred, 0], ends[deferred, 1])]
    edge_order = np.lexsort((edge_v, edge_u))
    return BlockState(
        level=int(level),
        quantile=int(quantile),
        histogram_bins=int(bins),
        merge_lo=ids[lo],
        merge_hi=ids[hi],
        merge_num=num,
        merge_den=den,
        merge_stitched=is_stitch,
        cluster_ids=ids[clusters],
        member_ids=boundary,
        edge_u=edge_u[edge_order],
        edge_v=edge_v[edge_order],
        edge_quantised_sum=quantised_sum[deferred][edge_order],
        edge_count=count[deferred][edge_order],
        edge_stitched=stitched[deferred][edge_order],
        edge_histogram=_narrow(histogram[deferred][edge_order].reshape(len(edge_u), bins)),
    )


def _narrow(histogram: np.ndarray) -> np.ndarray:
    """int64 counts as uint32 when every one fits (they nearly always do), else uint64."""
    fits = histogram.size == 0 or int(histogram.max()) <= np.iinfo(np.uint32).max
    return histogram.astype(np.uint32 if fits else _U64)


def _level_report(level: int, states: list[BlockState]) -> dict:
    sizes = [s.sizes() for s in states]
    report = {"level": level, "blocks": len(states)}
    for key in ("merges", "frozen_clusters", "members", "deferred_edges", "bytes"):
        report[key] = sum(s[key] for s in sizes)
    report["max_block_bytes"] = max((s["bytes"] for s in sizes), default=0)
    return report
