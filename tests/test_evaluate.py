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


# --- evaluation at scale: one fragment x ground-truth table, every threshold from it ----------------------------


@pytest.fixture(scope="module")
def fragments_and_tree():
    """Real volumes: (name, ground truth, fragments, merge tree, voxel size) for gala and ISBI (degraded affinities)."""
    from affcons.segment import agglomerate_fragments, watershed_from_affinities
    from affcons.synthetic import degraded_affinities
    from tests.data_paths import isbi_labels

    cases = []
    for name, gt, voxel_size in (
        ("gala", gala_labels(), (10, 10, 10)),
        ("isbi", isbi_labels((slice(0, 12), slice(0, 200), slice(0, 256))), (50, 4, 4)),
    ):
        affs = degraded_affinities(gt, seed=4)
        fragments, _ = watershed_from_affinities(affs, voxel_size=voxel_size, min_size=10)
        cases.append((name, gt, fragments, agglomerate_fragments(fragments, affs), voxel_size))
    return cases


def test_scores_from_lut_equal_evaluate_of_the_relabelled_volume_on_real_data(fragments_and_tree, tmp_path):
    from affcons.evaluate import fragment_contingency, scores_from_lut, segments_from_lut
    from affcons.segment import apply_lookup

    for name, gt, fragments, tree, voxel_size in fragments_and_tree:
        stored_fragments = open_zarr(_zarr_labels(f"{tmp_path}/{name}.zarr/fragments", fragments, voxel_size))
        stored_gt = open_zarr(_zarr_labels(f"{tmp_path}/{name}.zarr/gt", gt, voxel_size))
        tables = [fragment_contingency(stored_fragments, stored_gt, slab=slab) for slab in (None, 1, 7)]
        tables.append(fragment_contingency(fragments, gt))
        for table in tables[1:]:
            for column in ("fragments", "ground_truth", "counts"):
                np.testing.assert_array_equal(getattr(table, column), getattr(tables[0], column))
        assert tables[0].counts.sum() == gt.size
        for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
            lookup = tree.lookup(threshold)
            segmentation = apply_lookup(fragments, tree.ids, lookup)
            assert scores_from_lut(tables[0], tree.ids, lookup) == evaluate(segmentation, gt)
            assert segments_from_lut(tables[0], tree.ids, lookup) == len(np.unique(segmentation[segmentation != 0]))
        assert scores_from_lut(tables[0], np.zeros(0, np.uint64), np.zeros(0, np.uint64)) == evaluate(fragments, gt)


def test_fragment_contingency_of_a_roi_and_bad_inputs(fragments_and_tree, tmp_path):
    from affcons.evaluate import fragment_contingency, scores_from_lut

    _, gt, fragments, _, voxel_size = fragments_and_tree[1]
    stored_fragments = open_zarr(_zarr_labels(f"{tmp_path}/r.zarr/fragments", fragments, voxel_size))
    stored_gt = open_zarr(_zarr_labels(f"{tmp_path}/r.zarr/gt", gt, voxel_size))
    roi = Roi((100, 40, 400), (250, 400, 300))
    crop = tuple(slice(o // v, (o + s) // v) for o, s, v in zip(roi.offset, roi.shape, voxel_size))
    table = fragment_contingency(stored_fragments, stored_gt, roi, slab=2)
    none = np.zeros(0, np.uint64)
    assert scores_from_lut(table, none, none) == evaluate(fragments[crop], gt[crop])
    with pytest.raises(VolumeError, match="not inside the fragments ROI"):
        fragment_contingency(stored_fragments, stored_gt, Roi((0, 0, 0), (700, 40, 40)))
    with pytest.raises(VolumeError, match="multiple of the voxel size"):
        fragment_contingency(stored_fragments, stored_gt, Roi((0, 0, 2), (50, 40, 40)))
    with pytest.raises(VolumeError, match="non-negative"):
        fragment_contingency(fragments, -np.ones(fragments.shape, np.int32))
    with pytest.raises(VolumeError, match="no labelled voxel"):
        scores_from_lut(fragment_contingency(fragments, np.zeros(fragments.shape, np.uint8)), none, none)


def open_zarr(path):
    from affcons.io import open_volume

    return open_volume(path)


def test_evaluate_command_scores_a_roi(tmp_path, capsys):
    import h5py

    with h5py.File(ISBI, "r") as f:
        gt = f["labels/neurites_3dcc"][:]
    seg = gt[20:30, 100:356].copy()
    seg[:, :100] += 5000  # split every object crossing y = 200 (in the whole volume)
    seg_path = create_volume(f"{tmp_path}/out.zarr/seg", Roi((1000, 400, 0), (500, 1024, 2048)), (50, 4, 4), seg.dtype)
    seg_path[seg_path.roi] = seg
    roi = ["--roi-offset", "1100", "400", "0", "--roi-shape", "300", "800", "2048"]
    argv = ["evaluate", "--seg", f"{tmp_path}/out.zarr/seg", "--gt", f"{ISBI}:labels/neurites_3dcc", "--json"]
    assert main(argv + roi) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == evaluate(seg[2:8, :200], gt[22:28, 100:300]) and printed["voi_split"] > 0
    assert main(argv) == 2
    assert "pass --roi-offset and --roi-shape" in capsys.readouterr().err
    assert main(argv + roi[:4]) == 2
    assert "--roi-offset and --roi-shape go together" in capsys.readouterr().err
    assert main(argv + ["--roi-offset", "0", "0", "0", "--roi-shape", "300", "800", "2048"]) == 2
    assert "is not inside the segmentation ROI" in capsys.readouterr().err


def test_evaluate_command_sweeps_thresholds_of_a_run(fragments_and_tree, tmp_path, capsys):
    from affcons.segment import apply_lookup

    name, gt, fragments, tree, voxel_size = fragments_and_tree[0]
    fragments_path = _zarr_labels(f"{tmp_path}/run.zarr/fragments", fragments, voxel_size)
    gt_path = _zarr_labels(f"{tmp_path}/run.zarr/gt", gt, voxel_size)
    tree.save(tmp_path / "merge_tree.npz")
    argv = ["evaluate", "--fragments", fragments_path, "--gt", gt_path, "--tree", str(tmp_path / "merge_tree.npz")]
    assert main(argv + ["--thresholds", "0.7", "0.3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["threshold"] for row in rows] == [0.3, 0.7]
    for row in rows:
        lookup = tree.lookup(row["threshold"])
        expected = evaluate(apply_lookup(fragments, tree.ids, lookup), gt)
        assert {key: row[key] for key in expected} == expected
        assert row["segments"] == len(np.unique(apply_lookup(fragments, tree.ids, lookup)[fragments != 0]))
    assert main(argv) == 2
    assert "--fragments needs --tree" in capsys.readouterr().err
    assert main(argv[:-2] + ["--tree", str(tmp_path / "missing.npz"), "--thresholds", "0.5"]) == 2
    assert "not a merge tree" in capsys.readouterr().err
