"""Losses against hand-computed values."""

import math

import pytest
import torch

from affcons.errors import ConfigError
from affcons.losses import (
    branch_losses,
    channel_weights,
    confidence_loss,
    pseudo_loss,
    rampup_weight,
    supervised_loss,
    weighted_mse,
)

torch.set_num_threads(1)


def test_channel_weights_short_range_once():
    assert channel_weights(5, 10.0).tolist() == [10.0, 10.0, 10.0, 1.0, 1.0]


def test_weighted_mse_per_channel_valid_denominator():
    # B = 1, C = 2, spatial 1 x 1 x 3
    pred = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.4, 0.6]]).reshape(1, 2, 1, 1, 3)
    target = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 1, 3)
    weight = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).reshape(1, 2, 1, 1, 3)
    valid = torch.tensor([[False, True, True], [True, True, True]]).reshape(2, 1, 1, 3)
    # channel 0: (2 * 0.25 + 0 + 0) / 2 valid voxels = 0.25; channel 1: (0.04 + 0.16 + 0.36) / 3 = 0.18667
    want = 0.25 + 0.56 / 3
    assert math.isclose(float(weighted_mse(pred, target, weight, valid)), want, rel_tol=1e-6)


def test_weighted_mse_divides_by_batch_size():
    pred = torch.ones(2, 1, 1, 1, 2)
    target = torch.zeros(2, 1, 1, 1, 2)
    weight = torch.ones(2, 1, 1, 1, 2)
    valid = torch.ones(1, 1, 1, 2, dtype=torch.bool)
    assert float(weighted_mse(pred, target, weight, valid)) == 1.0  # 4 / (2 * 2)


def test_weighted_mse_rejects_mismatched_shapes():
    with pytest.raises(ConfigError, match="shapes differ"):
        weighted_mse(
            torch.ones(1, 2, 1, 1, 1),
            torch.ones(1, 1, 1, 1, 1),
            torch.ones(1, 2, 1, 1, 1),
            torch.ones(2, 1, 1, 1, dtype=torch.bool),
        )


def test_supervised_and_pseudo_loss_apply_weights_once():
    # C = 4: channel weights [10, 10, 10, 1]; one voxel per channel, error 1 everywhere
    pred = torch.zeros(1, 4, 1, 1, 1)
    target = torch.ones(1, 4, 1, 1, 1)
    balance = torch.tensor([1.0, 2.0, 1.0, 3.0]).reshape(1, 4, 1, 1, 1)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0]).reshape(1, 4, 1, 1, 1)
    valid = torch.ones(4, 1, 1, 1, dtype=torch.bool)
    s = channel_weights(4, 10.0)
    # 10 * 1 + 10 * 2 + 0 + 1 * 3 = 33 (a second x10 on channels 0-2 would give 303)
    assert float(supervised_loss(pred, target, balance, mask, valid, s)) == 33.0
    assert float(pseudo_loss(pred, target, balance, mask, valid, s)) == 33.0
    assert balance.tolist() == [[[[[1.0]]], [[[2.0]]], [[[1.0]]], [[[3.0]]]]]  # inputs untouched


def test_confidence_loss_hand_computed():
    affinity = torch.tensor([0.8, 0.3, 0.6, 0.1])
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mask = torch.ones(4)
    error_prob = torch.tensor([0.1, 0.7, 0.6, 0.2])
    # binarised [1, 0, 1, 0] -> wrong [0, 1, 1, 0]; 2 correct / 2 wrong -> wrong weight 2
    loss, stats = confidence_loss(error_prob, affinity, target, mask)
    want = (-math.log(0.9) - 2 * math.log(0.7) - 2 * math.log(0.6) - math.log(0.8)) / 4
    assert math.isclose(float(loss), want, rel_tol=1e-5)
    assert stats == {"error_fraction": 0.5, "wrong_weight": 2.0}


