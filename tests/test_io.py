"""Volume I/O on real files: HDF5 from the bundled data, zarr v2 and v3 written in tmp_path."""

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from affcons.errors import ConfigError, OutputExistsError, VolumeError
from affcons.io import (
    VolumePath,
    check_volume,
    copy_volume,
    create_volume,
    list_datasets,
    open_volume,
    read_hdf5,
    read_voxel_size,
    split_dataset_path,
    storage_layout,
)

DATA = Path(__file__).parents[1] / "data"
ISBI = DATA / "isbi2012_3d" / "isbi2012_with_3d_neurite_labels.h5"
GALA_GT = DATA / "gala_fibsem" / "train-gt.lzf.h5"


def snapshot(directory: Path) -> dict:
    """Every file below ``directory`` with its bytes and modification time."""
    files = (p for p in directory.rglob("*") if p.is_file())
    return {p.relative_to(directory): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def write_v2(path: Path, data: np.ndarray, attrs: dict) -> None:
    zarr.create_array(str(path.parent), name=path.name, data=data, chunks=(2, 8, 8), zarr_format=2, attributes=attrs)


@pytest.mark.parametrize(
    "text, container, dataset",
    [
        ("out.zarr/affs", "out.zarr", "affs"),
        ("runs/a/out.zarr/volumes/raw/", "runs/a/out.zarr", "volumes/raw"),
        ("out.zarr", "out.zarr", ""),
        ("data/file.h5:labels/ids", "data/file.h5", "labels/ids"),
        ("file.HDF5:/raw", "file.HDF5", "raw"),
        ("file.hdf/raw", "file.hdf", "raw"),
    ],
)
def test_split_dataset_path(text, container, dataset):
    volume = split_dataset_path(text)
    if volume != VolumePath(Path(container), dataset):
        pytest.fail(f"{text} -> {volume!r}")


def test_split_dataset_path_formats_back():
    if (str(split_dataset_path("f.h5/raw")), str(split_dataset_path("o.zarr/a/b"))) != ("f.h5:raw", "o.zarr/a/b"):
        pytest.fail("str(VolumePath) must give file.h5:dataset and out.zarr/dataset")
    if not split_dataset_path("f.h5:raw").is_hdf5 or split_dataset_path("o.zarr/raw").is_hdf5:
        pytest.fail("is_hdf5 follows the container suffix")


@pytest.mark.parametrize("text", ["out/affs", "volume.n5/raw", "raw"])
def test_split_dataset_path_without_container_is_an_error(text):
    with pytest.raises(VolumeError, match="names no container"):
        split_dataset_path(text)


def test_open_hdf5_reads_voxel_size_and_data():
    raw = open_volume(f"{ISBI}:raw")
    with h5py.File(ISBI, "r") as file:
        expected = file["raw"][2:5, 100:140, 8:40]
    if raw.voxel_size != Coordinate(50, 4, 4) or raw.roi != Roi((0, 0, 0), (1500, 2048, 2048)):
        pytest.fail(f"voxel size {raw.voxel_size}, roi {raw.roi}")
    if not np.array_equal(raw[Roi((100, 400, 32), (150, 160, 128))], expected):
        pytest.fail("ROI (nm) read does not match the voxels read with h5py")


def test_open_hdf5_for_writing_is_refused():
    with pytest.raises(VolumeError, match="read-only"):
        open_volume(f"{ISBI}:raw", mode="r+")


def test_missing_hdf5_dataset_lists_existing_ones():
    with pytest.raises(VolumeError) as error:
        open_volume(f"{ISBI}:rawx")
    for name in ("rawx", "raw", "labels/neurites_3dcc", "labels/membrane_isbi"):
        if name not in str(error.value):
            pytest.fail(f"{name!r} missing from: {error.value}")


def test_missing_zarr_dataset_lists_v3_and_v2_arrays(tmp_path):
    create_volume(tmp_path / "c.zarr/g/raw", Roi((0, 0, 0), (4, 8, 8)), (1, 1, 1), "uint8")
    write_v2(tmp_path / "c.zarr/old", np.zeros((4, 8, 8), np.uint8), {})
    with pytest.raises(VolumeError) as error:
        open_volume(tmp_path / "c.zarr/labels")
    if "'labels'" not in str(error.value) or "g/raw, old" not in str(error.value):
        pytest.fail(f"message must name the path and list g/raw, old: {error.value}")
    if list_datasets(tmp_path / "c.zarr") != ["g/raw", "old"]:
        pytest.fail(f"list_datasets: {list_datasets(tmp_path / 'c.zarr')}")


def test_missing_container_and_group_are_errors(tmp_path):
    with pytest.raises(VolumeError, match="does not exist"):
        open_volume(tmp_path / "none.zarr/raw")
    with pytest.raises(VolumeError, match="does not exist"):
        open_volume(f"{tmp_path / 'none.h5'}:raw")
    create_volume(tmp_path / "c.zarr/g/raw", Roi((0, 0, 0), (4, 8, 8)), (1, 1, 1), "uint8")
    with pytest.raises(VolumeError, match="is a group"):
        open_volume(tmp_path / "c.zarr/g")
    if (tmp_path / "none.zarr").exists():
        pytest.fail("opening a missing container must not create it")


def test_zarr_v2_resolution_and_offset_are_respected(tmp_path):
    data = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    write_v2(tmp_path / "old.zarr/raw", data, {"resolution": [40, 4, 4], "offset": [80, 8, 0]})
    array = open_volume(tmp_path / "old.zarr/raw")
    if array.voxel_size != Coordinate(40, 4, 4) or array.roi != Roi((80, 8, 0), (160, 32, 32)):
        pytest.fail(f"v2 resolution/offset ignored: voxel size {array.voxel_size}, roi {array.roi}")
    if not np.array_equal(array[Roi((120, 16, 4), (40, 8, 8))], data[1:2, 2:4, 1:3]):
        pytest.fail("world-unit read of a v2 array is off")
    if storage_layout(tmp_path / "old.zarr/raw").format != "zarr v2":
        pytest.fail("storage_layout must report zarr v2")


def test_zarr_v2_without_voxel_size_falls_back_with_a_warning(tmp_path, caplog):
    write_v2(tmp_path / "old.zarr/raw", np.zeros((4, 8, 8), np.uint8), {})
    with caplog.at_level(logging.WARNING, logger="affcons.io"):
        array = open_volume(tmp_path / "old.zarr/raw")
    if array.voxel_size != Coordinate(1, 1, 1) or "no voxel size" not in caplog.text:
        pytest.fail(f"expected voxel size 1 and a warning, got {array.voxel_size} and {caplog.text!r}")
    if open_volume(tmp_path / "old.zarr/raw", voxel_size=(30, 6, 6)).voxel_size != Coordinate(30, 6, 6):
        pytest.fail("an explicit voxel size must be used")
    if read_voxel_size(tmp_path / "old.zarr/raw") is not None:
        pytest.fail("read_voxel_size must return None without attributes")


def test_fractional_voxel_size_attribute_is_an_error(tmp_path):
    write_v2(tmp_path / "old.zarr/raw", np.zeros((4, 8, 8), np.uint8), {"resolution": [40, 4.5, 4]})
    with pytest.raises(VolumeError, match="whole numbers"):
        open_volume(tmp_path / "old.zarr/raw")


def test_read_hdf5_isbi_labels():
    labels, voxel_size = read_hdf5(f"{ISBI}:labels/neurites_3dcc")
    with h5py.File(ISBI, "r") as file:
        expected = file["labels/neurites_3dcc"][()]
    if voxel_size != Coordinate(50, 4, 4) or labels.dtype != np.uint32 or not np.array_equal(labels, expected):
        pytest.fail(f"read_hdf5 gave {labels.dtype} {labels.shape} at {voxel_size}")


@pytest.mark.parametrize("attribute", ["resolution_zyx_nm", "resolution", "voxel_size"])
def test_read_hdf5_voxel_size_attributes(tmp_path, attribute):
    with h5py.File(tmp_path / "v.h5", "w") as file:
        file["raw"] = np.ones((2, 3, 4), np.float32)
        file["raw"].attrs[attribute] = np.array([30.0, 8.0, 8.0])
    data, voxel_size = read_hdf5(f"{tmp_path / 'v.h5'}:raw")
    if voxel_size != Coordinate(30, 8, 8) or data.shape != (2, 3, 4):
        pytest.fail(f"{attribute}: voxel size {voxel_size}, shape {data.shape}")


def test_read_hdf5_without_voxel_size():
    data, voxel_size = read_hdf5(f"{GALA_GT}:stack")
    if voxel_size is not None or data.shape != (50, 100, 200):
        pytest.fail(f"gala gt: voxel size {voxel_size}, shape {data.shape}")


def test_create_volume_writes_v3_metadata_codecs_and_parents(tmp_path):
    roi = Roi((100, 40, 0), (500, 400, 200))
    affs = create_volume(
        tmp_path / "out.zarr/volumes/affs",
        roi,
        (50, 4, 4),
        "float32",
        num_channels=3,
        chunk_shape=(5, 50, 25),
        attrs={"config": {"step": "predict"}},
    )
    if (affs.shape, tuple(affs.chunk_shape), affs.roi) != ((3, 10, 100, 50), (3, 5, 50, 25), roi):
        pytest.fail(f"shape {affs.shape}, chunks {affs.chunk_shape}, roi {affs.roi}")
    metadata = json.loads((tmp_path / "out.zarr/volumes/affs/zarr.json").read_text())
    attrs = metadata["attributes"]
    expected = {
        "voxel_size": [50, 4, 4],
        "offset": [100, 40, 0],
        "axis_names": ["c^", "z", "y", "x"],
        "units": ["nm", "nm", "nm"],
        "types": ["channel", "space", "space", "space"],
        "config": {"step": "predict"},
    }
    if any(attrs.get(key) != value for key, value in expected.items()) or "affcons_version" not in attrs:
        pytest.fail(f"attributes: {attrs}")
    if "created" not in attrs or [codec["name"] for codec in metadata["codecs"]] != ["bytes", "blosc"]:
        pytest.fail(f"codecs {metadata['codecs']}, attributes {attrs}")
    if metadata["codecs"][1]["configuration"]["cname"] != "zstd":
        pytest.fail("default compression must be blosc zstd")
    for group in ("out.zarr", "out.zarr/volumes"):
        if json.loads((tmp_path / group / "zarr.json").read_text())["node_type"] != "group":
            pytest.fail(f"parent group {group} not created")
    affs[Roi((150, 80, 40), (50, 8, 8))] = np.full((3, 1, 2, 2), 0.5, np.float32)
    reread = open_volume(tmp_path / "out.zarr/volumes/affs")
    if reread.types != ["channel", "space", "space", "space"] or reread[reread.roi].sum() != 6.0:
        pytest.fail("written data or channel axis lost on reopening")


def test_create_volume_w_minus_refuses_existing_and_changes_nothing(tmp_path):
    roi = Roi((0, 0, 0), (8, 16, 16))
    array = create_volume(tmp_path / "out.zarr/raw", roi, (1, 1, 1), "uint8", chunk_shape=(4, 8, 8))
    array[roi] = np.arange(8 * 16 * 16).reshape(8, 16, 16).astype(np.uint8)
    before = snapshot(tmp_path / "out.zarr")
    with pytest.raises(OutputExistsError, match="exists"):
        create_volume(tmp_path / "out.zarr/raw", roi, (1, 1, 1), "uint8", chunk_shape=(4, 8, 8))
    if snapshot(tmp_path / "out.zarr") != before:
        pytest.fail("mode 'w-' changed an existing dataset")


def test_create_volume_a_reuses_compatible_and_keeps_data(tmp_path):
    roi = Roi((0, 0, 0), (8, 16, 16))
    first = create_volume(tmp_path / "out.zarr/raw", roi, (1, 2, 2), "uint8", chunk_shape=(4, 4, 4))
    first[roi] = np.full((8, 8, 8), 7, np.uint8)
    again = create_volume(tmp_path / "out.zarr/raw", roi, (1, 2, 2), "uint8", mode="a", attrs={"run": 2})
    if again[roi].min() != 7 or again.attrs["run"] != 2:
        pytest.fail("mode 'a' must keep the data and add the attributes")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dtype": "uint16"}, "dtype"),
        ({"roi": Roi((0, 0, 0), (8, 16, 32))}, "shape"),
        ({"roi": Roi((8, 0, 0), (8, 16, 16))}, "ROI"),
        ({"voxel_size": (1, 1, 1)}, "voxel size"),
        ({"chunk_shape": (2, 4, 4)}, "chunk shape"),
        ({"num_channels": 2}, "shape"),
    ],
)
def test_create_volume_a_refuses_incompatible(tmp_path, change, message):
    arguments = {"roi": Roi((0, 0, 0), (8, 16, 16)), "voxel_size": (1, 2, 2), "dtype": "uint8"}
    arguments["chunk_shape"] = (4, 4, 4)
    create_volume(tmp_path / "out.zarr/raw", **arguments)
    before = snapshot(tmp_path / "out.zarr")
    with pytest.raises(OutputExistsError, match=message):
        create_volume(tmp_path / "out.zarr/raw", **{**arguments, **change}, mode="a")
    if snapshot(tmp_path / "out.zarr") != before:
        pytest.fail("an incompatible mode 'a' request changed the dataset")


