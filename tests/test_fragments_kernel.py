"""The compiled fragments kernel equals the scipy watershed (:mod:`affcons.segment.reference_watershed`) and the
fragments step of commit 3b88176 bit for bit: exhaustively where the inputs are few (uint8 levels), on the real
volumes at several block shapes and settings, and on the corner cases that take the reference's own path."""

import itertools

import fastremap
import numpy as np
import pytest
from scipy import ndimage

from affcons.affinities import affinities_to_float, affinities_to_uint8
from affcons.errors import VolumeError
from affcons.segment import NodeTable, block_fragments, edge_table, node_table, watershed_from_affinities
from affcons.segment.block_edges import interior_edge_table
from affcons.segment.reference_watershed import boundary_map, reference_levels, reference_watershed
from affcons.segment.seeds import (
    squared_distance_limits_hold,
    squared_distances,
    threshold_for_comparison,
    uint8_tables,
)
from affcons.segment.stitch import face_links
from affcons.synthetic import degraded_affinities
from blockwise.testing import load_labels

THRESHOLDS = (0.5, 0.3, 0.7, 0.25, 0.9, 0.05)


def all_uint8_triples(first: int) -> np.ndarray:
    """uint8 affinities (3, 1, 1, 65536 * 16): every (A_z, A_y, A_x) with A_z in first..first+15."""
    grid = np.indices((16, 256, 256)).reshape(3, -1)
    grid[0] += first
    return grid.astype(np.uint8)[:, None, None, :]


def test_uint8_tables_equal_the_float32_arithmetic_on_all_2_to_the_24_triples():
    """The level ``(766 - s) // 3`` and the interior test of ``s = A_z + A_y + A_x`` are what the reference's
    float32 code gives for every one of the 2^24 uint8 triples."""
    tables = {t: uint8_tables(False, threshold_for_comparison(t)) for t in THRESHOLDS}
    for first in range(0, 256, 16):
        triples = all_uint8_triples(first)
        boundary = boundary_map(affinities_to_float(triples))[0, 0]
        sums = triples[:, 0, 0].astype(np.int64).sum(axis=0)
        for threshold, (levels, interior) in tables.items():
            np.testing.assert_array_equal(levels[sums], reference_levels(boundary))
            np.testing.assert_array_equal(interior[sums], boundary < threshold)


def test_uint8_tables_refuse_a_threshold_that_the_sum_cannot_decide():
    ambiguous = float(np.float32(1 - 300 / 765))  # the boundary of s = 300 rounds either way in float32
    assert uint8_tables(False, threshold_for_comparison(ambiguous)) is None
    assert uint8_tables(True, threshold_for_comparison(ambiguous)) is not None  # per pair: exact by construction


def random_interior(shape, fraction, seed):
    return np.random.default_rng(seed).uniform(0, 1, shape) < fraction


@pytest.mark.parametrize("voxel_size", [(1, 1, 1), (10, 10, 10), (50, 4, 4), (3, 7, 2)])
@pytest.mark.parametrize("fraction", [0.5, 0.97, 0.9995])
def test_squared_distances_equal_scipy(voxel_size, fraction):
    interior = random_interior((23, 31, 40), fraction, seed=int(fraction * 1e4))
    interior[0, 0, 0] = False  # at least one boundary voxel
    weights = np.asarray(voxel_size, np.int64) ** 2
    for per_slice in (False, True):
        if per_slice:
            interior[:, 0, 0] = False
            expected = np.stack([ndimage.distance_transform_edt(s, sampling=voxel_size[1:]) for s in interior])
        else:
            expected = ndimage.distance_transform_edt(interior, sampling=voxel_size)
        padded = np.zeros(tuple(n + 2 for n in interior.shape), np.int64)
        squared_distances(interior.astype(np.uint8), weights, per_slice, padded.reshape(-1))
        assert not padded[0].any() and not padded[:, 0].any() and not padded[:, :, -1].any()
        np.testing.assert_array_equal(np.sqrt(padded[1:-1, 1:-1, 1:-1].astype(np.float64)), expected)


def test_distance_limits():
    assert squared_distance_limits_hold((144, 144, 144), (50, 4, 4), per_slice=False)
    assert not squared_distance_limits_hold((144, 144, 144), (40, 4.5, 4.5), per_slice=False)
    assert squared_distance_limits_hold((144, 144, 144), (40.5, 4, 4), per_slice=True)  # z is not used
    assert not squared_distance_limits_hold((10**5, 10**5, 10**5), (10**4, 10**4, 10**4), per_slice=False)


# --- whole watershed on real data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volumes():
    """(name, uint8 affinities, voxel size) of the real volumes with degraded affinities."""
    gala, gala_voxel = load_labels("gala")
    test, _ = load_labels("gala-test")
    isbi, isbi_voxel = load_labels("isbi")
    return {
        "gala": (affinities_to_uint8(degraded_affinities(gala, seed=1)), gala_voxel),
        "gala-test": (affinities_to_uint8(degraded_affinities(test[:, :, :120], seed=2)), gala_voxel),
        "isbi": (affinities_to_uint8(degraded_affinities(isbi, seed=3)), isbi_voxel),
    }


