"""The in-memory segmentation core: watershed, RAG statistics, merge tree (cross-checked against waterz), cuts."""

import dataclasses

import numpy as np
import pytest

from affcons.affinities import affinities_to_float, affinities_to_uint8
from affcons.errors import ConfigError, VolumeError
from affcons.evaluate import evaluate
from affcons.segment import (
    EdgeTable,
    MergeTree,
    agglomerate_fragments,
    apply_lookup,
    build_merge_tree,
    edge_table,
    node_table,
    segment_affinities,
    watershed_from_affinities,
)
from affcons.segment.agglomerate import parse_scoring
from affcons.segment.reference import waterz_segmentations
from affcons.synthetic import degraded_affinities, synthetic_cells
from tests.data_paths import gala_labels, isbi_labels

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.fixture(scope="module")
def isbi_crop():
    labels = isbi_labels((slice(0, 12), slice(0, 256), slice(0, 256)))
    affs = degraded_affinities(labels, sigma=1.0, noise=0.15, seed=0)
    fragments, _ = watershed_from_affinities(affs, min_size=10)
    return labels, affs, fragments


@pytest.fixture(scope="module")
def gala_volume():
    labels = gala_labels()
    affs = degraded_affinities(labels, sigma=1.0, noise=0.15, seed=1)
    fragments, _ = watershed_from_affinities(affs, min_size=10)
    return labels, affs, fragments


# --- watershed ---------------------------------------------------------------------------------------------------


def test_watershed_is_deterministic_dense_and_covers_the_volume(isbi_crop):
    _, affs, fragments = isbi_crop
    again, count = watershed_from_affinities(affs, min_size=10)
    np.testing.assert_array_equal(fragments, again)
    assert fragments.dtype == np.uint64
    np.testing.assert_array_equal(np.unique(fragments), np.arange(1, count + 1))


def test_watershed_fragments_respect_clean_boundaries():
    _, labels = synthetic_cells((16, 48, 48), num_cells=12, seed=3)
    affs = degraded_affinities(labels, sigma=0.0, noise=0.0)
    fragments, _ = watershed_from_affinities(affs)
    # each fragment lies (almost) inside one cell: at most 1 % of cell voxels sit in another cell's fragment
    inside = labels != 0
    pairs, counts = np.unique(np.stack([fragments[inside], labels[inside]]), axis=1, return_counts=True)
    majority = sum(counts[pairs[0] == f].max() for f in np.unique(pairs[0]))
    assert majority >= 0.99 * inside.sum()
    assert evaluate(fragments, labels)["voi_merge"] < 0.05


def test_watershed_min_size_and_mask():
    rng = np.random.default_rng(0)
    affs = rng.uniform(0, 1, (3, 8, 32, 32)).astype(np.float32)
    mask = np.ones((8, 32, 32), bool)
    mask[:, :, :4] = False
    fragments, _ = watershed_from_affinities(affs, mask=mask, min_size=30)
    assert not fragments[~mask].any()
    sizes = np.bincount(fragments[mask].astype(np.int64))[1:]
    assert sizes.min() >= 30


def test_watershed_per_slice_never_crosses_sections(isbi_crop):
    _, affs, _ = isbi_crop
    fragments, _ = watershed_from_affinities(affs, per_slice=True)
    ids_per_slice = [set(np.unique(s)) for s in fragments]
    assert all(not (ids_per_slice[i] & ids_per_slice[i + 1]) for i in range(len(ids_per_slice) - 1))


