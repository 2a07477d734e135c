"""``affcons predict`` on real daisy workers and real zarr: blockwise equals whole-volume prediction, resume after a
kill gives identical bytes, failures are retried, listed and exit non-zero, and bad inputs are refused clearly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from affcons.cli import main as cli_main
from affcons.config import validate
from affcons.errors import CheckpointError, ConfigError, OutputExistsError, VolumeError
from affcons.io import create_volume, open_volume
from affcons.nets import load_model
from affcons.predict import PatchGrid, Predictor, predict_volume
from affcons.train.config import CRACConfig
from blockwise.config import PredictOptions
from blockwise.faults import FAULT_ENV
from blockwise.gpus import claim_gpu
from blockwise.predict import resolve
from tests.test_predict import MARGIN, PATCH, make_checkpoint, make_raw, tiny_config

REPO = Path(__file__).resolve().parents[1]
#: 10 x 64 x 80 voxels: not a whole number of 4 x 32 x 32 tiles, so the last blocks are shrunk and their tiles overhang
RAW_SHAPE = (10, 64, 80)


def predict_args(workdir: Path, out: str, block=(4, 32, 32), *extra: str) -> list[str]:
    return [
        "predict",
        "--checkpoint",
        str(workdir / "model.pt"),
        "--raw",
        str(workdir / "in.zarr/raw"),
        "--out",
        str(workdir / out),
        "--block-size",
        *map(str, block),
        "--workers",
        "1",
        "--patch",
        *map(str, PATCH),
        "--margin",
        *map(str, MARGIN),
        "--channels",
        "short",
        "--chunk-shape",
        "4",
        "32",
        "32",
        "--batch-size",
        "3",
        "--threads",
        "1",
        "--quiet",
        *extra,
    ]


def chunk_bytes(dataset: Path) -> dict[str, bytes]:
    """Every stored chunk file of a zarr v3 dataset, by relative path."""
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted((dataset / "c").rglob("*")) if p.is_file()}


def summary(workdir: Path, out: str) -> dict:
    container, name = out.split("/")
    return json.loads((workdir / f"{Path(container).stem}.{name}.predict-run" / "summary.json").read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny model, real raw, and the reference outputs: one whole-volume pass in memory and one blockwise run."""
    workdir = tmp_path_factory.mktemp("predict")
    make_checkpoint(workdir / "model.pt")
    make_raw(str(workdir / "in.zarr/raw"), shape=RAW_SHAPE)
    networks, _ = load_model(workdir / "model.pt")
    torch.set_num_threads(1)
    predictor = Predictor(networks, PatchGrid(PATCH, MARGIN), "mean", channels=3, batch_size=2)  # the default map
    np.save(workdir / "whole.npy", predict_volume(predictor, open_volume(str(workdir / "in.zarr/raw")))["affs"])
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        code = cli_main(predict_args(workdir, "ref.zarr/affs"))
    finally:
        os.chdir(cwd)
    if code != 0:
        raise RuntimeError(f"reference run failed with exit code {code}")
    return workdir


def test_blockwise_equals_whole_volume_for_two_block_sizes(workdir):
    whole = np.load(workdir / "whole.npy")
    raw = open_volume(str(workdir / "in.zarr/raw"))
    assert cli_main(predict_args(workdir, "big.zarr/affs", (8, 32, 64), "--workers", "2")) == 0
    for out, blocks in (("ref.zarr/affs", 3 * 2 * 3), ("big.zarr/affs", 2 * 2 * 2)):
        affs = open_volume(str(workdir / out))
        assert affs.roi == raw.roi and affs.voxel_size == raw.voxel_size and affs.dtype == np.uint8
        assert tuple(affs.shape) == (3, *RAW_SHAPE) and tuple(affs.chunk_shape) == (3, 4, 32, 32)
        data = affs[affs.roi]
        difference = np.abs(data.astype(int) - whole.astype(int))
        assert difference.max() <= 1, f"{out}: max difference {difference.max()} / 255 from whole-volume prediction"
        attrs = zarr.open_array(str(workdir / out)).attrs
        assert attrs["complete"] is True and attrs["voxel_size"] == [50, 4, 4] and attrs["offset"] == [100, 40, 24]
        provenance = attrs["affcons_predict"]
        assert provenance["config"]["map"] == "mean" and len(provenance["fingerprint"]) == 16
        report = summary(workdir, out)["task"]
        assert (report["blocks"], report["failed"], report["orphaned"]) == (blocks, 0, 0)
    assert len(np.unique(whole)) > 20