def test_create_volume_w_replaces(tmp_path):
    roi = Roi((0, 0, 0), (4, 4, 4))
    create_volume(tmp_path / "out.zarr/raw", roi, (1, 1, 1), "uint8")[roi] = np.ones((4, 4, 4), np.uint8)
    replaced = create_volume(tmp_path / "out.zarr/raw", Roi((0, 0, 0), (2, 4, 4)), (1, 1, 1), "float32", mode="w")
    if replaced.shape != (2, 4, 4) or replaced.dtype != np.float32 or replaced[replaced.roi].any():
        pytest.fail(f"mode 'w' must replace the dataset, got {replaced.shape} {replaced.dtype}")


def test_create_volume_bad_arguments(tmp_path):
    path = tmp_path / "out.zarr/raw"
    with pytest.raises(VolumeError, match="not a multiple of the voxel size"):
        create_volume(path, Roi((2, 0, 0), (8, 8, 8)), (4, 4, 4), "uint8")
    with pytest.raises(ConfigError, match="unknown compression"):
        create_volume(path, Roi((0, 0, 0), (8, 8, 8)), (4, 4, 4), "uint8", compression="lzma")
    with pytest.raises(ConfigError, match="may not set"):
        create_volume(path, Roi((0, 0, 0), (8, 8, 8)), (4, 4, 4), "uint8", attrs={"voxel_size": [1, 1, 1]})
    with pytest.raises(VolumeError, match="zarr container"):
        create_volume(f"{tmp_path / 'f.h5'}:raw", Roi((0, 0, 0), (8, 8, 8)), (4, 4, 4), "uint8")
    if (tmp_path / "out.zarr").exists():
        pytest.fail("a refused create_volume must not create the container")


