"""Paths of the real EM volumes bundled in ``data/`` (see data/README.md), and small loaders for tests."""

from pathlib import Path

import h5py
import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
ISBI = DATA / "isbi2012_3d" / "isbi2012_with_3d_neurite_labels.h5"
GALA_TEST_GT = DATA / "gala_fibsem" / "test-gt.lzf.h5"
GALA_TRAIN_GT = DATA / "gala_fibsem" / "train-gt.lzf.h5"


def isbi_labels(crop=(slice(None),) * 3) -> np.ndarray:
    with h5py.File(ISBI, "r") as f:
        return f["labels/neurites_3dcc"][crop].astype(np.uint64)


def gala_labels(path=GALA_TEST_GT) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["stack"][()].astype(np.uint64)