def test_rerun_of_a_finished_run_skips_every_block_and_keeps_the_bytes(workdir):
    before = chunk_bytes(workdir / "ref.zarr/affs")
    assert cli_main(predict_args(workdir, "ref.zarr/affs")) == 0
    report = summary(workdir, "ref.zarr/affs")["task"]
    assert report["skipped"] == report["blocks"] == 18 and report["processed"] == 0
    assert chunk_bytes(workdir / "ref.zarr/affs") == before


def test_killed_driver_resumes_to_identical_bytes(workdir):
    """SIGKILL the whole run (driver and workers) after the first finished block, re-run: same bytes as the
    uninterrupted reference run, and the re-run skips the blocks that were done."""
    env = {
        **os.environ,
        FAULT_ENV: json.dumps({"step": "predict", "action": "sleep", "seconds": 0.7}),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "affcons.cli", *predict_args(workdir, "killed.zarr/affs")]
    process = subprocess.Popen(
        command, cwd=workdir, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    timers = workdir / "killed.affs.predict-run" / "timers" / "predict"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            if timers.is_dir() and sum(len(p.read_text().splitlines()) for p in timers.glob("*.jsonl")) >= 2:
                break
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    attrs = zarr.open_array(str(workdir / "killed.zarr/affs")).attrs
    assert attrs["complete"] is False
    assert cli_main(predict_args(workdir, "killed.zarr/affs")) == 0
    report = summary(workdir, "killed.zarr/affs")["task"]
    assert report["skipped"] >= 2 and report["processed"] == report["blocks"] - report["skipped"]
    assert chunk_bytes(workdir / "killed.zarr/affs") == chunk_bytes(workdir / "ref.zarr/affs")
    assert zarr.open_array(str(workdir / "killed.zarr/affs")).attrs["complete"] is True


def test_worker_killed_mid_block_is_restarted_and_the_block_redone(workdir, monkeypatch):
    """The worker dies (os._exit) after writing part of block 4; daisy restarts it and retries the block."""
    marker = workdir / "died-once"
    fault = {"step": "predict", "block": 4, "action": "exit", "point": "partial-write", "once": str(marker)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(fault))
    assert cli_main(predict_args(workdir, "died.zarr/affs")) == 0
    assert marker.exists()
    report = summary(workdir, "died.zarr/affs")["task"]
    assert report["worker_restarts"] >= 1 and report["failed"] == 0
    assert chunk_bytes(workdir / "died.zarr/affs") == chunk_bytes(workdir / "ref.zarr/affs")


def test_persistent_failure_exits_1_lists_the_block_and_a_rerun_completes(workdir, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, json.dumps({"step": "predict", "block": 5, "action": "raise"}))
    assert cli_main(predict_args(workdir, "failed.zarr/affs", (4, 32, 32), "--max-retries", "0")) == 1
    error = capsys.readouterr().err
    assert "1 failed" in error and "1 block(s) not done (grid index @ write ROI nm): 5 @ [" in error
    result = summary(workdir, "failed.zarr/affs")
    assert result["status"] == "failed" and [b["block"] for b in result["task"]["failed_blocks"]] == [5]
    assert zarr.open_array(str(workdir / "failed.zarr/affs")).attrs["complete"] is False
    monkeypatch.delenv(FAULT_ENV)
    assert cli_main(predict_args(workdir, "failed.zarr/affs")) == 0
    assert summary(workdir, "failed.zarr/affs")["task"]["processed"] == 1
    assert chunk_bytes(workdir / "failed.zarr/affs") == chunk_bytes(workdir / "ref.zarr/affs")


def test_existing_output_of_another_config_is_refused_and_untouched(workdir, capsys):
    before = chunk_bytes(workdir / "ref.zarr/affs")
    assert cli_main(predict_args(workdir, "ref.zarr/affs", (4, 32, 32), "--map", "explicit")) == 2
    error = capsys.readouterr().err
    assert "different config" in error and "map: 'mean' -> 'explicit'" in error
    assert chunk_bytes(workdir / "ref.zarr/affs") == before
    foreign = workdir / "foreign.zarr/affs"
    create_volume(str(foreign), open_volume(str(workdir / "in.zarr/raw")).roi, (50, 4, 4), np.uint8, num_channels=3)
    with pytest.raises(OutputExistsError, match="not written by affcons predict"):
        from blockwise.predict import PredictDriver

        options = _options(workdir, out=str(foreign))
        PredictDriver(resolve(options)[0]).check_existing()


def _options(workdir: Path, **changes) -> PredictOptions:
    options = {
        "checkpoint": str(workdir / "model.pt"),
        "raw": str(workdir / "in.zarr/raw"),
        "out": str(workdir / "x.zarr/affs"),
        "patch": PATCH,
        "margin": MARGIN,
        "channels": "short",
        "chunk_shape": (4, 32, 32),
        "block_size": (200, 128, 128),
        "run_dir": str(workdir / "x-run"),
    }
    options.update(changes)
    return PredictOptions.model_validate(options)


def test_default_map_of_a_supervised_checkpoint_is_its_explicit_map(workdir, capsys):
    """``--map auto`` (the default) resolves against the checkpoint: a sparse-supervision baseline trained only the
    explicit net, so its run writes (and records) the explicit map; asking it for the implicit map is refused."""
    data = tiny_config().model_dump(mode="json")
    data["variant"], data["validation"]["output"] = "supervised", "explicit"
    checkpoint = make_checkpoint(workdir / "supervised.pt", config=validate(CRACConfig, data, "test"))
    networks, _ = load_model(checkpoint)
    assert networks.available == ("explicit",)
    predictor = Predictor(networks, PatchGrid(PATCH, MARGIN), "explicit", channels=3, batch_size=2)
    whole = predict_volume(predictor, open_volume(str(workdir / "in.zarr/raw")))["affs"]
    args = predict_args(workdir, "supervised.zarr/affs")
    args[args.index("--checkpoint") + 1] = str(checkpoint)
    assert cli_main(args) == 0
    written = open_volume(str(workdir / "supervised.zarr/affs"))
    assert np.abs(written[written.roi].astype(int) - whole.astype(int)).max() <= 1
    assert (
        zarr.open_array(str(workdir / "supervised.zarr/affs")).attrs["affcons_predict"]["config"]["map"] == "explicit"
    )
    capsys.readouterr()
    args[args.index("--out") + 1] = str(workdir / "supervised-implicit.zarr/affs")
    assert cli_main([*args, "--map", "implicit"]) == 2
    error = capsys.readouterr().err
    assert "needs the implicit output, which is not trained in this model" in error
    assert not (workdir / "supervised-implicit.zarr").exists()
    disagreement = str(workdir / "supervised-implicit.zarr/disagreement")  # needs the implicit map too
    assert cli_main([*args, "--disagreement", disagreement]) == 2
    assert "with the disagreement map needs the implicit output" in capsys.readouterr().err
    assert not (workdir / "supervised-implicit.zarr").exists()


def test_checkpoint_that_does_not_match_its_config_is_a_checkpoint_error(workdir, capsys):
    from affcons.train.checkpoint import load_state, save_checkpoint

    state = load_state(workdir / "model.pt")
    state["config"]["model"]["filters"] = [4, 8, 8, 16, 32]  # the weights have 16 channels at the centre
    save_checkpoint(workdir / "mismatch.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="weights do not match the recorded config"):
        resolve(_options(workdir, checkpoint=str(workdir / "mismatch.pt")))
    args = predict_args(workdir, "y.zarr/affs")
    args[args.index("--checkpoint") + 1] = str(workdir / "missing.pt")
    assert cli_main(args) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert not (workdir / "y.zarr").exists()


def test_raw_with_a_channel_axis_or_another_voxel_size_is_a_volume_error(workdir, tmp_path):
    from funlib.geometry import Roi

    create_volume(
        str(tmp_path / "bad.zarr/raw4d"), Roi((0, 0, 0), (400, 256, 256)), (50, 4, 4), np.uint8, num_channels=2
    )
    with pytest.raises(VolumeError, match=r"expected 3 axes \(z, y, x\) of grey values, got 4"):
        resolve(_options(workdir, raw=str(tmp_path / "bad.zarr/raw4d")))
    create_volume(str(tmp_path / "bad.zarr/raw40"), Roi((0, 0, 0), (320, 256, 256)), (40, 4, 4), np.uint8)
    with pytest.raises(
        VolumeError,
        match=r"voxel size \(40, 4, 4\) nm differs from the model's training voxel size "
        r"\(50, 4, 4\) nm",
    ):
        resolve(_options(workdir, raw=str(tmp_path / "bad.zarr/raw40"), block_size=(160, 128, 128)))
    config, _ = resolve(
        _options(workdir, raw=str(tmp_path / "bad.zarr/raw40"), model_voxel_size=(40, 4, 4), block_size=(160, 128, 128))
    )
    assert config.voxel_size == (40, 4, 4)


def test_block_that_is_not_a_whole_number_of_tiles_is_a_config_error(workdir):
    with pytest.raises(ConfigError, match=r"not a whole number of output tiles \[4, 32, 32\]"):
        resolve(_options(workdir, block_size=(200, 96, 128), chunk_shape=(4, 32, 32)))
    with pytest.raises(ConfigError, match="not a multiple of the output chunk shape"):
        resolve(_options(workdir, block_size=(200, 128, 128), chunk_shape=(4, 64, 48)))


def test_gpu_claims_are_exclusive_per_worker(tmp_path):
    entries = ["GPU-8f6c1a2b", "MIG-GPU-8f6c1a2b/1/0"]  # the driver's CUDA_VISIBLE_DEVICES entries
    first, handle0 = claim_gpu(entries, tmp_path)
    second, handle1 = claim_gpu(entries, tmp_path)
    assert (first, second) == tuple(entries)
    with pytest.raises(RuntimeError, match=r"no free GPU among"):
        claim_gpu(entries, tmp_path)
    handle0.close()  # a dead worker's lock goes with its file descriptors
    assert claim_gpu(entries, tmp_path)[0] == entries[0]
    handle1.close()


def test_gpu_worker_takes_the_drivers_entry_and_fails_at_once_without_a_gpu(workdir, tmp_path, monkeypatch):
    """A local GPU worker sets CUDA_VISIBLE_DEVICES to the driver's entry of its GPU (here the 5th physical GPU of a
    driver started with CUDA_VISIBLE_DEVICES=4,5,6,7), never to the index it has in the driver's numbering; on a
    machine without that GPU it stops at set-up with an error that says what to do."""
    from blockwise.steps.predict import PredictStep

    config, _ = resolve(_options(workdir, run_dir=str(tmp_path / "run")))
    config = config.model_copy(update={"device": "cuda", "gpus": [1], "gpu_entries": ["5"]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    step = PredictStep(config)
    with pytest.raises(RuntimeError, match=r"sees no GPU \(CUDA_VISIBLE_DEVICES=5\) but the run's device is cuda"):
        step.setup()
    step.teardown()


def test_cluster_gpu_workers_ask_the_scheduler_for_a_gpu_and_fail_clearly_without_one(workdir, tmp_path, capfd):
    from blockwise.config import LauncherConfig
    from blockwise.launchers import worker_command
    from blockwise.steps.predict import PredictStep

    config, _ = resolve(_options(workdir, run_dir=str(tmp_path / "run"), device="cuda", execution=CLUSTER))
    assert config.device == "cuda" and config.gpus is None and config.precision == "auto"  # resolved on the node
    step = PredictStep(config)
    srun = worker_command(LauncherConfig(type="slurm", extra_args=["-p", "gpu"]), "C.yaml", step)
    assert srun[:4] == ["srun", "--gres=gpu:1", "-p", "gpu"]
    own = worker_command(LauncherConfig(type="slurm", extra_args=["--gres=gpu:a100:1"]), "C.yaml", step)
    assert own[:2] == ["srun", "--gres=gpu:a100:1"] and "--gres=gpu:1" not in own
    bsub = worker_command(LauncherConfig(type="lsf"), "C.yaml", step)
    assert bsub[:4] == ["bsub", "-K", "-gpu", "num=1"]
    with pytest.raises(ConfigError, match="device auto is decided on the driver's node"):
        resolve(_options(workdir, run_dir=str(tmp_path / "run2"), execution=CLUSTER))

    stand_ins = str(REPO / "tests" / "bin")
    environment = dict(os.environ, PATH=f"{stand_ins}{os.pathsep}{os.environ['PATH']}")
    argv = predict_args(workdir, "gpu.zarr/affs", (4, 32, 32), "--device", "cuda", "--launcher", "slurm")
    config_file = tmp_path / "predict.yaml"
    config_file.write_text("execution: {max_worker_restarts: 1}\n")
    argv += ["-c", str(config_file), "--run-dir", str(tmp_path / "gpu-run")]
    completed = subprocess.run([sys.executable, "-m", "affcons.cli", *argv], env=environment, capture_output=True)
    assert completed.returncode == 1
    report = completed.stderr.decode().split("affcons predict: error: ", 1)[1]
    assert "last worker error: " in report and "sees no GPU (CUDA_VISIBLE_DEVICES=" in report


CLUSTER = {"launcher": {"type": "slurm"}}