def test_create_volume_below_a_v2_group_is_refused(tmp_path):
    write_v2(tmp_path / "old.zarr/raw", np.zeros((4, 8, 8), np.uint8), {})
    with pytest.raises(VolumeError, match="zarr v2 group"):
        create_volume(tmp_path / "old.zarr/affs", Roi((0, 0, 0), (4, 8, 8)), (1, 1, 1), "uint8")


def test_create_volume_other_compressions(tmp_path):
    for compression, codecs in (
        ("gzip", ["bytes", "gzip"]),
        ("none", ["bytes"]),
        ("blosc-lz4", ["bytes", "blosc"]),
        ("zstd", ["bytes", "zstd"]),
    ):
        roi = Roi((0, 0, 0), (4, 4, 4))
        create_volume(tmp_path / f"out.zarr/{compression}", roi, (1, 1, 1), "uint8", compression=compression)
        metadata = json.loads((tmp_path / f"out.zarr/{compression}/zarr.json").read_text())
        if [codec["name"] for codec in metadata["codecs"]] != codecs:
            pytest.fail(f"{compression}: codecs {metadata['codecs']}")


def test_check_volume_accepts_a_matching_volume(tmp_path):
    affs = create_volume(tmp_path / "o.zarr/affs", Roi((0, 0, 0), (8, 8, 8)), (2, 2, 2), "uint8", num_channels=3)
    check_volume(affs, ndim=4, num_channels=3, dtypes=("uint8", "float32"), voxel_size=(2, 2, 2), name="affinities")
    check_volume(affs, dtypes="uint8", name="affinities")


