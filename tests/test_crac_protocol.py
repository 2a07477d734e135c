"""The reduced protocol's bookkeeping: units with a confidence-net variant are named, found and refused."""

import argparse
import json

import pytest

from benchmarks import crac_protocol
from benchmarks.crac_protocol import SETTINGS, unit_arms, unit_order, variant_confidence


def test_variant_units_follow_their_arm_in_protocol_order():
    results = {
        ("isbi", "crac-ema+stage1-long@400"): [],
        ("isbi", "crac-ema"): [],
        ("isbi", "crac-ws+late"): [],
        ("gala", "crac-ws+wide"): [],
    }
    assert unit_arms(results, "isbi") == [
        "supervised",
        "crac-ws",
        "crac-ws+late",
        "crac-ema",
        "crac-ema+stage1-long@400",
        "oracle",
        "no-consistency",
    ]
    assert unit_arms(results, "isbi", ("crac-ema",)) == ["crac-ema", "crac-ema+stage1-long@400"]


def test_units_run_the_protocol_seeds_or_exactly_the_seeds_asked_for_controls_included():
    assert unit_order(["isbi", "gala"], ["supervised", "oracle"], None) == [
        ("isbi", "supervised", 555),
        ("isbi", "oracle", 555),
        ("gala", "supervised", 555),
        ("gala", "oracle", 555),
        ("isbi", "supervised", 556),
        ("gala", "supervised", 556),
        ("isbi", "supervised", 557),
        ("gala", "supervised", 557),
    ]
    assert unit_order(["isbi"], ["oracle", "crac-ema"], {557, 556}) == [
        ("isbi", "oracle", 556),
        ("isbi", "crac-ema", 556),
        ("isbi", "oracle", 557),
        ("isbi", "crac-ema", 557),
    ]
    assert unit_order(["isbi"], [], None) == []


def test_a_variant_unit_without_its_confidence_net_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(crac_protocol, "RESULTS", tmp_path / "results")
    args = argparse.Namespace(cpsn_variant="stage1-long@400", num_workers=1)
    with pytest.raises(SystemExit, match="cpsn_variants.py --volume isbi --seed 556 --variants stage1-long"):
        crac_protocol.run_unit("isbi", "crac-ema", 556, dict(SETTINGS), {}, args)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs" / "n600" / "isbi").exists()


def test_a_variant_names_its_exported_net_or_a_stage2_checkpoint(tmp_path):
    assert variant_confidence(tmp_path, "late", 555) == tmp_path / "cpsn-late-seed555" / "confidence.pt"
    checkpoint = tmp_path / "cpsn-stage1-long-seed556" / "stage2" / "checkpoints" / "checkpoint-000400.pt"
    assert variant_confidence(tmp_path, "stage1-long@400", 556) == checkpoint


def test_a_picked_variant_reads_the_checkpoint_that_cpsn_quality_picked(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "PICKS", tmp_path / "picks")
    volume_runs = tmp_path / "runs" / "isbi"
    with pytest.raises(SystemExit, match="cpsn_quality.py --run .*no-consistency-seed556 .* --pick --json"):
        variant_confidence(volume_runs, "stage1-long@pick", 556)
    record = crac_protocol.pick_record("isbi", "stage1-long", 556)
    record.parent.mkdir(parents=True)
    picked = "runs/crac_protocol/n600/isbi/cpsn-stage1-long-seed556/stage2/checkpoints/checkpoint-000300.pt"
    record.write_text(json.dumps({"picked": {"confidence": picked, "mean_auc": 0.6}}))
    checkpoint = volume_runs / "cpsn-stage1-long-seed556" / "stage2" / "checkpoints" / "checkpoint-000300.pt"
    assert variant_confidence(volume_runs, "stage1-long@pick", 556) == checkpoint
    record.write_text(json.dumps({"picked": {"confidence": "runs/n600/isbi/pretrain-seed556/confidence.pt"}}))
    with pytest.raises(SystemExit, match="not a stage-2 checkpoint of cpsn-stage1-long-seed556"):
        variant_confidence(volume_runs, "stage1-long@pick", 556)
