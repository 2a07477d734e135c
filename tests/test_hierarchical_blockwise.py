"""``affcons segment --agglomeration hierarchical`` end to end (real daisy workers, zarr, SQLite): the levels' merge
tree and every output byte equal the global agglomeration's for three block layouts (one a non-power-of-two grid,
with and without a stop level); a block failing mid-level fails the run naming it, and the re-run resumes to the
same bytes; bad option values are refused with exit code 2 before anything is written; the dry run lists the levels.

Each layout runs the global agglomeration first, then drops its merge tree and segmentations (the method is not
part of the fingerprint, so fragments and RAG are reused) and runs the hierarchical levels and extract again."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from affcons.segment import MergeTree
from blockwise.faults import FAULT_ENV
from blockwise.layout import RunDir, segment_run_dir
from blockwise.testing import chunk_digests, reliability_volume, run_cli, segment_argv, tree_snapshot

THRESHOLDS = (0.3, 0.6)
TREE_ARRAYS = ("ids", "kept", "absorbed", "score", "level")


def argv_for(out, block, extra=()) -> list[str]:
    """``affcons segment`` of the gala reliability volume (50 x 100 x 100 voxels) with ``block`` and 2 workers."""
    return segment_argv(reliability_volume(), str(out), THRESHOLDS, block, (8, 8, 8), workers=2, extra=list(extra))


def forget_agglomeration(out) -> None:
    """Drop the merge tree, its info, lookup tables and segmentations, keeping fragments and RAG."""
    run_dir = RunDir(segment_run_dir(out))
    for path in (run_dir.merge_tree, run_dir.agglomerate_info):
        path.unlink()
    shutil.rmtree(run_dir.lut_ids.parent)
    for path in Path(out).glob("segmentation_*"):
        shutil.rmtree(path)


def tree_arrays(out) -> dict[str, np.ndarray]:
    tree = MergeTree.load(RunDir(segment_run_dir(out)).merge_tree)
    return {name: getattr(tree, name) for name in TREE_ARRAYS}


def assert_same_outputs(out, tree, digests) -> None:
    for name, array in tree_arrays(out).items():
        assert array.dtype == tree[name].dtype and np.array_equal(array, tree[name]), name
    assert chunk_digests(out) == digests


def summary_of(out) -> dict:
    return json.loads(RunDir(segment_run_dir(out)).summary.read_text())


@pytest.mark.parametrize(
    "block, levels, stop",
    [((25, 50, 50), 2, None), ((25, 25, 50), 3, None), ((10, 50, 25), 4, None), ((10, 50, 25), 2, 1)],
    ids=["2x2x2", "2x4x2", "5x2x4", "5x2x4-stop1"],
)
def test_hierarchical_equals_global_byte_for_byte(tmp_path, block, levels, stop):
    out = tmp_path / "out.zarr"
    assert run_cli(argv_for(out, block)) == 0
    tree, digests = tree_arrays(out), chunk_digests(out)
    assert summary_of(out)["stages"]["agglomerate"]["method"] == "global"
    forget_agglomeration(out)
    extra = ["--agglomeration", "hierarchical"] + (["--stop-level", str(stop)] if stop else [])
    assert run_cli(argv_for(out, block, extra)) == 0
    assert_same_outputs(out, tree, digests)
    agglomerate = summary_of(out)["stages"]["agglomerate"]
    assert agglomerate["method"] == "hierarchical" and not agglomerate["reused"]
    records = agglomerate["levels"]
    assert [r["level"] for r in records] == list(range(levels))
    assert records[-1]["blocks"] == 1 and records[-1]["task"].endswith("_root")
    assert records[-1]["frozen_clusters"] == records[-1]["deferred_edges"] == 0, "the top level finishes"
    assert records[0]["frozen_clusters"] > 0 and records[0]["deferred_edges"] > 0, "level 0 blocks have faces"
    for record in records:
        assert record["bytes"] > 0 and record["peak_rss_bytes"] > 10e6 and record["wall_s"] > 0
    assert sum(r["merges"] for r in records) == agglomerate["merges"] == len(tree["kept"])


def test_failed_block_mid_level_then_rerun_gives_identical_bytes(tmp_path, capfd):
    block = (25, 25, 50)
    out = tmp_path / "out.zarr"
    assert run_cli(argv_for(out, block)) == 0
    tree, digests = tree_arrays(out), chunk_digests(out)
    forget_agglomeration(out)
    fault = {"step": "hierarchy_1", "block": 1, "action": "raise", "point": "partial-write"}
    argv = argv_for(out, block, ["--agglomeration", "hierarchical", "--max-retries", "0"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, json.dumps(fault))
        assert run_cli(argv) == 1
    error = capfd.readouterr().err
    assert "task hierarchy_1" in error and "1 block(s) not done" in error and "InjectedFault" in error, error
    run_dir = RunDir(segment_run_dir(out))
    assert not run_dir.merge_tree.exists() and not run_dir.hierarchy_state(1, 1).exists()
    assert run_dir.hierarchy_state(1, 0).exists()
    summary = summary_of(out)
    assert summary["status"] == "failed" and summary["tasks"]["hierarchy_1"]["failed_blocks"][0]["block"] == 1

    assert run_cli(argv) == 0
    assert_same_outputs(out, tree, digests)
    tasks = summary_of(out)["tasks"]
    assert tasks["hierarchy_0"]["skipped"] == tasks["hierarchy_0"]["blocks"] == 8, "level 0 resumed from its markers"
    assert tasks["hierarchy_1"]["processed"] == 1, "only the failed block of level 1 ran again"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--agglomeration", "levels"], "invalid choice: 'levels'"),
        (["--agglomeration", "hierarchical", "--stop-level", "0"], "must be a positive integer"),
        (["--stop-level", "2"], "applies to the hierarchical agglomeration only"),
    ],
    ids=["method", "stop-level-0", "stop-level-global"],
)
def test_bad_agglomeration_options_are_refused(tmp_path, capfd, extra, expected):
    out = tmp_path / "out.zarr"
    try:
        code = run_cli(argv_for(out, (25, 50, 50), extra))
    except SystemExit as refusal:  # argparse's own refusals
        code = refusal.code
    assert code == 2
    assert expected in capfd.readouterr().err
    assert tree_snapshot(tmp_path) == {}


def test_bad_method_in_a_config_file_is_refused(tmp_path, capfd):
    config = tmp_path / "segment.yaml"
    config.write_text("agglomerate:\n  method: levels\n")
    out = tmp_path / "out.zarr"
    assert run_cli(argv_for(out, (25, 50, 50), ["--config", str(config)])) == 2
    error = capfd.readouterr().err
    assert "agglomerate.method" in error and "'global' or 'hierarchical'" in error, error
    assert not out.exists()


def test_dry_run_lists_the_levels(tmp_path, capsys):
    out = tmp_path / "out.zarr"
    extra = ["--agglomeration", "hierarchical", "--stop-level", "2", "--dry-run"]
    assert run_cli(argv_for(out, (10, 50, 25), extra)) == 0
    plan = capsys.readouterr().out
    assert "level 0 40 block(s) of [10, 50, 25] voxels" in plan, plan
    assert "level 1 6 block(s) of [20, 100, 50] voxels" in plan, plan
    assert "level 2 1 block(s) of [50, 100, 100] voxels (one process: the stop level)" in plan, plan
    assert "global alternative agglomerate" in plan
    assert not out.exists()
