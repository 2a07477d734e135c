"""``affcons segment --agglomeration hierarchical`` end to end (real daisy workers, zarr, SQLite; MongoDB once): its
merge tree and outputs equal the global agglomeration's for three block layouts (2 x 2 x 2, also on MongoDB;
2 x 4 x 2; the non-power-of-two 5 x 2 x 4, also with a stop level and with a worker memory budget that stops it
early); a block failing mid-level fails the run naming it, and the re-run resumes to the same bytes; bad option
values are refused with exit code 2 before anything is written; the dry run lists the levels and the projected stop.

The 2 x 2 x 2 run is compared chunk for chunk with the reliability tests' global reference run (shared within a
test process); the others with the global canonical tree of their own graph store, built as the global step builds
it (``build_merge_tree`` of the stored RAG), since lookup tables and extract are the same code for both methods."""

import json
import shutil

import numpy as np
import pytest

from affcons.config import load_config
from affcons.segment import EdgeTable, MergeTree, build_merge_tree
from affcons.store import open_store
from blockwise.config import SegmentConfig
from blockwise.faults import FAULT_ENV
from blockwise.layout import RunDir, segment_run_dir
from blockwise.registry import load_step
from blockwise.testing import (
    chunk_digests,
    reference_run,
    reliability_argv,
    reliability_volume,
    run_cli,
    segment_argv,
    tree_snapshot,
)

HIERARCHICAL = ["--agglomeration", "hierarchical"]
TREE_ARRAYS = ("ids", "kept", "absorbed", "score", "level")


def argv_for(out, block, extra=()) -> list[str]:
    """``affcons segment`` of the gala reliability volume (50 x 100 x 100 voxels) with ``block``, one worker."""
    return segment_argv(reliability_volume(), str(out), (0.5,), block, (8, 8, 8), workers=1, extra=list(extra))


def run_dir_of(out) -> RunDir:
    return RunDir(segment_run_dir(out))


def summary_of(out) -> dict:
    return json.loads(run_dir_of(out).summary.read_text())


def assert_global_tree(out) -> None:
    """The run's merge tree equals, array for array, the global step's tree of the run's stored RAG."""
    run_dir = run_dir_of(out)
    config = load_config(SegmentConfig, run_dir / RunDir.SEGMENT_CONFIG)
    with open_store(config.graph_url(), "r", config.histogram_bins) as store:
        expected = build_merge_tree(store.read_edges(), config.agglomerate.scoring, node_ids=store.read_nodes().ids)
    tree = MergeTree.load(run_dir.merge_tree)
    assert tree.num_stitches > 0, "block faces cut fragments here; some must be stitched"
    for name in TREE_ARRAYS:
        array, reference = getattr(tree, name), getattr(expected, name)
        assert array.dtype == reference.dtype and np.array_equal(array, reference), name


def assert_levels(out, levels: int) -> dict:
    agglomerate = summary_of(out)["stages"]["agglomerate"]
    assert agglomerate["method"] == "hierarchical" and not agglomerate["reused"]
    records = agglomerate["levels"]
    assert [r["level"] for r in records] == list(range(levels))
    assert records[-1]["blocks"] == 1 and records[-1]["task"].endswith("_root")
    assert records[-1]["frozen_clusters"] == records[-1]["deferred_edges"] == 0, "the top level finishes"
    assert records[0]["frozen_clusters"] > 0 and records[0]["deferred_edges"] > 0, "level 0 blocks have faces"
    for record in records:
        assert record["bytes"] > 0 and record["peak_rss_bytes"] > 10e6
        assert record["wall_s"] > 0 or record["processed_this_run"] == 0  # a level done before takes ~0 s
        assert record["peak_rss_bytes"] >= record["baseline_rss_bytes"] > 10e6
    assert sum(r["merges"] for r in records) == agglomerate["merges"]
    return agglomerate


def test_hierarchical_outputs_equal_the_global_reference_chunk_for_chunk(tmp_path):
    """Blocks 25 x 50 x 50 (grid 2 x 2 x 2: level 0 and the root), two workers."""
    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    assert run_cli(reliability_argv(out, extra=HIERARCHICAL)) == 0
    assert chunk_digests(out) == digests
    assert_levels(out, 2)


def test_an_edge_between_blocks_that_share_no_face_fails_the_hierarchical_run(tmp_path, capfd):
    """The levels read each edge inside a level-0 box or across one shared face; an edge between diagonal blocks
    (which the blockwise steps never write) would be left out silently, so the run fails naming the counts."""
    out = tmp_path / "out.zarr"
    assert run_cli(reliability_argv(out, extra=HIERARCHICAL)) == 0
    run_dir = run_dir_of(out)
    config = load_config(SegmentConfig, run_dir / RunDir.SEGMENT_CONFIG)
    with open_store(config.graph_url(), "a", config.histogram_bins) as store:
        first, last = store.read_block_nodes([0]).ids[0], store.read_block_nodes([7]).ids[0]  # grid 2 x 2 x 2
        edges = store.count_edges()
        diagonal = EdgeTable([first], [last], [0.5], [1], np.zeros((1, config.histogram_bins)))
        store.write_edges(999, diagonal)  # a block id that wrote no nodes: only this edge is added
    run_dir.agglomerate_info.unlink()
    capfd.readouterr()
    assert run_cli(reliability_argv(out, extra=HIERARCHICAL)) != 0
    assert f"the hierarchical levels read {edges} of the graph store's {edges + 1} edges" in capfd.readouterr().err


