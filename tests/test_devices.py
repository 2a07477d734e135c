"""GPU selection without a GPU: the worker mapping through an inherited ``CUDA_VISIBLE_DEVICES`` (fake environments),
device names, the precision per GPU generation (injected compute capabilities), and the suite's CPU pin."""

import os
import subprocess
import sys

import pytest
import torch

from affcons.devices import (
    resolve_device,
    resolve_precision,
    select_device,
    visible_gpus,
    worker_visible_devices,
)
from affcons.errors import ConfigError
from affcons.nets import CRACNetworks
from affcons.predict import PatchGrid, Predictor
from affcons.train.config import ModelConfig

UUIDS = ["GPU-8f6c2a4e-1b2c-4d5e-9f00-112233445566", "GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789"]
MIGS = ["MIG-5c3e1a2b-7d8e-5f90-a1b2-c3d4e5f60718", "MIG-9e8d7c6b-5a4f-5e3d-2c1b-0a9f8e7d6c5b"]


def test_without_cuda_visible_devices_the_entries_are_the_indices():
    assert visible_gpus({}, 3) == ["0", "1", "2"]
    assert visible_gpus({"PATH": "/bin"}, 0) == []


@pytest.mark.parametrize(
    "value, count, entries",
    [
        ("4,5,6,7", 4, ["4", "5", "6", "7"]),
        ("3,1", 2, ["3", "1"]),  # the order is the variable's, not the physical one
        (",".join(UUIDS), 2, UUIDS),
        (f" {MIGS[0]} , {MIGS[1]} ", 2, MIGS),
        ("2,0,9", 2, ["2", "0"]),  # CUDA stopped at 9, a GPU this node does not have
        ("", 0, []),
    ],
)
def test_inherited_cuda_visible_devices_entries(value, count, entries):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, count) == entries


def test_a_worker_uses_the_inherited_entry_never_the_raw_index():
    # a job started with CUDA_VISIBLE_DEVICES=4,5,6,7 must put worker 0 on physical GPU 4, not on GPU 0
    entries = visible_gpus({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, 4)
    assert [worker_visible_devices(entries, i) for i in range(4)] == ["4", "5", "6", "7"]
    assert worker_visible_devices(visible_gpus({"CUDA_VISIBLE_DEVICES": ",".join(MIGS)}, 2), 1) == MIGS[1]
    assert worker_visible_devices(visible_gpus({}, 2), 1) == "1"
    with pytest.raises(ConfigError, match=r"GPU 4 is not visible here: the visible GPUs are 0\.\.3"):
        worker_visible_devices(entries, 4)


def test_a_list_shorter_than_the_gpu_count_is_refused():
    with pytest.raises(ConfigError, match="names 1 GPU.* but CUDA sees 2"):
        visible_gpus({"CUDA_VISIBLE_DEVICES": "5"}, 2)


@pytest.mark.parametrize(
    "name, count, expected",
    [
        ("auto", 0, torch.device("cpu")),
        ("auto", 2, torch.device("cuda")),
        ("cpu", 2, torch.device("cpu")),
        ("cuda", 1, torch.device("cuda")),
        ("cuda:1", 2, torch.device("cuda", 1)),
    ],
)
def test_device_names(name, count, expected):
    assert resolve_device(name, count) == expected


@pytest.mark.parametrize(
    "name, count, message",
    [
        ("cuda:2", 2, r"CUDA sees GPUs 0\.\.1 only"),
        ("cuda", 0, "CUDA sees no GPU here"),
        ("cuda:0", 0, "CUDA sees no GPU here"),
        ("gpu", 1, "not one of auto, cpu, cuda, cuda:N"),
        ("mps", 1, "not one of auto, cpu, cuda, cuda:N"),
    ],
)
def test_bad_device_names_are_config_errors(name, count, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(name, count)


def test_select_device_on_this_cpu_machine():
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no GPU"):
        select_device("cuda:0")
    with pytest.raises(ConfigError, match="not one of"):
        select_device("gpu")


@pytest.mark.parametrize(
    "capability, expected",
    [((6, 0), "fp32"), ((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")],
)
def test_auto_precision_is_bf16_only_from_ampere_on(capability, expected):
    assert resolve_precision("auto", torch.device("cuda", 1), capability) == expected


def test_precision_rules():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda"), (9, 0)) == "fp32"
    assert resolve_precision("bf16", torch.device("cuda"), (7, 0)) == "bf16"  # asked for: kept (logged as slow)
    with pytest.raises(ConfigError, match="needs the GPU's compute capability"):
        resolve_precision("auto", torch.device("cuda"))  # no GPU here to ask
    with pytest.raises(ConfigError, match="precision 'fp16' is not one of"):
        resolve_precision("fp16", torch.device("cpu"))


def test_predictor_resolves_auto_on_the_cpu():
    networks = CRACNetworks.from_config(ModelConfig(filters=[2, 2, 2, 2, 2], embedding_channels=2))
    predictor = Predictor(networks, PatchGrid((4, 32, 32), (0, 0, 0)), channels=3, precision="auto")
    assert predictor.precision == "fp32"


def test_the_suite_and_its_worker_processes_see_no_gpu():
    """tests/conftest.py hides the GPUs before torch is imported (AFFCONS_TEST_GPU=1 is the opt-in)."""
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert torch.cuda.device_count() == 0
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, torch; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), torch.cuda.device_count())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert child.stdout.split() == ["''", "0"]
