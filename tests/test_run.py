"""``affcons run``: raw (HDF5, imported) -> prediction -> segmentation -> evaluation in one run directory, on real
daisy workers with a tiny random network on an 8 x 64 x 64 crop of the bundled ISBI volume; a re-run resumes."""

import json
import shutil

import numpy as np
import pytest
import yaml

from affcons.cli import main as cli_main
from affcons.config import load_config
from affcons.errors import ConfigError
from blockwise.config import JobConfig
from blockwise.testing import tree_snapshot
from tests.data_paths import ISBI
from tests.test_predict import make_checkpoint


def job_config(tmp_path, **changes) -> dict:
    config = {
        "raw": f"{ISBI}:raw",
        "roi_offset": [500, 400, 400],
        "roi_shape": [400, 256, 256],  # sections 10-17, 64 x 64 voxels
        "predict": {
            "checkpoint": str(tmp_path / "model.pt"),
            "channels": "short",
            "patch": [6, 64, 64],
            "margin": [1, 16, 16],
            "block_size": [400, 128, 256],
            "chunk_shape": [4, 32, 32],
        },
        "segment": {
            "extract": {"thresholds": [0.4, 0.6]},
            "block_size": [400, 128, 256],
            "context": [100, 64, 64],
            "fragments": {"per_slice": True},
        },
        "evaluate": {
            "ground_truth": f"{ISBI}:labels/neurites_3dcc",
            "roi_offset": [700, 400, 400],
            "roi_shape": [200, 256, 256],
        },
        "execution": {"workers": 1},
    }
    config.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_main_job_runs_every_stage_into_one_run_dir_and_resumes(tmp_path, capsys):
    make_checkpoint(tmp_path / "model.pt")
    config = job_config(tmp_path)
    run_dir = tmp_path / "run"
    assert cli_main(["run", "-c", str(config), "--run-dir", str(run_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert set(summary["stages"]) == {"import", "predict", "segment", "evaluate"}
    assert summary["stages"]["predict"]["task"]["processed"] == 2
    assert summary["stages"]["segment"]["status"] == "complete"
    rows = summary["metrics"]["per_threshold"]
    assert [row["threshold"] for row in rows] == [0.4, 0.6] and all(row["voi"] >= 0 for row in rows)
    assert summary["metrics"]["roi_shape"] == [200, 256, 256]
    assert rows == scored_segmentations(tmp_path / "run" / "out.zarr", summary["metrics"], [0.4, 0.6])
    outputs = {entry["name"]: entry for entry in summary["outputs"]}
    assert set(outputs) == {"raw", "affinities", "disagreement", "fragments", "segmentation_0.40", "segmentation_0.60"}
    assert outputs["affinities"]["shape"] == [3, 8, 64, 64] and outputs["affinities"]["offset_nm"] == [500, 400, 400]
    assert outputs["raw"]["voxel_size_nm"] == [50, 4, 4] and outputs["raw"]["shape"] == [30, 512, 512]
    for entry in outputs.values():
        assert entry["path"] in printed and str(entry["offset_nm"]) in printed
    report = (run_dir / "report.html").read_text()
    assert 'id="metrics"' in report and 'id="slices"' in report and "data:image/png;base64," in report
    assert f"affcons view {run_dir}" in printed
    assert (run_dir / "predict" / "tracking").is_dir() and (run_dir / "segment" / "rag.db").is_file()

    # a finished run: re-running it starts nothing and keeps the first run's summary
    first_summary = (run_dir / "summary.json").read_bytes()
    assert cli_main(["run", "-c", str(config), "--run-dir", str(run_dir), "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (run_dir / "summary.json").read_bytes() == first_summary
    assert not (run_dir / "predict" / "logs").exists() or len(list((run_dir / "predict" / "logs").rglob("*.err"))) == 1

    # an output gone: the run is redone where needed; blocks with records start no worker
    shutil.rmtree(run_dir / "out.zarr" / "segmentation_0.60")
    assert cli_main(["run", "-c", str(config), "--run-dir", str(run_dir), "--quiet"]) == 0
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["status"] == "complete"
    assert again["stages"]["predict"]["task"]["skipped"] == 2 and again["stages"]["predict"]["task"]["processed"] == 0
    assert again["metrics"]["per_threshold"] == rows

    # a copied run directory is refused before anything runs, naming where the run was made, and left as it was
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = tree_snapshot(copy)
    assert cli_main(["run", "-c", str(config), "--run-dir", str(copy), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"holds a run made in {run_dir}" in error and f"--run-dir {run_dir}" in error, error
    assert tree_snapshot(copy) == before


def scored_segmentations(out, metrics, thresholds) -> list[dict]:
    """The metric rows of each written ``segmentation_<t>`` scored whole in the evaluation ROI (:func:`evaluate`)."""
    from funlib.geometry import Roi

    from affcons.evaluate import evaluate
    from affcons.io import open_volume
    from blockwise.layout import segmentation_name

    roi = Roi(metrics["roi_offset"], metrics["roi_shape"])
    truth = np.asarray(open_volume(f"{ISBI}:labels/neurites_3dcc", voxel_size=(50, 4, 4))[roi])
    rows = []
    for threshold in thresholds:
        segmentation = np.asarray(open_volume(f"{out}/{segmentation_name(threshold)}")[roi])
        segments = len(np.unique(segmentation[segmentation != 0]))
        rows.append({"threshold": threshold, "segments": segments, **evaluate(segmentation, truth)})
    return rows


def test_job_config_rejects_unknown_keys(tmp_path):
    config = job_config(tmp_path, predict={"checkpoint": "m.pt", "margins": [1, 16, 16]})
    with pytest.raises(ConfigError, match=r"unknown key 'predict\.margins'"):
        load_config(JobConfig, config)


def test_demo_config_is_valid():
    config = load_config(JobConfig, "demo")
    assert config.predict.checkpoint == "models/demo.pt" and config.evaluate is not None


def test_job_execution_is_the_execution_section_of_segment_and_predict(tmp_path):
    from blockwise.job import Job

    path = job_config(tmp_path, execution={"workers": 3, "max_worker_restarts": 4, "launcher": {"type": "slurm"}})
    job = Job(load_config(JobConfig, path), tmp_path / "run", quiet=True)
    for options in (job.predict_options(f"{ISBI}:raw"), job.segment_options()):
        execution = options.execution
        assert execution.workers == 3 and execution.max_worker_restarts == 4
        assert execution.launcher.type == "slurm" and execution.progress is False  # --quiet
    with pytest.raises(ConfigError, match=r"execution\.workers"):
        load_config(JobConfig, job_config(tmp_path, execution={"workers": 0}))


def test_raw_without_a_voxel_size_is_refused_naming_the_run_option_which_then_works(tmp_path, capsys):
    import h5py

    with h5py.File(ISBI, "r") as source, h5py.File(tmp_path / "bare.h5", "w") as bare:
        bare["raw"] = source["raw"][10:18, 400:464, 400:464]  # no resolution attribute
    make_checkpoint(tmp_path / "model.pt")
    config = job_config(tmp_path, raw=str(tmp_path / "bare.h5:raw"), roi_offset=None, roi_shape=None, evaluate=None)
    argv = ["run", "-c", str(config), "--run-dir", str(tmp_path / "run"), "--dry-run"]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err
    assert "no voxel size" in error and "--voxel-size Z Y X" in error, error
    assert cli_main([*argv, "--voxel-size", "50", "4", "4"]) == 0
    assert "50, 4, 4" in capsys.readouterr().out


def test_a_changed_config_for_an_existing_run_dir_is_refused_before_any_stage(tmp_path, capsys):
    from blockwise.job import Job

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Job(load_config(JobConfig, job_config(tmp_path)), run_dir, quiet=True).write_config()  # an earlier run's record
    before = sorted(p.name for p in run_dir.iterdir())
    changed = job_config(tmp_path, segment={"extract": {"thresholds": [0.5]}})
    assert cli_main(["run", "-c", str(changed), "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr()
    assert "[1/4]" not in error.out, "a stage ran"
    assert "written with a different config" in error.err and "Use another --run-dir" in error.err, error.err
    assert "--out" not in error.err.split("Use another")[1]  # affcons run has no --out
    assert sorted(p.name for p in run_dir.iterdir()) == before
