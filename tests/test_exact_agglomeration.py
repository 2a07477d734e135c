"""The canonical exact linkage and the hierarchical (frozen-boundary) agglomeration that reproduces it block by block.

Expected values come from independent derivations: a brute-force canonical agglomeration in plain Python
(``Fraction`` keys, recomputed from the fragment edges after every merge) for the loop itself, and the global
canonical tree for the hierarchical runs. Random RAGs have many tied scores (per-pair affinities from a small set),
fragments sit in cells of a block grid and edges join fragments of the same or face-adjacent cells, like a blockwise
RAG.
"""

import dataclasses
import io
import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affcons.affinities import affinities_to_float, affinities_to_uint8
from affcons.errors import AgglomerationError
from affcons.segment import (
    QUANTILE_BINS,
    EdgeTable,
    build_merge_tree,
    edge_table,
    node_table,
    watershed_from_affinities,
)
from affcons.segment.canonical import _erase, _find, _home, compare_fractions, key_before, quantile_bin
from affcons.segment.hierarchy import (
    BlockState,
    block_state,
    block_state_from_store,
    face_pairs,
    finish,
    hierarchical_merge_tree,
    merge_tree_from_states,
    parent_state,
    parent_state_from_store,
)
from affcons.store import open_store
from affcons.synthetic import degraded_affinities
from blockwise.testing import load_labels
from tests.test_stitch import cut_into_blocks

BINS = 4
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------- random RAGs


def random_rag(
    seed: int, grid, per_cell: int, density: float, values, stitch: float, face_only: bool = True
) -> tuple[EdgeTable, np.ndarray, np.ndarray]:
    """Fragments in cells of ``grid`` (0..per_cell each, shuffled ids with gaps), edges between fragments of the
    same or face-adjacent cells with probability ``density``; each voxel pair's uint8 affinity drawn from ``values``
    (few values: many tied means and quantiles); a fraction ``stitch`` of the edges stitched. Returns (edges,
    node_ids, cells)."""
    rng = np.random.default_rng(seed)
    cells = [c for c in itertools.product(*(range(n) for n in grid)) for _ in range(rng.integers(0, per_cell + 1))]
    cells = np.array(cells, np.int64).reshape(-1, 3)
    ids = np.sort(rng.choice(np.arange(1, 40 * len(cells) + 2), len(cells), replace=False)).astype(np.uint64)
    ids = rng.permutation(ids)  # ids do not follow the cell order
    rows = []
    for i, j in itertools.combinations(range(len(ids)), 2):
        distance = np.abs(cells[i] - cells[j]).sum()
        if (face_only and distance > 1) or rng.random() >= density:
            continue
        pairs = rng.choice(values, rng.integers(1, 4))
        histogram = np.bincount(pairs.astype(np.int64) * BINS // 256, minlength=BINS)
        count = len(pairs)
        linked = count if rng.random() < stitch else 0
        u, v = sorted((ids[i], ids[j]))
        rows.append((u, v, pairs.sum() / 255.0, count, histogram, linked, pairs.sum()))
    if not rows:
        return EdgeTable.empty(BINS), ids, cells
    u, v, total, count, histogram, linked, quantised = zip(*rows)
    edges = EdgeTable(u, v, total, count, np.array(histogram), linked, np.array(quantised, np.uint64))
    return edges.combine(), ids, cells


rag_parameters = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "grid": st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
        "per_cell": st.integers(0, 3),
        "density": st.sampled_from([0.3, 0.7, 1.0]),
        "values": st.sampled_from([[255], [0, 255], [51, 204], [0, 85, 170, 255], list(range(0, 256, 15))]),
        "stitch": st.sampled_from([0.0, 0.0, 0.15]),
    }
)


# ------------------------------------------------------------------------------------- brute-force reference


def exact_affinity(stats, quantile: int) -> Fraction:
    """Mean (quantised sum / count) or the histogram bin at rank ``quantile * total // 100 + 1`` (last if never
    reached) of cluster-pair statistics [quantised sum, count, histogram, stitched edges]."""
    if quantile < 0:
        return Fraction(stats[0], stats[1])
    pivot, cumulative = quantile * int(stats[2].sum()) // 100 + 1, 0
    for b, n in enumerate(stats[2]):
        cumulative += int(n)
        if cumulative >= pivot:
            return Fraction(b)
    return Fraction(len(stats[2]) - 1)


