"""The framework every driver builds on: one step as one daisy task, what happened to its blocks, and the driver base
class (guards, provenance, messages, failure report, summary).

A driver (:class:`Driver` subclasses: :class:`blockwise.segment.SegmentDriver`,
:class:`blockwise.predict.PredictDriver`, :class:`blockwise.job.Job`) owns a resolved config with a fingerprint and
a run directory. :meth:`Driver.run_step` runs one blockwise step as one daisy task (:func:`run_task`), which reports
daisy's counters and lists every block of the grid that left no timer record (failed, orphaned, or never run) with
its last error. Steps run one ``run_blockwise`` call each, never chained into a daisy pipeline: daisy 2.0.0
mis-schedules the downstream task of a pipeline whose read ROI extends on one side only
(``docs/design/blockwise.md``).
"""

import contextlib
import datetime
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import affcons
from affcons.config import dump_config, load_config
from affcons.errors import BusyError, ConfigError, OutputExistsError
from blockwise.config import ExecutionConfig, fingerprint_differences
from blockwise.layout import PRIVATE, RunDir
from blockwise.timers import read_records, recorded_blocks, summarise

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
    worker_deaths: int = 0
    worker_restarts: int = 0
    failed_blocks: list = field(default_factory=list)
    worker_error: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.completed == self.total
            and not self.failed
            and not self.orphaned
            and not self.failed_blocks
        )

    def as_dict(self) -> dict:
        """The task's entry in ``summary.json``."""
        return {
            "blocks": self.total,
            "completed": self.completed,
            "skipped": self.skipped,
            "processed": self.completed - self.skipped,
            "failed": self.failed,
            "orphaned": self.orphaned,
            "worker_deaths": self.worker_deaths,
            "worker_restarts": self.worker_restarts,
            "failed_blocks": self.failed_blocks,
            "worker_error": self.worker_error,
            "error": self.error,
        }

    def failure_line(self, shown: int = 10) -> str:
        """``task T: 1 failed, 0 orphaned, 3/4 done, 1 worker death(s), 0 worker restart(s); 1 block(s) not done
        (grid index @ write ROI nm): 2 @ ... (ValueError: ...); last worker error: ...; error: ...`` (for stderr and
        the summary); at most ``shown`` blocks listed."""
        line = (
            f"task {self.task_id}: {self.failed} failed, {self.orphaned} orphaned, {self.completed}/{self.total} done, "
            f"{self.worker_deaths} worker death(s), {self.worker_restarts} worker restart(s)"
        )
        if self.failed_blocks:
            listed = [
                f"{b['block']} @ {b['roi']}" + (f" ({b['error']})" if b.get("error") else "")
                for b in self.failed_blocks[:shown]
            ]
            more = len(self.failed_blocks) - shown
            line += f"; {len(self.failed_blocks)} block(s) not done (grid index @ write ROI nm): " + ", ".join(listed)
            line += f", and {more} more (summary.json lists all)" if more > 0 else ""
        if self.worker_error:
            line += f"; last worker error: {self.worker_error}"
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
    step,
    process_function,
    execution: ExecutionConfig,
    run_dir: RunDir,
    requires: dict,
    reset: bool,
    progress: bool,
    while_waiting=None,
) -> TaskReport:
    """Run one blockwise step as one daisy task (:func:`make_task`) with ``requires`` per worker and
    ``execution.workers`` times that in resources; ``reset`` voids its done markers first. ``while_waiting``: a
    callable the driver runs once the scheduler has started (its own preparation for the next stage).

    The daisy scheduler runs in a child process of the driver (forked; it dies with the driver). daisy tracks
    blocks in memory-mapped files, and a full disk turns a write to one of them into a bus error (SIGBUS) that
    kills the process doing it: here that is the child, and the driver reports it. Returns what happened to the
    blocks, from daisy's counters (also when daisy abandons the task after ``max_worker_restarts`` dirty worker
    exits) and from the step's own records: a block is done when it left a timer record, so every block of the grid
    without one is listed, with the last error its attempts recorded.
    """
    import multiprocessing

    report = TaskReport(step.task_id, total=step.num_blocks)
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    arguments = (sender, step, process_function, execution, run_dir, requires, reset, progress, os.getpid())
    scheduler = context.Process(target=_schedule, args=arguments, name=f"daisy scheduler {step.task_id}")
    scheduler.start()
    sender.close()
    try:
        if while_waiting is not None:
            while_waiting()
        counters = receiver.recv()
    except EOFError:  # the scheduler died before it could answer
        counters = None
    finally:
        scheduler.join(timeout=None if counters is not None else 60)
        if scheduler.is_alive():
            scheduler.kill()
            scheduler.join()
    if counters is None:
        report.error = scheduler_death(scheduler.exitcode, run_dir.tracking(step.task_id))
    else:
        for key, value in counters.items():
            setattr(report, key, value)
    done = recorded_blocks(step.timers_dir())
    errors = read_records(run_dir.errors(step.task_id))
    report.failed_blocks = [
        {"block": index, "roi": str(step.block_roi(index)), "error": errors.get(index, {}).get("error")}
        for index in range(step.num_blocks)
        if index not in done
    ]
    if counters is not None and report.total != step.num_blocks and report.error is None:
        report.error = f"daisy scheduled {report.total} blocks, the block grid {step.grid_shape} has {step.num_blocks}"
    elif report.completed == report.total and report.failed_blocks and report.error is None:
        # a scheduler fault: blocks counted done that never ran (see docs/design/blockwise.md)
        report.error = f"{len(report.failed_blocks)} block(s) reported done by daisy but never processed"
    return report


