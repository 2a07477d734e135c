"""Devices of the prediction workers: the device a run resolves to, one exclusive GPU per local worker, CPU cores.

A local GPU worker claims a free GPU of the run's list with an exclusive file lock in ``RUN_DIR/gpu-locks`` (released
by the OS when the worker dies, so a restarted worker takes over its GPU) and sets ``CUDA_VISIBLE_DEVICES`` before
CUDA starts. Cluster workers get their GPU from the scheduler.
"""

import os
from pathlib import Path

from affcons.errors import ConfigError


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_device(device: str, gpus: list[int] | None, launcher: str) -> tuple[str, list[int] | None]:
    """``(device, gpus)`` with ``auto`` and the GPU list resolved on the driver's machine (for local workers)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if gpus:
            raise ConfigError(f"--gpus {gpus} given but the device is cpu")
        return "cpu", None
    if launcher != "local":
        return "cuda", gpus  # the cluster scheduler assigns GPUs to each job
    if not torch.cuda.is_available():
        raise ConfigError("device cuda requested but this machine has no CUDA device (use --device cpu)")
    count = torch.cuda.device_count()
    gpus = list(gpus) if gpus else list(range(count))
    bad = [g for g in gpus if not 0 <= g < count]
    if bad or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {gpus}: this machine has GPUs 0..{count - 1} (each at most once)")
    return "cuda", gpus


def claim_gpu(gpus: list[int], lock_dir: Path):
    """Lock the first free GPU of ``gpus`` (exclusive ``flock`` on ``lock_dir/gpu<N>.lock``); returns
    ``(gpu, open lock file)``. The lock lives as long as the file stays open, i.e. as long as the worker."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(lock_dir / f"gpu{gpu}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return gpu, handle
    raise RuntimeError(f"no free GPU among {gpus}: every one is held by another worker of this run ({lock_dir})")


def describe_device(device: str, precision: str, gpus: list[int] | None, workers: int, threads: int) -> dict:
    """What a prediction run computes on (for its summary)."""
    import torch

    info = {"type": device, "precision": precision, "torch": torch.__version__}
    if device == "cuda" and torch.cuda.is_available():
        info["gpus"] = {str(g): torch.cuda.get_device_name(g) for g in (gpus or [])}
    else:
        info["cores"] = available_cores()
        info["workers"] = workers
        info["threads_per_worker"] = threads or max(1, available_cores() // workers)
    return info
