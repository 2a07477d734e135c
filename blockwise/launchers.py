"""Worker launchers: what daisy runs in each worker slot of a step.

- ``local``: the worker loop itself, ``partial(serve_blocks, step)`` (zero arguments); daisy runs it in
  ``max_workers`` fresh processes (the step is pickled; it opens its arrays, stores and networks in the worker).
  With a warm pool (``execution.warm_workers``, :mod:`blockwise.pool`) daisy's processes relay the step to the
  pool's processes instead.
- ``slurm`` / ``lsf``: a *zero-argument* function, ``partial(run_cluster_worker, command)``. daisy calls it once
  per worker slot (in a local helper process whose environment carries ``DAISY_CONTEXT``); it runs
  ``srun ... PYTHON -m blockwise.worker --config RUN_DIR/<config file> --step NAME`` (or ``sbatch --wait --wrap``,
  or ``bsub -K``), which blocks until the remote worker has drained the task. srun, sbatch and bsub forward the
  environment, so the remote worker finds the scheduler. A non-zero exit of the job is a dirty worker exit: daisy
  starts a replacement (up to ``max_worker_restarts``) and retries the block it held. A step whose workers compute
  on a GPU asks for one per job (``--gres=gpu:1``, ``-gpu num=1``) unless the extra arguments already name a GPU
  request.
"""

import functools
import shlex
import shutil
import subprocess
import sys

from affcons.errors import ConfigError
from blockwise.config import LauncherConfig
from blockwise.worker import serve_blocks

#: How each scheduler is asked for one GPU per job, and the options by which a user's own arguments already ask.
GPU_REQUEST = {"slurm": ["--gres=gpu:1"], "lsf": ["-gpu", "num=1"]}
GPU_OPTIONS = {"slurm": ("--gres", "--gpus", "-G", "--gpus-per-task", "--gpus-per-node"), "lsf": ("-gpu",)}


def submit_command(launcher: LauncherConfig, command: list[str], needs_gpu: bool = False) -> list[str]:
    """``command`` wrapped in the cluster's blocking submit command (srun, sbatch --wait or bsub -K); a worker that
    ``needs_gpu`` asks for one GPU unless the launcher's extra arguments already name a GPU request."""
    extra = list(launcher.extra_args)
    if needs_gpu and not any(arg.split("=")[0] in GPU_OPTIONS[launcher.type] for arg in extra):
        extra = GPU_REQUEST[launcher.type] + extra
    if launcher.type == "slurm" and launcher.slurm_submit == "srun":
        return ["srun", *extra, *command]
    if launcher.type == "slurm":
        return ["sbatch", "--wait", *extra, "--wrap", shlex.join(command)]
    if launcher.type == "lsf":
        return ["bsub", "-K", *extra, *command]
    raise ValueError(f"launcher {launcher.type!r} has no worker command")


def check_launcher(launcher: LauncherConfig) -> None:
    """Refuse a cluster launcher whose submit program is not on this machine's PATH (before anything runs)."""
    if launcher.type == "local":
        return
    program = submit_command(launcher, ["true"])[0]
    if shutil.which(program) is None:
        scheduler = "Slurm" if launcher.type == "slurm" else "LSF"
        raise ConfigError(
            f"--launcher {launcher.type}: {program!r} is not on PATH, so no worker could start. Run this command on "
            f"a node of the {scheduler} cluster (where {program} works), or use --launcher local"
        )


def worker_command(launcher: LauncherConfig, config_path: str, step) -> list[str]:
    """The command that starts one cluster worker for ``step``:
    ``PYTHON -m blockwise.worker --config CONFIG_PATH --step NAME [step arguments]``, submitted."""
    python = launcher.python or sys.executable
    command = [python, "-m", "blockwise.worker", "--config", str(config_path), "--step", step.name]
    return submit_command(launcher, command + step.worker_arguments(), needs_gpu=step.needs_gpu)


def run_cluster_worker(command: list[str]) -> None:
    """Run one cluster worker job and wait for it; its stderr passes through to this worker slot's log. A failed
    job raises (a dirty worker exit for daisy) with the last line the job wrote to stderr, so the driver's report
    says why, not only that it failed."""
    try:
        job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    except FileNotFoundError:
        raise RuntimeError(f"cannot start worker: {command[0]!r} not found on PATH ({shlex.join(command)})") from None
    last = ""
    for line in job.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    if job.wait() != 0:
        what = f"worker job exited with code {job.returncode}: {shlex.join(command)}"
        raise RuntimeError(f"{last} ({what})" if last else what)


def process_function(step, launcher: LauncherConfig, config_path: str, pool=None):
    """What daisy runs in each worker slot of ``step`` (see the module docstring); with the local launcher and a
    :class:`blockwise.pool.WorkerPool`, a relay to its warm processes."""
    if launcher.type == "local" and pool is not None:
        import pickle

        from blockwise.pool import relay

        return functools.partial(relay, pool.address, pickle.dumps(step))
    if launcher.type == "local":
        return functools.partial(serve_blocks, step)
    return functools.partial(run_cluster_worker, worker_command(launcher, config_path, step))
