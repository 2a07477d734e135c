"""The cluster path: daisy gets zero-argument worker functions that start ``python -m blockwise.worker`` through
srun (SLURM), sbatch --wait (SLURM) or bsub -K (LSF). Stand-ins in ``tests/bin`` put on PATH run the command
locally; the worker rebuilds its step from ``RUN_DIR/config.yaml`` alone and connects back through
``DAISY_CONTEXT``. The result is byte-identical to the local launcher's."""

import os
from pathlib import Path

import pytest

from affcons.config import load_config
from blockwise.config import LauncherConfig, SegmentConfig
from blockwise.launchers import worker_command
from blockwise.steps.extract import ExtractStep
from blockwise.testing import chunk_digests, reference_run, reliability_argv, run_cli

STAND_INS = Path(__file__).parent / "bin"


@pytest.fixture
def cluster_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{STAND_INS}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "launcher.log"
    monkeypatch.setenv("AFFCONS_TEST_LAUNCHER_LOG", str(log))
    return log


@pytest.mark.parametrize("launcher, tool", [("slurm", "srun"), ("lsf", "bsub")])
def test_cluster_launcher_runs_workers_through_the_scheduler_command(cluster_path, tmp_path, launcher, tool):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    extra = ["--launcher", launcher, "--launcher-args=-J affcons-test"]
    assert run_cli(reliability_argv(out, workers=1, extra=extra)) == 0
    calls = cluster_path.read_text().splitlines()
    steps = [line.split("--step ")[1].split()[0] for line in calls]
    assert sorted(set(steps)) == ["edges", "extract", "fragments"]
    assert all(line.startswith(f"{tool} {'-K ' if tool == 'bsub' else ''}-J affcons-test ") for line in calls)
    assert any("--thresholds 0.30 0.50 0.70" in line for line in calls if "--step extract" in line)
    assert chunk_digests(out) == digests


def test_worker_commands_of_each_launcher(tmp_path):
    out, _ = reference_run()
    config = load_config(SegmentConfig, out.parent / f"{out.stem}.affcons-run" / "config.yaml")
    step = ExtractStep(config, thresholds=[0.5])
    tail = ["-m", "blockwise.worker", "--config", "C.yaml", "--step", "extract", "--thresholds", "0.50"]
    srun = worker_command(LauncherConfig(type="slurm", extra_args=["-p", "cpu"], python="py"), "C.yaml", step)
    assert srun == ["srun", "-p", "cpu", "py", *tail]
    sbatch = worker_command(LauncherConfig(type="slurm", slurm_submit="sbatch", python="py"), "C.yaml", step)
    assert sbatch == ["sbatch", "--wait", "--wrap", "py " + " ".join(tail)]
    bsub = worker_command(LauncherConfig(type="lsf", extra_args=["-q", "short"], python="py"), "C.yaml", step)
    assert bsub == ["bsub", "-K", "-q", "short", "py", *tail]
