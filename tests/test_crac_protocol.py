"""The reduced protocol's bookkeeping: units with a confidence-net variant are named, found and refused."""

import argparse
import json

import pytest

from benchmarks import crac_protocol
from benchmarks.crac_protocol import SETTINGS, arm_config, unit_arms, unit_label, unit_order, variant_confidence


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
        "oracle-filter",
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


@pytest.mark.parametrize(
    ("arm", "source", "weight"),
    [
        ("crac-ws", "teacher", 1.0),
        ("oracle", "oracle", 1.0),
        ("oracle-filter", "oracle_filter", 1.0),
        ("no-consistency", "teacher", 0.0),
    ],
)
def test_controls_change_only_the_pseudo_labels_or_their_weight(arm, source, weight):
    config = arm_config("isbi", arm, 555, dict(SETTINGS), 1, None)
    reference = arm_config("isbi", "crac-ws", 555, dict(SETTINGS), 1, None)
    assert (config.pseudo.source, config.loss.pseudo_weight) == (source, weight)
    same_otherwise = (
        config.model_copy(update={"pseudo": reference.pseudo, "loss": reference.loss}).model_dump()
        == reference.model_dump()
    )
    assert same_otherwise and config.variant == "ws"


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


def test_an_s2_threshold_names_the_unit_and_reaches_the_config(tmp_path):
    assert unit_label("crac-ws", None, None) == "crac-ws"
    assert unit_label("crac-ws", "stage1-long-balanced@pick", "0.30") == "crac-ws+stage1-long-balanced@pick+s2t0.3"
    assert unit_label("crac-ema", "x@pick", "pick") == "crac-ema+x@pick+s2t@pick"
    confidence = tmp_path / "confidence.pt"
    default = arm_config("isbi", "crac-ws", 555, dict(SETTINGS), 1, confidence)
    lowered = arm_config("isbi", "crac-ws", 555, dict(SETTINGS), 1, confidence, 0.3)
    assert default.pseudo.s2.threshold == 0.5 and lowered.pseudo.s2.threshold == 0.3
    assert lowered.model_dump(exclude={"pseudo"}) == default.model_dump(exclude={"pseudo"})
    for bad in ("1.5", "0", "high"):
        with pytest.raises(SystemExit):
            crac_protocol.main(["--s2-threshold", bad, "--table"])


def test_a_picked_s2_threshold_comes_from_the_pick_record(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "PICKS", tmp_path)
    record = tmp_path / "isbi-no-consistency-seed556-stage1-long-balanced.json"
    assert crac_protocol.unit_s2_threshold("isbi", "stage1-long-balanced@pick", 556, None) is None
    assert crac_protocol.unit_s2_threshold("isbi", None, 556, "0.25") == 0.25
    with pytest.raises(SystemExit, match="names no S2 threshold"):
        crac_protocol.unit_s2_threshold("isbi", "stage1-long-balanced@pick", 556, "pick")
    record.write_text(json.dumps({"picked": {"confidence": "x.pt"}}))
    with pytest.raises(SystemExit, match="names no S2 threshold"):
        crac_protocol.unit_s2_threshold("isbi", "stage1-long-balanced@pick", 556, "pick")
    record.write_text(json.dumps({"picked": {"confidence": "x.pt", "s2_threshold": 0.2}}))
    assert crac_protocol.unit_s2_threshold("isbi", "stage1-long-balanced@pick", 556, "pick") == 0.2
    with pytest.raises(SystemExit, match="needs --cpsn-variant NAME@pick"):
        crac_protocol.unit_s2_threshold("isbi", "stage1-long-balanced@400", 556, "pick")


def test_picks_of_a_longer_run_are_recorded_and_read_beside_the_protocols(tmp_path, monkeypatch):
    monkeypatch.setattr(crac_protocol, "PICKS", tmp_path)
    assert crac_protocol.pick_record("isbi", "x", 555) == tmp_path / "isbi-no-consistency-seed555-x.json"
    longer = crac_protocol.pick_record("isbi", "x", 555, 1200)
    assert longer == tmp_path / "n1200" / "isbi-no-consistency-seed555-x.json"
    volume_runs = tmp_path / "runs" / "n1200" / "isbi"
    with pytest.raises(SystemExit, match=r"--pick --json .*/n1200/isbi-no-consistency-seed555-x\.json"):
        variant_confidence(volume_runs, "x@pick", 555, 1200)
    longer.parent.mkdir()
    picked = "runs/crac_protocol/n1200/isbi/cpsn-x-seed555/stage2/checkpoints/checkpoint-000700.pt"
    longer.write_text(json.dumps({"picked": {"confidence": picked, "s2_threshold": 0.3}}))
    assert variant_confidence(volume_runs, "x@pick", 555, 1200).name == "checkpoint-000700.pt"
    assert crac_protocol.unit_s2_threshold("isbi", "x@pick", 555, "pick", 1200) == 0.3
    with pytest.raises(SystemExit, match="names no S2 threshold"):  # the 600-iteration record does not exist
        crac_protocol.unit_s2_threshold("isbi", "x@pick", 555, "pick")


@pytest.mark.parametrize("table", sorted(crac_protocol.RESULTS.glob("n*/table.txt")), ids=lambda path: path.parent.name)
def test_each_committed_table_is_what_the_committed_results_print(table, capsys):
    """The tables the README quotes are ``--table``'s output of the committed JSONs (regenerate them when a unit lands:
    ``python benchmarks/crac_protocol.py --iterations N --table > benchmarks/results/crac_protocol/nN/table.txt``)."""
    iterations = table.parent.name.removeprefix("n")
    assert crac_protocol.main(["--table", "--iterations", iterations]) == 0
    assert capsys.readouterr().out == table.read_text()
