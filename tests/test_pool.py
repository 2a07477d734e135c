"""The warm worker pool (``blockwise.pool``): the same bytes as fresh workers per step, every step served by the same
processes, none left behind by a finished or SIGKILLed driver; and the extract step's one-pass relabelling equals
the general lookup."""

import json
import os
import signal
import time

import numpy as np
import psutil
import pytest

from affcons.segment import apply_lookup
from affcons.segment.relabel import BlockRelabeller
from blockwise.faults import FAULT_ENV
from blockwise.testing import chunk_digests, reference_run, reliability_argv, run_cli, run_cli_subprocess
from blockwise.timers import read_records

STEPS = ("fragments", "edges", "extract_0.30_0.50_0.70")


def worker_pids(out, task: str) -> set[int]:
    """The processes that ran the blocks of ``task`` (from their timer records)."""
    run_dir = out.parent / f"{out.stem}.affcons-run"
    return {record["pid"] for record in read_records(run_dir / "timers" / task).values()}


def pool_processes(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for process in root.children(recursive=True):
        try:
            if "blockwise.pool" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def test_warm_and_fresh_workers_write_the_same_bytes_and_the_pool_serves_every_step(tmp_path):
    warm, digests = reference_run()  # warm_workers is the default
    cold_config = tmp_path / "cold.yaml"
    cold_config.write_text("execution:\n  warm_workers: false\n")
    cold = tmp_path / "cold.zarr"
    assert run_cli(reliability_argv(cold, extra=["--config", str(cold_config)])) == 0
    assert chunk_digests(cold) == digests

    warm_pids = [worker_pids(warm, task) for task in STEPS]
    assert len(set().union(*warm_pids)) <= 2, f"two pool processes should run every step, got {warm_pids}"
    cold_pids = [worker_pids(cold, task) for task in STEPS]
    for index, pids in enumerate(cold_pids):
        for later in cold_pids[index + 1 :]:
            assert not pids & later, "fresh workers per step: no process should serve two steps"


def test_no_pool_process_outlives_its_driver(tmp_path):
    """After a finished run none is left; after SIGKILL of the driver mid-step the kernel ends them (parent-death
    signal) without help."""
    out = tmp_path / "out.zarr"
    fault = {"step": "fragments", "action": "sleep", "seconds": 2}
    driver = run_cli_subprocess(reliability_argv(out), env={FAULT_ENV: json.dumps(fault)})
    root = psutil.Process(driver.pid)
    deadline = time.monotonic() + 120
    pool = []
    while time.monotonic() < deadline and driver.poll() is None and len(pool) < 2:
        pool = pool_processes(root)
        time.sleep(0.05)
    assert len(pool) == 2, "the driver should start two pool processes for two workers"
    while time.monotonic() < deadline and driver.poll() is None and not worker_pids(out, "fragments"):
        time.sleep(0.05)  # the pool processes serve blocks now
    assert driver.poll() is None, "the driver finished before it could be killed; slow the blocks down more"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    _, alive = psutil.wait_procs(pool, timeout=10)
    for process in alive:
        process.kill()
    assert not alive, f"pool processes outlived the SIGKILLed driver: {[p.pid for p in alive]}"

    finished = tmp_path / "finished.zarr"
    driver = run_cli_subprocess(reliability_argv(finished))
    root = psutil.Process(driver.pid)
    seen: dict[int, psutil.Process] = {}
    while driver.poll() is None:
        seen.update({p.pid: p for p in pool_processes(root)})
        time.sleep(0.05)
    assert driver.returncode == 0
    assert seen, "the run should have used pool processes"
    _, alive = psutil.wait_procs(list(seen.values()), timeout=1)
    assert not alive, "pool processes left behind by a finished run"


def test_a_pool_process_that_dies_is_reported_like_a_worker_and_replaced_for_the_next_step(tmp_path):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    fault = {"step": "edges", "block": 2, "action": "exit", "once": str(tmp_path / "died")}
    driver = run_cli_subprocess(reliability_argv(out), env={FAULT_ENV: json.dumps(fault)})
    root = psutil.Process(driver.pid)
    seen: set[int] = set()
    while driver.poll() is None:
        seen.update(p.pid for p in pool_processes(root))
        time.sleep(0.02)
    assert driver.returncode == 0
    assert chunk_digests(out) == digests
    summary = json.loads((out.parent / "out.affcons-run" / "summary.json").read_text())
    # daisy counts the death; a restart only if blocks were left when it noticed (docs/design/blockwise.md)
    assert summary["tasks"]["edges"]["worker_deaths"] == 1
    assert len(seen) == 3, f"two pool processes and one replacement expected, saw {sorted(seen)}"
    assert worker_pids(out, STEPS[2]) <= seen, "the next step should run in the pool, not in relays serving cold"


def test_the_pool_answers_only_its_key_and_leaves_nothing_behind(tmp_path):
    from multiprocessing.connection import AuthenticationError, Client

    from blockwise.pool import WorkerPool, _connect

    with WorkerPool(1, tmp_path / "logs") as pool:
        address = pool.address
        with _connect(address, 0) as connection:  # waits while the process starts
            assert connection.recv() == pool.processes[0].pid
        with pytest.raises(AuthenticationError):
            Client(address.socket(0), family="AF_UNIX", authkey=b"not the key")
        with _connect(address, 0) as connection:  # a refused client does not end the pool process
            assert connection.recv() == pool.processes[0].pid
        assert oct(os.stat(address.directory).st_mode & 0o777) == "0o700"
        assert address.authkey.hex() not in repr(address) and str(address.authkey) not in repr(address)
        process = pool.processes[0]
    assert process.poll() is not None and not os.path.exists(address.directory)


def test_a_pool_directory_left_by_a_killed_driver_is_removed_by_the_next_pool(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from blockwise.pool import PREFIX, WorkerPool

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{PREFIX}{int(ended.stdout)}-abc"
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"  # this process lives: its directory stays
    other = tmp_path / f"{PREFIX}notapid"
    for directory in (stale, live, other):
        directory.mkdir()
        (directory / "0.sock").touch()
    with WorkerPool(1, tmp_path / "logs") as pool:
        assert pool.address.directory.startswith(str(tmp_path / f"{PREFIX}{os.getpid()}-"))
    assert not stale.exists() and live.exists() and other.exists()


def test_a_warm_workers_peak_memory_restarts_with_each_step():
    """The hierarchy's levels record each worker's peak memory; a pool process serves several steps, so its peak is
    restarted when a step sets up (and is not inherited across ``exec`` from the driver, as ``ru_maxrss`` is)."""
    from blockwise.timers import peak_rss_bytes, reset_peak_rss

    block = np.ones(300_000_000, np.uint8)
    assert peak_rss_bytes() >= block.nbytes
    del block
    reset_peak_rss()
    assert peak_rss_bytes() < 200_000_000 + psutil.Process().memory_info().rss


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_one_pass_relabelling_equals_the_general_lookup(dtype):
    rng = np.random.default_rng(7)
    first, count = 1000, 50
    fragments = rng.integers(first + 1, first + count + 1, (9, 10, 11)).astype(dtype)
    fragments[rng.random(fragments.shape) < 0.2] = 0
    ids = np.arange(first + 1, first + count + 1, dtype=np.uint64)
    relabeller = BlockRelabeller()
    assert relabeller.index(fragments, first, count)
    for _ in range(3):
        segments = rng.integers(1, 2**31, count).astype(dtype)
        table = np.concatenate([np.zeros(1, dtype), segments])
        expected = apply_lookup(fragments.astype(np.uint64), ids, segments.astype(np.uint64)).astype(dtype)
        got = relabeller.relabel(table)
        assert got.dtype == dtype and got.shape == fragments.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("stray", [999, 1000, 1051])
def test_an_id_outside_the_blocks_range_sends_the_block_to_the_general_lookup(stray):
    fragments = np.full((4, 4, 4), 1001, np.uint32)
    fragments[1, 2, 3] = stray
    assert not BlockRelabeller().index(fragments, 1000, 50)