def test_hierarchical_run_on_mongodb_equals_the_global_sqlite_reference(tmp_path, mongodb_url):
    """The levels' block reads through the MongoDB backend (the nx-27017 wire server): the outputs equal the global
    SQLite reference run chunk for chunk (grid 2 x 2 x 2)."""
    import pymongo

    from tests.mongo_server import with_database

    _, digests = reference_run()
    database = f"affcons_hierarchy_{tmp_path.name[-20:].replace('-', '_')}"
    out = tmp_path / "out.zarr"
    try:
        assert (
            run_cli(reliability_argv(out, extra=HIERARCHICAL + ["--graph", with_database(mongodb_url, database)])) == 0
        )
        assert chunk_digests(out) == digests
        assert summary_of(out)["config"]["graph"].startswith("mongodb://")
        assert_levels(out, 2)
    finally:
        client = pymongo.MongoClient(mongodb_url, serverSelectionTimeoutMS=3000)
        try:
            client.drop_database(database)
        finally:
            client.close()


def test_non_power_of_two_grid_and_a_stop_level_give_the_global_tree(tmp_path):
    """Blocks 10 x 50 x 25: grid 5 x 2 x 4, levels of 40, 6 and 2 blocks and the root at level 3; then the same RAG
    finished at level 1 (level 0 reused from its done markers); then with a worker memory budget below level 2's
    estimate, so the driver finishes (levels below reused)."""
    out = tmp_path / "out.zarr"
    assert run_cli(argv_for(out, (10, 50, 25), HIERARCHICAL)) == 0
    assert_global_tree(out)
    first_levels = assert_levels(out, 4)["levels"]
    assert [r["blocks"] for r in first_levels] == [40, 6, 2, 1]
    assert all(r["estimated_block_bytes"] > r["estimated_base_bytes"] > 10e6 for r in first_levels[1:])
    assert summary_of(out)["stages"]["agglomerate"]["stop"]["process"] == "worker"
    luts = {p.name: p.read_bytes() for p in run_dir_of(out).lut_ids.parent.iterdir()}

    run_dir = run_dir_of(out)
    for path in (run_dir.merge_tree, run_dir.agglomerate_info):
        path.unlink()
    shutil.rmtree(run_dir.lut_ids.parent)
    assert run_cli(argv_for(out, (10, 50, 25), HIERARCHICAL + ["--stop-level", "1"])) == 0
    assert_global_tree(out)
    assert {p.name: p.read_bytes() for p in run_dir.lut_ids.parent.iterdir()} == luts
    assert summary_of(out)["tasks"]["hierarchy_0"]["skipped"] == 40
    assert [r["task"] for r in assert_levels(out, 2)["levels"]] == ["hierarchy_0", "hierarchy_1_root"]
    # a cluster worker rebuilds the level from the run's config file and ``--level``
    step = load_step("hierarchy", str(run_dir / RunDir.SEGMENT_CONFIG), level=1)
    assert (step.task_id, step.num_blocks, step.worker_arguments()) == ("hierarchy_1_root", 1, ["--level", "1"])
    assert summary_of(out)["stages"]["agglomerate"]["stop"]["reason"] == "stop level 1 (agglomerate.stop_level)"

    # a worker memory budget just below level 2's estimate: the first level over it is finished by the driver
    estimates = {r["level"]: r["estimated_block_bytes"] for r in first_levels if r["level"] > 0}
    budget = estimates[2] - 1
    expected_stop = min(level for level, estimate in estimates.items() if estimate > budget)
    for path in (run_dir.merge_tree, run_dir.agglomerate_info):
        path.unlink()
    shutil.rmtree(run_dir.lut_ids.parent)
    extra = HIERARCHICAL + ["--worker-memory-gb", repr(budget / 1e9)]
    assert run_cli(argv_for(out, (10, 50, 25), extra)) == 0
    assert_global_tree(out)
    assert {p.name: p.read_bytes() for p in run_dir.lut_ids.parent.iterdir()} == luts
    agglomerate = assert_levels(out, expected_stop + 1)
    stop = agglomerate["stop"]
    assert (stop["level"], stop["root_level"], stop["process"]) == (expected_stop, 3, "driver"), stop
    assert stop["worker_memory_bytes"] == budget and "over the worker budget" in stop["reason"], stop
    assert agglomerate["levels"][-1]["task"] == f"hierarchy_{expected_stop}_root"
    assert agglomerate["levels"][-1]["estimated_block_bytes"] > budget
    assert json.loads(run_dir.agglomerate_info.read_text())["stop"] == stop


