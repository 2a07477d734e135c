"""Networks: shapes, init, perturbation flag, implicit affinities against hand-computed values, BatchNorm folding."""

import math

import pytest
import torch

from affcons.errors import ConfigError, VolumeError
from affcons.nets import (
    CRACNetworks,
    DropoutPerturbation,
    UNetPNI,
    build_confidence_net,
    fill_short_range_borders,
    fold_batchnorm,
    implicit_affinities,
    offset_validity,
)
from affcons.nets.unet import PointwiseConv3d
from affcons.train.config import ConfidenceModelConfig, ModelConfig

torch.set_num_threads(1)
SMALL = [4, 4, 6, 6, 8]


@pytest.mark.parametrize("upsample,merge", [("bilinear", "add"), ("transposeS", "cat")])
def test_unet_keeps_shape_and_depth(upsample, merge):
    net = UNetPNI(1, 5, SMALL, upsample=upsample, merge=merge, activation="sigmoid")
    with torch.no_grad():
        out = net(torch.rand(2, 1, 3, 32, 48))
    assert out.shape == (2, 5, 3, 32, 48)
    assert float(out.min()) > 0.0 and float(out.max()) < 1.0


def test_unet_init_and_bn_momentum():
    net = UNetPNI(1, 3, SMALL, bn_momentum=0.001)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(m.momentum == 0.001 for m in bns)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(m.bias is None or float(m.bias.detach().abs().max()) == 0.0 for m in convs)
    # z is never pooled: 1 section in, 1 out
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 1, 16, 16)).shape == (1, 3, 1, 16, 16)


def test_unet_refuses_sizes_not_divisible_by_16():
    with pytest.raises(VolumeError, match="divisible by 16"):
        UNetPNI(1, 3, SMALL)(torch.rand(1, 1, 2, 24, 32))


def test_dropout_perturbation_follows_its_flag_not_train_mode():
    torch.manual_seed(0)
    module = DropoutPerturbation(max_rate=0.9)
    x = torch.ones(1000)
    module.train()
    assert all(torch.equal(module(x), x) for _ in range(20))  # inactive: identity even in train mode
    module.active = True
    module.eval()
    changed = sum(not torch.equal(module(x), x) for _ in range(200))
    # P ~ U(0, 1) is used when P <= 0.9: about 90 % of calls drop something
    assert 150 < changed < 200


def test_embedding_net_perturbation_switch():
    net = UNetPNI(1, 4, SMALL, activation=None, dropout=0.5).eval()
    x = torch.rand(1, 1, 2, 16, 16)
    with torch.no_grad():
        reference = net(x)
        assert torch.equal(net(x), reference)
        net.set_perturbation(True)
        torch.manual_seed(3)
        outputs = [net(x) for _ in range(20)]
    assert any(not torch.equal(o, reference) for o in outputs)


def test_implicit_affinities_hand_computed():
    # four embedding vectors along x (z = y = 1): (1,0), (0,1), (1,1), (-1,0)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    embedding = vectors.T.reshape(1, 2, 1, 1, 4) * 3.0  # scale must not matter
    affs = implicit_affinities(embedding, [(0, 0, -1), (0, 0, -2), (0, 0, -5), (0, 0, 1)])
    s = 1 / math.sqrt(2)
    expected = torch.tensor(
        [
            [0.0, 0.0, s, -s],  # <e(x), e(x-1)>, x = 0 invalid
            [0.0, 0.0, s, 0.0],  # <e(x), e(x-2)>
            [0.0, 0.0, 0.0, 0.0],  # longer than the crop: nothing valid
            [0.0, s, -s, 0.0],  # positive offset: <e(x), e(x+1)>, last invalid
        ]
    )
    assert torch.allclose(affs[0, :, 0, 0], expected, atol=1e-6)
    valid = offset_validity((1, 1, 4), [(0, 0, -1), (0, 0, -2), (0, 0, -5), (0, 0, 1)])
    assert valid[:, 0, 0].tolist() == [
        [False, True, True, True],
        [False, False, True, True],
        [False] * 4,
        [True, True, True, False],
    ]


