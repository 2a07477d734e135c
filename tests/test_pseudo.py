"""Entropy, the S1 schedule and percentile, S2, and the (pseudo_labels, filter_mask) contract."""

import math

import numpy as np
import pytest
import torch

from affcons.errors import ConfigError
from affcons.nets import build_confidence_net
from affcons.pseudo import (
    FilterResult,
    PseudoLabeler,
    alpha_schedule,
    binary_entropy,
    channel_groups,
    confidence_error_maps,
    filter_counts,
    percentile,
    s1_mask,
)
from affcons.train.config import ConfidenceModelConfig

torch.set_num_threads(1)


def test_binary_entropy_known_values():
    h = binary_entropy(torch.tensor([0.5, 0.0, 1.0, 0.2]))
    assert math.isclose(float(h[0]), math.log(2), rel_tol=1e-6)
    assert abs(float(h[1])) < 1e-8 and abs(float(h[2])) < 1e-6
    assert math.isclose(float(h[3]), -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), rel_tol=1e-5)


def test_alpha_schedule_matches_the_spec_values():
    # method.md: 0.5 % at t = 0, 0.27 % at 100k, 0.096 % at 200k (alpha0 0.005, T 300k, power 1.5)
    assert alpha_schedule(0, 0.005, 300000, 1.5) == 0.005
    assert math.isclose(alpha_schedule(100000, 0.005, 300000, 1.5), 0.005 * (2 / 3) ** 1.5)
    assert round(100 * alpha_schedule(100000, 0.005, 300000, 1.5), 2) == 0.27
    assert round(100 * alpha_schedule(200000, 0.005, 300000, 1.5), 3) == 0.096
    assert alpha_schedule(400000, 0.005, 300000, 1.5) == 0.0
    with pytest.raises(ConfigError):
        alpha_schedule(1, 0.005, 0, 1.5)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.995, 0.9999, 1.0])
def test_percentile_equals_numpy_linear_interpolation(q):
    values = torch.from_numpy(np.random.default_rng(4).random(1001)).double()
    assert math.isclose(float(percentile(values, q)), float(np.percentile(values.numpy(), 100 * q)), rel_tol=1e-12)


def test_percentile_subsampling_is_deterministic_and_close():
    values = torch.arange(100000, dtype=torch.float32)
    first = percentile(values, 0.5, max_elements=5000, seed=7)
    assert float(first) == float(percentile(values, 0.5, max_elements=5000, seed=7))
    assert abs(float(first) - 49999.5) < 3000


def test_s1_drops_the_alpha_most_uncertain_candidates():
    entropy = torch.arange(1.0, 1001.0)  # 1..1000
    candidates = torch.ones(1000, dtype=torch.bool)
    keep, gamma = s1_mask(entropy, candidates, alpha=0.005)
    assert math.isclose(gamma, 995.005, rel_tol=1e-6) and int(keep.sum()) == 995
    # the percentile is taken over candidates only: with the upper half excluded, gamma ~ 497.5
    candidates[500:] = False
    keep, gamma = s1_mask(entropy, candidates, alpha=0.005)
    assert math.isclose(gamma, float(np.percentile(np.arange(1.0, 501.0), 99.5)), rel_tol=1e-6)
    keep, gamma = s1_mask(entropy, candidates, alpha=0.0)
    assert bool(keep.all()) and gamma == float("inf")


def _maps(b=1, c=3, shape=(1, 2, 4)):
    torch.manual_seed(0)
    teacher = torch.rand(b, c, *shape) * 2 - 1  # cosine-like values in [-1, 1]
    valid = torch.ones(c, *shape, dtype=torch.bool)
    valid[:, :, :, 0] = False  # invalid first column
    label_mask = torch.zeros(b, c, *shape)
    label_mask[:, :, 0, 1] = 1.0  # labelled pairs
    return teacher, valid, label_mask


def test_pseudo_labels_contract_relu_and_masks():
    teacher, valid, label_mask = _maps()
    teacher.requires_grad_(True)
    labeler = PseudoLabeler(alpha0=0.0)
    labels, mask = labeler(teacher, valid, label_mask, iteration=1, implicit=True)
    assert labels.shape == mask.shape == teacher.shape and mask.dtype == torch.float32
    assert torch.equal(labels, torch.relu(teacher.detach())) and not labels.requires_grad
    expected = valid.unsqueeze(0) & (label_mask == 0)
    assert torch.equal(mask.bool(), expected)
    assert labeler.last_stats["kept_fraction"] == 1.0
    labels, _ = PseudoLabeler(alpha0=0.0, detach=False)(teacher, valid, label_mask, iteration=1, implicit=True)
    assert labels.requires_grad


def test_pseudo_labels_s1_ignores_invalid_and_labelled_entries():
    # the invalid / labelled entries hold the highest entropy; they must not move the percentile
    teacher = torch.full((1, 1, 1, 1, 10), 0.999)
    teacher[..., 9] = 0.5
    teacher[..., :8] = torch.linspace(0.99, 0.6, 8)
    valid = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    label_mask = torch.zeros(1, 1, 1, 1, 10)
    label_mask[..., 9] = 1.0
    labeler = PseudoLabeler(alpha0=0.2, total_iterations=10**9, power=1.0)
    _, mask = labeler(teacher, valid, label_mask, iteration=1)
    entropy = binary_entropy(teacher[0, 0, 0, 0, :9])
    gamma = np.percentile(entropy.numpy(), 100 * (1 - labeler.last_stats["alpha"]))
    assert math.isclose(labeler.last_stats["gamma"], gamma, rel_tol=1e-5)
    assert mask[0, 0, 0, 0].tolist() == [float(v) for v in (entropy < gamma).tolist()] + [0.0]


