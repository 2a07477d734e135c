"""Downsampling (mean, mode) block by block and OME-Zarr 0.5 multiscales metadata, on the bundled ISBI volume."""

import collections
import itertools
import math

import h5py
import numpy as np
import pytest
import zarr

from affcons.errors import VolumeError
from affcons.multiscale import downsample_block, pyramid_factors, read_multiscales, write_multiscales_metadata
from tests.data_paths import ISBI, isbi_labels


def isbi_raw(crop) -> np.ndarray:
    with h5py.File(ISBI, "r") as file:
        return file["raw"][crop]


def reference(data: np.ndarray, factor, mode: str) -> np.ndarray:
    """Window by window with Python loops: the mean (rounded for integers) or the first most frequent value."""
    out_shape = tuple(math.ceil(s / f) for s, f in zip(data.shape, factor))
    out = np.empty(out_shape, dtype=data.dtype)
    for index in itertools.product(*(range(n) for n in out_shape)):
        window = data[tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factor))].ravel()
        if mode == "mean":
            value = window.astype(np.float64).mean()
            out[index] = np.rint(value) if data.dtype.kind in "iub" else value
        else:
            counts = collections.Counter(window.tolist())
            out[index] = max(window.tolist(), key=lambda v: (counts[v], -window.tolist().index(v)))
    return out


