"""Which GPUs a process may use, which torch device it computes on, and at which precision.

CUDA numbers the GPUs a process sees ``0..N-1`` after ``CUDA_VISIBLE_DEVICES`` (inherited from the shell, SLURM, LSF
or a container runtime) has chosen and ordered them; its entries are indices, GPU UUIDs (``GPU-8f6c...``) or MIG
instance UUIDs (``MIG-...``). A worker that must compute on the ``i``-th GPU its parent sees therefore sets
``CUDA_VISIBLE_DEVICES`` to the parent's ``i``-th *entry*, never to ``i`` itself:

    entries = visible_gpus(os.environ, torch.cuda.device_count())     # in the parent (the blockwise driver)
    os.environ["CUDA_VISIBLE_DEVICES"] = worker_visible_devices(entries, i)   # in worker i, before CUDA starts

:func:`visible_gpus`, :func:`worker_visible_devices`, :func:`resolve_device` and :func:`resolve_precision` (given a
capability) take the environment, GPU count and compute capability as arguments, so the GPU logic is tested on
machines without a GPU; :func:`select_device` and :func:`cuda_capability` ask torch.
"""

import logging
from collections.abc import Mapping, Sequence

import torch

from affcons.errors import ConfigError

logger = logging.getLogger(__name__)

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
#: Numerical precisions of inference; ``auto`` is bf16 on GPUs with bf16 tensor cores, fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")
#: The first compute capability (Ampere, sm_80) with bf16 tensor cores; older GPUs only emulate bf16 (slowly).
BF16_CAPABILITY = (8, 0)


def visible_gpus(environ: Mapping[str, str], count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` entries of the GPUs a process with ``environ`` sees as ``cuda:0..count-1``.

    ``count`` is ``torch.cuda.device_count()`` of that process. Unset: ``["0", ..., str(count - 1)]`` (the driver's
    own numbering, in the ``CUDA_DEVICE_ORDER`` that workers inherit). Set: its first ``count`` entries, stripped
    (CUDA stops at the first entry that names no GPU, so the GPUs it shows are a prefix of the list). A list shorter
    than ``count`` (the variable was changed after CUDA started) is a :class:`ConfigError`."""
    if count < 0:
        raise ConfigError(f"GPU count must not be negative, got {count}")
    value = environ.get(VISIBLE_DEVICES)
    if value is None:
        return [str(index) for index in range(count)]
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if len(entries) < count:
        raise ConfigError(
            f"{VISIBLE_DEVICES}={value!r} names {len(entries)} GPU(s) but CUDA sees {count}: the variable changed "
            "after CUDA started in this process; set it before starting affcons"
        )
    return entries[:count]


def worker_visible_devices(entries: Sequence[str], index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that makes a worker's ``cuda:0`` the parent's ``cuda:index``: the parent's
    entry (an index, GPU UUID or MIG UUID) from :func:`visible_gpus`."""
    if not 0 <= index < len(entries):
        raise ConfigError(f"GPU {index} is not visible here: the visible GPUs are 0..{len(entries) - 1} ({entries})")
    return str(entries[index])


def resolve_device(name: str, gpu_count: int) -> torch.device:
    """``name`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) as a torch device, given ``gpu_count`` visible GPUs.

    ``auto`` is ``cuda`` when there is a GPU, else ``cpu``; ``cuda`` without an index is left to the current device.
    A GPU that is not there, or any other name, is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if gpu_count > 0 else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if gpu_count == 0:
            raise ConfigError(f"device {name!r} requested but CUDA sees no GPU here (use 'auto' or 'cpu')")
        if device.index is not None and device.index >= gpu_count:
            raise ConfigError(f"device {name!r} requested but CUDA sees GPUs 0..{gpu_count - 1} only")
    return device


def select_device(name: str = "auto") -> torch.device:
    """:func:`resolve_device` on this machine; a CUDA device gets its index (the current device for ``cuda``) and
    becomes the current device (``torch.cuda.set_device``), so that everything that allocates on plain ``"cuda"``
    (autocast, GradScaler, pinned memory, RNG states) uses the same GPU."""
    device = resolve_device(name, torch.cuda.device_count())
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """``(major, minor)`` compute capability of a CUDA ``device`` (starts CUDA), None for other devices or when this
    machine has no GPU."""
    if device.type != "cuda" or torch.cuda.device_count() == 0:
        return None
    return tuple(torch.cuda.get_device_capability(device))


def resolve_precision(precision: str, device: torch.device, capability: tuple[int, int] | None = None) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``.

    ``auto``: bf16 on a CUDA GPU of compute capability >= 8.0 (Ampere and newer: bf16 tensor cores), fp32 on older
    GPUs (they emulate bf16 at about fp32 speed, and fp16 would need per-model range checks) and on the CPU.
    ``capability`` is the GPU's ``(major, minor)``; None queries ``device`` (:func:`cuda_capability`). ``auto`` for a
    GPU whose capability is unknown (no GPU on this machine) is a :class:`ConfigError`. Explicit ``fp32`` / ``bf16``
    are kept (bf16 on the CPU is allowed; on a pre-Ampere GPU it is slow, and logged as such)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
    if device.type != "cuda":
        return "fp32" if precision == "auto" else precision
    capability = capability if capability is not None else cuda_capability(device)
    if precision == "auto":
        if capability is None:
            raise ConfigError(
                f"precision auto on {device} needs the GPU's compute capability, and no GPU is visible here: choose "
                "bf16 (compute capability >= 8.0) or fp32, or resolve the precision on the GPU node"
            )
        return "bf16" if tuple(capability) >= BF16_CAPABILITY else "fp32"
    if precision == "bf16" and capability is not None and tuple(capability) < BF16_CAPABILITY:
        logger.warning("bf16 on a GPU of compute capability %d.%d is emulated (no bf16 tensor cores)", *capability)
    return precision
