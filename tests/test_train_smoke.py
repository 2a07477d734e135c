"""CPU smoke runs of every training entry point on tiny ISBI crops: checkpoints, validation, exact resume.

The scripts run in a subprocess from an unrelated working directory (no cwd-relative paths); the ``affcons``
commands run in-process. Everything is written under pytest's ``tmp_path``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from affcons.cli import main as cli_main
from affcons.commands.train import main as train_main
from affcons.config import load_config
from affcons.errors import CheckpointError, ConfigError
from affcons.nets import CRACNetworks, load_model, predict_affinities
from affcons.train.checkpoint import load_state
from affcons.train.config import REPO_ROOT, CRACConfig, PretrainConfig

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
CONFIGS = {
    "pretraining_snemi3d": PretrainConfig,
    "seg_snemi3d_d5_u200": CRACConfig,
    "seg_snemi3d_d5_1024_u200_ema": CRACConfig,
    "isbi_pretraining": PretrainConfig,
    "isbi_ws": CRACConfig,
    "isbi_ema": CRACConfig,
    "isbi_pretraining_smoke": PretrainConfig,
    "isbi_ws_smoke": CRACConfig,
    "isbi_ema_smoke": CRACConfig,
}


def _losses(history: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    return [(row["iteration"], row["loss/total"]) for row in rows if "loss/total" in row]


def _script(name: str, *options: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / name), *options],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_loads(name):
    config = load_config(CONFIGS[name], name)
    assert config.kind == ("pretrain" if CONFIGS[name] is PretrainConfig else "crac")
    assert config.model.offsets[:3] == [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


def test_unknown_and_mistyped_keys_are_rejected(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "configs" / "isbi_ws_smoke.yaml").read_text())
    data["pseudo"]["alpha_0"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"unknown key 'pseudo\.alpha_0'"):
        load_config(CRACConfig, path)
    data["pseudo"].pop("alpha_0")
    data["data"]["crop"] = [4, 30, 32]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config(CRACConfig, path)


@pytest.mark.parametrize(
    "command,config",
    [("pretrain", "pretraining_snemi3d"), ("train", "seg_snemi3d_d5_u200"), ("train", "seg_snemi3d_d5_1024_u200_ema")],
)
def test_snemi3d_configs_without_data_name_the_missing_volume(tmp_path, capsys, command, config):
    assert train_main([command, f"-c={config}", "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "data.train.raw" in error and str(REPO_ROOT / "data" / "snemi3d") in error and "does not exist" in error
    assert not (tmp_path / "run" / "crac").exists()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """``scripts/pre_training.py`` on the smoke config, run from an unrelated directory."""
    base = tmp_path_factory.mktemp("pretrain")
    result = _script("pre_training.py", "-c=isbi_pretraining_smoke", "--run-dir", str(base / "run"), cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run"


def test_pretraining_outputs(pretrained):
    for iteration in (2, 3):
        state = load_state(pretrained / "stage1" / "predictors" / f"embedding-{iteration:06d}.pt")
        assert state["iteration"] == iteration and set(state["models"]) == {"embedding"}
    stage1 = load_state(pretrained / "stage1" / "checkpoints" / "last.pt")
    assert {"optimizer", "rng", "config", "models"} <= set(stage1) and stage1["iteration"] == 3
    assert (pretrained / "stage1" / "checkpoints" / "best.pt").is_file()  # validation ran (implicit map)
    exported = load_state(pretrained / "confidence.pt")
    assert exported["stage"] == "confidence" and set(exported["models"]) == {"confidence"}
    assert len(_losses(pretrained / "stage2" / "history.jsonl")) == 3
    assert list((pretrained / "tensorboard" / "stage1").glob("events.out.tfevents.*"))
    with pytest.raises(CheckpointError, match="not a CRAC training checkpoint"):
        load_model(pretrained / "stage1" / "checkpoints" / "last.pt")


def test_pretraining_resume_reproduces_the_losses(pretrained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["pretrain", "-c=isbi_pretraining_smoke", "--run-dir", str(run_dir), "--no-validation"]
    assert cli_main([*common, "--stop-at", "2"]) == 0
    assert not (run_dir / "stage2").exists()
    assert cli_main(common) == 2  # refuses to overwrite without --resume
    assert "pass --resume" in capsys.readouterr().err
    assert cli_main([*common, "--resume", "--stage", "1"]) == 0
    assert cli_main([*common, "--stage", "2", "--stop-at", "2"]) == 0
    assert not (run_dir / "confidence.pt").exists()  # stage 2 unfinished: nothing exported yet
    assert cli_main([*common, "--stage", "2", "--resume"]) == 0
    # the dropout perturbation (stage 1) and the predictor / channel draws (stage 2) use the checkpointed torch RNG
    for stage in ("stage1", "stage2"):
        straight = _losses(pretrained / stage / "history.jsonl")
        assert any(loss > 0 for _, loss in straight)
        assert _losses(run_dir / stage / "history.jsonl") == straight
    assert (run_dir / "confidence.pt").is_file()


def test_ws_script_with_s2_validation_and_checkpoints(pretrained, tmp_path):
    run_dir = tmp_path / "ws"
    result = _script(
        "main.py",
        "-c=isbi_ws_smoke",
        "--run-dir",
        str(run_dir),
        "--confidence-checkpoint",
        str(pretrained / "confidence.pt"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "crac" / "history.jsonl").read_text().splitlines()]
    losses = [row for row in rows if "loss/total" in row]
    assert [row["pseudo/s2_active"] for row in losses] == [0.0, 1.0, 1.0, 1.0]  # gate 1
    assert all(row["loss/pse_imp"] >= 0 and row["loss/sup_exp"] >= 0 for row in losses)
    validations = [row["validation"] for row in rows if "validation" in row]
    assert [v["iteration"] for v in validations] == [2, 4]
    assert all({"voi_split", "voi_merge", "arand", "threshold"} <= set(v) for v in validations)
    state = load_state(run_dir / "crac" / "checkpoints" / "last.pt")
    assert set(state["models"]) == {"embedding", "affinity"} and state["ema"] is None
    assert state["best"]["iteration"] in (2, 4)
    assert sorted(p.name for p in (run_dir / "crac" / "checkpoints").iterdir()) == [
        "best.pt",
        "checkpoint-000002.pt",
        "checkpoint-000004.pt",
        "last.pt",
    ]
    networks, config = load_model(run_dir / "crac" / "checkpoints" / "best.pt")
    assert isinstance(networks, CRACNetworks) and config.variant == "ws" and not networks.training
    out = predict_affinities(networks, torch.rand(4, 32, 32))
    assert out["implicit"].shape == out["explicit"].shape == out["mean"].shape == (1, 12, 4, 32, 32)


@pytest.fixture(scope="module")
def ema_straight(pretrained, tmp_path_factory) -> Path:
    """``scripts/main_ema.py`` on the EMA smoke config, 4 iterations without interruption, with validation."""
    base = tmp_path_factory.mktemp("ema")
    result = _script(
        "main_ema.py",
        "-c=isbi_ema_smoke",
        "--run-dir",
        str(base / "run"),
        "--confidence-checkpoint",
        str(pretrained / "confidence.pt"),
        cwd=base,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "run"


def test_ema_checkpoint_holds_teachers_and_loads(ema_straight):
    state = load_state(ema_straight / "crac" / "checkpoints" / "last.pt")
    assert set(state["ema"]) == {"embedding", "affinity"}
    student = state["models"]["affinity"]["out.weight"]
    teacher = state["ema"]["affinity"]["out.weight"]
    assert not torch.equal(student, teacher)
    networks, config = load_model(ema_straight / "crac" / "checkpoints" / "last.pt", use_ema=True)
    assert config.variant == "ema" and config.ema_decay == 0.9
    assert torch.equal(networks.affinity_net.out.weight, teacher)


def test_ema_resume_reproduces_the_uninterrupted_losses(pretrained, ema_straight, tmp_path):
    run_dir = tmp_path / "run"
    common = [
        "train",
        "-c=isbi_ema_smoke",
        "--run-dir",
        str(run_dir),
        "--confidence-checkpoint",
        str(pretrained / "confidence.pt"),
    ]
    assert cli_main([*common, "--stop-at", "2"]) == 0
    assert load_state(run_dir / "crac" / "checkpoints" / "last.pt")["iteration"] == 2
    assert cli_main([*common, "--resume"]) == 0
    straight = _losses(ema_straight / "crac" / "history.jsonl")
    assert len(straight) == 4 and all(loss > 0 for _, loss in straight)
    assert _losses(run_dir / "crac" / "history.jsonl") == straight
    final = load_state(run_dir / "crac" / "checkpoints" / "last.pt")
    reference = load_state(ema_straight / "crac" / "checkpoints" / "last.pt")
    for key in ("metric", "value", "iteration"):  # the best score survives the resume
        assert final["best"][key] == reference["best"][key]
    for group in ("models", "ema"):
        for name, weights in reference[group].items():
            assert all(torch.equal(weights[key], final[group][name][key]) for key in weights)


def test_resume_refuses_a_changed_config(pretrained, ema_straight, capsys):
    code = cli_main(
        [
            "train",
            "-c=isbi_ema_smoke",
            "--run-dir",
            str(ema_straight),
            "--resume",
            "--no-validation",
            "--no-detach",
            "--confidence-checkpoint",
            str(pretrained / "confidence.pt"),
        ]
    )
    assert code == 2 and "loss.detach_pseudo differ from the checkpoint's config" in capsys.readouterr().err


def test_resume_compares_the_confidence_checkpoint_by_content(pretrained, ema_straight, tmp_path, capsys):
    """A moved copy of the confidence net resumes; a confidence net with other weights is named as the change."""
    run_dir = tmp_path / "run"
    shutil.copytree(ema_straight, run_dir)
    moved = tmp_path / "moved" / "confidence.pt"
    moved.parent.mkdir()
    shutil.copy(pretrained / "confidence.pt", moved)
    common = ["train", "-c=isbi_ema_smoke", "--run-dir", str(run_dir), "--resume", "--no-validation"]
    assert cli_main([*common, "--confidence-checkpoint", str(moved)]) == 0
    state = torch.load(moved, weights_only=False)
    state["models"] = {
        net: {key: value + 1 for key, value in weights.items()} for net, weights in state["models"].items()
    }
    other = tmp_path / "other.pt"
    torch.save(state, other)
    assert cli_main([*common, "--confidence-checkpoint", str(other)]) == 2
    assert "pseudo.s2.checkpoint differ from the checkpoint's config" in capsys.readouterr().err


def test_supervised_baseline_and_missing_confidence_checkpoint(tmp_path, capsys):
    common = ["train", "-c=isbi_ws_smoke", "--iterations", "2", "--no-validation"]
    code = train_main([*common, "--run-dir", str(tmp_path / "a"), "--confidence-checkpoint", str(tmp_path / "none.pt")])
    assert code == 2 and f"checkpoint {tmp_path / 'none.pt'} does not exist" in capsys.readouterr().err
    config = tmp_path / "supervised.yaml"
    data = yaml.safe_load((REPO_ROOT / "configs" / "isbi_ws_smoke.yaml").read_text())
    data["variant"] = "supervised"
    data["validation"]["output"] = "explicit"
    config.write_text(yaml.safe_dump(data))
    assert train_main(["train", f"-c={config}", "--iterations", "2", "--run-dir", str(tmp_path / "b")]) == 0
    state = load_state(tmp_path / "b" / "crac" / "checkpoints" / "last.pt")
    assert set(state["models"]) == {"affinity"}
    rows = _losses(tmp_path / "b" / "crac" / "history.jsonl")
    assert len(rows) == 2
    networks, _ = load_model(tmp_path / "b" / "crac" / "checkpoints" / "last.pt")
    with torch.no_grad():
        assert networks.affinities(torch.rand(4, 32, 32), outputs=("explicit",))["explicit"].shape[1] == 12
        with pytest.raises(CheckpointError, match="not trained"):
            networks.affinities(torch.rand(4, 32, 32))


def _cpsn_quality(*options: str, cwd: Path) -> tuple[dict, str]:
    """Run ``benchmarks/cpsn_quality.py``; its JSON results and its printed table."""
    output = cwd / "quality.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "cpsn_quality.py"), *options, "--json", str(output)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())["results"], result.stdout


@pytest.mark.parametrize("source", ["run", "pretrain"])
def test_cpsn_quality_measures_each_confidence_net_on_the_same_maps(pretrained, ema_straight, tmp_path, source):
    """``benchmarks/cpsn_quality.py`` on a real EMA run (both maps) and on the stage-1 predictors: the exported
    confidence net and the stage-2 checkpoint it was exported from give the same numbers (same crops, same maps,
    same filter), and every figure is a fraction."""
    exported, last = pretrained / "confidence.pt", pretrained / "stage2" / "checkpoints" / "last.pt"
    run = ema_straight if source == "run" else pretrained
    data, printed = _cpsn_quality(
        f"--{source}", str(run), "--confidence", str(exported), str(last), "--crops", "3", cwd=tmp_path
    )
    assert data[str(exported)] == data[str(last)]
    rows = data[str(exported)]
    teachers = {"explicit", "implicit"} if source == "run" else {"predictor-000002", "predictor-000003"}
    assert set(rows) == teachers
    for groups in rows.values():
        assert list(groups) == ["1-1-1", "2-3-3", "3-9-9", "4-27-27"]
        assert list(groups["1-1-1"]["auc_per_offset"]) == ["-1,0,0", "0,-1,0", "0,0,-1"]
        assert list(groups["4-27-27"]["auc_per_offset"]) == ["-4,0,0", "0,-27,0", "0,0,-27"]
        for row in groups.values():
            assert row["pairs"] > 0 and 0 <= row["unfiltered_precision"] <= 1 and 0 <= row["s2_kept"] <= 1
            assert 0 < row["inside_fraction"] <= 1 and 0 <= row["inside_precision"] <= 1
            assert 0 <= row["wrong_high"] <= 1 and 0 <= row["labelled_wrong_high"] <= 1
            aucs = [row["auc"], row["auc_labelled"], row["auc_inside"], *row["auc_per_offset"].values()]
            assert len(row["auc_per_offset"]) == 3 and all(auc is None or 0 <= auc <= 1 for auc in aucs)
    assert "run " in printed and "run:last " in printed  # one labelled block of rows per net


def test_auc_from_histograms_is_the_pairwise_probability():
    from benchmarks.cpsn_quality import BINS, auc_from_histograms

    generator = torch.Generator().manual_seed(0)
    wrong = torch.randint(200, BINS, (300,), generator=generator)  # bin indices; ties across the two sets exist
    right = torch.randint(0, 800, (500,), generator=generator)
    exact = ((wrong[:, None] > right[None]).double() + 0.5 * (wrong[:, None] == right[None]).double()).mean()

    def histogram(bins: torch.Tensor) -> torch.Tensor:
        return torch.bincount(bins, minlength=BINS).double()

    assert auc_from_histograms(histogram(wrong), histogram(right)) == pytest.approx(float(exact), abs=1e-12)
    assert auc_from_histograms(histogram(wrong), torch.zeros(BINS)) is None


def test_pick_takes_the_best_mean_auc_of_the_nearest_groups_of_every_map():
    from benchmarks.cpsn_quality import pick, pick_scores

    def net(explicit: tuple, implicit: tuple, far: float) -> dict:
        rows = {}
        for teacher, (near, second) in (("explicit", explicit), ("implicit", implicit)):
            rows[teacher] = {"1-1-1": {"auc": near}, "2-3-3": {"auc": second}, "3-9-9": {"auc": far}}
        return rows

    results = {
        "a.pt": net((0.6, 0.6), (0.6, 0.6), 0.1),  # the far group does not count
        "b.pt": net((0.9, 0.4), (0.7, 0.5), 0.9),  # mean 0.625
        "c.pt": net((None, 0.8), (0.8, 0.7), 0.1),  # a missing AUC counts as chance: mean 0.7
    }
    assert pick(results) == ("c.pt", pytest.approx(0.7))
    assert pick({"a.pt": results["a.pt"], "b.pt": results["b.pt"]}) == ("b.pt", pytest.approx(0.625))
    assert pick_scores(results) == pytest.approx({"a.pt": 0.6, "b.pt": 0.625, "c.pt": 0.7})


def test_the_s2_operating_curve_counts_the_pairs_below_each_threshold():
    from benchmarks.cpsn_quality import BINS, operating_curve

    scores_wrong = torch.tensor([0.05, 0.25, 0.65, 0.95])  # 4 wrong labels
    scores_right = torch.tensor([0.01, 0.02, 0.15, 0.15, 0.35, 0.45])  # 6 right labels

    def histogram(scores: torch.Tensor) -> torch.Tensor:
        return torch.histc(scores, bins=BINS, min=0.0, max=1.0)

    curve = operating_curve(histogram(scores_wrong), histogram(scores_right), (0.01, 0.1, 0.3, 0.5, 1.0))
    assert curve["0.01"] == {"kept": 0.0, "precision": None}  # 0.01 lies in the bin [0.01, 0.011): not below
    assert curve["0.1"] == pytest.approx({"kept": 0.3, "precision": 2 / 3})
    assert curve["0.3"] == pytest.approx({"kept": 0.6, "precision": 4 / 6})
    assert curve["0.5"] == pytest.approx({"kept": 0.8, "precision": 6 / 8})
    assert curve["1"] == pytest.approx({"kept": 1.0, "precision": 0.6})


def test_the_s2_threshold_is_the_largest_reaching_the_target_precision_on_every_map():
    from benchmarks.cpsn_quality import pick_threshold

    def rows(*curves: dict) -> dict:
        return {
            f"map{i}": {"1-1-1": {"s2_curve": {t: {"kept": k, "precision": p} for t, (k, p) in curve.items()}}}
            for i, curve in enumerate(curves)
        }

    good = {"0.1": (0.05, 0.99), "0.2": (0.10, 0.97), "0.3": (0.20, 0.96), "0.4": (0.4, 0.90)}
    weaker = {"0.1": (0.02, 0.98), "0.2": (0.08, 0.95), "0.3": (0.15, 0.94), "0.4": (0.3, 0.85)}
    assert pick_threshold(rows(good)) == 0.3
    assert pick_threshold(rows(good, weaker)) == 0.2  # every map must reach the target
    never = {"0.1": (0.001, 0.90), "0.2": (0.02, 0.87), "0.3": (0.1, 0.85), "0.4": (0.3, 0.82)}
    assert pick_threshold(rows(never, good)) == 0.2  # none reaches it: the best precision keeping >= 1 %
    with pytest.raises(SystemExit, match="keeps 1 %"):
        pick_threshold(rows({"0.1": (0.0, None)}))