def _confidence_net(bias: float):
    net = build_confidence_net(ConfidenceModelConfig(filters=[2, 2, 2, 2, 2])).eval()
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.fill_(bias)
    return net


@pytest.mark.parametrize("bias,kept", [(-20.0, True), (20.0, False)])
def test_s2_acts_on_all_channels_after_the_gate(bias, kept):
    teacher = torch.rand(2, 12, 1, 16, 16)
    valid = torch.ones(12, 1, 16, 16, dtype=torch.bool)
    label_mask = torch.zeros(2, 12, 1, 16, 16)
    raw = torch.rand(2, 1, 1, 16, 16)
    labeler = PseudoLabeler(alpha0=0.0, confidence_net=_confidence_net(bias), gate=5)
    _, before = labeler(teacher, valid, label_mask, iteration=5, raw=raw)
    assert bool(before.bool().all()) and labeler.last_stats["s2_active"] == 0.0
    _, after = labeler(teacher, valid, label_mask, iteration=6, raw=raw)
    assert labeler.last_stats["s2_active"] == 1.0
    # every channel is filtered (the reference code only filtered channels 0 and 1)
    assert bool(after.bool().all()) if kept else float(after.sum()) == 0.0


def test_confidence_error_maps_batched_equals_per_channel():
    torch.manual_seed(2)
    net = build_confidence_net(ConfidenceModelConfig(filters=[2, 2, 2, 2, 2])).eval()
    prob = torch.rand(2, 3, 1, 16, 16)
    entropy = binary_entropy(prob)
    raw = torch.rand(2, 1, 1, 16, 16)
    batched = confidence_error_maps(net, raw, prob, entropy, chunk=4)
    with torch.no_grad():
        for b in range(2):
            for c in range(3):
                single = net(torch.stack([raw[b, 0], entropy[b, c], prob[b, c]])[None])[0, 0]
                assert torch.allclose(batched[b, c], single, atol=1e-6)


def test_percentile_over_a_mask_equals_numpy_on_the_selection():
    generator = torch.Generator().manual_seed(5)
    values = torch.rand(3, 40, 50, generator=generator, dtype=torch.float64)
    mask = torch.rand(3, 40, 50, generator=generator) < 0.3
    for q in (0.0, 0.1, 0.5, 0.995, 1.0):
        expected = np.percentile(values[mask].numpy(), 100 * q)
        assert math.isclose(float(percentile(values, q, mask=mask)), float(expected), rel_tol=1e-12)
    with pytest.raises(ConfigError, match="none selected"):
        percentile(values, 0.5, mask=torch.zeros_like(mask))


def test_channel_groups_of_the_crac_offsets():
    from affcons.affinities import CRAC_OFFSETS

    groups = channel_groups(CRAC_OFFSETS)
    assert groups == {"1-1-1": [0, 1, 2], "2-3-3": [3, 4, 5], "3-9-9": [6, 7, 8], "4-27-27": [9, 10, 11]}


def test_filter_counts_by_hand():
    # one sample, 3 channels (one group), 4 voxels: channel 0 carries the interesting values
    prob = torch.tensor([0.9, 0.2, 0.8, 0.6]).reshape(1, 1, 1, 1, 4).repeat(1, 3, 1, 1, 1)
    truth = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 1, 4).repeat(1, 3, 1, 1, 1)
    candidates = torch.ones(1, 3, 1, 1, 4, dtype=torch.bool)
    defined = torch.tensor([True, True, True, False]).reshape(1, 1, 1, 1, 4).repeat(1, 3, 1, 1, 1)
    s1 = torch.tensor([True, False, True, True]).reshape(1, 1, 1, 1, 4).repeat(1, 3, 1, 1, 1)
    errors = torch.tensor([0.1, 0.1, 0.9, 0.1]).reshape(1, 1, 1, 1, 4).repeat(1, 3, 1, 1, 1)
    result = FilterResult(prob, candidates, s1, errors, False, 0.5, 0.0, float("inf"))
    counts = filter_counts(result, truth, defined, {"g": [0, 1, 2]})
    # per channel: 3 defined pairs, 2 right (0.9 vs 1, 0.2 vs 0); S1 keeps 0.9 and 0.8 (one right); S2 drops 0.8
    assert counts == {
        "g/pairs": 9.0,
        "g/right": 6.0,
        "g/s1_kept": 6.0,
        "g/s1_right": 3.0,
        "g/s2_kept": 3.0,
        "g/s2_right": 3.0,
    }
    assert torch.equal(result.mask(), s1)  # S2 inactive: the training mask is S1 alone


def test_s2_is_evaluated_before_the_gate_only_when_asked():
    teacher = torch.rand(1, 12, 1, 16, 16)
    valid = torch.ones(12, 1, 16, 16, dtype=torch.bool)
    label_mask = torch.zeros(1, 12, 1, 16, 16)
    raw = torch.rand(1, 1, 1, 16, 16)
    labeler = PseudoLabeler(alpha0=0.0, confidence_net=_confidence_net(20.0), gate=5)
    assert labeler.filter(teacher, valid, label_mask, iteration=3, raw=raw).errors is None
    measured = labeler.filter(teacher, valid, label_mask, iteration=3, raw=raw, evaluate_s2=True)
    assert measured.errors is not None and not measured.s2_active
    assert bool(measured.mask().all()) and not bool(measured.s2().any())  # trained on S1, S2 would drop all
