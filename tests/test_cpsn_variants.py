"""The confidence-net variants of ``benchmarks/cpsn_variants.py`` change exactly what they name in the reduced
protocol's pre-training config, so a variant's difference from the protocol's CPSN is that change alone."""

import shutil

import pytest

from affcons.train.trainer import _differences
from benchmarks import crac_protocol
from benchmarks.cpsn_variants import VARIANTS, merge, prepare_stage1, stage1_source, variant_config
from benchmarks.crac_protocol import SETTINGS, pretrain_config


def _changes(before: dict, after: dict) -> dict[str, tuple]:
    """``{dotted key: (before, after)}`` of the values that differ (the names from the trainer's resume check)."""

    def at(config: dict, dotted: str):
        for key in dotted.split("."):
            config = config[key]
        return config

    return {name: (at(before, name), at(after, name)) for name in _differences(before, after)}


@pytest.mark.parametrize("volume", ["isbi", "gala"])
def test_each_variant_changes_only_what_it_names(volume):
    protocol = pretrain_config(volume, 556, SETTINGS, 1).model_dump(mode="json")
    stage = protocol["stage2"]["iterations"]
    assert stage == SETTINGS["iterations"] // 2
    expected = {
        "long": {"stage2.iterations": (stage, 5 * stage), "run.keep_checkpoints": (1, 16)},
        "lr1e-4": {
            "optim.lr": (SETTINGS["lr"], 1e-4),
            "stage2.iterations": (stage, 2 * stage),
            "run.keep_checkpoints": (1, 7),
        },
        "wide": {
            "confidence_model.filters": (SETTINGS["confidence_filters"], SETTINGS["filters"]),
            "stage2.iterations": (stage, 2 * stage),
            "run.keep_checkpoints": (1, 7),
        },
        "stage1-long": {
            "stage1.iterations": (stage, 2 * stage),
            "stage1.save_at": (protocol["stage1"]["save_at"], [2 * i for i in protocol["stage1"]["save_at"]]),
            "stage2.iterations": (stage, 2 * stage),
            "run.keep_checkpoints": (1, 7),
        },
        "stage1-long-balanced": {
            "stage1.iterations": (stage, 2 * stage),
            "stage1.save_at": (protocol["stage1"]["save_at"], [2 * i for i in protocol["stage1"]["save_at"]]),
            "stage2.iterations": (stage, 2 * stage),
            "stage2.error_balance": ("all", "per_side"),
            "run.keep_checkpoints": (1, 7),
        },
        "late": {
            "stage1.save_at": (protocol["stage1"]["save_at"], [stage // 2, 3 * stage // 4, stage]),
            "stage2.iterations": (stage, 2 * stage),
            "run.keep_checkpoints": (1, 7),
        },
    }
    assert set(expected) == set(VARIANTS)
    for variant, changes in expected.items():
        config = variant_config(volume, 556, variant, 1).model_dump(mode="json")
        assert _changes(protocol, config) == changes


def test_merge_replaces_nested_keys_only():
    base = {"a": {"b": 1, "c": 2}, "d": [1, 2]}
    assert merge(base, {"a": {"b": 3}, "d": [4]}) == {"a": {"b": 3, "c": 2}, "d": [4]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1, 2]}


def test_a_variant_copies_a_finished_stage1_of_the_same_config_or_trains_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "RUNS", tmp_path)
    balanced = variant_config("isbi", 556, "stage1-long-balanced", 1)
    assert stage1_source("isbi", 556, "stage1-long-balanced", balanced, 1) is None  # nothing to copy yet
    shared = tmp_path / "n600" / "isbi" / "cpsn-stage1-long-seed556" / "stage1"
    (shared / "predictors").mkdir(parents=True)
    assert stage1_source("isbi", 556, "stage1-long-balanced", balanced, 1) is None  # stage 1 unfinished
    (shared / "checkpoints").mkdir()
    (shared / "checkpoints" / "last.pt").write_bytes(b"")
    assert stage1_source("isbi", 556, "stage1-long-balanced", balanced, 1) == shared
    assert stage1_source("isbi", 557, "stage1-long-balanced", balanced, 1) is None  # another seed's
    with pytest.raises(SystemExit, match="pretrain-seed556/stage1 has no stage-1 predictors"):
        stage1_source("isbi", 556, "wide", variant_config("isbi", 556, "wide", 1), 1)


def test_only_a_copied_stage1_is_skipped_on_every_run(tmp_path, monkeypatch):
    """An own stage 1 interrupted after its first predictor still trains on (stages "all"); a copied one never does."""
    monkeypatch.setattr(crac_protocol, "RUNS", tmp_path)
    volume_runs = tmp_path / "n600" / "isbi"
    balanced = variant_config("isbi", 556, "stage1-long-balanced", 1)
    own = volume_runs / "cpsn-stage1-long-balanced-seed556"
    assert prepare_stage1(own, "isbi", 556, "stage1-long-balanced", balanced, 1) == "all"
    (own / "stage1" / "predictors").mkdir(parents=True)  # interrupted after its first predictor
    assert prepare_stage1(own, "isbi", 556, "stage1-long-balanced", balanced, 1) == "all"
    shared = volume_runs / "cpsn-stage1-long-seed557" / "stage1"
    (shared / "predictors").mkdir(parents=True)
    (shared / "checkpoints").mkdir()
    (shared / "checkpoints" / "last.pt").write_bytes(b"")
    copy = volume_runs / "cpsn-stage1-long-balanced-seed557"
    for _ in range(2):
        assert prepare_stage1(copy, "isbi", 557, "stage1-long-balanced", balanced, 1) == "2"
    assert (copy / "stage1" / "checkpoints" / "last.pt").is_file()


def test_variants_of_a_longer_protocol_run_scale_with_it_and_live_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "RUNS", tmp_path)
    long_run = dict(SETTINGS, iterations=1200)
    config = variant_config("isbi", 556, "stage1-long-balanced", 1, long_run)
    assert config.stage1.iterations == config.stage2.iterations == 1200
    assert config.stage1.save_at == [60, 300, 600, 900, 1200]
    shared = tmp_path / "n1200" / "isbi" / "cpsn-stage1-long-seed556" / "stage1"
    (shared / "predictors").mkdir(parents=True)
    (shared / "checkpoints").mkdir()
    (shared / "checkpoints" / "last.pt").write_bytes(b"")
    assert stage1_source("isbi", 556, "stage1-long-balanced", config, 1, long_run) == shared
    # a stage 1 of the 600-iteration protocol is another config: never copied into a 1200-iteration variant
    short = tmp_path / "n600" / "isbi" / "cpsn-stage1-long-seed556" / "stage1"
    shutil.copytree(shared, short)
    assert stage1_source("isbi", 556, "stage1-long-balanced", config, 1) is None
    with pytest.raises(SystemExit, match=r"n1200/isbi/pretrain-seed556/stage1 .*--iterations 1200"):
        stage1_source("isbi", 556, "wide", variant_config("isbi", 556, "wide", 1, long_run), 1, long_run)
