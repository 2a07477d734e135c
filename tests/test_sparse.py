"""Sparse annotation, border widening, CRAC targets, M_lab and class-balance weights (hand-computed)."""

import numpy as np
import pytest

from affcons.errors import ConfigError
from affcons.train.sparse import class_balance_weights, crac_targets, select_instances, widen_borders


def _ten_ids():
    labels = np.zeros((2, 4, 10), dtype=np.uint32)
    for i in range(10):
        labels[:, : i % 4 + 1, i] = i + 1  # id i+1 has 2 * (i % 4 + 1) voxels
    return labels


def test_select_instances_fraction_is_whole_and_deterministic():
    labels = _ten_ids()
    sparse, report = select_instances(labels, "fraction", 0.25, seed=3)
    assert len(report.kept_ids) == 3 and report.total_ids == 10 and report.id_fraction == 0.3
    assert sparse.dtype == labels.dtype
    for i in range(1, 11):
        kept = sparse[labels == i]
        assert (kept == i).all() if i in report.kept_ids else (kept == 0).all()  # whole masks
    assert set(np.unique(sparse)) - {0} == set(report.kept_ids)
    voxels = sum(int((labels == i).sum()) for i in report.kept_ids)
    assert report.voxel_fraction == voxels / np.count_nonzero(labels)
    assert report.labelled_fraction == voxels / labels.size
    again, again_report = select_instances(labels, "fraction", 0.25, seed=3)
    assert np.array_equal(again, sparse) and again_report == report
    other = {select_instances(labels, "fraction", 0.25, seed=s)[1].kept_ids for s in range(6)}
    assert len(other) > 1  # the seed matters


def test_select_instances_count_and_all():
    labels = _ten_ids()
    assert len(select_instances(labels, "count", 4, seed=0)[1].kept_ids) == 4
    sparse, report = select_instances(labels, "all")
    assert np.array_equal(sparse, labels) and report.id_fraction == 1.0
    with pytest.raises(ConfigError):
        select_instances(labels, "fraction", 1.5)
    with pytest.raises(ConfigError):
        select_instances(labels, "unknown", 1)


def test_widen_borders_only_between_two_labelled_ids():
    labels = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0], [3, 3, 0, 0]]], dtype=np.uint64)
    want = np.array([[[1, 0, 0, 2], [1, 0, 0, 2], [0, 0, 0, 0], [3, 3, 0, 0]]], dtype=np.uint64)
    # row 2 is 0 already; 3 touches only 0 (and 1 two rows up is outside its 3x3 window); reflect padding at the
    # left/right borders mirrors column 1 / column 2, so columns 0 and 3 keep their ids
    assert np.array_equal(widen_borders(labels), want)


def test_widen_borders_is_per_section():
    labels = np.zeros((2, 3, 3), dtype=np.int32)
    labels[0] = 5
    labels[1] = 6  # different ids in different sections: no in-plane conflict
    assert np.array_equal(widen_borders(labels), labels)


def test_crac_targets_true_offsets_and_label_mask():
    # z = 5 sections of one voxel column: ids [1, 1, 0, 0, 2]
    labels = np.array([1, 1, 0, 0, 2], dtype=np.int64).reshape(5, 1, 1)
    target, valid, label_mask = crac_targets(labels, [(-1, 0, 0), (-2, 0, 0), (-3, 0, 0)])
    # dz = -1 pairs (z, z-1): (1,1)=1 (0,1)=0 (0,0)=1 (2,0)=0
    assert target[0, :, 0, 0].tolist() == [0, 1, 0, 1, 0]
    assert label_mask[0, :, 0, 0].tolist() == [0, 1, 1, 0, 1]  # the 0==0 pair is unknown
    # dz = -2 at the true offset (the reference compared z-1 and z here): (0,1)=0 (0,1)=0 (2,0)=0
    assert target[1, :, 0, 0].tolist() == [0, 0, 0, 0, 0]
    assert valid[1, :, 0, 0].tolist() == [0, 0, 1, 1, 1]
    assert label_mask[1, :, 0, 0].tolist() == [0, 0, 1, 1, 1]
    # dz = -3: (0,1)=0 (2,1)=0
    assert target[2, :, 0, 0].tolist() == [0, 0, 0, 0, 0]
    assert label_mask[2, :, 0, 0].tolist() == [0, 0, 0, 1, 1]