def test_failed_block_mid_level_then_rerun_gives_identical_bytes(tmp_path, capfd):
    """Blocks 25 x 25 x 50 (grid 2 x 4 x 2): block 1 of level 1 fails at every attempt; the re-run resumes."""
    out = tmp_path / "out.zarr"
    fault = {"step": "hierarchy_1", "block": 1, "action": "raise", "point": "partial-write"}
    argv = argv_for(out, (25, 25, 50), HIERARCHICAL + ["--max-retries", "0"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, json.dumps(fault))
        assert run_cli(argv) == 1
    error = capfd.readouterr().err
    assert "task hierarchy_1" in error and "1 block(s) not done" in error and "InjectedFault" in error, error
    run_dir = run_dir_of(out)
    assert not run_dir.merge_tree.exists() and not run_dir.hierarchy_state(1, 1).exists()
    assert run_dir.hierarchy_state(1, 0).exists()
    summary = summary_of(out)
    assert summary["status"] == "failed" and summary["tasks"]["hierarchy_1"]["failed_blocks"][0]["block"] == 1

    assert run_cli(argv) == 0
    assert_global_tree(out)
    assert_levels(out, 3)
    tasks = summary_of(out)["tasks"]
    assert tasks["hierarchy_0"]["skipped"] == tasks["hierarchy_0"]["blocks"] == 16, "level 0 resumed from its markers"
    assert tasks["hierarchy_1"]["processed"] == 1, "only the failed block of level 1 ran again"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--agglomeration", "levels"], "invalid choice: 'levels'"),
        (["--agglomeration", "hierarchical", "--stop-level", "0"], "must be a positive integer"),
        (["--stop-level", "2"], "applies to the hierarchical agglomeration only"),
        (HIERARCHICAL + ["--worker-memory-gb", "lots"], "must be a number of GB, got 'lots'"),
        (HIERARCHICAL + ["--worker-memory-gb", "0"], "must be a positive, finite number of GB, got '0'"),
        (HIERARCHICAL + ["--worker-memory-gb", "inf"], "must be a positive, finite number of GB, got 'inf'"),
        (["--worker-memory-gb", "4"], "worker_memory_bytes 4000000000 applies to the hierarchical agglomeration only"),
    ],
    ids=["method", "stop-level-0", "stop-level-global", "budget-text", "budget-0", "budget-inf", "budget-global"],
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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("method: levels", ("agglomerate.method", "'global' or 'hierarchical'")),
        ("method: hierarchical\n  worker_memory_bytes: 4GB", ("agglomerate.worker_memory_bytes", "integer")),
        (
            "method: hierarchical\n  worker_memory_bytes: 0",
            ("agglomerate.worker_memory_bytes", "greater than or equal to 1"),
        ),
    ],
    ids=["method", "budget-text", "budget-0"],
)
def test_bad_agglomeration_keys_in_a_config_file_are_refused(tmp_path, capfd, text, expected):
    config = tmp_path / "segment.yaml"
    config.write_text(f"agglomerate:\n  {text}\n")
    out = tmp_path / "out.zarr"
    assert run_cli(argv_for(out, (25, 50, 50), ["--config", str(config)])) == 2
    error = capfd.readouterr().err
    assert all(part in error for part in expected), error
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


def test_dry_run_projects_the_stop_level_of_a_worker_budget(tmp_path, capsys):
    """A budget below the projected worker baseline: level 0 is flagged, level 1 is the projected stop."""
    out = tmp_path / "out.zarr"
    extra = ["--agglomeration", "hierarchical", "--worker-memory-gb", "0.1", "--dry-run"]
    assert run_cli(argv_for(out, (10, 50, 25), extra)) == 0
    plan = capsys.readouterr().out
    assert "projected memory per block: level 0 ~" in plan, plan
    assert "worker budget 100.0 MB: level 1's largest block ~" in plan, plan
    assert "the driver would finish the residual of level 0 there" in plan, plan
    assert "level 0 itself exceeds it: use smaller blocks (--block-size)" in plan, plan
    assert not out.exists()


def test_driver_killed_between_levels_and_a_worker_killed_mid_level_resume_to_identical_bytes(tmp_path, monkeypatch):
    """Grid 2 x 2 x 2: the driver dies right after level 0 (a process exit, as by SIGKILL); the re-run's root-level
    worker dies mid-block once (daisy replaces it and retries the block); the outputs are the global reference's."""
    import subprocess
    import sys

    _, digests = reference_run()
    out = tmp_path / "out.zarr"
    argv = reliability_argv(out, extra=HIERARCHICAL)
    monkeypatch.setenv(FAULT_ENV, json.dumps({"step": "driver", "point": "after-hierarchy_0", "action": "exit"}))
    assert subprocess.run([sys.executable, "-m", "affcons.cli", *argv]).returncode == 73
    assert not run_dir_of(out).merge_tree.exists()
    fault = {"step": "hierarchy_1_root", "point": "partial-write", "action": "exit", "once": str(tmp_path / "died")}
    monkeypatch.setenv(FAULT_ENV, json.dumps(fault))
    assert run_cli(argv) == 0
    assert (tmp_path / "died").exists(), "the root-level worker was killed once"
    assert chunk_digests(out) == digests
    assert summary_of(out)["tasks"]["hierarchy_0"]["skipped"] == 8
