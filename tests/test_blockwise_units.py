"""Pieces of the blockwise pipeline that need no workers: config validation and fingerprints, the step registry,
the block grid and fragment id ranges, the dense node table, the dry-run plan and its memory verdicts."""

import math

import numpy as np
import pytest
from funlib.geometry import Roi

from affcons.errors import ConfigError
from affcons.segment import node_table, watershed_from_affinities
from affcons.synthetic import degraded_affinities
from blockwise.config import SegmentConfig
from blockwise.plan import KASTHURI_SHAPE, MEASURED, project, read_voxels
from blockwise.registry import step_class
from blockwise.steps.base import ids_dtype
from blockwise.steps.edges import EdgesStep
from blockwise.steps.fragments import FragmentsStep
from blockwise.testing import load_labels, mirror_to, run_cli, segment_argv, tree_snapshot, write_affinities


def config(**changes) -> SegmentConfig:
    data = dict(
        affs="/data/in.zarr/affs",
        out="/data/out.zarr",
        run_dir="/data/out.affcons-run",
        graph="sqlite:////r.db",
        voxel_size=(10, 4, 4),
        affs_offset=(0, 0, 0),
        roi_offset=(0, 0, 0),
        roi_shape=(500, 400, 400),
        block_size=(200, 128, 128),
        context=(20, 16, 16),
        chunk_shape=(10, 16, 16),
        extract={"thresholds": [0.7, 0.3]},
    )
    data.update(changes)
    return SegmentConfig.model_validate(data)