def brute_force(edges: EdgeTable, node_ids, quantile: int) -> list[tuple]:
    """The canonical merges by definition: after every merge, recompute every cluster pair's statistics from the
    fragment edges; merge the pair with the smallest key (stitched first, then larger exact affinity, then larger
    (lo, hi) of smallest fragment ids). Returns [(lo, hi, stitched, affinity Fraction or None)]."""
    cluster = {int(i): int(i) for i in node_ids}
    merges = []
    while True:
        pairs = {}
        for u, v, quantised, count, histogram, linked in zip(
            edges.u, edges.v, edges.quantised_sum, edges.count, edges.histogram, edges.linked
        ):
            a, b = sorted((cluster[int(u)], cluster[int(v)]))
            if a == b:
                continue
            total = pairs.setdefault((a, b), [0, 0, np.zeros(edges.histogram_bins, np.int64), 0])
            total[0] += int(quantised)
            total[1] += int(count)
            total[2] += histogram
            total[3] += int(2 * linked > count)
        if not pairs:
            return merges
        keys = {
            pair: (0, 0, -pair[0], -pair[1]) if stats[3] else (1, -exact_affinity(stats, quantile), -pair[0], -pair[1])
            for pair, stats in pairs.items()
        }
        lo, hi = min(keys, key=keys.get)
        stitched = bool(pairs[(lo, hi)][3])
        merges.append((lo, hi, stitched, None if stitched else exact_affinity(pairs[(lo, hi)], quantile)))
        for fragment, c in cluster.items():
            if c == hi:
                cluster[fragment] = lo


def expected_scores(merges, quantile: int) -> np.ndarray:
    """float32 scores by definition: 1 - mean affinity (0..255 -> 0..1) or 1 - bin centre; -inf for stitches."""
    scores = []
    for _, _, stitched, affinity in merges:
        if stitched:
            scores.append(-np.inf)
        elif quantile < 0:
            scores.append(np.float32(1.0) - np.float32(affinity.numerator / (255.0 * affinity.denominator)))
        else:
            scores.append(np.float32(1.0) - np.float32((float(affinity) + 0.5) / BINS))
    return np.array(scores, np.float32)


# ---------------------------------------------------------------------------------------------- comparisons


def thresholds_of(tree) -> np.ndarray:
    """Every threshold at which a cut can change, and its float32 neighbours, plus -inf, 0, 1, +inf."""
    scores = np.unique(tree.score[np.isfinite(tree.score)])
    return np.unique(
        np.concatenate(
            [
                scores,
                np.nextafter(scores, np.float32(np.inf)),
                np.nextafter(scores, np.float32(-np.inf)),
                np.float32([-np.inf, 0.0, 1.0, np.inf]),
            ]
        )
    )


