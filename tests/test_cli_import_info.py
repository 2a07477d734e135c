"""``affcons import`` and ``affcons info`` on the bundled HDF5 data and on zarr and TIFF files written in tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from funlib.geometry import Coordinate, Roi

from affcons.cli import main
from affcons.io import open_volume

REPO = Path(__file__).parents[1]
ISBI = REPO / "data" / "isbi2012_3d" / "isbi2012_with_3d_neurite_labels.h5"
GALA = REPO / "data" / "gala_fibsem"


def snapshot(directory: Path) -> dict:
    """Every file below ``directory`` with its bytes and modification time."""
    files = (p for p in directory.rglob("*") if p.is_file())
    return {p.relative_to(directory): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def h5_read(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file[dataset][()]


def expect(condition: bool, message: str) -> None:
    if not condition:
        pytest.fail(message)


def test_import_isbi_raw_and_labels(tmp_path, capsys):
    for dataset, name in (("raw", "raw"), ("labels/neurites_3dcc", "labels/ids")):
        code = main(["import", f"{ISBI}:{dataset}", str(tmp_path / f"isbi.zarr/{name}")])
        expect(code == 0, f"import {dataset} exited {code}")
        array = open_volume(tmp_path / f"isbi.zarr/{name}")
        expected = h5_read(ISBI, dataset)
        expect(array.voxel_size == Coordinate(50, 4, 4), f"{dataset}: voxel size {array.voxel_size}")
        expect(array.dtype == expected.dtype, f"{dataset}: dtype {array.dtype} != {expected.dtype}")
        expect(np.array_equal(array[array.roi], expected), f"{dataset}: values differ from the HDF5 source")
    summary = capsys.readouterr().out.strip().splitlines()
    expect(len(summary) == 2 and summary[1].startswith("imported "), f"one summary line per import: {summary}")
    expect("(50, 4, 4) nm" in summary[1] and "uint32" in summary[1], f"summary: {summary[1]}")


def test_import_gala_with_voxel_size_offset_and_chunks(tmp_path):
    destination = tmp_path / "gala.zarr/train/gt"
    code = main(
        [
            "import",
            f"{GALA / 'train-gt.lzf.h5'}:stack",
            str(destination),
            "--voxel-size",
            "10",
            "10",
            "10",
            "--offset",
            "100",
            "0",
            "50",
            "--chunks",
            "16",
            "32",
            "64",
        ]
    )
    expect(code == 0, f"exit code {code}")
    array = open_volume(destination)
    expect(array.roi == Roi((100, 0, 50), (500, 1000, 2000)), f"roi {array.roi}")
    expect(tuple(array.chunk_shape) == (16, 32, 64), f"chunks {array.chunk_shape}")
    expect(np.array_equal(array[array.roi], h5_read(GALA / "train-gt.lzf.h5", "stack")), "values differ")
    expect(array.attrs["source"].endswith("train-gt.lzf.h5:stack"), f"provenance: {dict(array.attrs)}")


def test_import_zarr_v2_uses_resolution_and_offset(tmp_path):
    data = np.random.default_rng(1).random((3, 6, 10, 12), dtype=np.float32)
    zarr.create_array(
        str(tmp_path / "old.zarr"),
        name="affs",
        data=data,
        chunks=(3, 2, 5, 5),
        zarr_format=2,
        attributes={"resolution": [40, 8, 8], "offset": [400, 80, 0]},
    )
    expect(main(["import", str(tmp_path / "old.zarr/affs"), str(tmp_path / "new.zarr/affs")]) == 0, "import failed")
    array = open_volume(tmp_path / "new.zarr/affs")
    expect(array.voxel_size == Coordinate(40, 8, 8), f"voxel size {array.voxel_size}")
    expect(array.roi == Roi((400, 80, 0), (240, 80, 96)), f"roi {array.roi}")
    expect(array.types == ["channel", "space", "space", "space"], f"types {array.types}")
    expect(np.array_equal(array[array.roi], data), "values differ")


def test_import_multipage_tiff(tmp_path):
    data = np.random.default_rng(2).integers(0, 2**16, (7, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", data)
    code = main(["import", str(tmp_path / "stack.tif"), str(tmp_path / "out.zarr/raw"), "--voxel-size", "30", "5", "5"])
    expect(code == 0, f"exit code {code}")
    array = open_volume(tmp_path / "out.zarr/raw")
    expect(array.voxel_size == Coordinate(30, 5, 5) and np.array_equal(array[array.roi], data), "TIFF stack differs")


def test_import_tiff_directory_in_natural_name_order(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (12, 16, 16), dtype=np.uint8)
    (tmp_path / "sections").mkdir()
    for z, plane in enumerate(data):
        tifffile.imwrite(tmp_path / "sections" / f"section_{z + 1}.tif", plane)  # section_10 sorts after section_9
    code = main(["import", str(tmp_path / "sections"), str(tmp_path / "out.zarr/raw"), "--voxel-size", "40", "4", "4"])
    expect(code == 0, f"exit code {code}")
    array = open_volume(tmp_path / "out.zarr/raw")
    expect(np.array_equal(array[array.roi], data), "TIFF directory planes are out of order or differ")


def test_import_tiff_directory_with_mismatched_planes_is_an_error(tmp_path, capsys):
    (tmp_path / "sections").mkdir()
    tifffile.imwrite(tmp_path / "sections" / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "sections" / "b.tif", np.zeros((8, 9), np.uint8))
    code = main(["import", str(tmp_path / "sections"), str(tmp_path / "out.zarr/raw"), "--voxel-size", "1", "1", "1"])
    expect(code == 2 and "b.tif" in capsys.readouterr().err, "a plane of another shape must be named")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_tiff_with_rgb_pages_is_an_error(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 16, 16, 3), np.uint8), photometric="rgb")
    code = main(["import", str(tmp_path / "rgb.tif"), str(tmp_path / "out.zarr/raw"), "--voxel-size", "1", "1", "1"])
    expect(code == 2 and "single-channel" in capsys.readouterr().err, f"exit code {code}")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_unreadable_tiff_is_an_error(tmp_path, capsys):
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    code = main(["import", str(tmp_path / "broken.tif"), str(tmp_path / "out.zarr/raw"), "--voxel-size", "1", "1", "1"])
    expect(code == 2 and "broken.tif: not a readable TIFF" in capsys.readouterr().err, f"exit code {code}")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_tiff_without_voxel_size_asks_for_it(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 16, 16), np.uint8))
    code = main(["import", str(tmp_path / "stack.tif"), str(tmp_path / "out.zarr/raw")])
    err = capsys.readouterr().err
    expect(code == 2 and "--voxel-size" in err and len(err.strip().splitlines()) == 1, f"exit {code}, stderr {err!r}")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_missing_dataset_names_existing_ones(tmp_path, capsys):
    code = main(["import", f"{ISBI}:labels/neurites", str(tmp_path / "out.zarr/labels")])
    err = capsys.readouterr().err
    expect(code == 2, f"exit code {code}")
    for name in ("labels/neurites", "labels/neurites_3dcc", "labels/membrane_isbi", "raw"):
        expect(name in err, f"{name!r} missing from stderr: {err!r}")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_voxel_size_of_wrong_length_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["import", f"{GALA / 'train-image.h5'}:stack", str(tmp_path / "out.zarr/raw"), "--voxel-size", "4", "4"])
    expect(exit_info.value.code == 2, f"exit code {exit_info.value.code}")
    expect("--voxel-size: expected 3 arguments" in capsys.readouterr().err, "argparse must name --voxel-size")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_non_positive_voxel_size_is_an_error(tmp_path, capsys):
    source, destination = f"{GALA / 'train-image.h5'}:stack", str(tmp_path / "out.zarr/raw")
    with pytest.raises(SystemExit) as exit_info:
        main(["import", source, destination, "--voxel-size", "10", "0", "10"])
    expect(exit_info.value.code == 2 and "positive" in capsys.readouterr().err, "zero voxel size must be refused")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_offset_off_the_voxel_grid_is_an_error(tmp_path, capsys):
    code = main(["import", f"{ISBI}:raw", str(tmp_path / "out.zarr/raw"), "--offset", "25", "0", "0"])
    expect(code == 2 and "not a multiple of the voxel size" in capsys.readouterr().err, f"exit code {code}")
    expect(not (tmp_path / "out.zarr").exists(), "nothing may be written")


def test_import_existing_destination_needs_overwrite(tmp_path, capsys):
    destination = str(tmp_path / "out.zarr/raw")
    expect(main(["import", f"{GALA / 'train-image.h5'}:stack", destination, "--voxel-size", "10", "10", "10"]) == 0, "")
    before = snapshot(tmp_path / "out.zarr")
    code = main(["import", f"{ISBI}:raw", destination])
    err = capsys.readouterr().err
    expect(code == 2 and "--overwrite" in err, f"exit code {code}, stderr {err!r}")
    expect(snapshot(tmp_path / "out.zarr") == before, "the existing destination changed")
    expect(main(["import", f"{ISBI}:raw", destination, "--overwrite"]) == 0, "--overwrite must replace it")
    array = open_volume(destination)
    expect(array.shape == (30, 512, 512) and array.voxel_size == Coordinate(50, 4, 4), f"not replaced: {array.shape}")


def test_import_onto_itself_is_refused(tmp_path, capsys):
    destination = str(tmp_path / "out.zarr/raw")
    expect(main(["import", f"{ISBI}:raw", destination]) == 0, "first import failed")
    before = snapshot(tmp_path / "out.zarr")
    expect(main(["import", destination, destination, "--overwrite"]) == 2, "SRC == DEST must be refused")
    expect("same dataset" in capsys.readouterr().err and snapshot(tmp_path / "out.zarr") == before, "")


def test_info_text_fields(tmp_path, capsys):
    main(["import", f"{ISBI}:raw", str(tmp_path / "isbi.zarr/raw"), "--chunks", "10", "128", "128"])
    capsys.readouterr()
    expect(main(["info", str(tmp_path / "isbi.zarr/raw")]) == 0, "info failed")
    fields = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    fields = {key: value.strip() for key, value in fields.items()}
    expected = {
        "shape": "(30, 512, 512) voxels",
        "dtype": "uint8",
        "axis names": "z, y, x",
        "voxel size": "(50, 4, 4) nm",
        "offset": "(0, 0, 0) nm",
        "ROI": "[0:1500, 0:2048, 0:2048] (1500, 2048, 2048) nm",
        "chunk shape": "(10, 128, 128) voxels",
    }
    for key, value in expected.items():
        expect(fields.get(key) == value, f"{key}: {fields.get(key)!r} != {value!r}")
    raw = h5_read(ISBI, "raw")
    expect(fields["value range"] == f"{raw.min()} .. {raw.max()} (exact)", f"value range {fields['value range']!r}")
    expect(fields["path"].endswith("(zarr v3)"), f"path {fields['path']!r}")


def test_info_json_samples_big_volumes(tmp_path, capsys):
    destination = str(tmp_path / "g.zarr/gt")
    source = f"{GALA / 'test-gt.lzf.h5'}:stack"
    main(["import", source, destination, "--voxel-size", "10", "10", "10", "--chunks", "10", "20", "20"])
    capsys.readouterr()
    expect(main(["info", destination, "--json", "--max-voxels", "1000"]) == 0, "info --json failed")
    info = json.loads(capsys.readouterr().out)
    gt = h5_read(GALA / "test-gt.lzf.h5", "stack")
    expect(info["shape"] == [50, 100, 200] and info["voxel_size"] == [10, 10, 10], f"{info}")
    expect(info["chunk_shape"] == [10, 20, 20] and info["roi"]["shape"] == [500, 1000, 2000], f"{info}")
    value_range = info["value_range"]
    expect(value_range["sampled"] and (value_range["chunks_read"], value_range["chunks_total"]) == (16, 250), f"{info}")
    expect(gt.min() <= value_range["min"] <= value_range["max"] <= gt.max(), f"sampled range {value_range}")
    expect(main(["info", destination, "--max-voxels", "1000"]) == 0, "info failed")
    expect("(sampled from 16 of 250 chunks)" in capsys.readouterr().out, "text output must say 'sampled'")


def test_info_hdf5_and_zarr_v2(tmp_path, capsys):
    expect(main(["info", f"{GALA / 'train-image.h5'}:stack", "--json"]) == 0, "info on HDF5 failed")
    info = json.loads(capsys.readouterr().out)
    image = h5_read(GALA / "train-image.h5", "stack")
    expect(info["format"] == "hdf5" and info["voxel_size_stored"] is False, f"{info}")
    expect([info["value_range"]["min"], info["value_range"]["max"]] == [image.min(), image.max()], f"{info}")
    zarr.create_array(
        str(tmp_path / "old.zarr"),
        name="raw",
        data=np.arange(64, dtype=np.int16).reshape(4, 4, 4) - 10,
        zarr_format=2,
        attributes={"resolution": [40, 4, 4], "offset": [40, 0, 0]},
    )
    expect(main(["info", str(tmp_path / "old.zarr/raw"), "--json"]) == 0, "info on zarr v2 failed")
    info = json.loads(capsys.readouterr().out)
    expect(info["format"] == "zarr v2" and info["voxel_size"] == [40, 4, 4] and info["offset"] == [40, 0, 0], f"{info}")
    expect((info["value_range"]["min"], info["value_range"]["max"]) == (-10, 53), f"{info['value_range']}")


def test_info_missing_dataset_is_an_error(tmp_path, capsys):
    expect(main(["info", f"{ISBI}:nothing"]) == 2, "missing dataset must exit 2")
    err = capsys.readouterr().err
    expect("nothing" in err and "labels/neurites_3dcc" in err, f"stderr {err!r}")


def test_subprocess_exit_codes(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    def affcons(*arguments: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "affcons.cli", *arguments]
        return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)

    imported = affcons("import", f"{ISBI}:raw", "isbi.zarr/raw")
    expect(imported.returncode == 0 and imported.stdout.startswith("imported "), f"{imported}")
    refused = affcons("import", f"{ISBI}:raw", "isbi.zarr/raw")
    expect(refused.returncode == 2 and refused.stderr.startswith("affcons import: error: "), f"{refused}")
    wrong_length = affcons("import", f"{ISBI}:raw", "other.zarr/raw", "--voxel-size", "4", "4")
    expect(wrong_length.returncode == 2 and not (tmp_path / "other.zarr").exists(), f"{wrong_length}")
    info = affcons("info", "isbi.zarr/raw", "--json")
    expect(info.returncode == 0 and json.loads(info.stdout)["voxel_size"] == [50, 4, 4], f"{info}")