def blockwise(data: np.ndarray, factor, mode: str, block) -> np.ndarray:
    """Downsample ``data`` in blocks of ``block`` voxels (multiples of ``factor``) and assemble the result."""
    out_shape = tuple(math.ceil(s / f) for s, f in zip(data.shape, factor))
    out = np.zeros(out_shape, dtype=data.dtype)
    for start in itertools.product(*(range(0, s, b) for s, b in zip(data.shape, block))):
        piece = data[tuple(slice(s, s + b) for s, b in zip(start, block))]
        target = tuple(slice(s // f, s // f + math.ceil(p / f)) for s, f, p in zip(start, factor, piece.shape))
        out[target] = downsample_block(piece, factor, mode)
    return out


@pytest.mark.parametrize("factor", [(1, 2, 2), (2, 2, 2), (2, 3, 3)])
def test_mean_matches_the_window_loop_with_ragged_edges(factor):
    raw = isbi_raw((slice(0, 7), slice(0, 37), slice(0, 41)))  # no extent a multiple of 2 or 3
    result = downsample_block(raw, factor, "mean")
    assert result.dtype == np.uint8
    assert np.array_equal(result, reference(raw, factor, "mean"))


@pytest.mark.parametrize("factor", [(1, 2, 2), (2, 2, 2)])
def test_mode_matches_the_window_loop_and_keeps_ids(factor):
    labels = isbi_labels((slice(0, 5), slice(100, 163), slice(200, 259)))
    result = downsample_block(labels, factor, "mode")
    assert result.dtype == labels.dtype
    assert np.array_equal(result, reference(labels, factor, "mode"))
    assert set(np.unique(result)) <= set(np.unique(labels))


def test_mode_ties_pick_the_first_voxel_of_the_window():
    ids = np.arange(1, 4 * 6 * 6 + 1, dtype=np.uint64).reshape(4, 6, 6)  # every window: all different
    assert np.array_equal(downsample_block(ids, (2, 2, 2), "mode"), ids[::2, ::2, ::2])
    ids[0, 0, 1] = ids[0, 1, 1]  # a pair in the first window beats the first voxel
    assert downsample_block(ids, (2, 2, 2), "mode")[0, 0, 0] == ids[0, 1, 1]


@pytest.mark.parametrize(
    ("mode", "factor", "block"),
    [("mean", (1, 2, 2), (10, 64, 64)), ("mean", (2, 2, 2), (4, 96, 32)), ("mode", (1, 2, 2), (6, 32, 128))],
)
def test_blockwise_equals_whole_volume(mode, factor, block):
    crop = (slice(0, 15), slice(0, 250), slice(0, 203))  # ragged at the volume's upper edge
    data = isbi_raw(crop) if mode == "mean" else isbi_labels(crop)
    assert np.array_equal(blockwise(data, factor, mode, block), downsample_block(data, factor, mode))


def test_leading_channel_axes_are_kept():
    raw = isbi_raw((slice(0, 4), slice(0, 64), slice(0, 64)))
    affs = np.stack([raw, 255 - raw, raw // 2])
    result = downsample_block(affs, (2, 2, 2), "mean")
    assert result.shape == (3, 2, 32, 32)
    for channel in range(3):
        assert np.array_equal(result[channel], downsample_block(affs[channel], (2, 2, 2), "mean"))


def test_float_mean_is_not_rounded():
    data = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    assert downsample_block(data, (2, 2), "mean")[0, 0] == np.float32(0.75)


def test_bad_factor_or_mode_is_refused():
    data = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="positive integers"):
        downsample_block(data, (0, 2, 2), "mean")
    with pytest.raises(ValueError, match="mode must be one of"):
        downsample_block(data, (2, 2, 2), "median")


@pytest.mark.parametrize(
    ("voxel_size", "shape", "max_extent", "expected"),
    [
        ((50, 4, 4), (30, 512, 512), 256, [(1, 2, 2)]),
        ((50, 4, 4), (30, 512, 512), 16, [(1, 2, 2)] * 3 + [(2, 2, 2)] * 2),
        ((8, 8, 8), (1000, 1000, 1000), 256, [(2, 2, 2), (2, 2, 2)]),
        ((4, 4, 4), (1, 1000, 1000), 256, [(1, 2, 2), (1, 2, 2)]),
        ((50, 4, 4), (30, 100, 100), 256, []),
    ],
)
def test_pyramid_factors(voxel_size, shape, max_extent, expected):
    assert pyramid_factors(voxel_size, shape, max_extent) == expected


def test_multiscales_metadata_round_trip_and_an_independent_reader(tmp_path):
    group_path = tmp_path / "out.zarr" / "affs"
    group = zarr.open_group(str(group_path), mode="w")
    data = np.zeros((3, 10, 64, 64), dtype=np.uint8)
    group.create_array("s0", data=data)
    group.create_array("s1", data=downsample_block(data, (1, 2, 2), "mean"))
    ome = write_multiscales_metadata(
        group_path, [("s0", (1, 1, 1)), ("s1", (1, 2, 2))], (50, 4, 4), (100, 8, 0), channel_axes=1
    )
    assert ome["version"] == "0.5"
    stored = zarr.open_group(str(group_path), mode="r").attrs["ome"]
    assert stored == ome
    s1 = stored["multiscales"][0]["datasets"][1]["coordinateTransformations"]
    assert s1 == [
        {"type": "scale", "scale": [1.0, 50.0, 8.0, 8.0]},
        {"type": "translation", "translation": [0.0, 125.0, 12.0, 4.0]},  # voxel centres: offset + size / 2
    ]
    multiscales = read_multiscales(group_path)
    assert multiscales.channel_axes == 1 and multiscales.axis_names == ("c", "z", "y", "x")
    assert [(level.path, level.voxel_size, level.offset) for level in multiscales.levels] == [
        ("s0", (50.0, 4.0, 4.0), (100.0, 8.0, 0.0)),
        ("s1", (50.0, 8.0, 8.0), (100.0, 8.0, 0.0)),
    ]
    from iohub.ngff import open_ome_zarr  # iohub (funlib.persistence's OME reader) validates NGFF 0.5 metadata

    position = open_ome_zarr(group_path, mode="r", version="0.5")
    assert [axis.name for axis in position.axes] == ["c", "z", "y", "x"]
    assert position.get_effective_scale("s1") == [1.0, 50.0, 8.0, 8.0]
    assert position.get_effective_translation("s1") == [0.0, 125.0, 12.0, 4.0]


def test_multiscales_metadata_refuses_an_array_and_bad_factors(tmp_path):
    zarr.create_array(str(tmp_path / "out.zarr" / "raw"), shape=(2, 2, 2), dtype=np.uint8)
    with pytest.raises(VolumeError, match="cannot hold a multiscale group"):
        write_multiscales_metadata(tmp_path / "out.zarr" / "raw", [("s0", (1, 1, 1))], (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="factor must be 3 positive integers"):
        write_multiscales_metadata(tmp_path / "ms.zarr", [("s0", (1, 1))], (1, 1, 1), (0, 0, 0))
    assert read_multiscales(tmp_path / "out.zarr" / "raw") is None
