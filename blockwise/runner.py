"""The framework every driver builds on: one step as one daisy task, what happened to its blocks, and the driver base
class (guards, provenance, messages, failure report, summary).

A driver (:class:`Driver` subclasses: :class:`blockwise.segment.SegmentDriver`,
:class:`blockwise.predict.PredictDriver`, :class:`blockwise.job.Job`) owns a resolved config with a fingerprint
and a run directory. :meth:`Driver.run_step` runs one blockwise step as one daisy task (:func:`run_task`), checks
that every block of the grid left a timer record (:meth:`Driver.check_coverage`), and records the task in the
summary. Steps run one ``run_blockwise`` call each, never chained into a daisy pipeline: daisy 2.0.0 mis-schedules
the downstream task of a pipeline whose read ROI extends on one side only (``docs/design/blockwise.md``).
"""

import datetime
import shutil
import sys
import time
from dataclasses import dataclass, field

import affcons
from affcons.config import load_config
from affcons.errors import ConfigError, OutputExistsError
from blockwise.config import ExecutionConfig, fingerprint_differences
from blockwise.layout import RunDir
from blockwise.timers import recorded_blocks, summarise

#: daisy's accepted ``fit`` values (anything else panics inside daisy later, so it is checked here).
DAISY_FITS = ("valid", "overhang", "shrink")
FIT = "shrink"


@dataclass
class TaskReport:
    """What happened to one daisy task in this run."""

    task_id: str
    total: int = 0
    completed: int = 0
    skipped: int = 0
    failed: int = 0
    orphaned: int = 0
    worker_restarts: int = 0
    failed_blocks: list = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.completed == self.total and not self.failed and not self.orphaned

    def as_dict(self) -> dict:
        """The task's entry in ``summary.json``."""
        return {
            "blocks": self.total,
            "completed": self.completed,
            "skipped": self.skipped,
            "processed": self.completed - self.skipped,
            "failed": self.failed,
            "orphaned": self.orphaned,
            "worker_restarts": self.worker_restarts,
            "failed_blocks": self.failed_blocks,
            "error": self.error,
        }

    def failure_line(self) -> str:
        """``task T: 1 failed, 0 orphaned, 3/4 done; failed blocks ...; error ...`` (for stderr and the summary)."""
        line = (
            f"task {self.task_id}: {self.failed} failed, {self.orphaned} orphaned, {self.completed}/{self.total} done"
        )
        if self.failed_blocks:
            line += "; failed blocks (grid index @ write ROI nm): " + ", ".join(
                f"{b['block']} @ {b['roi']}" for b in self.failed_blocks
            )
        if self.error:
            line += f"; error: {self.error}"
        return line


def make_task(step, process_function, execution: ExecutionConfig, run_dir: RunDir, requires: dict):
    """The daisy task of one blockwise step: ``fit="shrink"`` (checked against daisy's accepted values),
    ``read_write_conflict=False``, the execution's workers, retries and explicit block timeout, done markers in
    ``RUN_DIR/tracking/<task_id>``, and ``requires`` per worker (``{"cpu": 1}``, or ``{"gpu": 1}`` for prediction
    on GPUs)."""
    import daisy.v2 as daisy

    if FIT not in DAISY_FITS:
        raise ConfigError(f"daisy fit {FIT!r} is not one of {DAISY_FITS}")
    total, read, write = step.rois()
    return daisy.Task(
        step.task_id,
        total,
        read,
        write,
        process_function,
        read_write_conflict=False,
        fit=FIT,
        max_workers=execution.workers,
        max_retries=execution.max_retries,
        timeout=execution.block_timeout_s,
        tracking_path=str(run_dir.tracking(step.task_id)),
        max_worker_restarts=execution.max_worker_restarts,
        requires=dict(requires),
    )


def run_task(
    step, process_function, execution: ExecutionConfig, run_dir: RunDir, requires: dict, reset: bool, progress: bool
) -> TaskReport:
    """Run one blockwise step as one daisy task (:func:`make_task`) with ``requires`` per worker and
    ``execution.workers`` times that in resources; ``reset`` voids its done markers first. Returns what happened to
    its blocks: counts, failed blocks by grid index and ROI, and an error when daisy abandoned the task."""
    import daisy.v2 as daisy

    task = make_task(step, process_function, execution, run_dir, requires)
    if reset:
        task.reset()
    report = TaskReport(step.task_id, total=step.num_blocks)
    states = {}
    try:
        states = daisy.run_blockwise(
            task,
            multiprocessing=True,
            resources={name: amount * execution.workers for name, amount in requires.items()},
            progress=progress,
            return_states=True,
            summary=False,
        )
    except RuntimeError as exception:  # daisy abandons a task after max_worker_restarts dirty exits
        text = str(exception).strip()
        report.error = text.splitlines()[0] if text else repr(exception)
    state = states.get(step.task_id)
    if state is not None:
        report.total = state.total_block_count
        report.completed = state.completed_count
        report.skipped = state.skipped_count
        report.failed = state.failed_count
        report.orphaned = state.orphaned_count
        report.worker_restarts = state.worker_restart_count
        if state.abandoned:
            report.error = f"abandoned: {state.abandon_reason}"
    try:
        failed = task.failed_blocks()
    except Exception as exception:  # an unreadable tracking store: say so, and still fail
        failed = []
        report.error = (report.error or "") + f" (failed blocks unavailable: {exception})"
    report.failed_blocks = [
        {"block": step.block_index(b.write_roi), "roi": str(b.write_roi), "daisy_id": list(b.block_id)} for b in failed
    ]
    report.failed = max(report.failed, len(report.failed_blocks))
    return report