def _schedule(sender, step, process_function, execution, run_dir, requires, reset, progress, driver_pid) -> None:
    """The scheduler process: run the daisy task, send its counters (a dict of :class:`TaskReport` fields)."""
    import faulthandler

    faulthandler.disable()  # a bus error here is reported by the driver, not by a dump of this process's stack
    from blockwise.lifetime import die_with

    die_with(driver_pid)
    if logging.getLogger("daisy").getEffectiveLevel() > logging.WARNING:  # not --verbose
        divert_native_stderr(run_dir.logs / f"scheduler-{step.task_id}.log")
    import daisy.v2 as daisy

    task = make_task(step, process_function, execution, run_dir, requires)
    if reset:
        task.reset()
    resources = {name: amount * execution.workers for name, amount in requires.items()}
    counters = {}
    try:
        states = daisy.Server().run_blockwise(task, resources=resources, progress=progress, summary=False)
    except BaseException as exception:  # the scheduler itself failed (a panic of daisy's core is a BaseException)
        states = {}
        counters["error"] = f"the daisy scheduler failed: {type(exception).__name__}: {exception}"
    state = states.get(step.task_id)
    if state is not None:
        counters.update(
            total=state.total_block_count,
            completed=state.completed_count,
            skipped=state.skipped_count,
            failed=state.failed_count,
            orphaned=state.orphaned_count,
            worker_deaths=state.worker_failure_count,
            worker_restarts=state.worker_restart_count,
            worker_error=_first_line(state.last_worker_error or state.first_worker_error),
        )
        if state.abandoned:
            counters["error"] = f"abandoned: {state.abandon_reason}"
    sender.send(counters)
    sender.close()


def divert_native_stderr(path: Path) -> None:
    """Send what native code writes to file descriptor 2 (daisy's scheduler core logs each failed block with its
    traceback there) to ``path``, and keep Python's ``sys.stderr`` (progress bars, messages) on the terminal. The
    driver reports failed blocks itself, with their errors; the full tracebacks stay in the log. Descriptor 2 becomes
    a pipe drained by a thread, so a full disk drops log lines instead of failing the writer."""
    import threading

    sys.stderr.flush()
    sys.stderr = open(os.dup(2), "w", buffering=1, errors="replace")  # noqa: SIM115 (this process's stderr for good)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def drain() -> None:
        log = None
        with open(read_end, "rb", buffering=0) as pipe:
            for line in pipe:
                try:
                    if log is None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        log = open(path, "ab")  # noqa: SIM115 (open while the process lives)
                    log.write(line)
                    log.flush()
                except OSError:  # a full disk: the line is lost, the scheduler goes on
                    pass

    threading.Thread(target=drain, name="native stderr", daemon=True).start()


def scheduler_death(exitcode: int | None, tracking) -> str:
    """Why the scheduler process gave no answer, in the user's words."""
    import shutil
    import signal

    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        text = f"the daisy scheduler process was killed by {name}"
        if -exitcode == signal.SIGBUS:
            from affcons.files import NEARLY_FULL_BYTES

            free = shutil.disk_usage(tracking.parent if tracking.parent.exists() else tracking.parents[1]).free
            state = "No space left on device: " if free < NEARLY_FULL_BYTES else ""
            text += (
                f" (bus error): daisy could not write its block tracking in {tracking}, which happens when that file "
                f"system is full ({state}{free / 1e6:.1f} MB free); free space there, then re-run the same command: "
                "it resumes where it stopped"
            )
        return text
    return f"the daisy scheduler process exited with code {exitcode} without a report"


