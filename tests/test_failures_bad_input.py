"""Bad input is refused before anything is written: exit code 2, a message naming the problem, no file created or
changed -- affinities with the wrong channel count, dtype or voxel size, a block size that is not a multiple of the
chunk shape, thresholds outside [0, 1], and an existing output or run directory from a different config."""

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from affcons.io import create_volume
from blockwise.testing import reference_run, reliability_argv, run_cli, segment_argv, tree_snapshot


@pytest.fixture
def small_affs(tmp_path):
    """Writes a (channels, 10, 20, 20) affinity volume at 10 nm of the given dtype; returns its path."""

    def make(channels=3, dtype=np.float32, voxel_size=(10, 10, 10)):
        path = str(tmp_path / "in.zarr" / "affs")
        roi = Roi((0, 0, 0), Coordinate(10, 20, 20) * Coordinate(voxel_size))
        array = create_volume(path, roi, voxel_size, dtype, num_channels=channels, mode="w")
        array[roi] = (np.random.default_rng(0).random((channels, 10, 20, 20)) * 100).astype(dtype)
        return path

    return make


def refused(argv, capfd, expected: str, watched) -> str:
    """Run, expect exit code 2 with ``expected`` on stderr and no change below the ``watched`` paths."""
    before = [tree_snapshot(p) for p in watched]
    assert run_cli(argv) == 2
    error = capfd.readouterr().err
    assert expected in error, error
    assert [tree_snapshot(p) for p in watched] == before
    return error


def test_two_channel_affinities_are_refused(small_affs, tmp_path, capfd):
    argv = segment_argv(small_affs(channels=2), str(tmp_path / "out.zarr"), block=(10, 20, 20), context=(0, 0, 0))
    refused(argv, capfd, "expected at least 3 channels", [tmp_path / "out.zarr", tmp_path / "out.affcons-run"])


def test_int16_affinities_are_refused(small_affs, tmp_path, capfd):
    argv = segment_argv(small_affs(dtype=np.int16), str(tmp_path / "out.zarr"), block=(10, 20, 20))
    refused(argv, capfd, "dtype int16 is not one of uint8, float32, float16", [tmp_path / "out.affcons-run"])


def test_voxel_size_different_from_the_stored_one_is_refused(small_affs, tmp_path, capfd):
    extra = ["--voxel-size", "8", "8", "8"]
    argv = segment_argv(small_affs(), str(tmp_path / "out.zarr"), block=(10, 20, 20), extra=extra)
    refused(argv, capfd, "differs from --voxel-size (8, 8, 8) nm", [tmp_path / "out.affcons-run"])


def test_block_size_not_a_multiple_of_the_chunk_shape_is_refused(small_affs, tmp_path, capfd):
    extra = ["--chunk-shape", "4", "8", "8"]
    argv = segment_argv(small_affs(), str(tmp_path / "out.zarr"), block=(10, 20, 20), extra=extra)
    refused(argv, capfd, "is not a multiple of the output chunk shape", [tmp_path / "out.affcons-run"])


@pytest.mark.parametrize("thresholds", [("1.5",), ("-0.1", "0.5"), ("0.555",)])
def test_thresholds_outside_unit_interval_or_too_precise_are_refused(small_affs, tmp_path, capfd, thresholds):
    argv = segment_argv(small_affs(), str(tmp_path / "out.zarr"), thresholds=thresholds, block=(10, 20, 20))
    expected = "more than two decimals" if thresholds == ("0.555",) else "is outside [0, 1]"
    refused(argv, capfd, expected, [tmp_path / "out.affcons-run"])


def test_existing_output_of_another_config_is_refused_and_left_alone(capfd):
    out, _ = reference_run()
    run_dir = out.parent / f"{out.stem}.affcons-run"
    argv = reliability_argv(out, extra=["--min-size", "20"])
    error = refused(argv, capfd, f"run directory {run_dir} was written with a different config", [out, run_dir])
    assert "'min_size': 0" in error and "'min_size': 20" in error


def test_existing_output_of_another_config_is_refused_with_a_fresh_run_dir(tmp_path, capfd):
    out, _ = reference_run()
    argv = reliability_argv(out, extra=["--context", "4", "4", "4", "--run-dir", str(tmp_path / "other-run")])
    refused(argv, capfd, "fragments was written with a different config", [out, tmp_path / "other-run"])