def test_class_balance_weights_inside_label_mask():
    target = np.array([1, 1, 1, 0, 1, 1], dtype=np.float32)
    label_mask = np.array([1, 1, 1, 1, 0, 0], dtype=np.float32)
    # inside the mask f = 3/4 > 0.5: positives 1, negatives 0.75 / 0.25 = 3; unknown pairs (target 1) weigh 1
    assert class_balance_weights(target, label_mask).tolist() == [1, 1, 1, 3, 1, 1]
    # f = 1/4: positives (0.75 / 0.25) = 3, negatives 1
    target = np.array([1, 0, 0, 0], dtype=np.float32)
    assert class_balance_weights(target, np.ones(4, np.float32)).tolist() == [3, 1, 1, 1]
    # unknown pairs (outside the mask, target 1) weigh 1, not the in-mask positive weight 3: the code's weight there
    # (its f over the whole crop is > 0.5), and the pseudo terms must not be scaled up by the labelled class ratio
    target = np.array([1, 0, 0, 0, 1, 1], dtype=np.float32)
    label_mask = np.array([1, 1, 1, 1, 0, 0], dtype=np.float32)
    assert class_balance_weights(target, label_mask).tolist() == [3, 1, 1, 1, 1, 1]
    # f clipped to 0.99: negatives weigh 99
    target = np.ones(200, dtype=np.float32)
    target[0] = 0
    weights = class_balance_weights(target, np.ones(200, np.float32))
    assert weights[0] == pytest.approx(99.0, rel=1e-4) and weights[1] == 1.0
    assert class_balance_weights(target, np.zeros(200, np.float32)).tolist() == [1.0] * 200


def test_class_balance_weights_per_channel():
    # channel 0 (nearest neighbour): f = 3/4 inside M_lab; channel 1 (long range): f = 1/4
    target = np.array([[1, 1, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=np.float32)
    label_mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=np.float32)
    per_channel = class_balance_weights(target, label_mask, per_channel=True)
    assert per_channel.tolist() == [[1, 1, 1, 3, 1], [3, 1, 1, 1, 1]]
    # pooled: f = 4/8 = 0.5 -> positives (0.5 / 0.5) = 1, negatives 1
    assert class_balance_weights(target, label_mask).tolist() == [[1] * 5, [1] * 5]
    # a channel without masked entries gets weight 1 while the others keep theirs
    label_mask[1] = 0
    assert class_balance_weights(target, label_mask, per_channel=True).tolist() == [[1, 1, 1, 3, 1], [1] * 5]


def test_class_balance_weights_pooled_over_crac_channels_inverts_the_short_range_balance():
    """Regression (reduced ISBI benchmark learned no boundaries): pooled over nearest-neighbour and long-range
    channels, the long-range channels (mostly boundaries inside M_lab) push f below 0.5, so the majority class of the
    nearest-neighbour channels (inside-neurite, target 1) is up-weighted instead of its boundaries. Per channel, the
    nearest-neighbour boundaries get the larger weight."""
    from affcons.affinities import CRAC_OFFSETS

    labels = np.zeros((6, 64, 64), dtype=np.int64)  # labelled 8 x 8 neurites, 2-voxel membranes, new ids at z = 3
    for i, y in enumerate(range(0, 64, 10)):
        for j, x in enumerate(range(0, 64, 10)):
            labels[:3, y : y + 8, x : x + 8] = 1 + 7 * i + j
            labels[3:, y : y + 8, x : x + 8] = 100 + 7 * i + j
    target, _, label_mask = crac_targets(labels, CRAC_OFFSETS)
    pooled = class_balance_weights(target, label_mask)
    split = class_balance_weights(target, label_mask, per_channel=True)
    y = 1  # the (0, -1, 0) channel
    inside = (label_mask[y] > 0) & (target[y] == 1)
    boundary = (label_mask[y] > 0) & (target[y] == 0)
    assert pooled[y][inside].mean() > pooled[y][boundary].mean()  # the defect: positives up-weighted
    assert split[y][boundary].mean() > split[y][inside].mean() == 1.0  # the fix: boundaries up-weighted
