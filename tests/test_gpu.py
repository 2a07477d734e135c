"""Opt-in GPU tests: ``AFFCONS_TEST_GPU=1 python -m pytest -q tests`` on a machine with a CUDA GPU runs these and
skips the CPU suite (tests/conftest.py). GPU results are compared with tolerances: bf16 autocast, TF32 convolutions
and non-deterministic CUDA kernels (atomic adds in the backward pass of trilinear upsampling) do not give bitwise
equal numbers, so the exactness the CPU suite asserts is a CPU guarantee."""

import copy
import json

import numpy as np
import pytest
import torch

from affcons.cli import main as cli_main
from affcons.devices import resolve_precision, select_device
from affcons.nets import CRACNetworks
from affcons.predict import PatchGrid, Predictor
from affcons.train.checkpoint import rng_state, set_rng_state
from affcons.train.config import ModelConfig

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpus() -> int:
    count = torch.cuda.device_count()
    assert count > 0, "AFFCONS_TEST_GPU=1 but torch sees no GPU"
    yield count
    torch.cuda.set_device(0)


def _losses(history) -> list[float]:
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    return [row["loss/total"] for row in rows if "loss/total" in row]


def test_cuda_n_becomes_the_current_device(gpus):
    device = select_device(f"cuda:{gpus - 1}")
    assert device == torch.device("cuda", gpus - 1) and torch.cuda.current_device() == gpus - 1
    assert select_device("cuda") == device  # plain cuda: the current device, with its index


def test_auto_precision_follows_this_gpus_generation(gpus):
    capability = torch.cuda.get_device_capability(0)
    assert resolve_precision("auto", torch.device("cuda", 0)) == ("bf16" if capability >= (8, 0) else "fp32")


def test_the_generator_of_a_four_gpu_checkpoint_goes_into_the_training_device(gpus):
    device = select_device(f"cuda:{gpus - 1}")
    states = []
    for seed in range(4):
        torch.cuda.manual_seed(seed)
        states.append(torch.cuda.get_rng_state(device))
    assert len(rng_state(device)["cuda"]) == 1  # only the training device's generator is stored
    torch.cuda.manual_seed(99)
    set_rng_state({**rng_state(device), "cuda": states}, device)
    assert torch.equal(torch.cuda.get_rng_state(device), states[0])


def test_gpu_prediction_is_close_to_the_fp32_cpu_reference(gpus):
    torch.manual_seed(0)
    networks = CRACNetworks.from_config(ModelConfig(filters=[8, 8, 16, 16, 16], embedding_channels=4))
    grid = PatchGrid((8, 64, 64), (2, 16, 16))
    raw = np.random.default_rng(0).integers(0, 256, (4, *grid.patch), dtype=np.uint8)
    cpu = Predictor(copy.deepcopy(networks), grid, channels=3, precision="fp32")
    reference = cpu.predict_patches(raw)["affs"].int()
    for precision, mean_limit, max_limit in (("fp32", 0.05, 2), ("bf16", 1.0, 16)):  # in 1/255
        gpu = Predictor(copy.deepcopy(networks), grid, channels=3, device="cuda", precision=precision)
        difference = (gpu.predict_patches(raw)["affs"].cpu().int() - reference).abs()
        assert difference.float().mean() <= mean_limit and difference.max() <= max_limit, precision


def test_gpu_training_resume_reproduces_the_losses_within_tolerance(gpus, tmp_path):
    common = ["pretrain", "-c=isbi_pretraining_smoke", "--stage", "1", "--no-validation", "--device", "cuda"]
    assert cli_main([*common, "--run-dir", str(tmp_path / "straight")]) == 0
    assert cli_main([*common, "--run-dir", str(tmp_path / "resumed"), "--stop-at", "2"]) == 0
    assert cli_main([*common, "--run-dir", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = _losses(tmp_path / "straight" / "stage1" / "history.jsonl")
    assert len(straight) == 3
    assert _losses(tmp_path / "resumed" / "stage1" / "history.jsonl") == pytest.approx(straight, rel=1e-3)