def assert_same(actual, expected):
    assert actual[0].dtype == expected[0].dtype == np.uint64
    np.testing.assert_array_equal(actual[0], expected[0])
    assert actual[1] == expected[1]


BLOCKS = {
    "gala": [
        (slice(None),) * 3,
        (slice(3, 40), slice(10, 71), slice(37, 120)),
        (slice(0, 50), slice(0, 1), slice(None)),
    ],
    "gala-test": [(slice(None),) * 3, (slice(10, 30), slice(0, 100), slice(40, 90))],
    "isbi": [(slice(None),) * 3, (slice(2, 9), slice(5, 128), slice(0, 77)), (slice(4, 5), slice(None), slice(None))],
}


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("per_slice, min_size", [(False, 0), (False, 50), (True, 0), (True, 20)])
def test_watershed_equals_the_reference_on_real_data(volumes, name, per_slice, min_size):
    affs, voxel_size = volumes[name]
    for block in BLOCKS[name]:
        block_affs = affs[(slice(None),) + block]
        options = dict(min_size=min_size, per_slice=per_slice, voxel_size=voxel_size)
        expected = reference_watershed(affinities_to_float(block_affs), **options)
        assert_same(watershed_from_affinities(block_affs, **options), expected)
        assert_same(watershed_from_affinities(affinities_to_float(block_affs), **options), expected)


@pytest.mark.parametrize("threshold", [0.3, 0.7, float(np.float32(1 - 300 / 765)), np.float64(0.5 + 1e-9)])
def test_watershed_equals_the_reference_at_other_boundary_thresholds(volumes, threshold):
    affs, voxel_size = volumes["gala"]
    affs = affs[:, :, :60, :80]
    for per_slice in (False, True):
        options = dict(boundary_threshold=threshold, min_size=10, per_slice=per_slice, voxel_size=voxel_size)
        expected = reference_watershed(affinities_to_float(affs), **options)
        assert_same(watershed_from_affinities(affs, **options), expected)


def test_watershed_equals_the_reference_with_a_mask_and_float_affinities():
    rng = np.random.default_rng(0)
    affs = rng.uniform(0, 1, (3, 8, 32, 32)).astype(np.float32)
    mask = rng.uniform(0, 1, (8, 32, 32)) < 0.8
    mask[:, :, :4] = False
    for per_slice, min_size in itertools.product((False, True), (0, 30)):
        options = dict(min_size=min_size, per_slice=per_slice)
        assert_same(watershed_from_affinities(affs, mask, **options), reference_watershed(affs, mask, **options))
        float16 = affs.astype(np.float16)
        expected = reference_watershed(float16.astype(np.float32), mask, **options)
        assert_same(watershed_from_affinities(float16, mask, **options), expected)


def test_watershed_takes_the_reference_seeds_where_integer_distances_do_not_apply(volumes):
    affs, _ = volumes["isbi"]
    affs = affs[:, :4, :60, :60]
    for voxel_size in ((50, 4.5, 4.5), (1, 1, 1)):
        for per_slice in (False, True):
            options = dict(per_slice=per_slice, voxel_size=voxel_size, min_size=5)
            assert_same(
                watershed_from_affinities(affs, **options), reference_watershed(affinities_to_float(affs), **options)
            )
    # no boundary voxel at all (scipy's distance transform is then not a distance): the reference's seeds
    bright = np.full((3, 6, 9, 11), 250, np.uint8)
    bright[:, 2:4] = 0  # sections 2 and 3 are boundary, the others have no boundary voxel
    for per_slice in (False, True):
        uniform = bright if per_slice else np.full_like(bright, 250)
        expected = reference_watershed(affinities_to_float(uniform), per_slice=per_slice)
        assert_same(watershed_from_affinities(uniform, per_slice=per_slice), expected)


def test_watershed_rejects_other_dtypes():
    with pytest.raises(VolumeError, match="uint8 .* or float"):
        watershed_from_affinities(np.zeros((3, 4, 4, 4), np.int16))


# --- the blockwise step's block -----------------------------------------------------------------------------------


def old_fragments_step(affs, crop, lower, upper, first_id, voxel_size, offset, **options):
    """The compute of ``blockwise/fragments.py`` at commit 3b88176 (node table from the node_table of that commit,
    which the test below pins to the same bytes)."""
    fragments, _ = reference_watershed(affinities_to_float(affs), voxel_size=voxel_size, **options)
    links = face_links(fragments, crop, lower, upper)
    local = np.ascontiguousarray(fragments[crop])
    local, _ = fastremap.renumber(local, preserve_zero=True, in_place=True)
    nodes = bincount_node_table(local, voxel_size, offset)
    out = local.astype(np.uint64)
    out[local != 0] += np.uint64(first_id)
    return out, links, NodeTable(nodes.ids + np.uint64(first_id), nodes.position, nodes.size)


