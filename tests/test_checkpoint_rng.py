"""Resume across GPU counts: a checkpoint's CUDA generator states (one per GPU of an older multi-GPU checkpoint, one
of the training device now, none of a CPU run) are restored into the resuming device, on any number of GPUs."""

import json
import random

import numpy as np
import torch

from affcons.cli import main as cli_main
from affcons.train.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state, training_cuda_state

# fake Philox states (seed, offset: 16 bytes each), one per GPU of the node that wrote the checkpoint
GPU_STATES = [torch.tensor(list(range(i, i + 16)), dtype=torch.uint8) for i in range(4)]


def _losses(history) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    return [(row["iteration"], row["loss/total"]) for row in rows if "loss/total" in row]


def test_the_training_device_generator_is_the_one_restored():
    assert training_cuda_state({"cuda": None}) is None
    assert training_cuda_state({"cuda": []}) is None
    assert training_cuda_state({"cuda": GPU_STATES[2:3]}) is GPU_STATES[2]  # written by this version: one state
    assert training_cuda_state({"cuda": GPU_STATES}) is GPU_STATES[0]  # an older checkpoint of a 4-GPU node


def test_a_cpu_snapshot_has_no_cuda_state_and_restores_every_cpu_generator():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state(torch.device("cpu"))
    assert state["cuda"] is None
    expected = (torch.rand(3), np.random.random(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state({**state, "cuda": GPU_STATES}, torch.device("cpu"))  # 4 GPU states, 0 GPUs here: ignored
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.random(3), expected[1])
    assert random.random() == expected[2]


def test_a_checkpoint_of_a_four_gpu_node_resumes_on_a_node_without_gpus(tmp_path):
    """Stage-1 pre-training (dropout perturbation: the losses depend on the restored torch generator) stopped at 2,
    its checkpoint given the 4 CUDA states an older 4-GPU run wrote, then resumed here: the uninterrupted losses."""
    common = ["pretrain", "-c=isbi_pretraining_smoke", "--stage", "1", "--no-validation"]
    assert cli_main([*common, "--run-dir", str(tmp_path / "straight")]) == 0
    run_dir = tmp_path / "resumed"
    assert cli_main([*common, "--run-dir", str(run_dir), "--stop-at", "2"]) == 0
    last = run_dir / "stage1" / "checkpoints" / "last.pt"
    state = load_state(last)
    state["rng"]["cuda"] = GPU_STATES
    save_checkpoint(last, {key: value for key, value in state.items() if key not in ("format", "version")})
    assert cli_main([*common, "--run-dir", str(run_dir), "--resume"]) == 0
    straight = _losses(tmp_path / "straight" / "stage1" / "history.jsonl")
    assert len(straight) == 3 and _losses(run_dir / "stage1" / "history.jsonl") == straight
