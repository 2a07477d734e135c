"""Test-wide setup: the CPU pin, the GPU opt-in, the MongoDB-wire server plugin, and isolation of worker logs and
outputs in tmp_path.

The suite's guarantees (exact training resume, blockwise == whole-volume bytes, fp32 tolerances) are CPU
guarantees, so GPUs are hidden (``CUDA_VISIBLE_DEVICES=""``, set before torch is imported and inherited by every
worker process) and ``device: auto`` means the CPU everywhere. ``AFFCONS_TEST_GPU=1`` leaves the GPUs visible and
runs only the tests marked ``gpu`` (with tolerances for bf16 and non-deterministic kernels); every other test is
skipped in that mode, so the two kinds of guarantees never mix in one run.
"""

import os

#: ``AFFCONS_TEST_GPU=1``: run the ``gpu`` tests on the visible GPUs instead of the CPU suite.
GPU_TESTS = os.environ.get("AFFCONS_TEST_GPU") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# one BLAS/OpenMP thread per process: tests start several worker processes on a 2-core machine, and oversubscribed
# torch threads run 5-10x slower there. Set before torch is imported, inherited by worker processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

pytest_plugins = ["tests.mongo_server"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; runs only with AFFCONS_TEST_GPU=1")


def pytest_collection_modifyitems(config, items):
    if GPU_TESTS:
        skip = pytest.mark.skip(reason="AFFCONS_TEST_GPU=1 runs only the gpu tests (the rest are CPU guarantees)")
        selected = [item for item in items if item.get_closest_marker("gpu") is None]
    else:
        skip = pytest.mark.skip(reason="GPU test: run with AFFCONS_TEST_GPU=1 on a machine with a CUDA GPU")
        selected = [item for item in items if item.get_closest_marker("gpu") is not None]
    for item in selected:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory, so daisy logs and relative outputs never land in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS", "1"))
