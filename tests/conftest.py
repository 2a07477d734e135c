"""Test-wide fixtures: the MongoDB-wire server plugin, and isolation of worker logs and outputs in tmp_path."""
import os

import pytest

pytest_plugins = ["tests.mongo_server"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Run each test in its own directory, so daisy logs and relative outputs never land in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS", "1"))