def bincount_node_table(fragments, voxel_size, offset):
    """``node_table`` of commit 3b88176: float64 coordinate arrays and ``bincount``."""
    flat = fragments.ravel()
    largest = int(flat.max(initial=0))
    if largest <= 4 * flat.size:
        index, ids = flat.astype(np.int64), np.arange(largest + 1, dtype=np.uint64)
    else:
        ids, index = np.unique(flat, return_inverse=True)
    sizes = np.bincount(index, minlength=len(ids))
    grid = np.indices(fragments.shape, dtype=np.float64).reshape(3, -1)
    sums = np.stack([np.bincount(index, weights=c, minlength=len(ids)) for c in grid], axis=1)
    keep = (sizes > 0) & (ids != 0)
    centres = sums[keep] / sizes[keep][:, None] * np.asarray(voxel_size, np.float64) + np.asarray(offset, np.float64)
    return NodeTable(ids[keep], centres, sizes[keep])


def assert_same_bytes(a: np.ndarray, b: np.ndarray):
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_nodes(a: NodeTable, b: NodeTable):
    for column in ("ids", "position", "size"):
        assert_same_bytes(getattr(a, column), getattr(b, column))


@pytest.mark.parametrize("name", ["gala", "isbi"])
def test_block_fragments_equal_the_old_fragments_step(volumes, name):
    affs, voxel_size = volumes[name]
    context = (2, 8, 8) if name == "isbi" else (8, 8, 8)
    cases = [
        ((0, 0, 0), affs.shape[1:], (False,) * 3, (False,) * 3),
        ((0, 8, 20), (6, 60, 50), (False, True, True), (True, True, False)),
        ((3, 30, 70), (4, 50, 41), (True,) * 3, (True,) * 3),
    ]
    for (begin, size, lower, upper), per_slice in itertools.product(cases, (False, True)):
        start = [max(b - c, 0) if low else b for b, c, low in zip(begin, context, lower)]
        stop = [
            min(b + s + c, n) if up else b + s for b, s, c, up, n in zip(begin, size, context, upper, affs.shape[1:])
        ]
        grown = affs[(slice(None),) + tuple(slice(a, b) for a, b in zip(start, stop))]
        crop = tuple(slice(b - a, b - a + s) for a, b, s in zip(start, begin, size))
        offset = tuple(b * v for b, v in zip(begin, voxel_size))
        options = dict(min_size=20, per_slice=per_slice)
        expected = old_fragments_step(grown, crop, lower, upper, 12345, voxel_size, offset, **options)
        fragments, links, nodes = block_fragments(
            grown, crop, lower, upper, first_id=12345, voxel_size=voxel_size, offset=offset, **options
        )
        assert_same_bytes(fragments, expected[0])
        assert_same_bytes(links, expected[1])
        assert_same_nodes(nodes, expected[2])


def test_node_table_equals_the_bincount_table_for_dense_sparse_and_narrow_ids(volumes):
    affs, voxel_size = volumes["gala"]
    fragments, _ = watershed_from_affinities(affs[:, :20, :40, :60])
    sparse = fragments * np.uint64(10**12) + np.uint64(7) * (fragments > 0)
    for ids in (fragments, fragments.astype(np.int32), sparse):
        assert_same_nodes(node_table(ids, voxel_size, (90, 12, 0)), bincount_node_table(ids, voxel_size, (90, 12, 0)))
    with pytest.raises(VolumeError, match="non-negative"):
        node_table(np.full((2, 2, 2), -1, np.int64))


@pytest.mark.parametrize("name", ["gala", "isbi"])
def test_interior_edge_table_equals_edge_table_bit_for_bit(volumes, name):
    """The fragments step's compiled interior RAG: the rows and bits of ``edge_table`` on real fragments (with a
    gap in the ids and an empty block), and on random ids with many pairs per edge."""
    affs, voxel_size = volumes[name]
    first = 2**40 + 7
    fragments, _, nodes = block_fragments(affs, (slice(None),) * 3, first_id=first, voxel_size=voxel_size)
    fragments[fragments == first + 3] = 0  # a fragment without voxels leaves an empty bucket
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 6, affs.shape[1:]).astype(np.uint64)
    ids[ids != 0] += np.uint64(first)
    cases = [(fragments, len(nodes)), (ids, 5), (np.zeros_like(ids), 0)]
    for labels, count in cases:
        expected = edge_table(labels, affs)
        actual = interior_edge_table(labels, affs, first, count)
        assert len(expected) > 0 or count == 0
        for column in ("u", "v", "affinity_sum", "count", "histogram", "linked", "quantised_sum"):
            assert_same_bytes(getattr(actual, column), getattr(expected, column))