def assert_same_tree(actual, expected) -> None:
    for name in ("ids", "kept", "absorbed", "score", "level"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype and np.array_equal(a, e), name
    for threshold in thresholds_of(expected):
        assert actual.lookup(threshold).tobytes() == expected.lookup(threshold).tobytes(), threshold


# --------------------------------------------------------------------------------------- the canonical loop


@pytest.mark.parametrize("scoring", ["mean", "quantile50", "quantile0", "quantile100"])
@SETTINGS
@given(parameters=rag_parameters)
def test_canonical_tree_equals_brute_force(scoring, parameters):
    parameters["grid"] = (min(parameters["grid"][0], 3), min(parameters["grid"][1], 2), 1)  # small: brute force
    edges, ids, _ = random_rag(**parameters)
    quantile = -1 if scoring == "mean" else int(scoring[8:])
    tree = build_merge_tree(edges, scoring, node_ids=ids)
    merges = brute_force(edges, ids, quantile)
    lookup = {int(i): k for k, i in enumerate(tree.ids)}
    assert [(int(tree.ids[k]), int(tree.ids[a])) for k, a in zip(tree.kept, tree.absorbed)] == [
        (lo, hi) for lo, hi, _, _ in merges
    ]
    assert np.array_equal(tree.score, expected_scores(merges, quantile))
    assert np.array_equal(tree.level, tree.score)
    assert all(lookup[lo] < lookup[hi] for lo, hi, _, _ in merges)


def test_canonical_levels_never_decrease_and_stitches_come_first():
    edges, ids, _ = random_rag(7, (3, 3, 3), 3, 1.0, [0, 85, 170, 255], 0.2)
    tree = build_merge_tree(edges, "mean", node_ids=ids)
    assert np.all(tree.level[1:] >= tree.level[:-1])
    assert 0 < tree.num_stitches < len(tree)
    assert np.all(np.isneginf(tree.level[: tree.num_stitches]))


def test_threshold_equal_to_an_edge_score_excludes_that_merge():
    # 1-2: all affinities 255 (score 0); 2-3: 204 and 51 -> mean 127.5/255 = 0.5 exactly (score 0.5); 3-4: 51
    edges = EdgeTable([1, 2, 3], [2, 3, 4], [1.0, 1.0, 0.2], [1, 2, 1], np.zeros((3, 0)), None, [255, 255, 51])
    tree = build_merge_tree(edges, "mean")
    assert tree.score.tolist() == [0.0, 0.5, np.float32(1) - np.float32(51 / 255)]
    assert tree.lookup(0.0).tolist() == [1, 2, 3, 4]
    assert tree.lookup(np.nextafter(np.float32(0), np.float32(1))).tolist() == [1, 1, 3, 4]
    assert tree.lookup(0.5).tolist() == [1, 1, 3, 4]
    assert tree.lookup(np.nextafter(np.float32(0.5), np.float32(1))).tolist() == [1, 1, 1, 4]


def test_compare_fractions_is_exact_near_2_64():
    rng = np.random.default_rng(0)
    limit = 2**64 - 1
    for _ in range(2000):
        a, c = (int(x) for x in rng.integers(0, limit, 2, dtype=np.uint64, endpoint=True))
        b, d = (int(x) for x in rng.integers(1, limit, 2, dtype=np.uint64, endpoint=True))
        if rng.random() < 0.3:  # equal fractions and off-by-one numerators, where float64 cannot decide
            c, d = a, b
            c = max(c + int(rng.integers(-1, 2)), 0)
        expected = (Fraction(a, b) > Fraction(c, d)) - (Fraction(a, b) < Fraction(c, d))
        assert compare_fractions(np.uint64(a), np.uint64(b), np.uint64(c), np.uint64(d)) == expected


def test_quantile_bin_matches_its_definition():
    rng = np.random.default_rng(1)
    histograms = rng.integers(0, 4, (200, BINS))
    for quantile in (0, 10, 50, 90, 100):
        for row, histogram in enumerate(histograms):
            pivot = quantile * histogram.sum() // 100 + 1
            expected = next((b for b in range(BINS) if histogram[: b + 1].sum() >= pivot), BINS - 1)
            assert quantile_bin(histograms, row, quantile) == expected


def key(stats, lo, hi, quantile):
    """(class, num, den, approx, lo, hi) of an edge with statistics (quantised sum, count, histogram, stitched)."""
    if stats[3]:
        return (0, 0, 1, 0.0, lo, hi)
    if quantile < 0:
        return (1, stats[0], stats[1], stats[0] / stats[1], lo, hi)
    histogram = np.asarray(stats[2]).reshape(1, -1)
    b = quantile_bin(histogram, 0, quantile)
    return (1, b, 1, float(b), lo, hi)


def score_fraction(stats, quantile):
    k = key(stats, 0, 0, quantile)
    return Fraction(k[1], k[2])


@pytest.mark.parametrize("quantile", [-1, 0, 25, 50, 75, 100])
def test_reducibility_union_lies_between_its_parts(quantile):
    """score(X u Y, Z) lies between score(X, Z) and score(Y, Z); with the tie-break, the key of (X u Y, Z) is never
    below the smaller of the parts' keys (a missing part edge counts as +inf)."""
    rng = np.random.default_rng(2 + quantile)
    for _ in range(3000):
        parts = []
        for _ in range(2):
            histogram = rng.integers(0, 3, BINS)
            histogram[rng.integers(0, BINS)] += 1
            count = int(histogram.sum())
            parts.append((int(rng.integers(0, 255 * count + 1)), count, histogram, int(rng.random() < 0.1)))
        union = tuple(parts[0][i] + parts[1][i] for i in range(4))
        low, high = sorted(score_fraction(p, quantile) for p in parts)
        assert low <= score_fraction(union, quantile) <= high
        # tie-break: clusters X (smallest id x) and Z, W (z, w); Z u W is named min(z, w)
        x, z, w = (int(i) for i in rng.choice(50, 3, replace=False))
        with_z = key(parts[0], min(x, z), max(x, z), quantile)
        with_w = key(parts[1], min(x, w), max(x, w), quantile)
        merged = min(z, w)
        for union_stats, candidates in ((union, (with_z, with_w)), (parts[0], (with_z,))):  # W-X edge missing
            joined = key(union_stats, min(x, merged), max(x, merged), quantile)
            smallest = candidates[0]
            if len(candidates) == 2 and key_before(*candidates[1], *candidates[0], True):
                smallest = candidates[1]
            assert not key_before(*joined, *smallest, False)


# ------------------------------------------------------------------------------------ hierarchical == global


def global_and_hierarchical(edges, ids, cells, scoring, stop_level=None):
    expected = build_merge_tree(edges, scoring, node_ids=ids)
    actual, report = hierarchical_merge_tree(edges, ids, cells, scoring, stop_level)
    assert report[-1]["frozen_clusters"] == 0 and report[-1]["deferred_edges"] == 0
    assert sum(level["merges"] for level in report) == len(expected)
    return actual, expected, report


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
@SETTINGS
@given(parameters=rag_parameters, stop=st.sampled_from([None, 0, 1, 2]))
def test_hierarchical_tree_equals_global_canonical_tree(scoring, parameters, stop):
    edges, ids, cells = random_rag(**parameters)
    actual, expected, _ = global_and_hierarchical(edges, ids, cells, scoring, stop)
    assert_same_tree(actual, expected)


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
@settings(max_examples=20, deadline=None)
@given(parameters=rag_parameters)
def test_hierarchical_tree_equals_global_for_edges_between_any_blocks(scoring, parameters):
    """The algorithm needs no face adjacency: edges may join any two blocks (only the reads need it)."""
    edges, ids, cells = random_rag(**parameters, face_only=False)
    actual, expected, _ = global_and_hierarchical(edges, ids, cells, scoring)
    assert_same_tree(actual, expected)


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
@pytest.mark.parametrize("stop", [None, 1, 2])
def test_all_tie_plateau(scoring, stop):
    """Every edge has the same statistics: the tie-break alone orders the whole graph."""
    edges, ids, cells = random_rag(3, (4, 4, 4), 2, 1.0, [170], 0.0)
    assert len(np.unique(edges.quantised_sum / edges.count)) == 1
    actual, expected, _ = global_and_hierarchical(edges, ids, cells, scoring, stop)
    assert_same_tree(actual, expected)
    assert len(np.unique(expected.lookup(1.0))) == 1  # one segment in the end, through every block


def snake(grid) -> np.ndarray:
    """The cells of ``grid`` (int[n, 3]) in an order where consecutive cells share a face."""
    path = [()]
    for size in grid:
        path = [p + (i,) for k, p in enumerate(path) for i in (range(size) if k % 2 == 0 else reversed(range(size)))]
    return np.array(path)


def chain_edges(ids, values, counts) -> EdgeTable:
    """Edges ids[i] - ids[i+1] whose voxel pairs all have affinity ``values[i]`` (uint8), ``counts[i]`` pairs."""
    histogram = np.zeros((len(values), BINS), np.uint32)
    histogram[np.arange(len(values)), np.asarray(values) * BINS // 256] = counts
    u, v = np.minimum(ids[:-1], ids[1:]), np.maximum(ids[:-1], ids[1:])
    return EdgeTable(u, v, values * counts / 255, counts, histogram, None, values * counts)


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
def test_chain_crossing_every_block(scoring):
    """A chain of fragments through every cell of a 4 x 4 x 4 grid, tied and untied links along it."""
    rng = np.random.default_rng(4)
    cells = snake((4, 4, 4))
    ids = rng.permutation(np.arange(1, len(cells) + 1) * 3).astype(np.uint64)
    edges = chain_edges(ids, rng.choice([128, 200, 200, 255], len(ids) - 1), rng.integers(1, 3, len(ids) - 1))
    for stop in (None, 1, 2):
        actual, expected, report = global_and_hierarchical(edges.combine(), ids, cells, scoring, stop)
        assert_same_tree(actual, expected)
    assert report[0]["blocks"] == 64 and report[0]["merges"] == 0  # every fragment touches its block's boundary
    assert len(np.unique(expected.lookup(1.0))) == 1


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
def test_one_segment_touching_every_block(scoring):
    """A spine of strong (255) edges through one fragment of every cell, among weaker random edges: at 0.5 the
    spine is one segment spanning every block."""
    edges, ids, cells = random_rag(5, (4, 3, 3), 2, 0.8, [0, 60, 120], 0.0)
    spine_cells = snake((4, 3, 3))
    spine = np.arange(1, len(spine_cells) + 1, dtype=np.uint64) * 41 + 7  # interleaved with the other ids
    spine = spine[~np.isin(spine, ids)][: len(spine_cells)]
    rng = np.random.default_rng(5)
    links = [chain_edges(spine, np.full(len(spine) - 1, 255), np.ones(len(spine) - 1, np.int64))]
    for fragment, cell in zip(spine, spine_cells):  # weak edges from the spine to its cell's other fragments
        others = ids[np.all(cells == cell, axis=1)]
        if len(others):
            pair = np.array([fragment, rng.choice(others)], np.uint64)
            links.append(chain_edges(pair, np.array([60]), np.array([2])))
    edges = EdgeTable.concatenate([edges] + links, BINS).combine()
    ids, cells = np.concatenate([ids, spine]), np.concatenate([cells, spine_cells])
    for stop in (None, 1):
        actual, expected, _ = global_and_hierarchical(edges, ids, cells, scoring, stop)
        assert_same_tree(actual, expected)
    segments = expected.lookup(0.5)
    assert len(np.unique(segments[np.searchsorted(expected.ids, spine)])) == 1


@pytest.fixture(scope="module")
def gala_basins():
    labels, voxel_size = load_labels("gala")
    stored = affinities_to_uint8(degraded_affinities(labels[:, :, :100], seed=3))
    basins, _ = watershed_from_affinities(affinities_to_float(stored), voxel_size=voxel_size)
    return stored, basins


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
def test_hierarchical_tree_equals_global_on_a_blockwise_cut_of_real_data(gala_basins, scoring):
    """A watershed of gala cut into blocks (per-block fragments, face stitching), uint8 affinities: the hierarchical
    tree is the global canonical tree for two block layouts and two stop levels."""
    stored, basins = gala_basins
    bins = QUANTILE_BINS if scoring != "mean" else 0
    for block in ((25, 50, 50), (16, 32, 40)):
        fragments, links = cut_into_blocks(basins, block)
        edges = edge_table(fragments, stored, histogram_bins=bins, links=links)
        ids, first = np.unique(fragments, return_index=True)
        ids, first = ids[ids != 0], first[ids != 0]
        cells = np.stack(np.unravel_index(first, fragments.shape), axis=1) // np.array(block)
        for stop in (None, 1):
            actual, expected, _ = global_and_hierarchical(edges, ids, cells, scoring, stop)
            assert_same_tree(actual, expected)
        assert expected.num_stitches > 0


def take(edges: EdgeTable, mask: np.ndarray) -> EdgeTable:
    return EdgeTable(*(getattr(edges, f.name)[mask] for f in dataclasses.fields(edges)))


def subgraph(edges: EdgeTable, ids: np.ndarray, cells: np.ndarray, keep: np.ndarray):
    """The fragments ``ids[keep]`` and the edges between them."""
    inside = np.isin(edges.u, ids[keep]) & np.isin(edges.v, ids[keep])
    return take(edges, inside), ids[keep], cells[keep]


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
def test_empty_blocks(scoring):
    """A 4 x 4 x 4 grid with every third cell empty and two whole level-1 octants empty."""
    edges, ids, cells = random_rag(6, (4, 4, 4), 2, 0.8, [0, 100, 255], 0.1)
    empty_cell = (cells.sum(axis=1) % 3 == 0) | ((cells[:, 0] >= 2) & (cells[:, 1] < 2))
    edges, ids, cells = subgraph(edges, ids, cells, ~empty_cell)
    for stop in (None, 1, 2):
        actual, expected, report = global_and_hierarchical(edges, ids, cells, scoring, stop)
        assert_same_tree(actual, expected)
    assert report[0]["blocks"] == 64 and report[1]["blocks"] == 8


def test_states_round_trip_through_npz_without_pickle():
    edges, ids, cells = random_rag(8, (2, 2, 2), 3, 1.0, [0, 128, 255], 0.2)
    corner = np.all(cells == 0, axis=1)
    leaving = np.isin(edges.u, ids[corner]) != np.isin(edges.v, ids[corner])
    boundary = np.intersect1d(np.union1d(edges.u[leaving], edges.v[leaving]), ids[corner])
    rows, _, _ = subgraph(edges, ids, cells, corner)
    for scoring in ("mean", "quantile50"):
        state = block_state(ids[corner], rows, boundary, scoring)
        assert state.sizes()["frozen_clusters"] >= len(boundary) > 0
        buffer = io.BytesIO()
        state.save(buffer)
        buffer.seek(0)
        loaded = BlockState.load(buffer)
        for name, value in vars(state).items():
            other = getattr(loaded, name)
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and np.array_equal(value, other), name
            else:
                assert value == other, name


def test_corrupt_or_foreign_state_files_are_refused(tmp_path):
    path = tmp_path / "state.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(AgglomerationError, match="state.npz"):
        BlockState.load(path)
    np.savez(path, format=99)
    with pytest.raises(AgglomerationError, match="format 99"):
        BlockState.load(path)
    state = block_state(np.array([1, 2], np.uint64), EdgeTable([1], [2], [1.0], [1], np.zeros((1, 0))), [], "mean")
    arrays = {name: getattr(state, name) for name in vars(state)}
    arrays["merge_num"] = arrays["merge_num"].astype(np.float64)
    np.savez(path, format=1, **arrays)
    with pytest.raises(AgglomerationError, match="merge_num"):
        BlockState.load(path)


def test_inconsistent_inputs_are_refused_naming_the_fragment():
    edges = EdgeTable([1, 3], [2, 4], [1.0, 1.0], [1, 1], np.zeros((2, 0)))
    with pytest.raises(AgglomerationError, match="boundary fragment 9"):
        block_state(np.array([1, 2], np.uint64), EdgeTable.empty(), [9], "mean")
    with pytest.raises(AgglomerationError, match="edge endpoint 3"):
        block_state(np.array([1, 2], np.uint64), edges, [], "mean")
    left = block_state(np.array([1, 2], np.uint64), EdgeTable([1], [2], [1.0], [1], np.zeros((1, 0))), [2], "mean")
    right = block_state(np.array([5, 6], np.uint64), EdgeTable.empty(), [5], "mean")
    with pytest.raises(AgglomerationError, match="crossing edge endpoint 6"):
        parent_state([left, right], EdgeTable([2], [6], [1.0], [1], np.zeros((1, 0))), [], "mean")
    with pytest.raises(AgglomerationError, match="two child states"):
        parent_state([left, left], EdgeTable.empty(), [], "mean")
    both = block_state(np.array([5, 6], np.uint64), EdgeTable.empty(), [5, 6], "mean")
    with pytest.raises(AgglomerationError, match=r"crossing edge \(5, 6\) lies inside one child"):
        parent_state([left, both], EdgeTable([5], [6], [1.0], [1], np.zeros((1, 0))), [], "mean")
    root = finish([left, right], EdgeTable([2], [5], [1.0], [1], np.zeros((1, 0))), "mean")
    tree = merge_tree_from_states([left, right, root], [1, 2, 5, 6], "mean")
    assert tree.lookup(1.0).tolist() == [1, 1, 1, 6]
    with pytest.raises(AgglomerationError, match="absorbed twice"):
        merge_tree_from_states([left, right, root, root], [1, 2, 5, 6], "mean")


def test_face_pairs_are_the_face_neighbours_across_the_box_and_between_its_cells():
    grid = (3, 5, 4)
    coordinates = np.stack(np.unravel_index(np.arange(np.prod(grid)), grid), axis=1)
    for begin, end, cell in (((0, 0, 0), (2, 2, 2), 1), ((1, 2, 0), (3, 5, 4), 2), ((0, 1, 1), (3, 4, 3), (1, 2, 3))):
        inside = np.all((coordinates >= begin) & (coordinates < end), axis=1)
        part = (coordinates - np.array(begin)) // np.broadcast_to(np.array(cell), (3,))
        expected_outer, expected_inner = set(), set()
        for a, b in itertools.permutations(range(len(coordinates)), 2):
            if np.abs(coordinates[a] - coordinates[b]).sum() != 1:
                continue
            if inside[a] and not inside[b]:
                expected_outer.add((a, b))
            if inside[a] and inside[b] and a < b and np.any(part[a] != part[b]):
                expected_inner.add((a, b))
        outer, inner = face_pairs(grid, begin, end, cell)
        assert sorted(map(tuple, outer.tolist())) == sorted(expected_outer)
        assert sorted(map(tuple, inner.tolist())) == sorted(expected_inner)
    assert len(face_pairs(grid, (0, 0, 0), grid)[0]) == 0  # the whole grid: nothing leaves it


# ------------------------------------------------------------------------------- driven from a graph store


def write_blockwise_rag(store, stored, fragments, links, block) -> tuple[int, ...]:
    """Write nodes and edges per block under C-order grid indices, as the fragments and edges steps do (each edge
    by the block of its upper voxel, with one voxel of lower context). Returns the grid shape."""
    grid = tuple(-(-n // b) for n, b in zip(fragments.shape, block))
    for index, position in enumerate(itertools.product(*(range(g) for g in grid))):
        begin = [p * b for p, b in zip(position, block)]
        crop = tuple(slice(o, o + b) for o, b in zip(begin, block))
        store.write_nodes(index, node_table(fragments[crop], offset=begin))
        lower = tuple(int(o > 0) for o in begin)
        read = tuple(slice(o - c, o + b) for o, c, b in zip(begin, lower, block))
        edges = edge_table(fragments[read], stored[(slice(None),) + read], store.histogram_bins, lower, links[read])
        store.write_edges(index, edges)
    return grid


def drive_levels(store, grid, scoring, directory, stop_level=None) -> list[BlockState]:
    """The levels as separate tasks would run them: one state file per block and level, children read back from
    their files, nothing else kept between levels; the level that covers the grid (or ``stop_level``) finishes."""
    level, size = 0, 1
    while True:
        finishing = all(size >= n for n in grid) or level == stop_level
        positions = [(0, 0, 0)] if finishing else list(itertools.product(*(range(-(-n // size)) for n in grid)))
        for position in positions:
            begin = (0, 0, 0) if finishing else tuple(p * size for p in position)
            end = grid if finishing else tuple(b + size for b in begin)
            if level == 0:
                state = block_state_from_store(store, grid, begin, end, scoring)
            else:
                child = size // 2
                children = [
                    BlockState.load(directory / f"{level - 1}-{'-'.join(map(str, p))}.npz")
                    for p in itertools.product(
                        *(range(b // child, -(-min(e, n) // child)) for b, e, n in zip(begin, end, grid))
                    )
                ]
                state = parent_state_from_store(store, grid, begin, end, child, children, scoring, level)
            state.save(directory / f"{level}-{'-'.join(map(str, position))}.npz")
        if finishing:
            return [BlockState.load(path) for path in sorted(directory.glob("*.npz"))]
        level, size = level + 1, size * 2


def test_levels_driven_from_a_graph_store_equal_the_global_tree(store_url, gala_basins, tmp_path):
    """SQLite: 4 x 4 x 4 blocks, mean and quantile scoring; MongoDB (the slow protocol stand-in): 2 x 2 x 2, mean."""
    stored, basins = gala_basins
    sqlite = store_url.startswith("sqlite")
    block = (16, 32, 32) if sqlite else (25, 50, 50)
    fragments, links = cut_into_blocks(basins, block)
    for scoring in ("mean", "quantile50") if sqlite else ("mean",):
        with open_store(store_url, "w", histogram_bins=16 if scoring != "mean" else 0) as store:
            grid = write_blockwise_rag(store, stored, fragments, links, block)
            assert grid == ((4, 4, 4) if sqlite else (2, 2, 2))
            nodes, edges = store.read_nodes(), store.read_edges()
            expected = build_merge_tree(edges, scoring, node_ids=nodes.ids)
            for stop in (None, 1):
                directory = tmp_path / f"states-{scoring}-{stop}"
                directory.mkdir()
                states = drive_levels(store, grid, scoring, directory, stop)
                assert_same_tree(merge_tree_from_states(states, nodes.ids, scoring), expected)
        assert expected.num_stitches > 0


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=200), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_the_loops_pair_lookup_behaves_like_a_dict(operations, spare):
    """The merge loop's open-addressing table (linear probing, backward-shift deletion) under inserts and erasures
    in a nearly full table, where probe runs wrap around its end: it finds exactly the keys a dict holds."""
    capacity = 41 + spare  # never full: at most 41 distinct keys
    keys, values = np.full(capacity, -1, np.int64), np.empty(capacity, np.int64)
    expected = {}
    for step, (insert, key) in enumerate(operations):
        key = key * 7919  # spread over the range, collisions included
        slot = _find(keys, key)
        if insert:
            keys[slot], values[slot] = key, step
            expected[key] = step
        elif keys[slot] == key:
            _erase(keys, values, slot)
            del expected[key]
        for probe in range(0, 41 * 7919, 7919):
            slot = _find(keys, probe)
            stored = values[slot] if keys[slot] == probe else None
            assert stored == expected.get(probe), (probe, stored, expected.get(probe))
    assert np.count_nonzero(keys != -1) == len(expected)


def test_erasing_from_a_probe_run_that_wraps_around_the_tables_end_keeps_the_others_findable():
    capacity = 16
    last = [key for key in range(10_000) if _home(key, capacity) == capacity - 1][:3]  # they fill slots 15, 0, 1
    keys, values = np.full(capacity, -1, np.int64), np.empty(capacity, np.int64)
    for value, key in enumerate(last):
        slot = _find(keys, key)
        keys[slot], values[slot] = key, value
    assert [keys[capacity - 1], keys[0], keys[1]] == last
    _erase(keys, values, _find(keys, last[0]))
    for value, key in enumerate(last[1:], start=1):
        slot = _find(keys, key)
        assert keys[slot] == key and values[slot] == value
    assert np.count_nonzero(keys != -1) == 2


def test_isolated_nodes_are_the_ids_no_edge_touches():
    from blockwise.steps.agglomerate import isolated_nodes

    ids = np.array([1, 2, 3, 5, 8], np.uint64)
    edges = EdgeTable(np.array([1, 2], np.uint64), np.array([2, 5], np.uint64), [1.0, 1.0], [1, 1], np.zeros((2, 0)))
    assert isolated_nodes(ids, edges) == 2  # 3 and 8
    assert isolated_nodes(ids, EdgeTable.empty(0)) == 5


def test_the_assembly_reads_only_the_merges_of_a_state_file_and_refuses_other_formats(tmp_path):
    from affcons.segment.hierarchy import BlockMerges

    state = BlockState(
        level=1,
        quantile=-1,
        histogram_bins=0,
        merge_lo=np.array([1, 3], np.uint64),
        merge_hi=np.array([2, 4], np.uint64),
        merge_num=np.array([510, 255], np.uint64),
        merge_den=np.array([2, 1], np.uint64),
        merge_stitched=np.array([False, True]),
        cluster_ids=np.array([1], np.uint64),
        member_ids=np.array([1], np.uint64),
        edge_u=np.zeros(0, np.uint64),
        edge_v=np.zeros(0, np.uint64),
        edge_quantised_sum=np.zeros(0, np.uint64),
        edge_count=np.zeros(0, np.uint64),
        edge_stitched=np.zeros(0, np.uint64),
        edge_histogram=np.zeros((0, 0), np.uint32),
    )
    path = tmp_path / "state.npz"
    state.save(path)
    merges = BlockMerges.load(path)
    for name in ("merge_lo", "merge_hi", "merge_num", "merge_den", "merge_stitched"):
        np.testing.assert_array_equal(getattr(merges, name), getattr(state, name))
    assert (merges.quantile, merges.histogram_bins) == (-1, 0)
    ids = np.array([1, 2, 3, 4], np.uint64)
    light, full = merge_tree_from_states([merges], ids), merge_tree_from_states([state], ids)
    for name in ("ids", "kept", "absorbed", "score", "level"):
        np.testing.assert_array_equal(getattr(light, name), getattr(full, name))
    np.savez(tmp_path / "old.npz", format=np.int64(0), merge_lo=state.merge_lo)
    with pytest.raises(AgglomerationError, match="block state format 0"):
        BlockMerges.load(tmp_path / "old.npz")
    np.savez(tmp_path / "partial.npz", format=np.int64(1), merge_lo=state.merge_lo)
    with pytest.raises(AgglomerationError, match="lacks"):
        BlockMerges.load(tmp_path / "partial.npz")