def test_confidence_loss_masks_and_survives_no_wrong_voxels():
    affinity = torch.tensor([0.9, 0.2, 0.9])
    target = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.tensor([1.0, 1.0, 0.0])  # the wrong third voxel is outside the mask
    error_prob = torch.tensor([0.5, 0.5, 0.99])
    loss, stats = confidence_loss(error_prob, affinity, target, mask)
    assert math.isclose(float(loss), -math.log(0.5), rel_tol=1e-5)
    assert stats["wrong_weight"] == 1.0 and stats["error_fraction"] == 0.0


def test_per_side_balance_leaves_no_evidence_in_the_side_of_the_affinity():
    """With ``per_side`` a constant error probability of 0.5 on each side is stationary: a net cannot lower the loss
    by predicting the error rate of a side (the error kind of its training predictors), only from other evidence."""
    generator = torch.Generator().manual_seed(0)
    affinity = torch.rand(4000, generator=generator)
    high = affinity > 0.5
    # missed boundaries are frequent (60 % of the high side wrong), false boundaries rare (10 % of the low side)
    wrong = torch.where(high, torch.rand(4000, generator=generator) < 0.6, torch.rand(4000, generator=generator) < 0.1)
    target = torch.where(wrong, ~high, high).float()
    mask = (torch.rand(4000, generator=generator) < 0.9).float()
    for balance, stationary in (("per_side", True), ("all", False)):
        side_logit = torch.zeros(2, requires_grad=True)
        error_prob = torch.sigmoid(side_logit[high.long()])
        loss, stats = confidence_loss(error_prob, affinity, target, mask, balance=balance)
        loss.backward()
        assert torch.allclose(side_logit.grad, torch.zeros(2), atol=1e-6) == stationary, balance
        assert stats["error_fraction"] == pytest.approx(float((wrong.float() * mask).sum() / mask.sum()))
    with pytest.raises(ValueError, match="per_side"):
        confidence_loss(error_prob, affinity, target, mask, balance="sides")


def test_per_side_balance_without_wrong_voxels_on_a_side_shares_the_weight_among_the_cells_present():
    affinity = torch.tensor([0.9, 0.8, 0.2, 0.1])
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])  # high side: 1 correct, 1 wrong; low side: 2 correct
    error_prob = torch.full((4,), 0.5)
    loss, stats = confidence_loss(error_prob, affinity, target, torch.ones(4), balance="per_side")
    # three cells share the weight 4: 4/3 each -> per voxel 4/3, 4/3, 2/3, 2/3; every BCE is log 2
    assert math.isclose(float(loss), math.log(2) * (4 / 3 + 4 / 3 + 2 / 3 + 2 / 3) / 4, rel_tol=1e-5)
    assert math.isclose(stats["wrong_weight"], 4 / 3, rel_tol=1e-5)
    empty, _ = confidence_loss(error_prob, affinity, target, torch.zeros(4), balance="per_side")
    assert float(empty) == 0.0  # a crop without labelled pairs


def test_branch_losses_split_the_total_by_network():
    terms = {"sup_imp": torch.tensor(1.0), "sup_exp": torch.tensor(2.0), "pse_imp": torch.tensor(0.5)}
    branches = branch_losses(terms, emb_weight=10.0, pseudo_weight=2.0)
    assert {name: float(value) for name, value in branches.items()} == {"embedding": 11.0, "affinity": 20.0}
    assert list(branch_losses({"sup_exp": torch.tensor(2.0)}, 10.0, 1.0)) == ["affinity"]  # supervised baseline


def test_rampup_weight_schedule():
    assert rampup_weight(5, 0) == 1.0 and rampup_weight(100, 100) == 1.0 and rampup_weight(250, 100) == 1.0
    assert math.isclose(rampup_weight(0, 100), math.exp(-5.0))
    assert math.isclose(rampup_weight(50, 100), math.exp(-5.0 * 0.25))
