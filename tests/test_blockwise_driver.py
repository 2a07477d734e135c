"""The daisy task runner shared by every driver (``blockwise.runner.run_task``), on real daisy workers: what a run
reports when every block succeeds, when one block keeps failing, and the failure line users read."""

import json

import pytest

from blockwise.config import ExecutionConfig
from blockwise.faults import FAULT_ENV
from blockwise.launchers import process_function
from blockwise.layout import RunDir
from blockwise.runner import TaskReport, run_task
from blockwise.testing import NoopStep


def run(step, execution, requires):
    function = process_function(step, execution.launcher, "unused.yaml")
    return run_task(step, function, execution, RunDir(step.run_dir.path), requires, reset=False, progress=False)


@pytest.mark.parametrize("requires", [{"cpu": 1}, {"gpu": 1}])
def test_every_block_done_with_the_requested_resource_per_worker(tmp_path, requires):
    step = NoopStep(tmp_path / "run", grid=(1, 2, 3))
    report = run(step, ExecutionConfig(workers=2, progress=False), requires)
    assert report.ok and report.total == report.completed == 6 and report.failed_blocks == []
    assert report.worker_restarts == 0 and report.error is None


def test_a_block_that_keeps_failing_is_listed_with_its_error_and_the_others_are_done(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, json.dumps({"step": "noop", "block": 2, "action": "raise"}))
    step = NoopStep(tmp_path / "run", grid=(1, 2, 2))
    report = run(step, ExecutionConfig(workers=2, max_retries=1, progress=False), {"cpu": 1})
    assert not report.ok and report.completed == 3 and report.failed == 1 and report.worker_restarts == 0
    (failed,) = report.failed_blocks
    assert failed["block"] == 2 and failed["error"].startswith("InjectedFault: injected fault in step noop, block 2")
    assert "1 block(s) not done (grid index @ write ROI nm): 2 @ [0:10, 10:20, 0:10]" in report.failure_line()


def test_failure_line_names_blocks_errors_restarts_and_the_error():
    report = TaskReport(
        "predict",
        total=4,
        completed=3,
        failed=1,
        worker_deaths=3,
        worker_restarts=2,
        failed_blocks=[{"block": 2, "roi": "[0:10, 0:10, 10:20] (10, 10, 10)", "error": "VolumeError: x"}],
        worker_error="daisy worker subprocess exited with code 73",
        error="abandoned: x",
    )
    assert report.failure_line() == (
        "task predict: 1 failed, 0 orphaned, 3/4 done, 3 worker death(s), 2 worker restart(s); 1 block(s) not done "
        "(grid index @ write ROI nm): 2 @ [0:10, 0:10, 10:20] (10, 10, 10) (VolumeError: x); last worker error: "
        "daisy worker subprocess exited with code 73; error: abandoned: x"
    )
    assert report.as_dict()["processed"] == 3 and not report.ok
