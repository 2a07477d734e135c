"""Test-wide fixtures: the MongoDB-wire server plugin, and isolation of worker logs and outputs in tmp_path."""

import os

# one BLAS/OpenMP thread per process: tests start several worker processes on a 2-core machine, and oversubscribed
# torch threads run 5-10x slower there. Set before torch is imported, inherited by worker processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

pytest_plugins = ["tests.mongo_server"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory, so daisy logs and relative outputs never land in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS", "1"))