def test_implicit_affinities_z_offset_and_gradient():
    embedding = torch.zeros(1, 2, 3, 1, 1)
    embedding[0, :, 0, 0, 0] = torch.tensor([1.0, 0.0])
    embedding[0, :, 1, 0, 0] = torch.tensor([1.0, 0.0])
    embedding[0, :, 2, 0, 0] = torch.tensor([0.0, 2.0])
    embedding.requires_grad_(True)
    affs = implicit_affinities(embedding, [(-1, 0, 0), (-2, 0, 0)])
    assert affs[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert affs[0, 1, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    affs.sum().backward()
    assert embedding.grad is not None and torch.isfinite(embedding.grad).all()


def test_implicit_matches_brute_force_on_random_embedding():
    torch.manual_seed(1)
    embedding = torch.randn(2, 3, 4, 5, 6)
    offsets = [(-1, 0, 0), (0, -3, 0), (-2, 1, -1)]
    affs = implicit_affinities(embedding, offsets)
    e = embedding / embedding.norm(dim=1, keepdim=True)
    for c, (dz, dy, dx) in enumerate(offsets):
        for z, y, x in [(3, 4, 5), (2, 3, 1), (0, 0, 0)]:
            zz, yy, xx = z + dz, y + dy, x + dx
            inside = 0 <= zz < 4 and 0 <= yy < 5 and 0 <= xx < 6
            want = (e[1, :, z, y, x] * e[1, :, zz, yy, xx]).sum() if inside else torch.tensor(0.0)
            assert torch.allclose(affs[1, c, z, y, x], want, atol=1e-6)


def test_implicit_affinities_gradient_matches_autograd_through_the_slices():
    """The hand-written backward (one accumulation buffer) equals finite differences (float64) and autograd through
    per-offset slice products (float32: 3b88176's implementation, which the speed benchmark's ``old`` arm runs), on
    positive, negative, mixed and crop-length offsets."""
    from affcons.nets.embedding import _ShiftedCosine
    from benchmarks.crac_speed import implicit_affinities_at_3b88176

    offsets = ((-1, 0, 0), (0, -3, 0), (-2, 1, -1), (0, 2, 3), (0, 0, 6))
    torch.manual_seed(2)
    unit = torch.nn.functional.normalize(torch.randn(2, 3, 3, 5, 6, dtype=torch.float64), dim=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda n: _ShiftedCosine.apply(n, offsets), (unit,))

    embedding = torch.randn(2, 4, 3, 5, 6)
    upstream = torch.randn(2, len(offsets), 3, 5, 6)
    grads = []
    for function in (lambda e: implicit_affinities_at_3b88176(e, offsets), lambda e: implicit_affinities(e, offsets)):
        leaf = embedding.clone().requires_grad_(True)
        out = function(leaf)
        out.backward(upstream)
        grads.append((out.detach(), leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
    assert grads[1][1].abs().max() > 0.1


def test_fill_short_range_borders_copies_index_one():
    affs = torch.arange(12 * 2 * 2 * 2, dtype=torch.float32).reshape(1, 12, 2, 2, 2)
    filled = fill_short_range_borders(affs)
    assert torch.equal(filled[0, 0, 0], affs[0, 0, 1])
    assert torch.equal(filled[0, 1, :, 0], affs[0, 1, :, 1])
    assert torch.equal(filled[0, 2, :, :, 0], affs[0, 2, :, :, 1])
    assert torch.equal(filled[0, 3:], affs[0, 3:])


def test_crac_networks_outputs():
    torch.manual_seed(0)
    networks = CRACNetworks.from_config(ModelConfig(filters=SMALL, embedding_channels=4)).eval()
    with torch.no_grad():
        out = networks.affinities(torch.rand(2, 16, 32))
    assert set(out) == {"implicit", "explicit", "mean"}
    for value in out.values():
        assert value.shape == (1, 12, 2, 16, 32) and value.dtype == torch.float32
        assert float(value.min()) >= 0.0 and float(value.max()) <= 1.0
    assert torch.allclose(out["mean"], 0.5 * (out["implicit"] + out["explicit"]))
    # long-range borders of the implicit map stay 0 (dx = -27 > 32 - 27 = 5 valid columns)
    assert float(out["implicit"][0, 11, :, :, :27].abs().max()) == 0.0


def test_confidence_net_has_three_inputs_one_output():
    net = build_confidence_net(ConfidenceModelConfig(filters=SMALL))
    assert net.in_channels == 3 and net.out_channels == 1
    with torch.no_grad():
        assert net(torch.rand(2, 3, 2, 16, 16)).shape == (2, 1, 2, 16, 16)


def test_pointwise_conv_equals_a_1x1x1_convolution_in_both_layouts():
    torch.manual_seed(4)
    pointwise = PointwiseConv3d(6, 5)
    conv = torch.nn.Conv3d(6, 5, 1)
    conv.load_state_dict(pointwise.state_dict())  # same parameters, same state dict keys
    x = torch.randn(2, 6, 3, 16, 16)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        inputs = x.contiguous(memory_format=layout).requires_grad_(True)
        out = pointwise(inputs)
        assert torch.allclose(out, conv(x), atol=1e-6)
        if layout == torch.channels_last_3d:
            assert out.is_contiguous(memory_format=torch.channels_last_3d)  # no layout change downstream
        (grad,) = torch.autograd.grad(out.square().sum(), inputs)
        assert torch.allclose(grad, torch.autograd.grad(conv(x.requires_grad_(True)).square().sum(), x)[0], atol=1e-5)


def _eval_net_with_batchnorm_statistics(seed: int, upsample: str, merge: str) -> UNetPNI:
    """An eval-mode net whose BatchNorm statistics and affine parameters are far from the identity (so folding them
    changes the weights)."""
    torch.manual_seed(seed)
    net = UNetPNI(3, 2, SMALL, upsample=upsample, merge=merge, bn_momentum=0.1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("upsample,merge", [("bilinear", "add"), ("transposeS", "cat")])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_folded_batchnorm_computes_the_eval_net(upsample, merge, layout):
    net = _eval_net_with_batchnorm_statistics(3, upsample, merge).to(memory_format=layout)
    before = {key: value.clone() for key, value in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(3, 3, 3, 32, 48).contiguous(memory_format=layout)
    with torch.no_grad():
        expected, out = net(x), folded(x)
    assert (out - expected).abs().max() < 2e-5
    assert not torch.equal(out, expected)  # other weights, other rounding: the copy is really folded
    assert fold_batchnorm(folded) is not folded  # folding twice is a no-op copy
    with torch.no_grad():
        assert torch.equal(fold_batchnorm(folded)(x), out)
    after = net.state_dict()  # the net itself is unchanged, and its state dict has no fold buffers
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any("skip_" in key for key in after)


def test_fold_batchnorm_refuses_a_net_in_training_mode():
    with pytest.raises(ConfigError, match="eval-mode"):
        fold_batchnorm(build_confidence_net(ConfidenceModelConfig(filters=SMALL)))