def _first_line(text: str | None, limit: int = 300) -> str | None:
    """A worker's error in one line: its first line (what happened) and, if there is more, its last (the exception
    at the end of a traceback), shortened."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."
    if len(lines) == 1:
        return last
    room = max(limit - len(last) - 5, 20)
    first = lines[0] if len(lines[0]) <= room else lines[0][: room - 3] + "..."
    return f"{first} ... {last}"


#: Run-directory locks this process holds (real path -> open file), until it ends: a driver run again in the same
#: process (tests, a notebook) takes over its predecessor's lock instead of being refused by it.
HELD_LOCKS: dict = {}


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
        #: The warm local workers of this run (:meth:`warm_pool`), or None.
        self.pool = None

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def lock(self) -> None:
        """Hold the run directory's lock until this process ends; another driver holding it is a
        :class:`~affcons.errors.BusyError` naming its host and pid. An advisory ``flock``: the kernel drops it when
        the holder dies, so a killed driver never leaves a stale lock."""
        import fcntl
        import socket

        self.run_dir.path.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.run_dir.lock)
        handle = HELD_LOCKS.pop(key, None)  # held by an earlier driver of this process, which has finished
        if handle is None:
            handle = open(self.run_dir.lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise BusyError(
                f"run directory {self.run_dir} is in use by {holder}; wait for that run to end (or stop it), then "
                "re-run this command"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        handle.write(f"{self.command} on host {socket.gethostname()}, pid {os.getpid()}, since {started}\n")
        handle.flush()
        HELD_LOCKS[key] = handle

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
        elif self.run_dir.path.exists() and any(p != self.run_dir.lock for p in self.run_dir.path.iterdir()):
            raise OutputExistsError(f"run directory {self.run_dir} exists, is not empty and has no {self.config_file}")

    def check_launcher(self) -> None:
        """A cluster launcher needs its submit program here (:func:`blockwise.launchers.check_launcher`)."""
        from blockwise.launchers import check_launcher

        check_launcher(self.config.execution.launcher)

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

    def run_step(self, step, requires: dict, reset: bool = False, while_waiting=None) -> TaskReport:
        """Run one blockwise step as a daisy task with ``requires`` per worker (:func:`run_task`; ``while_waiting``
        runs in the driver meanwhile, also when no block is left to run)."""
        from blockwise.launchers import process_function

        execution = self.config.execution
        if reset:
            for directory in (step.timers_dir(), self.run_dir.errors(step.task_id)):
                shutil.rmtree(directory, ignore_errors=True)
        elif recorded_blocks(step.timers_dir()) >= set(range(step.num_blocks)):
            # every block left its record in an earlier run: nothing to schedule, no worker to start
            n = step.num_blocks
            if while_waiting is not None:
                while_waiting()
            return TaskReport(step.task_id, total=n, completed=n, skipped=n)
        if self.pool is not None:
            self.pool.revive()
        function = process_function(step, execution.launcher, str(self.run_dir / self.config_file), self.pool)
        progress = execution.progress and not self.quiet
        try:
            return run_task(
                step,
                function,
                execution,
                self.run_dir,
                requires,
                reset=reset,
                progress=progress,
                while_waiting=while_waiting,
            )
        finally:
            if self.pool is not None:
                self.pool.revive()  # replacements warm up while the driver works between steps

    @contextlib.contextmanager
    def warm_pool(self):
        """Within: the local launcher's steps run in ``execution.workers`` warm processes started now
        (:mod:`blockwise.pool`), unless ``execution.warm_workers`` is off or the launcher is a cluster's."""
        execution = self.config.execution
        if execution.launcher.type != "local" or not execution.warm_workers:
            yield
            return
        from blockwise.pool import WorkerPool

        with WorkerPool(execution.workers, self.run_dir.logs) as pool:
            self.pool = pool
            try:
                yield
            finally:
                self.pool = None

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

    def run_recorded(self, body, started: float, *args) -> int:
        """``body(*args)`` (returning an exit code), then the summary with the wall time since ``started`` and, on
        any other outcome than 0 (an exception included), ``status: failed``."""
        status = 1
        try:
            status = body(*args)
        finally:
            self.summary["wall_s"] = round(time.time() - started, 3)
            if status != 0:
                self.summary["status"] = "failed"
            self.write_summary()
        return status

    def write_summary(self) -> None:
        """``summary.json``; a failure to write it (a full disk) is reported, not raised: the run's own outcome
        decides the exit code."""
        if not self.run_dir.path.exists():
            return
        try:
            self.run_dir.write_summary(self.summary)
        except OSError as error:
            print(f"{self.command}: warning: summary not written: {error}", file=sys.stderr, flush=True)

    def write_config(self) -> None:
        """The resolved config into the run directory (mode 600, like every file that names the graph store)."""
        dump_config(self.config, self.run_dir / self.config_file, mode=PRIVATE)
