import json
import subprocess
import sys

import numpy as np
import pytest
from funlib.geometry import Roi
from skimage.metrics import adapted_rand_error, variation_of_information

from affcons.cli import main
from affcons.errors import VolumeError
from affcons.evaluate import best_row, evaluate, format_table
from affcons.io import create_volume
from tests.data_paths import ISBI, gala_labels


def test_metrics_equal_scikit_image_on_real_labels():
    gt = gala_labels()
    rng = np.random.default_rng(0)
    # a corrupted segmentation: merge pairs of ids, split by a plane, drop some voxels into id 0
    seg = (gt // 2).astype(np.uint64)
    seg[:, :, 100:] += 1000
    seg[rng.random(seg.shape) < 0.01] = 0
    ours = evaluate(seg, gt)
    split_bits, merge_bits = variation_of_information(gt, seg, ignore_labels=(0,))
    are, precision, recall = adapted_rand_error(gt, seg, ignore_labels=(0,))
    # scikit-image 0.26 uses log2: ours are nats, with the bits alongside
    assert ours["voi_split_bits"] == pytest.approx(split_bits, rel=1e-9)
    assert ours["voi_merge_bits"] == pytest.approx(merge_bits, rel=1e-9)
    assert ours["voi_split"] == pytest.approx(split_bits * np.log(2), rel=1e-9)
    assert ours["arand"] == pytest.approx(are, rel=1e-9)
    assert ours["arand_precision"] == pytest.approx(precision, rel=1e-9)
    assert ours["arand_recall"] == pytest.approx(recall, rel=1e-9)


def test_perfect_and_fully_merged_segmentations():
    gt = np.array([[[1, 1, 2, 2, 0]]])
    assert evaluate(gt, gt)["voi"] == 0.0 and evaluate(gt, gt)["arand"] == 0.0
    merged = evaluate(np.ones_like(gt), gt)
    assert merged["voi_split"] == 0.0 and merged["voi_merge"] == pytest.approx(np.log(2))


def test_bad_inputs():
    with pytest.raises(VolumeError, match="shape"):
        evaluate(np.zeros((2, 2, 2), int), np.zeros((2, 2, 3), int))
    with pytest.raises(VolumeError, match="no labelled voxel"):
        evaluate(np.ones((2, 2, 2), int), np.zeros((2, 2, 2), int))


def test_table_helpers():
    rows = [
        {"threshold": 0.5, "segments": 3, "voi_split": 0.1, "voi_merge": 0.2, "voi": 0.3, "arand": 0.1},
        {"threshold": 0.7, "segments": 2, "voi_split": 0.1, "voi_merge": 0.1, "voi": 0.2, "arand": 0.2},
    ]
    assert best_row(rows)["threshold"] == 0.7
    assert "0.3000" in format_table(rows)


def _zarr_labels(path, data, voxel_size=(50, 4, 4)):
    array = create_volume(
        path, Roi((0, 0, 0), tuple(s * v for s, v in zip(data.shape, voxel_size))), voxel_size, data.dtype
    )
    array[array.roi] = data
    return path


def test_evaluate_command_json_from_zarr_and_hdf5(tmp_path, capsys):
    import h5py

    with h5py.File(ISBI, "r") as f:
        gt = f["labels/neurites_3dcc"][:]
    seg = gt.copy()
    seg[:, :256] += 5000  # split every object crossing y = 256
    seg_path = _zarr_labels(f"{tmp_path}/out.zarr/seg", seg)
    assert main(["evaluate", "--seg", seg_path, "--gt", f"{ISBI}:labels/neurites_3dcc", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate(seg, gt)
    assert printed["voi_split"] == pytest.approx(expected["voi_split"]) and printed["voi_split"] > 0
    assert printed["voi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert set(printed) >= {"voi_split", "voi_merge", "arand"}


def test_evaluate_command_refuses_different_rois(tmp_path):
    seg_path = _zarr_labels(f"{tmp_path}/out.zarr/seg", np.ones((30, 512, 256), np.uint32))
    result = subprocess.run(
        [sys.executable, "-m", "affcons.cli", "evaluate", "--seg", seg_path, "--gt", f"{ISBI}:labels/neurites_3dcc"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "differs from ground truth ROI" in result.stderr and result.stdout == ""
