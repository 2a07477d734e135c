"""The training-crop stream: contract, determinism, worker processes, resume position, zarr and HDF5 sources."""

import h5py
import numpy as np
import pytest
import torch
from funlib.geometry import Roi

from affcons.affinities import CRAC_OFFSETS
from affcons.errors import VolumeError
from affcons.io import create_volume
from affcons.train.config import REPO_ROOT, AugmentConfig, DataConfig, RoiConfig, VolumeConfig, resolve_path
from affcons.train.dataset import CropDataset, load_volume, make_loader

torch.set_num_threads(1)
ISBI = "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"


def _data_config(**changes) -> DataConfig:
    values = dict(
        train=VolumeConfig(
            raw=f"{ISBI}:raw", labels=f"{ISBI}:labels/neurites_3dcc", roi=RoiConfig(begin=(0, 0, 0), end=(6, 96, 96))
        ),
        sparse={"mode": "fraction", "value": 0.5, "seed": 1},
        crop=(4, 32, 32),
        margin=(0, 8, 8),
        num_workers=0,
        augment=AugmentConfig(probability=1.0),
    )
    values.update(changes)
    return DataConfig(**values)


def test_repository_relative_paths():
    assert resolve_path(f"{ISBI}:raw") == REPO_ROOT / f"{ISBI}:raw"
    assert resolve_path("/abs/file.h5:a/b").as_posix() == "/abs/file.h5:a/b"


def test_sample_contract():
    dataset = CropDataset(_data_config(), CRAC_OFFSETS, seed=3, batch_size=2)
    sample = dataset[5]
    assert sample["raw"].shape == (1, 4, 32, 32) and sample["raw"].dtype == np.float32
    assert 0.0 <= sample["raw"].min() and sample["raw"].max() <= 1.0
    assert sample["labels"].shape == (4, 32, 32) and sample["labels"].dtype == np.int64
    for key in ("target", "label_mask", "weight"):
        assert sample[key].shape == (12, 4, 32, 32) and sample[key].dtype == np.float32
    assert bool(sample["labelled"])
    # M_lab is 0 on invalid pairs (x < 27 for dx = -27) and on 0 == 0 pairs
    assert sample["label_mask"][11, :, :, :27].max() == 0.0
    zero_pairs = (sample["labels"][:, :, 1:] == 0) & (sample["labels"][:, :, :-1] == 0)
    assert sample["label_mask"][2, :, :, 1:][zero_pairs].max(initial=0.0) == 0.0
    # the kept ids are whole instances of the dense labels: every labelled id is in the sparse report
    assert set(np.unique(sample["labels"])) - {0} <= set(dataset.sparse_report.kept_ids)
    assert 0.0 < dataset.sparse_report.voxel_fraction < 1.0


def test_samples_are_functions_of_their_index():
    dataset = CropDataset(_data_config(), CRAC_OFFSETS, seed=3, batch_size=1)
    first, again, other = dataset[7], dataset[7], dataset[8]
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["raw"], other["raw"])


def test_loader_workers_and_resume_position():
    dataset = CropDataset(_data_config(), CRAC_OFFSETS, seed=3, batch_size=2)
    in_process = iter(make_loader(dataset, start_iteration=0, num_workers=0))
    batches = [next(in_process) for _ in range(2)]
    with_worker = next(iter(make_loader(dataset, start_iteration=0, num_workers=1)))
    assert torch.equal(with_worker["raw"], batches[0]["raw"]) and torch.equal(
        with_worker["target"], batches[0]["target"]
    )
    resumed = next(iter(make_loader(dataset, start_iteration=1, num_workers=0)))
    assert all(torch.equal(resumed[k], batches[1][k]) for k in resumed)
    assert batches[0]["raw"].shape == (2, 1, 4, 32, 32) and batches[0]["labelled"].tolist() == [True, True]


def test_unlabelled_source_rows():
    config = _data_config(
        unlabelled=VolumeConfig(raw=f"{ISBI}:raw", roi=RoiConfig(begin=(20, 0, 0), end=(24, 64, 64))),
        batch_size_unlabelled=1,
    )
    dataset = CropDataset(config, CRAC_OFFSETS, seed=3, batch_size=2)
    batch = next(iter(make_loader(dataset, 0, 0)))
    assert batch["labelled"].tolist() == [True, True, False]
    assert float(batch["label_mask"][2].max()) == 0.0 and float(batch["weight"][2].min()) == 1.0


def test_zarr_volumes_work(tmp_path):
    with h5py.File(REPO_ROOT / ISBI, "r") as file:
        raw = file["raw"][:4, :64, :64]
        labels = file["labels/neurites_3dcc"][:4, :64, :64]
    roi = Roi((0, 0, 0), (200, 256, 256))
    for name, data in (("raw", raw), ("labels", labels)):
        array = create_volume(tmp_path / f"vol.zarr/{name}", roi, (50, 4, 4), data.dtype)
        array[roi] = data
    config = _data_config(
        train=VolumeConfig(raw=str(tmp_path / "vol.zarr/raw"), labels=str(tmp_path / "vol.zarr/labels")),
        sparse={"mode": "all"},
    )
    dataset = CropDataset(config, CRAC_OFFSETS, seed=0, batch_size=1)
    assert dataset.voxel_size == (50, 4, 4)
    assert np.array_equal(dataset.raw, raw.astype(np.float32) / 255)
    assert dataset[0]["raw"].shape == (1, 4, 32, 32)


def test_missing_volume_names_the_path_and_the_key(tmp_path):
    config = VolumeConfig(raw=str(tmp_path / "absent.h5:raw"))
    with pytest.raises(VolumeError, match=r"validation\.volume\.raw: .*absent\.h5"):
        load_volume(config, "validation.volume", need_labels=False)


def test_roi_outside_the_volume_is_refused():
    config = VolumeConfig(raw=f"{ISBI}:raw", roi=RoiConfig(begin=(25, 0, 0), end=(31, 64, 64)))
    with pytest.raises(VolumeError, match="does not fit"):
        load_volume(config, "data.train", need_labels=False)


def test_truth_rides_along_without_changing_the_sample():
    """The dense labels follow the sparse ones through every augmentation: the other fields are unchanged, and the
    truth equals the affinities of the dense labels wherever a sparse label is present."""
    config = _data_config(augment=AugmentConfig(probability=1.0, p_each=1.0, misalignment=True, misalignment_max=4))
    plain = CropDataset(config, CRAC_OFFSETS, seed=3, batch_size=1)
    with_truth = CropDataset(config, CRAC_OFFSETS, seed=3, batch_size=1, with_truth=True)
    for index in (0, 1, 2):
        sample, extended = plain[index], with_truth[index]
        assert all(np.array_equal(sample[key], extended[key]) for key in sample)
        truth, defined = extended["truth"], extended["truth_defined"]
        assert truth.shape == defined.shape == (12, 4, 32, 32) and defined.dtype == bool
        # within a labelled instance the sparse target is the truth (a labelled voxel's partner in the same id)
        known = (extended["label_mask"] > 0) & (extended["target"] == 1)
        assert np.array_equal(truth[known], extended["target"][known])
        assert not defined[11, :, :, :27].any()  # invalid pairs have no truth
        assert 0 < defined.mean() < 1 and 0 < truth[defined].mean() < 1
        inside = extended["truth_inside"]  # both voxels in neurites: a subset of the defined pairs, where truth lives
        assert inside.dtype == bool and not (inside & ~defined).any() and not (truth.astype(bool) & ~inside).any()
        assert 0 < inside.sum() < defined.sum()
