"""Devices of the prediction workers: the device a run resolves to, one exclusive GPU per local worker, CPU cores.

A local GPU worker claims a free GPU of the run's list with an exclusive file lock in ``RUN_DIR/gpu-locks`` (released
by the OS when the worker dies, so a restarted worker takes over its GPU) and sets ``CUDA_VISIBLE_DEVICES`` to that
GPU's entry of the driver's own ``CUDA_VISIBLE_DEVICES`` before CUDA starts. Cluster workers get their GPU from the
scheduler (the launchers ask for one per worker job, :mod:`blockwise.launchers`).
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


def resolve_gpus(device: str, gpus: list[int] | None, launcher: str) -> tuple[str, list[int] | None, list[str] | None]:
    """``(device, gpus, gpu_entries)`` of a prediction run, resolved on the driver's machine.

    Local workers: ``auto`` is ``cuda`` when the driver sees a GPU; ``gpus`` are CUDA indices as the driver sees
    them (default: all), and ``gpu_entries`` the matching entries of the driver's ``CUDA_VISIBLE_DEVICES``
    (indices, GPU or MIG UUIDs; :func:`affcons.devices.visible_gpus`), which a worker sets for itself, so a run
    started with ``CUDA_VISIBLE_DEVICES=4,5`` computes on GPUs 4 and 5. Cluster workers: the scheduler gives each job
    its GPU, so the device must be chosen explicitly (``auto`` would be decided on the driver's node, perhaps a login
    node without a GPU) and no GPU list applies."""
    import os

    import torch

    from affcons.devices import visible_gpus, worker_visible_devices

    if launcher != "local":
        if device == "auto":
            raise ConfigError(
                f"device auto is decided on the driver's node, which may have no GPU; with the {launcher} launcher "
                "choose --device cuda (one GPU per worker job) or --device cpu"
            )
        if gpus:
            raise ConfigError(f"--gpus {gpus} applies to local workers; the {launcher} scheduler assigns GPUs")
        return device, None, None
    count = torch.cuda.device_count()
    if device == "auto":
        device = "cuda" if count else "cpu"
    if device == "cpu":
        if gpus:
            raise ConfigError(f"--gpus {gpus} given but the device is cpu")
        return "cpu", None, None
    if count == 0:
        raise ConfigError("device cuda requested but this machine has no CUDA device (use --device cpu)")
    gpus = list(gpus) if gpus else list(range(count))
    if any(not 0 <= g < count for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {gpus}: this machine has GPUs 0..{count - 1} (each at most once)")
    entries = visible_gpus(os.environ, count)
    return "cuda", gpus, [worker_visible_devices(entries, g) for g in gpus]


def claim_gpu(entries: list[str], lock_dir: Path):
    """Lock the first free GPU of ``entries`` (``CUDA_VISIBLE_DEVICES`` entries; exclusive ``flock`` on
    ``lock_dir/gpu-<entry>.lock``); returns ``(entry, open lock file)``. The lock lives as long as the file stays
    open, i.e. as long as the worker."""
    import fcntl
    import re

    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in entries:
        handle = open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9.-]', '_', gpu)}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return gpu, handle
    raise RuntimeError(f"no free GPU among {entries}: every one is held by another worker of this run ({lock_dir})")


def gpu_capability(gpus: list[int]) -> tuple[int, int]:
    """The lowest compute capability among the driver's ``gpus`` (what bf16 support is decided by)."""
    import torch

    return min(tuple(torch.cuda.get_device_capability(g)) for g in gpus)


def describe_device(device: str, precision: str, gpus: list[int] | None, workers: int, threads: int) -> dict:
    """What a prediction run computes on (for its summary)."""
    import torch

    info = {"type": device, "precision": precision, "torch": torch.__version__}
    if device == "cuda" and gpus and torch.cuda.is_available():
        info["gpus"] = {str(g): torch.cuda.get_device_name(g) for g in gpus}
    else:
        info["cores"] = available_cores()
        info["workers"] = workers
        info["threads_per_worker"] = threads or max(1, available_cores() // workers)
    return info
