"""The in-memory prediction core (affcons/predict.py): grid geometry, margins, uint8 conversion, and that a region on
the tile grid gets exactly the values the whole-volume pass gives it. Tiny random networks, real ISBI raw."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi

from affcons.affinities import CRAC_OFFSETS, affinities_to_uint8
from affcons.config import validate
from affcons.errors import ConfigError, VolumeError
from affcons.io import create_volume, open_volume
from affcons.nets import CRACNetworks
from affcons.predict import PatchGrid, Predictor, default_margin, predict_volume, required_margin, to_uint8
from tests.data_paths import ISBI

torch.set_num_threads(1)

VOXEL_SIZE = (50, 4, 4)
#: Test geometry: patch 6 x 64 x 64, margin 1 x 16 x 16 -> tiles of 4 x 32 x 32 (3 short-range channels).
PATCH, MARGIN = (6, 64, 64), (1, 16, 16)
FILTERS = [4, 8, 8, 16, 16]


def tiny_config(crop=PATCH, filters=FILTERS, embedding_channels=4):
    from affcons.train.config import CRACConfig

    return validate(
        CRACConfig,
        {
            "data": {"train": {"raw": f"{ISBI}:raw"}, "crop": list(crop)},
            "model": {"filters": list(filters), "embedding_channels": embedding_channels, "bn_momentum": 0.1},
        },
        "test",
    )


def tiny_networks(seed: int = 0, config=None) -> CRACNetworks:
    """Random tiny CRAC networks with non-trivial BatchNorm statistics (so outputs vary over the volume)."""
    config = config or tiny_config()
    torch.manual_seed(seed)
    networks = CRACNetworks.from_config(config.model)
    generator = torch.Generator().manual_seed(seed + 1)
    for module in networks.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return networks.eval()


def make_checkpoint(path: Path, seed: int = 0, config=None, networks=None) -> Path:
    """A checkpoint in the format of ``affcons train`` (lean: no optimiser state)."""
    from affcons.train.checkpoint import save_checkpoint

    config = config or tiny_config()
    networks = networks or tiny_networks(seed, config)
    save_checkpoint(
        Path(path),
        {
            "stage": "crac",
            "iteration": 0,
            "config_kind": "crac",
            "config": config.model_dump(mode="json"),
            "models": {
                "embedding": networks.embedding_net.state_dict(),
                "affinity": networks.affinity_net.state_dict(),
            },
        },
    )
    return Path(path)


def isbi_raw(shape=(8, 64, 64), start=(3, 100, 200)) -> np.ndarray:
    import h5py

    with h5py.File(ISBI, "r") as file:
        return file["raw"][tuple(slice(b, b + s) for b, s in zip(start, shape))]


def make_raw(path: str, shape=(8, 64, 64), offset_voxels=(2, 10, 6), chunks=(4, 32, 32)):
    """A real ISBI crop as zarr v3 at 50 x 4 x 4 nm with a non-zero offset."""
    offset = tuple(o * v for o, v in zip(offset_voxels, VOXEL_SIZE))
    roi = Roi(offset, tuple(s * v for s, v in zip(shape, VOXEL_SIZE)))
    array = create_volume(path, roi, VOXEL_SIZE, np.uint8, chunk_shape=chunks, mode="w")
    array[roi] = isbi_raw(shape)
    return open_volume(path)


def test_grid_tiles_cover_the_region_and_input_adds_the_margin():
    grid = PatchGrid(PATCH, MARGIN)
    assert grid.tile == (4, 32, 32)
    assert grid.tiles((8, 64, 64)) == (2, 2, 2) and grid.tiles((9, 65, 1)) == (3, 3, 1)
    assert grid.input_shape((8, 64, 64)) == (10, 96, 96)
    roi = grid.input_roi(Roi((100, 40, 24), (400, 256, 256)), VOXEL_SIZE)
    assert roi == Roi((50, -24, -40), (500, 384, 384))
    assert math.isclose(grid.overhead, 6 * 64 * 64 / (4 * 32 * 32))


@pytest.mark.parametrize(
    "patch,margin,message",
    [
        ((6, 60, 64), (1, 16, 16), "multiples of 16"),
        ((6, 64, 64), (3, 16, 16), "leaves no output tile"),
        ((6, 64, 64), (1, -1, 16), "must not be negative"),
    ],
)
def test_bad_grid_is_a_config_error(patch, margin, message):
    with pytest.raises(ConfigError, match=message):
        PatchGrid(patch, margin)


def test_required_margin_follows_the_offsets_of_the_written_implicit_channels():
    assert required_margin(CRAC_OFFSETS, 3, "implicit") == (0, 0, 0)  # borders filled from index 1
    assert required_margin(CRAC_OFFSETS, 12, "implicit") == (4, 27, 27)
    assert required_margin(CRAC_OFFSETS, 12, "mean") == (4, 27, 27)
    assert required_margin(CRAC_OFFSETS, 12, "explicit") == (0, 0, 0)
    assert default_margin((18, 160, 160), CRAC_OFFSETS, 12, "implicit") == (4, 32, 32)
    assert default_margin((18, 160, 160), CRAC_OFFSETS, 3, "implicit") == (3, 16, 16)


def test_predictor_refuses_a_margin_that_would_zero_implicit_long_range_channels():
    with pytest.raises(ConfigError, match=r"smaller than \[4, 27, 27\].*short-range"):
        Predictor(tiny_networks(), PatchGrid((10, 96, 96), (1, 16, 16)), "implicit", channels=12)
    Predictor(tiny_networks(), PatchGrid((10, 96, 96), (1, 16, 16)), "explicit", channels=12)  # no constraint


def test_tensor_uint8_conversion_equals_affinities_to_uint8():
    values = np.concatenate(
        [np.linspace(-0.1, 1.1, 10001, dtype=np.float32), (np.arange(256, dtype=np.float32) + 0.5) / 255.0]
    )
    assert np.array_equal(to_uint8(torch.from_numpy(values)).numpy(), affinities_to_uint8(values))


def test_region_on_the_grid_equals_the_whole_volume_pass(tmp_path):
    raw = make_raw(str(tmp_path / "in.zarr/raw"))
    predictor = Predictor(tiny_networks(), PatchGrid(PATCH, MARGIN), "implicit", channels=3, batch_size=3)
    whole = predict_volume(predictor, raw)["affs"]
    assert whole.shape == (3, 8, 64, 64) and whole.dtype == np.uint8
    assert len(np.unique(whole)) > 20, "the test network must produce varied affinities"
    begin = raw.roi.begin + Coordinate((4, 32, 0)) * Coordinate(VOXEL_SIZE)  # one tile down in z, one in y: on the grid
    region = Roi(begin, (4 * 50, 32 * 4, 64 * 4))
    part = predict_volume(predictor, raw, region)["affs"]
    difference = np.abs(part.astype(int) - whole[:, 4:8, 32:64, 0:64].astype(int))
    assert difference.max() <= 1, f"max difference {difference.max()} / 255"
    # off the grid the tiles are different ones, so the values are allowed to (and do) differ
    shifted = Roi(raw.roi.begin + Coordinate((0, 8, 0)) * Coordinate(VOXEL_SIZE), (8 * 50, 32 * 4, 64 * 4))
    off_grid = predict_volume(predictor, raw, shifted)["affs"]
    assert np.abs(off_grid.astype(int) - whole[:, :, 8:40].astype(int)).max() > 1


def test_maps_mean_and_disagreement_are_consistent(tmp_path):
    raw = make_raw(str(tmp_path / "in.zarr/raw"))
    networks, grid = tiny_networks(), PatchGrid(PATCH, MARGIN)
    maps = {}
    for name in ("implicit", "explicit", "mean"):
        predictor = Predictor(networks, grid, name, channels=3, dtype="float16", disagreement=name == "mean")
        maps[name] = predict_volume(predictor, raw)
    implicit, explicit = (maps[n]["affs"].astype(np.float32) for n in ("implicit", "explicit"))
    assert maps["mean"]["affs"].dtype == np.float16
    assert np.abs(maps["mean"]["affs"] - 0.5 * (implicit + explicit)).max() < 2e-3
    expected = affinities_to_uint8(np.abs(implicit - explicit).mean(axis=0))
    disagreement = maps["mean"]["disagreement"]
    assert disagreement.dtype == np.uint8 and np.abs(disagreement.astype(int) - expected).max() <= 1
    assert disagreement.max() > 10


def test_predict_checks_the_raw_shape():
    predictor = Predictor(tiny_networks(), PatchGrid(PATCH, MARGIN), channels=3)
    with pytest.raises(VolumeError, match=r"must be \[10, 96, 96\]"):
        predictor.predict(np.zeros((8, 64, 64), np.uint8), (8, 64, 64))


def test_predictor_folds_batchnorm_by_default_within_rounding_of_the_unfolded_networks(tmp_path):
    raw = make_raw(str(tmp_path / "in.zarr/raw"))
    networks = tiny_networks()
    outputs = {}
    for fold in (True, False):
        predictor = Predictor(
            networks, PatchGrid(PATCH, MARGIN), "mean", channels=3, dtype="float16", fold_batchnorm=fold
        )
        has_batchnorm = any(isinstance(m, torch.nn.BatchNorm3d) for m in predictor.networks.modules())
        assert has_batchnorm != fold
        outputs[fold] = predict_volume(predictor, raw)["affs"].astype(np.float32)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in networks.modules())  # the caller's networks are kept
    assert np.abs(outputs[True] - outputs[False]).max() < 2e-3  # float16 rounding of values within ~1e-5
    assert outputs[True].std() > 0.01
