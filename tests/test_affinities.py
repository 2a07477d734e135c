import numpy as np
import pytest

from affcons.affinities import (
    CRAC_OFFSETS,
    affinities_from_labels,
    affinities_to_float,
    affinities_to_uint8,
    shifted_pair_slices,
)
from affcons.errors import VolumeError


def test_nearest_neighbour_affinities_by_hand():
    labels = np.array([[[1, 1, 2, 0]], [[1, 3, 2, 2]]])  # (z=2, y=1, x=4)
    affs, mask = affinities_from_labels(labels)
    # z channel: voxel (1, 0, x) vs (0, 0, x)
    np.testing.assert_array_equal(affs[0, 1, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(mask[0, 1, 0], [1, 1, 1, 0])
    np.testing.assert_array_equal(mask[0, 0, 0], [0, 0, 0, 0])  # partner outside the volume
    # x channel: voxel (z, 0, x) vs (z, 0, x-1)
    np.testing.assert_array_equal(affs[2, 0, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(mask[2, 0, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(affs[2, 1, 0], [0, 0, 0, 1])


def test_long_range_offsets_use_the_true_offset():
    labels = np.zeros((6, 1, 1), np.int64)
    labels[:, 0, 0] = [1, 1, 2, 2, 1, 1]
    affs, mask = affinities_from_labels(labels, [(-4, 0, 0), (-2, 0, 0)])
    np.testing.assert_array_equal(affs[0, :, 0, 0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(mask[0, :, 0, 0], [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(affs[1, :, 0, 0], [0, 0, 0, 0, 0, 0])


def test_unlabelled_none_treats_zero_as_a_label():
    labels = np.zeros((1, 1, 3), np.int64)
    affs, mask = affinities_from_labels(labels, [(0, 0, -1)], unlabelled=None)
    np.testing.assert_array_equal(affs[0, 0, 0], [0, 1, 1])
    np.testing.assert_array_equal(mask[0, 0, 0], [0, 1, 1])


def test_positive_offsets_and_out_of_range_offsets():
    labels = np.arange(4).reshape(1, 1, 4) // 2 + 1  # 1 1 2 2
    affs, _ = affinities_from_labels(labels, [(0, 0, 1), (0, 0, 9)])
    np.testing.assert_array_equal(affs[0, 0, 0], [1, 0, 1, 0])
    assert not affs[1].any()
    assert shifted_pair_slices((4,), (9,))[0] == (slice(0, 0),)


def test_crac_offsets_are_the_twelve_of_the_method():
    assert len(CRAC_OFFSETS) == 12 and CRAC_OFFSETS[:3] == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
    assert CRAC_OFFSETS[10] == (0, -27, 0)


def test_uint8_float_round_trip():
    values = np.array([0.0, 0.5, 1.0, 1.2, -0.1], np.float32)
    as_uint8 = affinities_to_uint8(values)
    np.testing.assert_array_equal(as_uint8, [0, 128, 255, 255, 0])
    np.testing.assert_allclose(affinities_to_float(as_uint8), [0, 128 / 255, 1, 1, 0])
    assert affinities_to_float(values).dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((2, 2)), np.zeros((1, 2, 2), np.float32)])
def test_bad_labels_are_rejected(bad):
    with pytest.raises(VolumeError):
        affinities_from_labels(bad)


def test_bad_affinity_dtype_is_rejected():
    with pytest.raises(VolumeError, match="uint8"):
        affinities_to_float(np.zeros(3, np.int32))
