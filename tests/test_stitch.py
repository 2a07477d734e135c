"""Stitching of fragments cut by block faces (:mod:`affcons.segment.stitch`)."""

import itertools

import numpy as np
import pytest

from affcons.segment import (
    EdgeTable,
    MergeTree,
    agglomerate_fragments,
    apply_lookup,
    build_merge_tree,
    edge_table,
    segment_affinities,
    watershed_from_affinities,
)
from affcons.segment.stitch import face_links, pair_linked, stitch_groups
from affcons.synthetic import degraded_affinities
from blockwise.testing import load_labels, same_partition

X_LOWER, X_UPPER = 1 << 2, 1 << 5  # link bits of the x axis


def two_blocks_along_x(basins_row):
    """Links of two blocks of 3 voxels along x, each seeing 1 voxel of context beyond the shared face."""
    basins = np.array(basins_row).reshape(1, 1, 6)
    whole = (slice(0, 1), slice(0, 1))
    block_a = face_links(basins[..., 0:4], whole + (slice(0, 3),), lower=(False,) * 3, upper=(False, False, True))
    block_b = face_links(basins[..., 2:6], whole + (slice(1, 4),), lower=(False, False, True), upper=(False,) * 3)
    return np.concatenate([block_a, block_b], axis=2)


def test_face_links_mark_a_basin_that_crosses_the_face_on_both_sides():
    links = two_blocks_along_x([1, 1, 1, 1, 2, 2])
    assert links[0, 0].tolist() == [0, 0, X_UPPER, X_LOWER, 0, 0]
    assert pair_linked(links[..., 3], links[..., 2], axis=2).all()


def test_face_links_are_empty_where_the_face_separates_basins_or_has_no_neighbour():
    assert not two_blocks_along_x([1, 1, 1, 2, 2, 2]).any()
    basins = np.ones((4, 4, 4), np.uint64)
    alone = face_links(basins, (slice(1, 3),) * 3, lower=(False,) * 3, upper=(False,) * 3)
    assert alone.shape == (2, 2, 2) and not alone.any()
    no_context = face_links(basins, (slice(0, 4),) * 3)  # a face without a voxel beyond it cannot be linked
    assert not no_context.any()


def test_only_edges_whose_pairs_mostly_agree_are_stitched():
    ids = np.array([1, 2, 3], np.uint64)
    edges = EdgeTable(
        ids[:2],
        ids[1:],
        np.array([3.0, 3.0]),
        np.array([4, 4], np.uint64),
        np.zeros((2, 0), np.uint32),
        np.array([3, 2], np.uint64),
    )
    assert stitch_groups(edges, ids).tolist() == [0, 0, 2]  # 3 of 4 pairs linked: stitched; 2 of 4: not


def test_merge_tree_puts_stitches_first_at_level_minus_infinity(tmp_path):
    u, v = np.array([1, 2, 3], np.uint64), np.array([2, 3, 4], np.uint64)
    # (1, 2): a low mean affinity (score 0.9) but stitched; (2, 3): score 0.6; (3, 4): score 0.2
    edges = EdgeTable(
        u,
        v,
        np.array([0.1, 0.4, 0.8]),
        np.ones(3, np.uint64),
        np.zeros((3, 0), np.uint32),
        np.array([1, 0, 0], np.uint64),
    )
    tree = build_merge_tree(edges)
    assert tree.num_stitches == 1 and np.isneginf(tree.level[0])
    assert tree.stitched_lookup().tolist() == [1, 1, 3, 4]
    assert tree.lookup(0.0).tolist() == [1, 1, 3, 4]
    assert tree.lookup(0.5).tolist() == [1, 1, 3, 3]
    assert tree.lookup(0.7).tolist() == [1, 1, 1, 1]
    tree.save(tmp_path / "tree.npz")
    assert MergeTree.load(tmp_path / "tree.npz").lookup(0.0).tolist() == [1, 1, 3, 4]
    unlinked = build_merge_tree(EdgeTable(u, v, edges.affinity_sum, edges.count, edges.histogram))
    assert unlinked.num_stitches == 0 and unlinked.lookup(0.5).tolist() == [1, 2, 3, 3]


@pytest.fixture(scope="module")
def gala_crop():
    labels, voxel_size = load_labels("gala")
    labels = labels[:, :, :100]
    affs = degraded_affinities(labels, seed=3)
    basins, _ = watershed_from_affinities(affs, voxel_size=voxel_size)
    return affs, basins


def cut_into_blocks(basins: np.ndarray, block) -> tuple[np.ndarray, np.ndarray]:
    """Fragments and link bits of a blockwise watershed whose context covers the whole volume (so every block sees
    the basins of the whole volume): per-block ids, the basins cut at every face."""
    fragments = np.zeros(basins.shape, np.uint64)
    links = np.zeros(basins.shape, np.uint8)
    first = 0
    for begin in itertools.product(*(range(0, n, b) for n, b in zip(basins.shape, block))):
        crop = tuple(slice(o, min(o + b, n)) for o, b, n in zip(begin, block, basins.shape))
        local = np.unique(basins[crop], return_inverse=True)[1].reshape(basins[crop].shape) + 1
        fragments[crop] = local + first
        first += int(local.max()) + 1
        lower = tuple(s.start > 0 for s in crop)
        upper = tuple(s.stop < n for s, n in zip(crop, basins.shape))
        links[crop] = face_links(basins, crop, lower, upper)
    return fragments, links


def test_stitching_recovers_the_watershed_that_blocks_cut(gala_crop):
    affs, basins = gala_crop
    fragments, links = cut_into_blocks(basins, (20, 40, 40))
    assert len(np.unique(fragments)) > len(np.unique(basins))
    tree = agglomerate_fragments(fragments, affs, links=links)
    assert same_partition(apply_lookup(fragments, tree.ids, tree.stitched_lookup()), basins)
    monolithic = segment_affinities(affs, (0.3, 0.5, 0.7), fragments=basins)
    for threshold, expected in monolithic.items():
        assert same_partition(apply_lookup(fragments, tree.ids, tree.lookup(threshold)), expected), threshold


def test_edge_table_counts_linked_pairs_only_across_faces(gala_crop):
    affs, basins = gala_crop
    fragments, links = cut_into_blocks(basins, (50, 100, 50))
    edges = edge_table(fragments, affs, links=links)
    face = fragments[:, :, 49] != fragments[:, :, 50]  # the only face: x = 50 (z and y are one block)
    assert int(edges.linked.sum()) == int((face & (basins[:, :, 49] == basins[:, :, 50])).sum())
    assert (edges.linked <= edges.count).all()
    assert not edge_table(fragments, affs).linked.any()