class Driver:
    """The base of the drivers: the resolved config and its fingerprint, messages, provenance attributes, the guards
    against state of another config, running steps as daisy tasks, failure reports and the summary file."""

    #: The command, for messages (``affcons segment``).
    command = ""
    #: Attribute of every output holding the provenance of this command.
    provenance_attr = ""
    #: The resolved config's file name in the run directory.
    config_file = ""
    #: What a failed run leaves unmarked (for the error message).
    incomplete = "the outputs are not marked complete"
    #: What to change to write elsewhere (for the refusal message).
    elsewhere = "Use another --out and --run-dir, or remove them"

    def __init__(self, config, run_dir: str, quiet: bool = False, stream=None):
        self.config = config
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.run_dir = RunDir(run_dir)
        self.fingerprint = config.fingerprint()
        self.summary: dict = {}

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def start_summary(self, **extra) -> float:
        """A fresh summary (fingerprint, version, start time, public config); returns the start time."""
        self.summary = {
            "fingerprint": self.fingerprint,
            "affcons_version": affcons.__version__,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": self.config.public_dump(),
            **extra,
        }
        return time.time()

    def provenance(self, **extra) -> dict:
        """Attributes of a new output: this command's provenance and ``complete: false``."""
        return {
            self.provenance_attr: {
                "fingerprint": self.fingerprint,
                "fingerprint_fields": self.config.fingerprint_fields(),
                "config": self.config.public_dump(),
                "affcons_version": affcons.__version__,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                **extra,
            },
            "complete": False,
        }

    # -------------------------------------------------------------------------------------------- guards

    def refuse(self, where: str, stored_fields: dict | None) -> None:
        """Raise :class:`OutputExistsError` for state at ``where`` written by another config or command."""
        if stored_fields is None:
            raise OutputExistsError(
                f"{where} exists but was not written by {self.command} (no {self.provenance_attr} attribute); "
                f"refusing to overwrite it. {self.elsewhere}"
            )
        differences = fingerprint_differences(stored_fields, self.config.fingerprint_fields())
        raise OutputExistsError(
            f"{where} was written with a different config; refusing to overwrite it. Differences (stored -> "
            f"requested): {'; '.join(differences) or 'none listed'}. {self.elsewhere}"
        )

    def check_run_dir(self) -> None:
        """The run directory must be absent, empty, or hold this config's fingerprint (writes nothing)."""
        config_path = self.run_dir / self.config_file
        if config_path.is_file():
            stored = load_config(type(self.config), config_path)
            if stored.fingerprint() != self.fingerprint:
                self.refuse(f"run directory {self.run_dir}", stored.fingerprint_fields())
        elif self.run_dir.path.exists() and any(self.run_dir.path.iterdir()):
            raise OutputExistsError(f"run directory {self.run_dir} exists, is not empty and has no {self.config_file}")

    def check_output(self, where: str, attrs: dict | None) -> bool:
        """Refuse an existing output (``attrs`` from :func:`blockwise.layout.read_attrs`) of another config or
        command; True if the output exists (with this config's fingerprint)."""
        if attrs is None:
            return False
        stored = attrs.get(self.provenance_attr)
        if stored is None or stored.get("fingerprint") != self.fingerprint:
            self.refuse(where, None if stored is None else stored.get("fingerprint_fields"))
        return True

    # --------------------------------------------------------------------------------------------- steps

    def run_step(self, step, requires: dict, reset: bool = False) -> TaskReport:
        """Run one blockwise step as a daisy task with ``requires`` per worker and check that every block of its
        grid was processed."""
        from blockwise.launchers import process_function

        execution = self.config.execution
        if reset:
            shutil.rmtree(step.timers_dir(), ignore_errors=True)
        function = process_function(step, execution.launcher, str(self.run_dir / self.config_file))
        progress = execution.progress and not self.quiet
        report = run_task(step, function, execution, self.run_dir, requires, reset=reset, progress=progress)
        if report.ok:
            report.error = self.check_coverage(step, report)
        return report

    @staticmethod
    def check_coverage(step, report: TaskReport) -> str | None:
        """None if the block records of ``step`` cover its whole block grid, else a message naming missing blocks.

        Every processed block leaves a timer record, so a block that daisy counts as done but that never ran (a
        scheduler fault) shows up here instead of as silently missing output.
        """
        if report.total != step.num_blocks:
            return f"daisy scheduled {report.total} blocks, the block grid {step.grid_shape} has {step.num_blocks}"
        missing = sorted(set(range(step.num_blocks)) - recorded_blocks(step.timers_dir()))
        if missing:
            shown = ", ".join(f"{b} @ {step.block_roi(b)}" for b in missing[:10])
            return f"{len(missing)} block(s) reported done but never processed: {shown}"
        return None

    @staticmethod
    def stage_record(start: float, step) -> dict:
        """Wall time of a stage plus the block timers of its step summed over blocks (last attempt per block)."""
        return {"wall_s": round(time.time() - start, 3), "task": step.task_id, **summarise(step.timers_dir(), start)}

    # ---------------------------------------------------------------------------------------------- end

    def fail(self, reports: list[TaskReport]) -> int:
        """Record and print the failed tasks; returns exit code 1."""
        lines = [report.failure_line() for report in reports if not report.ok]
        self.summary["status"] = "failed"
        self.summary["failures"] = lines
        message = f"blocks failed; {self.incomplete}. Re-run the same command to retry them.\n  "
        message += "\n  ".join(lines) + f"\n  worker logs: {self.run_dir.logs}"
        print(f"{self.command}: error: {message}", file=sys.stderr, flush=True)
        return 1

    def write_summary(self) -> None:
        if self.run_dir.path.exists():
            self.run_dir.write_summary(self.summary)
