"""Resume: a re-run skips done blocks and ends with the same bytes as an uninterrupted run -- after success, after
the driver was SIGKILLed in the blockwise steps or in extract, and when new thresholds are added later (which
reuses the merge tree and touches nothing that is complete)."""

import json
import signal
import time

import numpy as np
import psutil

from blockwise.faults import FAULT_ENV
from blockwise.testing import (
    chunk_digests,
    reference_run,
    reliability_argv,
    run_cli,
    run_cli_subprocess,
    tree_snapshot,
)


def summary_of(out) -> dict:
    return json.loads((out.parent / f"{out.stem}.affcons-run" / "summary.json").read_text())


def done_blocks(out, task: str) -> int:
    """Blocks of ``task`` with a daisy done marker (0 while the markers do not exist or are being written)."""
    import zarr

    try:
        return int(
            np.count_nonzero(
                zarr.open_array(str(out.parent / f"{out.stem}.affcons-run" / "tracking" / task / "done"), mode="r")[:]
            )
        )
    except Exception:  # not created yet, or a chunk in the middle of being rewritten
        return 0


def kill_driver_when(out, task: str, records: int, fault: dict, timeout: float = 120.0):
    """Start ``affcons segment`` as a child, SIGKILL it once ``task`` has ``records`` done markers, then wait
    for its orphaned workers to end (killing those still alive after 30 s, by PID)."""
    driver = run_cli_subprocess(reliability_argv(out), env={FAULT_ENV: json.dumps(fault)})
    deadline = time.monotonic() + timeout
    descendants: dict[int, psutil.Process] = {}
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            descendants.update({p.pid: p for p in psutil.Process(driver.pid).children(recursive=True)})
        except psutil.NoSuchProcess:
            break
        if done_blocks(out, task) >= records:
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed; slow the blocks down more"
    assert done_blocks(out, task) >= records, f"no {records} {task} blocks within {timeout} s"
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    _, alive = psutil.wait_procs(list(descendants.values()), timeout=30)
    for process in alive:
        process.kill()
    return driver.returncode


def test_rerun_after_success_skips_every_block_and_changes_nothing():
    out, digests = reference_run()
    before = tree_snapshot(out)
    assert run_cli(reliability_argv(out)) == 0
    summary = summary_of(out)
    assert [summary["tasks"][t]["processed"] for t in ("fragments", "edges")] == [0, 0]
    assert summary["stages"]["agglomerate"]["reused"] is True
    assert summary["stages"]["extract"]["reused"] is True
    assert summary["thresholds_reused"] == ["0.30", "0.50", "0.70"]
    assert chunk_digests(out) == digests
    assert {k: v for k, v in tree_snapshot(out).items() if not k.endswith("zarr.json")} == {
        k: v for k, v in before.items() if not k.endswith("zarr.json")
    }


def test_driver_sigkill_during_edges_then_rerun_resumes_with_identical_bytes(tmp_path):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    fault = {"step": "edges", "action": "sleep", "seconds": 0.4}
    assert kill_driver_when(out, "edges", 2, fault) == -signal.SIGKILL
    assert run_cli(reliability_argv(out)) == 0
    summary = summary_of(out)
    assert summary["tasks"]["fragments"]["skipped"] == 8 and summary["tasks"]["fragments"]["processed"] == 0
    assert summary["tasks"]["edges"]["skipped"] >= 2
    assert chunk_digests(out) == digests


def test_driver_sigkill_during_extract_then_rerun_resumes_with_identical_bytes(tmp_path):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    fault = {"step": "extract", "action": "sleep", "seconds": 0.4}
    kill_driver_when(out, "extract_0.30_0.50_0.70", 2, fault)
    attrs = json.loads((out / "segmentation_0.50" / "zarr.json").read_text())["attributes"]
    assert attrs["complete"] is False
    assert run_cli(reliability_argv(out)) == 0
    summary = summary_of(out)
    assert summary["stages"]["agglomerate"]["reused"] is True
    assert summary["tasks"]["extract_0.30_0.50_0.70"]["skipped"] >= 2
    assert chunk_digests(out) == digests
    attrs = json.loads((out / "segmentation_0.50" / "zarr.json").read_text())["attributes"]
    assert attrs["complete"] is True


def test_new_threshold_later_reuses_the_merge_tree_and_leaves_complete_outputs_alone(tmp_path):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    assert run_cli(reliability_argv(out, thresholds=(0.5,), workers=1)) == 0
    first = tree_snapshot(out / "segmentation_0.50")
    assert run_cli(reliability_argv(out, thresholds=(0.5, 0.7), workers=1)) == 0
    summary = summary_of(out)
    assert summary["stages"]["agglomerate"]["reused"] is True
    assert list(summary["tasks"]) == ["fragments", "edges", "extract_0.70"]
    assert summary["tasks"]["extract_0.70"]["processed"] == 8
    assert tree_snapshot(out / "segmentation_0.50") == first
    new = chunk_digests(out)
    assert new == {k: v for k, v in digests.items() if not k.startswith("segmentation_0.30")}