def test_watershed_rejects_wrong_shapes():
    with pytest.raises(VolumeError, match="C >= 3"):
        watershed_from_affinities(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(VolumeError, match="mask shape"):
        watershed_from_affinities(np.zeros((3, 4, 4, 4), np.float32), mask=np.ones((4, 4, 3), bool))


# --- RAG ---------------------------------------------------------------------------------------------------------


def test_edge_table_statistics_by_hand():
    fragments = np.array([[[1, 1, 2], [3, 3, 2]]], np.uint64)
    affs = np.zeros((3, 1, 2, 3), np.float32)
    affs[2] = [[0.0, 0.5, 0.25], [0.0, 0.75, 1.0]]
    affs[1] = [[0.0, 0.0, 0.0], [0.125, 0.375, 0.625]]
    edges = edge_table(fragments, affs, histogram_bins=4)
    table = {
        (int(u), int(v)): (s, int(c), list(h), int(q))
        for u, v, s, c, h, q in zip(
            edges.u, edges.v, edges.affinity_sum, edges.count, edges.histogram, edges.quantised_sum
        )
    }
    # quantised sums: round(a * 255) per pair, summed: 0.25 -> 64; 0.125 -> 32, 0.375 -> 96; 1.0 -> 255
    assert table == {
        (1, 2): (0.25, 1, [0, 1, 0, 0], 64),
        (1, 3): (0.125 + 0.375, 2, [1, 1, 0, 0], 32 + 96),
        (2, 3): (1.0, 1, [0, 0, 0, 1], 255),
    }


def test_edge_table_of_uint8_affinities_equals_that_of_their_float_conversion(isbi_crop):
    _, affs, fragments = isbi_crop
    stored = affinities_to_uint8(affs)
    direct = edge_table(fragments, stored, histogram_bins=16)
    converted = edge_table(fragments, affinities_to_float(stored), histogram_bins=16)
    for field in dataclasses.fields(direct):
        assert np.array_equal(getattr(direct, field.name), getattr(converted, field.name)), field.name
    # the integer sums are the uint8 values added exactly: their total is the total over all crossing pairs
    total = 0
    for channel in range(3):
        here = fragments[tuple(slice(int(a == channel), None) for a in range(3))]
        there = fragments[tuple(slice(0, n - int(a == channel)) for a, n in enumerate(fragments.shape))]
        values = stored[channel][tuple(slice(int(a == channel), None) for a in range(3))]
        total += int(values[(here != there) & (here != 0) & (there != 0)].astype(np.int64).sum())
    assert int(direct.quantised_sum.sum()) == total


def test_edge_tables_of_blocks_combine_into_the_whole(isbi_crop):
    _, affs, fragments = isbi_crop
    whole = edge_table(fragments, affs, histogram_bins=16)
    pieces = []
    for z in range(0, 12, 5):
        for y in range(0, 256, 100):
            for x in range(0, 256, 128):
                context = (int(z > 0), int(y > 0), int(x > 0))
                region = tuple(slice(s - c, s + n) for s, c, n in zip((z, y, x), context, (5, 100, 128)))
                pieces.append(edge_table(fragments[region], affs[(slice(None),) + region], 16, context))
    combined = EdgeTable.concatenate(pieces, 16).combine()
    np.testing.assert_array_equal(combined.u, whole.u)
    np.testing.assert_array_equal(combined.v, whole.v)
    np.testing.assert_array_equal(combined.count, whole.count)
    np.testing.assert_array_equal(combined.histogram, whole.histogram)
    np.testing.assert_array_equal(combined.quantised_sum, whole.quantised_sum)  # integers add exactly
    np.testing.assert_allclose(combined.affinity_sum, whole.affinity_sum, rtol=1e-12)


def test_node_table_centres_in_world_units():
    fragments = np.zeros((2, 2, 4), np.uint64)
    fragments[0, 0, :2] = 5
    fragments[1, 1, 3] = 9
    nodes = node_table(fragments, voxel_size=(40, 4, 4), offset=(100, 0, 8))
    np.testing.assert_array_equal(nodes.ids, [5, 9])
    np.testing.assert_array_equal(nodes.size, [2, 1])
    np.testing.assert_allclose(nodes.position, [[100, 0, 10], [140, 4, 20]])


# --- merge tree --------------------------------------------------------------------------------------------------


def test_merge_tree_by_hand_and_the_cut_is_a_prefix():
    # chain 1 - 2 - 3 with mean affinities 0.9 and 0.6; 3 - 4 with 0.2
    edges = EdgeTable([1, 2, 3], [2, 3, 4], [0.9, 1.2, 0.2], [1, 2, 1], np.zeros((3, 0)))
    tree = build_merge_tree(edges, "mean", order="waterz")
    np.testing.assert_allclose(tree.score, [0.1, 0.4, 0.8], atol=1e-6)
    assert tree.merges_below(0.05) == 0
    np.testing.assert_array_equal(tree.lookup(0.05), [1, 2, 3, 4])
    np.testing.assert_array_equal(tree.lookup(0.5), [1, 1, 1, 4])
    np.testing.assert_array_equal(tree.lookup(0.81), [1, 1, 1, 1])


def test_parallel_edges_merge_statistics():
    # 1-2 merge first (score 0); then 3 has edges to 1 (aff 0.2, 1 voxel) and 2 (aff 1.0, 3 voxels) -> mean 0.8
    edges = EdgeTable([1, 1, 2], [2, 3, 3], [1.0, 0.2, 3.0], [1, 1, 3], np.zeros((3, 0)))
    tree = build_merge_tree(edges, "mean", order="waterz")
    np.testing.assert_allclose(tree.score, [0.0, 0.2], atol=1e-6)


@pytest.mark.parametrize("scoring", ["mean", "quantile50"])
@pytest.mark.parametrize("volume", ["isbi_crop", "gala_volume"])
def test_merge_tree_cuts_equal_waterz(volume, scoring, request):
    labels, affs, fragments = request.getfixturevalue(volume)
    tree = agglomerate_fragments(fragments, affs, scoring, order="waterz")
    for threshold, reference in zip(THRESHOLDS, waterz_segmentations(affs, fragments, THRESHOLDS, scoring)):
        ours = apply_lookup(fragments, tree.ids, tree.lookup(threshold))
        metrics = evaluate(ours, reference.astype(np.uint64) + 1)  # every voxel counts
        assert metrics["voi"] <= 1e-3, (threshold, metrics)
        assert len(np.unique(ours)) == len(np.unique(reference))


def test_levels_are_monotone_and_isolated_fragments_stay(gala_volume):
    _, affs, fragments = gala_volume
    tree = agglomerate_fragments(fragments, affs)
    assert np.all(np.diff(tree.level) >= 0)
    extra = build_merge_tree(edge_table(fragments, affs), node_ids=np.r_[tree.ids, [10**12]])
    assert extra.lookup(1.0)[-1] == 10**12


def test_merge_tree_save_load(tmp_path, gala_volume):
    _, affs, fragments = gala_volume
    tree = agglomerate_fragments(fragments, affs)
    tree.save(tmp_path / "tree.npz")
    loaded = MergeTree.load(tmp_path / "tree.npz")
    np.testing.assert_array_equal(loaded.lookup(0.5), tree.lookup(0.5))


def test_segment_affinities_on_real_data_beats_fragments(gala_volume):
    labels, affs, fragments = gala_volume
    segmentations = segment_affinities(affs, [0.5], fragments=fragments)
    assert evaluate(segmentations[0.5], labels)["voi"] < evaluate(fragments, labels)["voi"]


def test_bad_scoring_names():
    assert parse_scoring("mean") == -1 and parse_scoring("quantile50") == 50
    for bad in ("median", "quantile101", "quantile-1"):
        with pytest.raises(ConfigError, match="scoring"):
            parse_scoring(bad)
    with pytest.raises(ConfigError, match="histograms"):
        build_merge_tree(EdgeTable.empty(0), "quantile50")
