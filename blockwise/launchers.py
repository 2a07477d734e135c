"""Worker launchers: what daisy runs in each worker slot of a step.

- ``local``: the worker loop itself, ``partial(serve_blocks, step)`` (zero arguments); daisy runs it in
  ``max_workers`` fresh processes (the step is pickled; it opens its arrays, stores and networks in the worker).
- ``slurm`` / ``lsf``: a *zero-argument* function, ``partial(run_cluster_worker, command)``. daisy calls it once
  per worker slot (in a local helper process whose environment carries ``DAISY_CONTEXT``); it runs
  ``srun ... PYTHON -m blockwise.worker --config RUN_DIR/<config file> --step NAME`` (or ``sbatch --wait --wrap``,
  or ``bsub -K``), which blocks until the remote worker has drained the task. srun, sbatch and bsub forward the
  environment, so the remote worker finds the scheduler. A non-zero exit of the job is a dirty worker exit: daisy
  starts a replacement (up to ``max_worker_restarts``) and retries the block it held.
"""

import functools
import shlex
import subprocess
import sys

from blockwise.config import LauncherConfig
from blockwise.worker import serve_blocks


def submit_command(launcher: LauncherConfig, command: list[str]) -> list[str]:
    """``command`` wrapped in the cluster's blocking submit command (srun, sbatch --wait or bsub -K)."""
    if launcher.type == "slurm" and launcher.slurm_submit == "srun":
        return ["srun", *launcher.extra_args, *command]
    if launcher.type == "slurm":
        return ["sbatch", "--wait", *launcher.extra_args, "--wrap", shlex.join(command)]
    if launcher.type == "lsf":
        return ["bsub", "-K", *launcher.extra_args, *command]
    raise ValueError(f"launcher {launcher.type!r} has no worker command")


def worker_command(launcher: LauncherConfig, config_path: str, step) -> list[str]:
    """The command that starts one cluster worker for ``step``:
    ``PYTHON -m blockwise.worker --config CONFIG_PATH --step NAME [step arguments]``, submitted."""
    python = launcher.python or sys.executable
    command = [python, "-m", "blockwise.worker", "--config", str(config_path), "--step", step.name]
    return submit_command(launcher, command + step.worker_arguments())


def run_cluster_worker(command: list[str]) -> None:
    """Run one cluster worker job and wait for it; a failed job raises (a dirty worker exit for daisy)."""
    try:
        completed = subprocess.run(command, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RuntimeError(f"cannot start worker: {command[0]!r} not found on PATH ({shlex.join(command)})") from None
    if completed.returncode != 0:
        raise RuntimeError(f"worker job exited with code {completed.returncode}: {shlex.join(command)}")


def process_function(step, launcher: LauncherConfig, config_path: str):
    """What daisy runs in each worker slot of ``step`` (see the module docstring)."""
    if launcher.type == "local":
        return functools.partial(serve_blocks, step)
    return functools.partial(run_cluster_worker, worker_command(launcher, config_path, step))
