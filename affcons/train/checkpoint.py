"""The training checkpoint format (one ``torch.save`` dict, loadable with ``weights_only=True``).

Keys:

* ``format`` = ``"affcons-train-checkpoint"``, ``version`` = 1;
* ``stage``: ``"crac"``, ``"pretrain-stage1"``, ``"pretrain-stage2"`` or ``"confidence"`` (the exported CPSN);
* ``iteration``: completed iterations;
* ``config_kind`` (``"crac"`` / ``"pretrain"``) and ``config``: the full run config as JSON-compatible values;
* ``models``: ``{name: state_dict}`` of the trained nets (``embedding``, ``affinity``, ``confidence``);
* ``ema``: ``{name: state_dict}`` of the EMA copies, or None;
* ``optimizer``, ``scaler`` (None without fp16): their state dicts;
* ``rng``: ``torch`` (ByteTensor), ``cuda`` (list of ByteTensors or None), ``numpy`` (the PCG/MT state with its key
  as a tensor), ``python`` (``random.getstate()``);
* ``best``: ``{"metric": str, "value": float, "iteration": int, "scores": dict}`` or None.

Everything is a tensor or a plain Python value, so :func:`read_checkpoint` loads with ``weights_only=True``.

CUDA generators: training runs on one device, and only that device's generator drives it. A checkpoint of a CUDA run
stores that generator alone, ``cuda = [state]``; a CPU run stores None. Older checkpoints hold one state per GPU visible
then: their entry 0 is taken (the default ``cuda`` device trained on GPU 0). Resuming restores that one state into the
device training resumes on, whatever its index and however many GPUs the node has (also none: a CPU resume ignores it).
A CUDA resume of a CPU checkpoint keeps the freshly seeded CUDA generator and logs a warning. The torch CPU, numpy and
python generators are always restored.
"""

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from affcons.config import validate
from affcons.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

FORMAT = "affcons-train-checkpoint"
VERSION = 1


def rng_state(device: torch.device) -> dict:
    """Snapshot of the torch, numpy and python global generators, and of the CUDA generator of the training
    ``device`` (None when training on the CPU)."""
    np_state = np.random.get_state(legacy=False)
    key = np_state["state"]["key"]
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else None,
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }


def training_cuda_state(state: dict) -> torch.Tensor | None:
    """The CUDA generator state of the device a :func:`rng_state` snapshot was trained on (the first stored one, see
    the module docstring), or None for a CPU run."""
    states = state.get("cuda")
    return states[0] if states else None


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore a :func:`rng_state` snapshot for training on ``device``: the stored training-device CUDA generator
    goes into ``device`` when it is a GPU (see the module docstring)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        cuda_state = training_cuda_state(state)
        if cuda_state is None:
            logger.warning("the checkpoint has no CUDA generator (a CPU run): %s keeps its fresh seed", device)
        else:
            torch.cuda.set_rng_state(cuda_state, device)
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (format and version added) atomically: a temporary file renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_state(path: str | Path, map_location="cpu") -> dict:
    """The raw checkpoint dict; a missing or foreign file is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign pickles
        raise CheckpointError(f"{path}: not a readable affcons checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an affcons training checkpoint (format {FORMAT!r} expected)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not supported (need {VERSION})")
    return state


def read_checkpoint(path: str | Path, map_location="cpu") -> tuple[dict, object]:
    """``(state, config)`` with the recorded config re-validated into its class."""
    from affcons.train.config import config_class

    state = load_state(path, map_location)
    try:
        config = validate(config_class(state["config_kind"]), state["config"], f"{path} (recorded config)")
    except (KeyError, ConfigError) as error:
        raise CheckpointError(f"{path}: the recorded config is unusable: {error}") from None
    return state, config
