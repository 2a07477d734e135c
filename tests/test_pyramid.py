"""``affcons pyramid`` on real daisy workers: every level of the blockwise pyramid equals the whole-volume
downsampling chain (blocks that do not divide the volume, ids by mode, channels by mean), the OME metadata places
each level, a failed block fails the run naming it and a re-run resumes to the same bytes, bad input is refused."""

import json

import numpy as np
import pytest
from funlib.geometry import Roi

from affcons.io import create_volume
from affcons.multiscale import downsample_block, read_multiscales
from blockwise.faults import FAULT_ENV
from blockwise.testing import chunk_digests, run_cli

VOXEL = (40, 4, 4)
OFFSET = (80, 12, 8)
SHAPE = (12, 90, 70)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A uint64 id volume and uint8 (3, z, y, x) affinities with an offset, in one container."""
    root = tmp_path_factory.mktemp("pyramid")
    rng = np.random.default_rng(7)
    ids = np.repeat(np.repeat(rng.integers(1, 2**40, (SHAPE[0], 18, 14), dtype=np.uint64), 5, 1), 5, 2)
    ids[:, 40:43] = 0
    affs = rng.integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    roi = Roi(OFFSET, tuple(s * v for s, v in zip(SHAPE, VOXEL)))
    create_volume(root / "in.zarr" / "segmentation", roi, VOXEL, np.uint64)[roi] = ids
    create_volume(root / "in.zarr" / "affs", roi, VOXEL, np.uint8, num_channels=3)[roi] = affs
    return root, {"segmentation": (ids, "mode"), "affs": (affs, "mean")}


def argv(root, name, *extra):
    return ["pyramid", f"{root}/in.zarr/{name}", "--max-extent", "30", "--chunk-shape", "5", "32", "24", *extra]


def levels_of(group):
    import zarr

    return [
        np.asarray(zarr.open_array(f"{group}/s{k}", mode="r")[...]) for k in range(len(read_multiscales(group).levels))
    ]


@pytest.mark.parametrize("name", ["segmentation", "affs"])
def test_blockwise_pyramid_equals_the_whole_volume_chain_at_every_level(sources, name, capsys):
    root, volumes = sources
    data, mode = volumes[name]
    assert run_cli(argv(root, name, "--workers", "2", "--quiet")) == 0
    group = root / "in.zarr" / f"{name}_multiscale"
    multiscales = read_multiscales(group)
    assert multiscales.channel_axes == (1 if name == "affs" else 0)
    assert [level.voxel_size for level in multiscales.levels] == [(40, 4, 4), (40, 8, 8), (40, 16, 16)]
    assert all(tuple(level.offset) == OFFSET for level in multiscales.levels)
    expected = [data]
    for _ in multiscales.levels[1:]:
        expected.append(downsample_block(expected[-1], (1, 2, 2), mode))
    got = levels_of(group)
    assert [a.shape for a in got] == [e.shape for e in expected]
    for level, (a, e) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(a, e, err_msg=f"level {level}")
    attrs = json.loads((group / "zarr.json").read_text())["attributes"]
    assert attrs["complete"] is True and attrs["ome"]["multiscales"][0]["type"] == mode
    assert f"affcons view {group}" in capsys.readouterr().out


def test_a_failed_block_fails_the_run_naming_it_and_a_rerun_resumes_to_the_same_bytes(
    sources, tmp_path, monkeypatch, capsys
):
    root, _ = sources
    reference = root / "in.zarr" / "segmentation_multiscale"
    if not reference.exists():
        assert run_cli(argv(root, "segmentation", "--quiet")) == 0
    out = f"{tmp_path}/out.zarr/pyramid"
    fault = {"step": "downsample", "block": 3, "action": "raise", "once": str(tmp_path / "fired")}
    monkeypatch.setenv(FAULT_ENV, json.dumps(fault))
    assert run_cli(argv(root, "segmentation", "--out", out, "--max-retries", "0", "--quiet")) == 1
    error = capsys.readouterr().err
    assert "task downsample_s0" in error and "3 @ [" in error, error
    attrs = json.loads((tmp_path / "out.zarr" / "pyramid" / "zarr.json").read_text())["attributes"]
    assert attrs["complete"] is False and "ome" not in attrs
    assert run_cli(argv(root, "segmentation", "--out", out, "--quiet")) == 0
    assert chunk_digests(tmp_path / "out.zarr") == {
        f"pyramid/{key.split('/', 1)[1]}": value
        for key, value in chunk_digests(root / "in.zarr", ["segmentation_multiscale"]).items()
    }


def test_bad_input_is_refused_and_nothing_is_written(sources, tmp_path, capsys):
    root, _ = sources
    out = f"{tmp_path}/o.zarr/p"
    assert run_cli(["pyramid", f"{tmp_path}/none.zarr/x", "--out", out]) == 2
    assert run_cli(["pyramid", f"{root}/in.zarr/affs", "--out", f"{root}/in.zarr/affs"]) == 2
    assert "is the source itself" in capsys.readouterr().err
    assert run_cli(argv(root, "affs", "--out", out, "--quiet")) == 0
    before = chunk_digests(tmp_path / "o.zarr")
    assert run_cli(argv(root, "affs", "--out", out, "--mode", "mode")) == 2
    assert "written with a different config" in capsys.readouterr().err
    assert chunk_digests(tmp_path / "o.zarr") == before
