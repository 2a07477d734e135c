"""Failure modes of workers: a worker killed in the middle of a block (after a partial write) is replaced and the
block retried with no trace left; a block that keeps failing makes the command exit 1, name the block, and mark no
segmentation complete -- and a re-run then completes with the bytes of an uninterrupted run; a block that hangs
past the block timeout is killed by daisy's watchdog and retried."""

import json

from blockwise.faults import FAULT_ENV
from blockwise.testing import chunk_digests, reference_run, reliability_argv, run_cli


def summary_of(out) -> dict:
    return json.loads((out.parent / f"{out.stem}.affcons-run" / "summary.json").read_text())


def test_worker_killed_mid_block_is_replaced_and_the_block_retried(tmp_path, monkeypatch):
    _, digests = reference_run()
    marker = tmp_path / "killed-once"
    fault = {"step": "fragments", "block": 3, "action": "exit", "point": "partial-write", "once": str(marker)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(fault))
    out = tmp_path / "out.zarr"
    # one worker: with two, the other one may finish every block before daisy starts a replacement (daisy counts
    # the replacements it starts as restarts, the dirty exits as worker deaths)
    assert run_cli(reliability_argv(out, workers=1)) == 0
    assert marker.exists()  # the worker did die after writing block 3's fragments, before its nodes
    task = summary_of(out)["tasks"]["fragments"]
    assert task["worker_deaths"] == 1 and task["worker_restarts"] >= 1
    assert task["failed"] == 0 and task["processed"] == 8
    assert chunk_digests(out) == digests


def test_failing_block_exits_1_names_it_marks_nothing_complete_and_rerun_recovers(tmp_path, monkeypatch, capfd):
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    monkeypatch.setenv(FAULT_ENV, json.dumps({"step": "extract", "block": 5, "action": "raise"}))
    assert run_cli(reliability_argv(out, workers=1, extra=["--max-retries", "1"])) == 1
    error = capfd.readouterr().err
    assert "task extract_0.30_0.50_0.70: 1 failed" in error
    assert (
        "1 block(s) not done (grid index @ write ROI nm): 5 @ [250:500, 0:500, 500:1000] (250, 500, 500) (Injected"
        in error
    )
    summary = summary_of(out)
    assert summary["status"] == "failed"
    assert [b["block"] for b in summary["tasks"]["extract_0.30_0.50_0.70"]["failed_blocks"]] == [5]
    for threshold in ("0.30", "0.50", "0.70"):
        attrs = json.loads((out / f"segmentation_{threshold}" / "zarr.json").read_text())["attributes"]
        assert attrs["complete"] is False
    monkeypatch.delenv(FAULT_ENV)
    assert run_cli(reliability_argv(out, workers=1)) == 0
    summary = summary_of(out)
    assert summary["tasks"]["extract_0.30_0.50_0.70"]["processed"] == 1  # only the failed block ran again
    assert chunk_digests(out) == digests


def test_block_hanging_past_the_timeout_is_killed_and_retried(tmp_path, monkeypatch):
    _, digests = reference_run()
    marker = tmp_path / "hung-once"
    fault = {"step": "edges", "block": 2, "action": "hang", "seconds": 120, "once": str(marker)}
    monkeypatch.setenv(FAULT_ENV, json.dumps(fault))
    out = tmp_path / "out.zarr"
    assert run_cli(reliability_argv(out, workers=1, extra=["--block-timeout", "5"])) == 0
    assert marker.exists()
    assert summary_of(out)["tasks"]["edges"]["worker_restarts"] >= 1
    assert chunk_digests(out) == digests
