"""Failure scenarios of an operator's day, each on real daisy workers, real zarr and a real graph store: a full disk,
a driver killed at every point where it creates something, an offset without a shape, many thresholds, affinities
that would give silently wrong results, a deleted input chunk, a corrupt chunk, workers that keep dying, two
drivers on one run directory, and a graph store password that must never reach a file, a log or a message."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affcons.secrets import PASSWORD_ENV, redact, split_password, with_password
from affcons.synthetic import degraded_affinities
from blockwise.faults import FAULT_ENV
from blockwise.layout import RunDir, segment_run_dir, update_attrs
from blockwise.testing import chunk_digests, load_labels, run_cli, segment_argv, write_affinities
from tests.mongo_server import AuthProxy, with_database

BLOCK = (20, 50, 50)
CONTEXT = (4, 8, 8)
THRESHOLDS = (0.4, 0.6)


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> dict:
    """Affinities of a gala crop (20 x 50 x 100 at 10 nm, float32, chunks 20 x 50 x 50: 2 blocks) and the chunk
    digests of one clean run."""
    labels, voxel_size = load_labels("gala")
    root = tmp_path_factory.mktemp("reliability")
    path = str(root / "in.zarr" / "affs")
    write_affinities(path, degraded_affinities(labels[:20, :50, :100], seed=4), voxel_size, chunk_shape=BLOCK)
    reference = root / "reference.zarr"
    assert run_cli(argv(path, reference)) == 0
    return {"affs": path, "digests": chunk_digests(reference), "reference": reference}


def argv(affs, out, thresholds=THRESHOLDS, extra=()) -> list[str]:
    return segment_argv(str(affs), str(out), thresholds, BLOCK, CONTEXT, workers=2, extra=list(extra))


def summary_of(out) -> dict:
    return json.loads(RunDir(segment_run_dir(out)).summary.read_text())


def all_files(root) -> list[Path]:
    return [path for path in Path(root).rglob("*") if path.is_file()]


def all_text_below(*roots) -> str:
    """Every file below ``roots`` as text (binary files decoded with replacement), for secret greps."""
    return "\n".join(path.read_bytes().decode("utf-8", errors="replace") for root in roots for path in all_files(root))


# ------------------------------------------------------------------------------------------------- disk full


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_full_disk_exits_1_naming_the_path_and_after_freeing_space_the_rerun_is_identical(volume, tmp_path, capfd):
    disk = tmp_path / "disk"
    disk.mkdir()
    # half of what a complete run occupies, in whole pages: the disk fills up midway
    used = sum(4096 * -(-p.stat().st_size // 4096) for p in all_files(volume["reference"]))
    used += sum(4096 * -(-p.stat().st_size // 4096) for p in all_files(segment_run_dir(volume["reference"])))
    size = f"size={used // 2 // 1024}k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        out = disk / "out.zarr"
        assert run_cli(argv(volume["affs"], out)) == 1
        error = capfd.readouterr().err
        assert "No space left on device" in error and str(disk) in error and "re-run the same command" in error
        assert "Traceback" not in error
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        assert run_cli(argv(volume["affs"], out)) == 0
        assert chunk_digests(out) == volume["digests"]
    finally:
        subprocess.run(["umount", "-l", str(disk)])


# ---------------------------------------------------------------------------------- a driver killed anywhere

CREATION_POINTS = [
    "after-config",
    "after-store",
    "after-links",
    "after-fragments",
    "after-merge-tree",
    "after-luts",
    "after-segmentations",
]


def test_driver_killed_at_each_creation_point_resumes_to_identical_bytes(volume, tmp_path, monkeypatch):
    """A chain of runs: each dies at the next point where the driver creates something (config, store, face links,
    fragments, merge tree, lookup tables, segmentations), so each run resumes from the state a death at the point
    before left; the last run completes, with the bytes of an uninterrupted run."""
    out = tmp_path / "out.zarr"
    for point in CREATION_POINTS:
        monkeypatch.setenv(FAULT_ENV, json.dumps({"step": "driver", "point": point, "action": "exit"}))
        code = subprocess.run([sys.executable, "-m", "affcons.cli", *argv(volume["affs"], out)]).returncode
        assert code == 73, point  # the injected death, at that point
    monkeypatch.delenv(FAULT_ENV)
    assert run_cli(argv(volume["affs"], out)) == 0
    assert chunk_digests(out) == volume["digests"]


def test_job_keeps_the_graph_password_out_of_its_config_file(tmp_path, monkeypatch):
    from affcons.config import load_config
    from blockwise.config import JobConfig
    from blockwise.job import Job

    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = tmp_path / "job.yaml"
    graph = f"mongodb://alice:{PASSWORD}@127.0.0.1:9/rag"
    segment = f"{{graph: '{graph}', extract: {{thresholds: [0.5]}}}}"
    config.write_text(f"raw: a.zarr/raw\npredict: {{checkpoint: m.pt}}\nsegment: {segment}\n")
    job = Job(load_config(JobConfig, config), tmp_path / "run", quiet=True)
    assert job.config.segment.graph == "mongodb://alice@127.0.0.1:9/rag" and os.environ[PASSWORD_ENV] == PASSWORD
    job.lock()
    job.write_config()
    assert PASSWORD not in all_text_below(tmp_path / "run")
    assert (tmp_path / "run" / "job.yaml").stat().st_mode & 0o077 == 0


# -------------------------------------------------------------------------------------- options and inputs


def test_roi_offset_without_shape_runs_to_the_end_of_the_volume(volume, tmp_path):
    out = tmp_path / "out.zarr"
    assert run_cli(argv(volume["affs"], out, extra=["--roi-offset", "0", "0", "500"])) == 0
    config = (segment_run_dir(out) / "config.yaml").read_text()
    assert "roi_shape:\n- 200\n- 500\n- 500\n" in config and "roi_offset:\n- 0\n- 0\n- 500\n" in config


def test_sixty_thresholds_give_a_short_task_id_and_sixty_segmentations(volume, tmp_path):
    out = tmp_path / "out.zarr"
    thresholds = [round(0.2 + 0.01 * i, 2) for i in range(60)]
    assert run_cli(argv(volume["affs"], out, thresholds)) == 0
    (task,) = [t for t in summary_of(out)["tasks"] if t.startswith("extract")]
    assert len(task) < 50 and task.startswith("extract_0.20-0.79_60_")
    assert len(list(out.glob("segmentation_*"))) == 60


def float_affinities(tmp_path, values: np.ndarray) -> str:
    path = str(tmp_path / "bad.zarr" / "affs")
    write_affinities(path, values, (10, 10, 10), chunk_shape=(10, 20, 20))
    return path


@pytest.mark.parametrize(
    "scale, shift, expected",
    [
        (255.0, 0.0, "they look like uint8 affinities (0-255) stored as float: divide by 255"),
        (1.0, -1.0, "outside [0, 1]; float affinities must lie in [0, 1]"),
        (np.nan, 0.0, "are NaN or infinite"),
    ],
)
def test_affinities_that_would_give_silently_wrong_results_are_refused_before_any_work(
    tmp_path, capfd, scale, shift, expected
):
    values = np.random.default_rng(0).random((3, 20, 40, 40)).astype(np.float32) * scale + shift
    out = tmp_path / "out.zarr"
    assert run_cli(segment_argv(float_affinities(tmp_path, values), str(out), block=(10, 20, 20))) == 2
    error = capfd.readouterr().err
    assert expected in error and "checked before the run" in error
    assert not out.exists() and not segment_run_dir(out).exists()


def test_nan_in_one_block_fails_that_block_naming_it_and_the_values(tmp_path, capfd):
    values = np.random.default_rng(0).random((3, 20, 40, 40)).astype(np.float32)
    values[:, 12, 35, 3] = np.nan  # block (1, 1, 0): off the diagonal the driver samples
    out = tmp_path / "out.zarr"
    path = float_affinities(tmp_path, values)
    assert run_cli(segment_argv(path, str(out), block=(10, 20, 20), context=(0, 0, 0))) == 1
    error = capfd.readouterr().err
    assert "task fragments" in error and "1 block(s) not done" in error
    assert "6 @ [100:200, 200:400, 0:200]" in error and "NaN or infinite" in error
    assert summary_of(out)["tasks"]["fragments"]["completed"] == 7


def test_block_larger_than_the_volume_is_clipped_to_it(volume, tmp_path):
    out = tmp_path / "out.zarr"
    huge = segment_argv(volume["affs"], str(out), THRESHOLDS, (1000, 5000, 5000), CONTEXT, workers=1)
    assert run_cli(huge) == 0
    config = (segment_run_dir(out) / "config.yaml").read_text()
    assert "block_size:\n- 200\n- 500\n- 1000\n" in config and "chunk_shape:\n- 20\n- 50\n- 100\n" in config


def test_deleted_chunk_of_a_complete_input_fails_its_blocks_naming_the_chunk(volume, tmp_path, capfd):
    source = Path(volume["affs"]).parent
    copy = tmp_path / "in.zarr"
    shutil.copytree(source, copy)
    affs = copy / "affs"
    update_attrs(affs, {"complete": True})  # as affcons predict marks its output
    chunk = affs / "c" / "0" / "0" / "0" / "1"
    saved = chunk.read_bytes()
    chunk.unlink()
    out = tmp_path / "out.zarr"
    assert run_cli(argv(affs, out)) == 1
    error = capfd.readouterr().err
    assert "chunk(s) of ROI" in error and "are missing although the array is marked complete" in error
    assert str(chunk) in error
    chunk.write_bytes(saved)
    assert run_cli(argv(affs, out)) == 0
    assert chunk_digests(out) == volume["digests"]


def test_corrupt_chunk_fails_its_block_only_and_no_worker_is_restarted(tmp_path, capfd):
    values = np.random.default_rng(0).random((3, 20, 40, 40)).astype(np.float32)
    path = Path(float_affinities(tmp_path, values))
    (path / "c" / "0" / "1" / "1" / "0").write_bytes(b"not a blosc frame" * 10)  # block 6, off the sampled diagonal
    out = tmp_path / "out.zarr"
    argv_ = segment_argv(str(path), str(out), block=(10, 20, 20), context=(0, 0, 0), extra=["--max-retries", "1"])
    assert run_cli(argv_) == 1
    fragments = summary_of(out)["tasks"]["fragments"]
    assert [b["block"] for b in fragments["failed_blocks"]] == [6] and fragments["completed"] == 7
    assert fragments["failed"] == 1 and fragments["worker_restarts"] == 0
    error = capfd.readouterr().err
    assert "6 @ [100:200, 200:400, 0:200] (100, 200, 200) (RuntimeError: error during blosc decompression" in error


def test_corrupt_chunk_met_by_the_check_before_the_run_is_refused_naming_it(tmp_path, capfd):
    values = np.random.default_rng(0).random((3, 20, 40, 40)).astype(np.float32)
    path = Path(float_affinities(tmp_path, values))
    (path / "c" / "0" / "0" / "0" / "0").write_bytes(b"not a blosc frame" * 10)
    assert run_cli(segment_argv(str(path), str(tmp_path / "out.zarr"), block=(10, 20, 20))) == 2
    assert (
        "[0:100, 0:200, 0:200] (100, 200, 200) (nm), checked before the run: cannot be read" in capfd.readouterr().err
    )


def test_workers_that_keep_dying_make_daisy_abandon_with_honest_counts(volume, tmp_path, capfd):
    config = tmp_path / "segment.yaml"
    config.write_text("execution: {max_worker_restarts: 2}\n")
    os.environ[FAULT_ENV] = json.dumps({"step": "fragments", "action": "exit"})
    try:
        out = tmp_path / "out.zarr"
        assert run_cli(argv(volume["affs"], out, extra=["--config", str(config)])) == 1
    finally:
        del os.environ[FAULT_ENV]
    error = capfd.readouterr().err
    fragments = summary_of(out)["tasks"]["fragments"]
    assert fragments["error"].startswith("abandoned") and fragments["worker_restarts"] >= 2
    assert fragments["worker_error"] and "exited with code 73" in fragments["worker_error"]
    assert len(fragments["failed_blocks"]) == 2 and "2 block(s) not done" in error
    assert "last worker error: " in error


# ------------------------------------------------------------------------------------------- two drivers


def test_second_driver_on_a_busy_run_directory_is_refused_naming_the_first(volume, tmp_path, capfd):
    out = tmp_path / "out.zarr"
    environment = dict(os.environ, **{FAULT_ENV: json.dumps({"step": "fragments", "action": "sleep", "seconds": 6})})
    first = subprocess.Popen([sys.executable, "-m", "affcons.cli", *argv(volume["affs"], out)], env=environment)
    lock = RunDir(segment_run_dir(out)).lock
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run_cli(argv(volume["affs"], out)) == 2
        error = capfd.readouterr().err
        assert "is in use by affcons segment on host" in error and f"pid {first.pid}" in error
    finally:
        assert first.wait(120) == 0
    assert chunk_digests(out) == volume["digests"]


# ----------------------------------------------------------------------------------------------- secrets

PASSWORD = "s3cret-Pw@42"


@pytest.mark.parametrize(
    "url",
    [
        f"mongodb://alice:{PASSWORD}@db.example.org:27017/rag",
        f"mongodb://:{PASSWORD}@db.example.org/rag",
        f"mongodb+srv://alice:{PASSWORD}@cluster0.example.net/rag?retryWrites=true",
        f"mongodb://db.example.org/rag?authSource=admin&password={PASSWORD}",
        f"text before mongodb://alice:{PASSWORD}@h:1/rag and mongodb://bob:{PASSWORD}@h:2/x after",
    ],
)
def test_redact_removes_the_password_of_every_url_form(url):
    assert PASSWORD not in redact(url) and "***" in redact(url)


def test_password_splits_off_and_goes_back_encoded():
    url, password = split_password(f"mongodb://alice:{PASSWORD}@h:1/rag")
    assert url == "mongodb://alice@h:1/rag" and password == PASSWORD
    assert with_password(url, password) == "mongodb://alice:s3cret-Pw%4042@h:1/rag"


def test_graph_password_reaches_the_workers_and_nothing_else(volume, tmp_path, mongodb_url, capfd, monkeypatch):
    """A real run through a store that demands the password: every block's worker authenticated with it, and no
    file the run wrote, no line it printed and no error it raised contains it."""
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    upstream_port = int(mongodb_url.split("@")[-1].split("//")[-1].split("/")[0].split(":")[1])
    proxy = AuthProxy(upstream_port, "alice", PASSWORD)
    try:
        from urllib.parse import quote

        graph = with_database(proxy.url("x", quote(PASSWORD, safe="")), f"affcons_secret_{os.getpid()}")
        out = tmp_path / "out.zarr"
        extra = ["--graph", graph]
        assert run_cli([a for a in argv(volume["affs"], out, extra=extra) if a != "--quiet"]) == 0
        printed = capfd.readouterr()
        assert proxy.offered and set(proxy.offered) == {PASSWORD}
        assert len(proxy.offered) >= 4  # the driver and the workers of fragments and edges each authenticated
        assert chunk_digests(out) == volume["digests"]
        files = all_text_below(out, segment_run_dir(out))
        assert PASSWORD not in files and quote(PASSWORD, safe="") not in files
        assert PASSWORD not in printed.out + printed.err
        assert "alice@127.0.0.1" in (segment_run_dir(out) / "config.yaml").read_text()  # the user name stays
        for name in ("config.yaml", "summary.json"):
            assert (segment_run_dir(out) / name).stat().st_mode & 0o077 == 0

        # a wrong password is refused by the server; the error names the URL without any password
        monkeypatch.delenv(PASSWORD_ENV)
        bad = with_database(proxy.url("x", "wrong-Pw"), f"affcons_secret_bad_{os.getpid()}")
        assert run_cli(argv(volume["affs"], tmp_path / "bad.zarr", extra=["--graph", bad])) == 2
        error = capfd.readouterr().err
        assert "Authentication failed" in error and "wrong-Pw" not in error and "alice:***@" in error
    finally:
        proxy.close()


def test_password_in_a_config_error_or_an_unreachable_store_is_never_printed(volume, tmp_path, capfd):
    graph = f"mongodb://alice:{PASSWORD}@127.0.0.1:9/rag?serverSelectionTimeoutMS=300"
    config = tmp_path / "segment.yaml"
    config.write_text(f"graph: '{graph}'\nexecution: {{workers: 0}}\n")
    out = tmp_path / "out.zarr"
    assert run_cli(argv(volume["affs"], out, extra=["--config", str(config)])) == 2  # workers: 0 is invalid
    config.write_text(f"graph: '{graph}'\n")
    assert run_cli(argv(volume["affs"], out, extra=["--config", str(config)])) == 2  # no server there
    assert run_cli(argv(volume["affs"], out, extra=["--config", str(config), "--dry-run"])) == 0
    printed = capfd.readouterr()
    assert PASSWORD not in printed.out + printed.err and "alice:***@" in printed.err
    written = [path for path in (out, segment_run_dir(out)) if path.exists()]  # not the user's own config file
    assert written and PASSWORD not in all_text_below(*written)
