"""CRAC's iteration on a real ISBI batch: parallel branches give the serial gradients, oracle controls, schedules."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.data import default_collate

from affcons.config import validate
from affcons.errors import ConfigError
from affcons.losses import pseudo_loss, rampup_weight
from affcons.nets import build_confidence_net, implicit_affinities
from affcons.train.config import ConfidenceModelConfig, CRACConfig
from affcons.train.dataset import CropDataset
from affcons.train.strategies import CRACStrategy, ema_decay_at

torch.set_num_threads(1)
ISBI = "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"


def _config(**changes) -> CRACConfig:
    data = {
        "kind": "crac",
        "variant": "ws",
        "data": {
            "train": {
                "raw": f"{ISBI}:raw",
                "labels": f"{ISBI}:labels/neurites_3dcc",
                "roi": {"begin": [0, 0, 0], "end": [6, 96, 96]},
            },
            "sparse": {"mode": "fraction", "value": 0.3, "seed": 1},
            "crop": [4, 32, 32],
            "margin": [0, 8, 8],
            "num_workers": 0,
        },
        "model": {"filters": [4, 4, 8, 8, 8], "embedding_channels": 4, "bn_momentum": 0.1},
        "run": {"iterations": 100, "batch_size": 2},
        "validation": {"volume": None},
        "pseudo": {"alpha0": 0.05, "s2": {"enabled": False}},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = data
        for key in parents:
            section = section.setdefault(key, {})
        section[last] = value
    return validate(CRACConfig, data, "test config")


def _batch(config: CRACConfig) -> dict:
    dataset = CropDataset(config.data, config.model.offsets, seed=2, batch_size=2, with_truth=config.needs_truth())
    return default_collate([dataset[0], dataset[1]])


def _gradients(config: CRACConfig, batch: dict, parallel: bool, channels_last: bool) -> tuple[float, dict]:
    torch.manual_seed(0)
    strategy = CRACStrategy(config, torch.device("cpu"))
    if channels_last:
        for module in strategy.trained.values():
            module.to(memory_format=torch.channels_last_3d)
    strategy.train()
    with ThreadPoolExecutor(2) as executor:
        strategy.executor = executor if parallel else None
        output = strategy.loss(batch, iteration=40)
        assert len(output.branches) == 2 and torch.allclose(sum(output.branches), output.loss, rtol=0, atol=0)
        if parallel:
            for future in [executor.submit(branch.backward) for branch in output.branches]:
                future.result()
        else:
            output.loss.backward()
    grads = {
        f"{name}.{key}": parameter.grad.clone()
        for name, module in strategy.trained.items()
        for key, parameter in module.named_parameters()
    }
    return float(output.loss.detach()), grads


@pytest.mark.parametrize("variant", ["ws", "ema"])
def test_parallel_branches_give_the_serial_loss_and_gradients(variant):
    config = _config(variant=variant)
    batch = _batch(config)
    loss, serial = _gradients(config, batch, parallel=False, channels_last=True)
    parallel_loss, parallel = _gradients(config, batch, parallel=True, channels_last=True)
    assert parallel_loss == loss and serial.keys() == parallel.keys()
    assert all(torch.equal(serial[key], parallel[key]) for key in serial)
    # channels-last computes the same function up to rounding
    contiguous_loss, contiguous = _gradients(config, batch, parallel=False, channels_last=False)
    assert abs(contiguous_loss - loss) < 1e-4 * loss
    # (as one vector: some BatchNorm biases before another BatchNorm have gradients that are rounding noise)
    flat_contiguous = torch.cat([contiguous[key].flatten() for key in serial])
    flat_serial = torch.cat([serial[key].flatten() for key in serial])
    assert float((flat_contiguous - flat_serial).norm()) < 1e-4 * float(flat_serial.norm())


def test_no_detach_keeps_one_graph():
    config = _config(**{"loss.detach_pseudo": False})
    torch.manual_seed(0)
    output = CRACStrategy(config, torch.device("cpu")).loss(_batch(config), iteration=1)
    assert output.branches == ()  # the pseudo-labels carry gradients into the other net: no split


def _pseudo_step(source: str, **changes) -> tuple[object, dict, dict]:
    """One training step with ``pseudo.source: source`` and, from an identically seeded fresh strategy, the maps
    that step saw: ``(output, batch, {"a_imp", "a_exp", "valid", "unlabelled", "channel_weight"})``."""
    config = _config(**{"pseudo.source": source, **changes})
    batch = _batch(config)
    torch.manual_seed(0)
    strategy = CRACStrategy(config, torch.device("cpu"))
    strategy.train()
    output = strategy.loss(batch, iteration=100)
    with torch.no_grad():
        torch.manual_seed(0)
        fresh = CRACStrategy(config, torch.device("cpu"))
        fresh.train()
        valid = fresh.valid(tuple(batch["raw"].shape[2:]))
        seen = {
            "a_imp": implicit_affinities(fresh.networks.embedding_net(batch["raw"]), fresh.offsets),
            "a_exp": fresh.networks.affinity_net(batch["raw"]),
            "valid": valid,
            "unlabelled": valid.unsqueeze(0) & (batch["label_mask"] <= 0),
            "channel_weight": fresh.channel_weight,
        }
    return output, batch, seen


def test_oracle_pseudo_labels_are_the_truth_on_every_unlabelled_pair():
    output, batch, seen = _pseudo_step("oracle", **{"pseudo.measure_every": 1})
    mask = seen["unlabelled"].float()
    expected = pseudo_loss(seen["a_imp"], batch["truth"], batch["weight"], mask, seen["valid"], seen["channel_weight"])
    assert abs(output.scalars["loss/pse_imp"] - float(expected)) < 1e-6 * float(expected)
    # the measurements against the truth are logged: pairs, right and S1 counts per channel group
    assert output.scalars["filter/explicit/1-1-1/pairs"] > 0
    assert 0 <= output.scalars["filter/implicit/4-27-27/s1_right"] <= output.scalars["filter/implicit/4-27-27/s1_kept"]


def test_oracle_filter_keeps_exactly_the_right_pseudo_labels():
    output, batch, seen = _pseudo_step("oracle_filter")
    right = seen["unlabelled"] & ((seen["a_exp"] > 0.5) == (batch["truth"] > 0.5))
    # the teacher is wrong somewhere, so the perfect filter drops pairs that S1 keeps
    assert 0 < right.sum() < seen["unlabelled"].sum()
    expected = pseudo_loss(
        seen["a_imp"], seen["a_exp"], batch["weight"], right.float(), seen["valid"], seen["channel_weight"]
    )
    assert abs(output.scalars["loss/pse_imp"] - float(expected)) < 1e-5 * float(expected)


def test_schedules():
    assert [ema_decay_at(t, 0.99, True) for t in (1, 9, 99, 1000)] == [0.5, 0.9, 0.99, 0.99]
    assert ema_decay_at(1, 0.99, False) == 0.99
    config = _config(**{"pseudo.s2.gate_fraction": 0.25, "loss.pseudo_rampup": 0.5})
    assert config.s2_gate() == 25 and _config().s2_gate() == 5000
    batch = _batch(config)
    torch.manual_seed(0)
    strategy = CRACStrategy(config, torch.device("cpu"))
    for t in (1, 25, 50, 80):
        assert strategy.loss(batch, iteration=t).scalars["pseudo/weight"] == rampup_weight(t, 50)
    with pytest.raises(ConfigError, match="gate_fraction"):
        _config(**{"pseudo.s2.gate_fraction": 1.5})
    for source in ("oracle", "oracle_filter"):
        with pytest.raises(ConfigError, match="dense labels"):
            _config(**{"pseudo.source": source, "data.sparse": {"mode": "all"}})


@pytest.mark.parametrize("fold", [True, False])
def test_the_confidence_net_runs_with_folded_batchnorm_when_configured(fold):
    """``run.fold_confidence_batchnorm``: both teacher maps' S2 filters use one folded copy (or the net itself)."""
    config = _config(**{"run.fold_confidence_batchnorm": fold, "pseudo.s2.enabled": True, "pseudo.s2.gate": 0})
    confidence = build_confidence_net(ConfidenceModelConfig(filters=[4, 4, 8, 8, 8])).eval().requires_grad_(False)
    strategy = CRACStrategy(config, torch.device("cpu"), confidence)
    used = strategy.frozen["confidence"]
    assert (used is not confidence) == fold
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in used.modules()) != fold
    assert all(labeler.confidence_net is used for labeler in strategy.labelers.values())
    strategy.train()
    assert not used.training  # train() leaves the frozen nets in eval mode
    assert torch.isfinite(strategy.loss(_batch(config), iteration=40).loss)
