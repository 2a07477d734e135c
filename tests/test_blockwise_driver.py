"""The daisy task runner shared by ``affcons segment`` and ``affcons predict`` (``blockwise.runner.run_task``):
resources per worker, and the failure report."""

import daisy.v2 as daisy
from funlib.geometry import Roi

from blockwise.config import ExecutionConfig
from blockwise.layout import RunDir
from blockwise.runner import TaskReport, run_task


class TinyStep:
    task_id = "tiny"
    num_blocks = 4

    def rois(self):
        return Roi((0, 0, 0), (20, 20, 20)), Roi((0, 0, 0), (10, 10, 10)), Roi((0, 0, 0), (10, 10, 10))

    def block_index(self, write_roi):
        return 0


def test_run_task_asks_for_requires_times_workers(tmp_path, monkeypatch):
    seen = {}

    def fake_run_blockwise(task, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(daisy, "run_blockwise", fake_run_blockwise)
    execution = ExecutionConfig(workers=3, progress=False)
    report = run_task(TinyStep(), print, execution, RunDir(tmp_path), {"gpu": 1}, reset=False, progress=False)
    assert seen["resources"] == {"gpu": 3} and seen["return_states"] is True and seen["progress"] is False
    assert report.task_id == "tiny" and report.total == 4 and not report.ok  # nothing ran
    run_task(TinyStep(), print, execution, RunDir(tmp_path), {"cpu": 1}, reset=False, progress=False)
    assert seen["resources"] == {"cpu": 3}


def test_failure_line_names_blocks_and_error():
    report = TaskReport(
        "predict",
        total=4,
        completed=3,
        failed=1,
        failed_blocks=[{"block": 2, "roi": "[0:10, 0:10, 10:20] (10, 10, 10)"}],
        error="abandoned: x",
    )
    assert report.failure_line() == (
        "task predict: 1 failed, 0 orphaned, 3/4 done; failed blocks (grid index @ write ROI nm): "
        "2 @ [0:10, 0:10, 10:20] (10, 10, 10); error: abandoned: x"
    )
    assert report.as_dict()["processed"] == 3 and not report.ok