@pytest.mark.parametrize(
    "requirement, message",
    [
        ({"ndim": 4}, "expected 4 axes, got 3"),
        ({"num_channels": 3}, "expected one channel axis of length 3, got no channel axis"),
        ({"dtypes": ["float32"]}, "expected dtype float32, got uint8"),
        ({"voxel_size": (4, 4, 4)}, r"expected voxel size \(4, 4, 4\) nm, got \(50, 4, 4\) nm"),
    ],
)
def test_check_volume_names_the_mismatch(tmp_path, requirement, message):
    raw = create_volume(tmp_path / "o.zarr/raw", Roi((0, 0, 0), (100, 8, 8)), (50, 4, 4), "uint8")
    with pytest.raises(VolumeError, match=f"^raw: {message}"):
        check_volume(raw, **requirement, name="raw")


def test_copy_volume_in_slabs_with_an_offset_shift(tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (3, 23, 12, 10), dtype=np.uint16)
    source_roi, target_roi = Roi((40, 0, 0), (230, 24, 20)), Roi((0, 8, 8), (230, 24, 20))
    source = create_volume(tmp_path / "s.zarr/affs", source_roi, (10, 2, 2), "uint16", num_channels=3)
    source[source.roi] = data
    target = create_volume(
        tmp_path / "t.zarr/affs", target_roi, (10, 2, 2), "uint16", num_channels=3, chunk_shape=(4, 6, 5)
    )
    plane_bytes = 3 * 12 * 10 * 2
    slabs = copy_volume(source, target, max_slab_bytes=8 * plane_bytes)
    if slabs != 3:  # slabs of 8 z-planes (two chunk rows): 8 + 8 + 7
        pytest.fail(f"expected 3 slabs, got {slabs}")
    if not np.array_equal(target[target.roi], data):
        pytest.fail("slab copy differs from the source")


def test_copy_volume_refuses_different_shapes(tmp_path):
    source = create_volume(tmp_path / "s.zarr/raw", Roi((0, 0, 0), (4, 4, 4)), (1, 1, 1), "uint8")
    target = create_volume(tmp_path / "s.zarr/other", Roi((0, 0, 0), (4, 4, 8)), (1, 1, 1), "uint8")
    with pytest.raises(VolumeError, match="cannot copy"):
        copy_volume(source, target)