def test_config_sorts_thresholds_and_fingerprint_ignores_what_does_not_change_results():
    base = config()
    assert base.extract.thresholds == [0.3, 0.7]
    assert base.block_voxels == (20, 32, 32)
    same = config(extract={"thresholds": [0.5]}, execution={"workers": 8, "launcher": {"type": "slurm"}})
    assert same.fingerprint() == base.fingerprint()
    assert config(context=(10, 16, 16)).fingerprint() != base.fingerprint()
    assert config(agglomerate={"scoring": "quantile50"}).histogram_bins == 256


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"chunk_shape": (3, 16, 16)}, "not a multiple of the output chunk shape"),
        ({"block_size": (205, 128, 128)}, "not a multiple of the voxel size"),
        ({"extract": {"thresholds": [1.2]}}, "outside [0, 1]"),
        ({"extract": {"thresholds": [0.5, 0.50]}}, "thresholds repeat"),
        ({"agglomerate": {"scoring": "median"}}, "unknown scoring"),
        ({"fragments": {"seeds": 3}}, "Extra inputs are not permitted"),
    ],
)
def test_config_rejects_inconsistent_values(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config(**changes)


def test_registry_names_the_blockwise_steps_and_rejects_unknown_names():
    assert step_class("edges") is EdgesStep
    with pytest.raises(ConfigError, match="unknown step 'agglomerate'; the blockwise steps are predict, fragments"):
        step_class("agglomerate")


def test_block_grid_indices_round_trip_and_fragment_id_ranges_do_not_overlap():
    step = FragmentsStep(config(roi_offset=(100, 40, 0)))
    assert step.grid_shape == (3, 4, 4)  # 500 / 200 -> 3 (the last block shrinks), 400 / 128 -> 4
    for index in range(step.num_blocks):
        roi = step.block_roi(index)
        assert step.block_index(roi) == index and step.roi.contains(roi)
    last = step.block_roi(step.num_blocks - 1)
    assert last == Roi((500, 424, 384), (100, 16, 16))
    ranges = [(step.first_id(i) + 1, step.first_id(i) + step.voxels_per_block) for i in range(step.num_blocks)]
    assert all(high < ranges[i + 1][0] for i, (_, high) in enumerate(ranges[:-1]))
    assert ranges[-1][1] < 2**63
    assert step.ids_dtype == np.uint32 and ranges[-1][1] <= np.iinfo(step.ids_dtype).max


def test_ids_dtype_is_uint32_exactly_while_the_largest_id_fits():
    blocks = (2**32 - 1) // (128**3 + 1)  # 2047 blocks of 128^3 voxels: the largest id is below 2^32
    assert ids_dtype(blocks, 128**3) == np.uint32
    assert ids_dtype(blocks + 1, 128**3) == np.uint64
    assert ids_dtype(1, 2**32 - 2) == np.uint32 and ids_dtype(1, 2**32 - 1) == np.uint64  # 2^32 - 1 is the largest


def test_node_table_of_dense_ids_equals_that_of_shifted_sparse_ids():
    """The fragments step computes nodes on dense local ids and shifts them; the sparse path must agree exactly."""
    labels, _ = load_labels("gala")
    fragments, _ = watershed_from_affinities(degraded_affinities(labels[:20, :40, :60], seed=5))
    first = 7 * 10**6
    dense = node_table(fragments.astype(np.int32), (30, 6, 6), (90, 12, 0))
    shifted = np.where(fragments > 0, fragments + np.uint64(first), 0)
    reference = node_table(shifted, (30, 6, 6), (90, 12, 0))
    assert np.array_equal(dense.ids + np.uint64(first), reference.ids)
    for column in ("position", "size"):
        assert np.array_equal(getattr(dense, column), getattr(reference, column)), column


def test_read_voxels_counts_clipped_context_exactly():
    total, overhead = read_voxels((10, 7, 5), (4, 4, 4), (1, 2, 0))
    brute = 0
    for z in range(0, 10, 4):
        for y in range(0, 7, 4):
            for x in range(0, 5, 4):
                extent = [min(s, b + 4 + c) - max(0, b - c) for s, b, c in zip((10, 7, 5), (z, y, x), (1, 2, 0))]
                brute += math.prod(extent)
    assert total == brute and overhead == pytest.approx(brute / 350)


def test_kasthuri_projection_flags_global_steps_that_do_not_fit_128_gb():
    typical = project(MEASURED, shape=KASTHURI_SHAPE, edges=4e8)
    assert typical["stages"]["agglomerate (global)"]["fits_128GB"]
    assert not project(MEASURED, edges=3e9)["stages"]["agglomerate (global)"]["fits_128GB"]
    assert not project(MEASURED, edges=4e8, histogram_bins=256)["stages"]["agglomerate (global)"]["fits_128GB"]


def test_mirror_to_reflects_at_faces():
    volume = np.arange(6).reshape(1, 2, 3)
    mirrored = mirror_to(volume, (3, 2, 7))
    assert mirrored.shape == (3, 2, 7)
    assert mirrored[0, 0].tolist() == [0, 1, 2, 2, 1, 0, 0]
    assert (mirrored[1] == mirrored[0]).all()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    affs = np.random.default_rng(0).random((3, 20, 40, 40)).astype(np.float32)
    write_affinities(str(tmp_path / "in.zarr" / "affs"), affs, (10, 10, 10))
    before = tree_snapshot(tmp_path)
    argv = segment_argv(
        str(tmp_path / "in.zarr" / "affs"),
        str(tmp_path / "out.zarr"),
        block=(10, 20, 20),
        extra=["--dry-run", "--scoring", "quantile50"],
    )
    assert run_cli(argv) == 0
    plan = capsys.readouterr().out
    assert "grid [2, 2, 2]: fragments 8, edges 8, extract 8 blocks" in plan
    assert "global step agglomerate" in plan and "fits one 128 GB machine" in plan
    assert tree_snapshot(tmp_path) == before


def test_dry_run_estimates_the_rag_from_samples_of_the_affinities_within_2x_of_the_real_run(capsys):
    import json
    import re

    from blockwise.testing import reference_run, reliability_argv, run_cli

    out, _ = reference_run()
    real = json.loads((out.parent / f"{out.stem}.affcons-run" / "summary.json").read_text())
    assert run_cli([*reliability_argv(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    nodes, edges = (float(n) for n in re.search(r"RAG ~(\S+) nodes, ~(\S+) edges \(sampled", plan).groups())
    assert 0.5 < nodes / real["nodes"] < 2 and 0.5 < edges / real["edges"] < 2, (nodes, edges, real)
