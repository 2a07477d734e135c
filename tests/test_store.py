"""RAG store tests, each run against SQLite and against a real MongoDB-wire server (``store_url``).

Tests are named after what they prove. Expected tables are built independently of the store (from per-block
generators) and compared exactly: ids, float64 bits, histograms, face-link counts, quantised sums.
"""

import dataclasses
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import numpy as np
import pymongo
import pymongo.monitoring
import pytest
from funlib.geometry import Roi

from affcons.errors import StoreError
from affcons.segment.tables import EdgeTable, NodeTable
from affcons.store import open_store
from tests.mongo_server import free_port, start_nx_27017, with_database

pytest_plugins = ["tests.mongo_server"]

BINS = 4
ID_BASE = 2**62 - 5_000_000  # ids near 2^62: exercise the uint64 -> int64 conversion far above 2^53


def block_tables(block: int, n: int = 60, bins: int = BINS) -> tuple[NodeTable, EdgeTable]:
    """Deterministic content of one block: ``n`` nodes in z slab [1000 block, 1000 block + 1000) nm, about 2n edges
    whose u lies in this block (v may lie in the next block), random float64 sums and full-range uint32 histograms."""
    rng = np.random.default_rng(block)
    ids = np.uint64(ID_BASE) + np.uint64(block * 10_000) + np.arange(n, dtype=np.uint64)
    position = rng.uniform(0, 1000, (n, 3)) + [1000.0 * block, 0, 0]
    size = rng.integers(1, 2**40, n, dtype=np.uint64)
    u = np.concatenate([ids[:-1], ids[:-2]])
    v = np.concatenate([ids[1:], ids[2:]])
    if n:
        u = np.append(u, ids[-1])
        v = np.append(v, ids[-1] + np.uint64(10_000))  # crosses into the next block
    edges = EdgeTable(
        u,
        v,
        rng.random(len(u)) * 1e3 + 1e-9,
        rng.integers(1, 2**50, len(u), dtype=np.uint64),
        rng.integers(0, 2**32, (len(u), bins), dtype=np.uint64).astype(np.uint32),
        rng.integers(0, 2**50, len(u), dtype=np.uint64),
        rng.integers(0, 2**58, len(u), dtype=np.uint64),
    )
    return NodeTable(ids, position, size), edges


def expected_tables(blocks) -> tuple[NodeTable, EdgeTable]:
    """Union of the blocks' tables, sorted as the store returns them."""
    nodes = NodeTable.concatenate([block_tables(b)[0] for b in blocks])
    edges = EdgeTable.concatenate([block_tables(b)[1] for b in blocks], BINS)
    order = np.argsort(nodes.ids)
    nodes = NodeTable(nodes.ids[order], nodes.position[order], nodes.size[order])
    return nodes, edges.combine()  # combine() only sorts here: each (u, v) occurs once


def assert_nodes_equal(actual: NodeTable, expected: NodeTable) -> None:
    assert actual.ids.dtype == np.uint64 and actual.size.dtype == np.uint64
    assert np.array_equal(actual.ids, expected.ids)
    assert np.array_equal(actual.position, expected.position)  # exact float64
    assert np.array_equal(actual.size, expected.size)


def assert_edges_equal(actual: EdgeTable, expected: EdgeTable) -> None:
    assert actual.u.dtype == actual.v.dtype == actual.count.dtype == np.uint64
    assert actual.histogram.dtype == np.uint32 and actual.histogram.shape == expected.histogram.shape
    assert actual.linked.dtype == np.uint64
    for name in (c.name for c in dataclasses.fields(expected)):
        assert np.array_equal(getattr(actual, name), getattr(expected, name)), name


def write_blocks(url: str, blocks, batch_size: int = 1000, pause_s: float = 0.0, barrier=None) -> None:
    """A daisy-like worker (run in a spawned process): open the store, write each block's nodes then edges,
    ``pause_s`` of "compute" before each block."""
    with open_store(url, "a", histogram_bins=BINS, batch_size=batch_size) as store:
        if barrier is not None:
            barrier.wait(timeout=60)
        for block in blocks:
            time.sleep(pause_s)
            nodes, edges = block_tables(block)
            store.write_nodes(block, nodes)
            store.write_edges(block, edges)


def silent_server_port():
    """A listening socket that never answers (its backlog completes TCP handshakes); returns (socket, port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener, listener.getsockname()[1]


# ------------------------------------------------------------------------------------------------- round trips


def test_nodes_and_edges_round_trip_exactly(store_url):
    nodes, edges = block_tables(3)
    edges = EdgeTable(
        edges.u,
        edges.v,
        np.r_[0.1 + 0.2, 1e-300, 2.0**-1074, 1e308, edges.affinity_sum[4:]],
        edges.count,
        edges.histogram,
        edges.linked,
        np.r_[np.uint64(2**63 - 1), edges.quantised_sum[1:]],
    )
    nodes = NodeTable(np.r_[nodes.ids[:-1], np.uint64(2**63 - 1)], nodes.position, nodes.size)
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        store.write_nodes(3, nodes)
        store.write_edges(3, edges)
    with open_store(store_url, "r", histogram_bins=BINS) as store:
        assert store.count_nodes() == len(nodes) and store.count_edges() == len(edges)
        assert_nodes_equal(store.read_nodes(), nodes)
        assert_edges_equal(store.read_edges(), edges.combine())


def test_results_come_back_sorted_whatever_the_write_order(store_url):
    expected_nodes, expected_edges = expected_tables([0, 1, 2])
    with open_store(store_url, "w", histogram_bins=BINS, batch_size=7) as store:
        for block in (2, 0, 1):
            nodes, edges = block_tables(block)
            reverse = np.arange(len(edges))[::-1]
            store.write_nodes(block, NodeTable(nodes.ids[::-1], nodes.position[::-1], nodes.size[::-1]))
            store.write_edges(
                block,
                EdgeTable(*(getattr(edges, c.name)[reverse] for c in dataclasses.fields(edges))),
            )
        assert_nodes_equal(store.read_nodes(), expected_nodes)  # read in batches of 7
        assert_edges_equal(store.read_edges(), expected_edges)


def test_empty_store_reads_empty_tables_with_the_store_bins(store_url):
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        assert len(store.read_nodes()) == 0 and store.read_edges().histogram.shape == (0, BINS)
        assert store.count_nodes() == store.count_edges() == 0


def test_edges_without_histograms_round_trip(store_url):
    _, edges = block_tables(5, bins=0)
    with open_store(store_url, "w", histogram_bins=0) as store:
        store.write_edges(5, edges)
        assert_edges_equal(store.read_edges(), edges.combine())


# ---------------------------------------------------------------------------------------------------- ROI queries


def test_read_nodes_returns_nodes_inside_the_half_open_roi(store_url):
    ids = np.arange(1, 6, dtype=np.uint64)
    position = [[10, 10, 10], [19.999, 10, 10], [20, 10, 10], [15, 0, 29.5], [15, 10, 30]]
    nodes = NodeTable(ids, position, np.ones(5, np.uint64))
    with open_store(store_url, "w") as store:
        store.write_nodes(0, nodes)
        assert store.read_nodes(Roi((10, 0, 0), (10, 20, 30))).ids.tolist() == [1, 2, 4]
        assert store.read_nodes(Roi((0, 0, 30), (None, None, 10))).ids.tolist() == [5]  # unbounded in z and y
        assert store.read_nodes(Roi((0, 0, 0), (1, 1, 1))).ids.tolist() == []


def test_read_edges_returns_edges_whose_u_lies_in_the_roi(store_url):
    expected_nodes, expected_edges = expected_tables([0, 1, 2])
    with open_store(store_url, "w", histogram_bins=BINS, batch_size=25) as store:
        for block in (0, 1, 2):
            store.write_nodes(block, block_tables(block)[0])
            store.write_edges(block, block_tables(block)[1])
        roi = Roi((1000, 0, 0), (1000, 1000, 1000))  # block 1's z slab
        _, block1_edges = block_tables(1)
        assert_edges_equal(store.read_edges(roi), block1_edges.combine())
        roi = Roi((500, 0, 500), (2000, 1000, 500))
        position = expected_nodes.position
        inside = expected_nodes.ids[np.all((position >= roi.begin) & (position < roi.end), axis=1)]
        selected = np.isin(expected_edges.u, inside)
        assert 0 < selected.sum() < len(expected_edges)
        assert np.array_equal(store.read_edges(roi).u, expected_edges.u[selected])
        assert np.array_equal(store.read_edges(roi).v, expected_edges.v[selected])
        assert np.array_equal(store.read_nodes(roi).ids, np.sort(inside))


# -------------------------------------------------------------------------------------------------- block reads

GRID = (3, 3)  # blocks (y, x), index y * 3 + x


def grid_tables(block: int) -> tuple[NodeTable, EdgeTable]:
    """A block of a 3 x 3 grid: 20 nodes (ids encode the block), edges among them, and edges to nodes of its lower
    face neighbours (as the edges step writes them: by the block of the upper endpoint)."""
    rng = np.random.default_rng(100 + block)
    ids = np.uint64(ID_BASE) + np.uint64(block * 1000) + np.arange(20, dtype=np.uint64)
    pairs = [tuple(rng.choice(ids, 2, replace=False)) for _ in range(40)]
    y, x = divmod(block, GRID[1])
    for neighbour in ([block - 1] if x else []) + ([block - GRID[1]] if y else []):
        theirs = np.uint64(ID_BASE) + np.uint64(neighbour * 1000) + np.arange(20, dtype=np.uint64)
        pairs += [(rng.choice(ids), rng.choice(theirs)) for _ in range(8)]
    u = np.array([min(p) for p in pairs], np.uint64)
    v = np.array([max(p) for p in pairs], np.uint64)
    u, v = np.unique(np.stack([u, v]), axis=1)
    n = len(u)
    edges = EdgeTable(
        u, v, rng.random(n), rng.integers(1, 99, n), rng.integers(0, 9, (n, BINS)), None, rng.integers(0, 99, n)
    )
    nodes = NodeTable(ids, rng.uniform(0, 100, (20, 3)), np.ones(20, np.uint64))
    return nodes, edges


def owner(ids: np.ndarray) -> np.ndarray:
    """The block of a grid_tables node id (independent of the store)."""
    return ((ids - np.uint64(ID_BASE)) // np.uint64(1000)).astype(np.int64)


def write_grid(store, edges_first: bool = False) -> EdgeTable:
    """Write all blocks of the grid; return the union of their edges."""
    for block in range(GRID[0] * GRID[1]):
        nodes, edges = grid_tables(block)
        if edges_first:  # the store cannot tell internal edges yet: all are flagged crossing
            store.write_edges(block, edges)
            store.write_nodes(block, nodes)
        else:
            store.write_nodes(block, nodes)
            store.write_edges(block, edges)
    return EdgeTable.concatenate([grid_tables(b)[1] for b in range(GRID[0] * GRID[1])], BINS).combine()


def select(edges: EdgeTable, mask: np.ndarray) -> EdgeTable:
    return EdgeTable(*(getattr(edges, f.name)[mask] for f in dataclasses.fields(edges)))


@pytest.mark.parametrize("edges_first", [False, True])
def test_block_reads_return_exactly_the_nodes_and_edges_of_the_blocks(store_url, edges_first):
    with open_store(store_url, "w", histogram_bins=BINS, batch_size=7) as store:
        everything = write_grid(store, edges_first)
        block_u, block_v = owner(everything.u), owner(everything.v)
        for blocks in ([4], [0, 1], [1, 2, 4, 5], list(range(9)), [7, 8, 100]):
            nodes = store.read_block_nodes(blocks)
            assert np.array_equal(nodes.ids, np.sort(np.concatenate([grid_tables(b)[0].ids for b in blocks if b < 9])))
            inside = np.isin(block_u, blocks) & np.isin(block_v, blocks)
            assert_edges_equal(store.read_block_edges(blocks), select(everything, inside))
        for pairs in ([(0, 1)], [(4, 1), (3, 4)], [(1, 0), (0, 1), (4, 5), (2, 5)], [(0, 4)], [(7, 8), (8, 100)]):
            wanted = {tuple(sorted(p)) for p in pairs}
            across = np.array([(min(a, b), max(a, b)) in wanted for a, b in zip(block_u, block_v)], bool)
            assert_edges_equal(store.read_face_edges(pairs), select(everything, across))
        assert len(store.read_face_edges([(0, 1)])) > 0 and len(store.read_face_edges([(0, 4)])) == 0
        assert len(store.read_block_edges([])) == 0 and len(store.read_block_nodes([])) == 0
        with pytest.raises(StoreError, match="block ids must"):
            store.read_block_edges([-1])
        with pytest.raises(StoreError, match="pairs must"):
            store.read_face_edges([(0, "x")])


def test_block_reads_use_the_block_indexes(store_url, tmp_path):
    """SQLite: no statement of a block read scans a table; MongoDB: the (block, crossing) and block indexes exist."""
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        write_grid(store)
        if store_url.startswith("sqlite"):
            statements = []
            store._connection.set_trace_callback(statements.append)
            store.read_block_nodes([4])
            store.read_block_edges([4, 5])
            store.read_face_edges([(4, 5)])
            store._connection.set_trace_callback(None)
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            assert len(selects) >= 4
            for statement in selects:
                plan = " | ".join(row[-1] for row in store._connection.execute("EXPLAIN QUERY PLAN " + statement))
                assert "USING" in plan and not any(part.startswith("SCAN") for part in plan.split(" | ")), plan
        else:
            client = pymongo.MongoClient(store_url, serverSelectionTimeoutMS=3000)
            database = client.get_default_database()
            edge_indexes = [list(i["key"].keys()) for i in database.edges.list_indexes()]
            node_indexes = [list(i["key"].keys()) for i in database.nodes.list_indexes()]
            client.close()
            assert ["block", "crossing"] in edge_indexes and ["block"] in node_indexes


def test_internal_and_crossing_parts_replace_only_their_own_rows(store_url):
    """The fragments step writes a block's internal edges, the edges step its crossing ones: each write (and retry)
    replaces only its part, a row of the other part is refused, and together they are the block's whole table."""
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        for block in range(GRID[0] * GRID[1]):
            nodes, edges = grid_tables(block)
            internal = np.isin(owner(edges.u), [block]) & np.isin(owner(edges.v), [block])
            store.write_nodes(block, nodes)
            store.write_edges(block, select(edges, ~internal), part="crossing")  # order does not matter
            store.write_edges(block, select(edges, internal), part="internal")
            store.write_edges(block, select(edges, ~internal), part="crossing")  # a retry replaces its own rows
            if block == 4:
                with pytest.raises(StoreError, match=r"block 4: edge \(\d+, \d+\) is internal, not crossing"):
                    store.write_edges(block, edges, part="crossing")
                with pytest.raises(StoreError, match=r"block 4: edge \(\d+, \d+\) is crossing, not internal"):
                    store.write_edges(block, edges, part="internal")
                with pytest.raises(StoreError, match="part must be one of all, internal, crossing"):
                    store.write_edges(block, edges, part="faces")
        everything = EdgeTable.concatenate([grid_tables(b)[1] for b in range(GRID[0] * GRID[1])], BINS).combine()
        assert_edges_equal(store.read_edges(), everything)
        assert_edges_equal(
            store.read_block_edges([4]), select(everything, (owner(everything.u) == 4) & (owner(everything.v) == 4))
        )


# ----------------------------------------------------------------------------------------- idempotent block writes


def test_retried_block_with_same_content_writes_nothing_twice(store_url):
    expected_nodes, expected_edges = expected_tables([2, 3])
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        for block in (2, 3, 3, 3):
            nodes, edges = block_tables(block)
            store.write_nodes(block, nodes)
            store.write_edges(block, edges)
        assert store.count_nodes() == len(expected_nodes) and store.count_edges() == len(expected_edges)
        assert_nodes_equal(store.read_nodes(), expected_nodes)
        assert_edges_equal(store.read_edges(), expected_edges)


def test_partial_block_then_full_retry_leaves_exactly_the_full_set(store_url):
    nodes, edges = block_tables(3)
    half = slice(0, len(edges) // 2)
    with open_store(store_url, "w", histogram_bins=BINS, batch_size=10) as store:
        store.write_nodes(3, NodeTable(nodes.ids[:7], nodes.position[:7], nodes.size[:7]))
        store.write_edges(
            3,
            EdgeTable(edges.u[half], edges.v[half], edges.affinity_sum[half], edges.count[half], edges.histogram[half]),
        )
        store.write_nodes(3, nodes)
        store.write_edges(3, edges)
        assert store.count_nodes() == len(nodes) and store.count_edges() == len(edges)
        assert_edges_equal(store.read_edges(), edges.combine())


def test_retry_with_fewer_rows_removes_the_rows_of_the_earlier_attempt(store_url):
    nodes, edges = block_tables(4)
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        store.write_nodes(4, nodes)
        store.write_edges(4, edges)
        store.write_nodes(4, NodeTable.empty())
        store.write_edges(4, EdgeTable.empty(BINS))
        assert store.count_nodes() == store.count_edges() == 0


def test_writer_process_killed_mid_run_then_rerun_leaves_exact_rows(store_url):
    """A worker dies (SIGKILL) while writing; daisy reruns its blocks; the store must hold each row once."""
    blocks = list(range(12))
    open_store(store_url, "w", histogram_bins=BINS).close()
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=write_blocks, args=(store_url, blocks), kwargs={"batch_size": 10, "pause_s": 0.05})
    writer.start()
    expected_nodes, expected_edges = expected_tables(blocks)
    with open_store(store_url, "a", histogram_bins=BINS) as store:
        deadline = time.monotonic() + 60
        while store.count_edges() == 0 and writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL
        assert 0 < store.count_edges() < len(expected_edges)  # the kill did land mid-run
        for block in blocks:  # the rerun
            nodes, edges = block_tables(block)
            store.write_nodes(block, nodes)
            store.write_edges(block, edges)
        assert store.count_nodes() == len(expected_nodes) and store.count_edges() == len(expected_edges)
        assert_nodes_equal(store.read_nodes(), expected_nodes)
        assert_edges_equal(store.read_edges(), expected_edges)


def test_two_writer_processes_write_different_blocks_concurrently(store_url):
    open_store(store_url, "w", histogram_bins=BINS).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=write_blocks, args=(store_url, blocks), kwargs={"batch_size": 50, "barrier": barrier})
        for blocks in (range(0, 20, 2), range(1, 20, 2))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    expected_nodes, expected_edges = expected_tables(range(20))
    with open_store(store_url, "r", histogram_bins=BINS) as store:
        assert store.count_nodes() == len(expected_nodes) and store.count_edges() == len(expected_edges)
        assert_nodes_equal(store.read_nodes(), expected_nodes)
        assert_edges_equal(store.read_edges(), expected_edges)


def test_edge_or_node_of_another_block_is_refused_naming_the_owner(store_url):
    nodes, edges = block_tables(1)
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        store.write_nodes(1, nodes)
        store.write_edges(1, edges)
        owned = rf"block 2: edge \({edges.u[5]}, {edges.v[5]}\) is already stored by block 1"
        with pytest.raises(StoreError, match=owned):
            store.write_edges(2, EdgeTable(edges.u[5:6], edges.v[5:6], [1.0], [1], np.zeros((1, BINS))))
        with pytest.raises(StoreError, match=rf"block 2: node {nodes.ids[0]} is already stored by block 1"):
            store.write_nodes(2, NodeTable(nodes.ids[:1], nodes.position[:1], nodes.size[:1]))


# -------------------------------------------------------------------------------------------------------- modes


def test_mode_w_drops_existing_content(store_url):
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        store.write_nodes(0, block_tables(0)[0])
        store.write_edges(0, block_tables(0)[1])
        store.set_meta("config", {"a": 1})
    with open_store(store_url, "w", histogram_bins=0) as store:  # may change the bins
        assert store.count_nodes() == store.count_edges() == 0
        assert store.get_meta("config") is None


def test_mode_a_keeps_content_and_refuses_other_histogram_bins(store_url):
    with open_store(store_url, "a", histogram_bins=BINS) as store:
        store.write_edges(0, block_tables(0)[1])
    with open_store(store_url, "a", histogram_bins=BINS) as store:
        assert store.count_edges() == len(block_tables(0)[1])
    with pytest.raises(StoreError, match="keeps 4 histogram bins per edge, opened with histogram_bins=8"):
        open_store(store_url, "a", histogram_bins=8)
    with open_store(store_url, "a", histogram_bins=BINS) as store:
        with pytest.raises(StoreError, match="edges have 0 histogram bins, the store keeps 4"):
            store.write_edges(1, block_tables(1, bins=0)[1])


def test_a_store_of_the_previous_schema_is_refused_naming_both_versions(store_url):
    """A store of an older layout is an error on open, not a wrong read: MongoDB schema 2 lacks the quantised sums and
    crossing flags; SQLite schema 3 kept one row per edge (schema 4: one row per block and part)."""
    open_store(store_url, "w").close()
    if store_url.startswith("sqlite"):
        old, current = 3, 4
        connection = sqlite3.connect(store_url[len("sqlite:///") :])
        connection.execute("UPDATE store_info SET value = 3 WHERE key = 'schema_version'")
        connection.commit()
        connection.close()
    else:
        old, current = 2, 3
        client = pymongo.MongoClient(store_url, serverSelectionTimeoutMS=3000)
        client.get_default_database().store_info.update_one({"_id": "schema"}, {"$set": {"version": 2}})
        client.close()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=f"store schema version {old}, this affcons reads {current}"):
            open_store(store_url, mode)


def test_mode_r_on_a_missing_store_errors_naming_the_url(store_url):
    with pytest.raises(StoreError, match="mode 'r'") as error:
        open_store(store_url, "r")
    assert store_url in str(error.value)


def test_mode_r_refuses_writes(store_url):
    open_store(store_url, "w").close()
    with open_store(store_url, "r") as store:
        for call in (
            lambda: store.write_nodes(0, NodeTable.empty()),
            lambda: store.write_edges(0, EdgeTable.empty()),
            lambda: store.set_meta("k", {}),
        ):
            with pytest.raises(StoreError, match="read-only"):
                call()


def test_closed_store_refuses_operations(store_url):
    with open_store(store_url, "w") as store:
        pass
    store.close()  # twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.count_edges()


# ------------------------------------------------------------------------------------------------ input checks


def test_ids_of_2_63_and_above_are_refused_naming_the_url(store_url):
    with open_store(store_url, "w") as store:
        with pytest.raises(StoreError, match=r"node id 9223372036854775808 is >= 2\^63") as error:
            store.write_nodes(0, NodeTable(np.array([2**63], np.uint64), np.zeros((1, 3)), [1]))
        assert store_url in str(error.value)
        with pytest.raises(StoreError, match=r"edge v 18446744073709551615 is >= 2\^63"):
            store.write_edges(0, EdgeTable([1], [2**64 - 1], [0.5], [1], np.zeros((1, 0))))
        assert store.count_nodes() == store.count_edges() == 0


def test_malformed_tables_are_refused_before_writing(store_url):
    with open_store(store_url, "w") as store:
        with pytest.raises(StoreError, match=r"edge \(5, 5\) does not have u < v"):
            store.write_edges(0, EdgeTable([1, 5], [2, 5], [0.5, 0.5], [1, 1], np.zeros((2, 0))))
        with pytest.raises(StoreError, match=r"edge \(1, 2\) appears twice"):
            store.write_edges(0, EdgeTable([1, 3, 1], [2, 4, 2], [0.5] * 3, [1] * 3, np.zeros((3, 0))))
        with pytest.raises(StoreError, match="finite"):
            store.write_edges(0, EdgeTable([1], [2], [np.nan], [1], np.zeros((1, 0))))
        with pytest.raises(StoreError, match="duplicate node ids"):
            store.write_nodes(0, NodeTable([7, 7], np.zeros((2, 3)), [1, 1]))
        with pytest.raises(StoreError, match="block_id must be an integer"):
            store.write_nodes("3", NodeTable.empty())
        with pytest.raises(StoreError, match="roi must be 3-D"):
            store.read_nodes(Roi((0, 0), (1, 1)))
        assert store.count_nodes() == store.count_edges() == 0


# ------------------------------------------------------------------------------------------------------------ meta


def test_meta_round_trips_and_is_replaced(store_url):
    fingerprint = {"config": {"thresholds": [0.1, 0.5], "voxel_size": [40, 4, 4]}, "sha": "ab12", "n": 2**62}
    with open_store(store_url, "w") as store:
        assert store.get_meta("run") is None
        store.set_meta("run", fingerprint)
        assert store.get_meta("run") == fingerprint
        store.set_meta("run", {"sha": "cd34"})
    with open_store(store_url, "r") as store:
        assert store.get_meta("run") == {"sha": "cd34"}
    with open_store(store_url, "a") as store:
        with pytest.raises(StoreError, match="not JSON-serialisable"):
            store.set_meta("bad", {"array": np.zeros(2)})


# ------------------------------------------------------------------------------------------- URLs and failures


def test_unknown_scheme_errors_naming_url_and_supported_schemes():
    with pytest.raises(
        StoreError,
        match=r"postgresql://db/rag: unknown store URL scheme 'postgresql'; supported: "
        r"sqlite://, mongodb://",
    ):
        open_store("postgresql://db/rag")
    with pytest.raises(StoreError, match="unknown store URL scheme None"):
        open_store("runs/rag.db")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_sqlite_on_a_full_disk_errors_naming_no_space_left(tmp_path):
    """SQLite reports a full disk as 'database or disk is full' (or an I/O error); the store says what it is."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine refuses to mount a tmpfs")
    try:
        with open_store(f"sqlite:///{disk}/rag.db", "w", histogram_bins=BINS) as store:
            with pytest.raises(
                StoreError, match="writing (nodes|edges) of block .* failed: No space left on device"
            ) as info:
                for block in range(1000):
                    nodes, edges = block_tables(block, n=400)
                    store.write_nodes(block, nodes)
                    store.write_edges(block, edges)
            assert "free space on the disk of" in str(info.value) and str(disk) in str(info.value)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_unwritable_sqlite_path_errors_naming_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker}/rag.db"
    with pytest.raises(StoreError, match=f"cannot open SQLite store at {blocker}/rag.db") as error:
        open_store(url)
    assert url in str(error.value)


def test_sqlite_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "other.db"
    path.write_bytes(b"definitely not SQLite" * 100)
    with pytest.raises(StoreError, match=f"sqlite:///{path}"):
        open_store(f"sqlite:///{path}", "r")


def test_down_mongodb_errors_naming_the_url_within_5_seconds():
    url = f"mongodb://127.0.0.1:{free_port()}/affcons_test?directConnection=true"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError, match="connecting failed") as error:
        open_store(url)
    assert time.monotonic() - start < 5
    assert url in str(error.value)


def test_mongodb_that_never_answers_errors_within_5_seconds():
    listener, port = silent_server_port()
    url = f"mongodb://127.0.0.1:{port}/affcons_test?directConnection=true"
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="connecting failed") as error:
            open_store(url)
        assert time.monotonic() - start < 5
        assert url in str(error.value)
    finally:
        listener.close()


def test_mongodb_password_is_not_shown_in_errors():
    url = f"mongodb://affcons:s3cret@127.0.0.1:{free_port()}/affcons_test?directConnection=true"
    with pytest.raises(StoreError) as error:
        open_store(url, timeout_ms=300)
    assert "s3cret" not in str(error.value) and "affcons:***@127.0.0.1" in str(error.value)


def test_mongodb_url_without_database_is_refused(mongodb_url):
    with pytest.raises(StoreError, match="the URL must name a database"):
        open_store(with_database(mongodb_url, ""))


def test_mongodb_going_down_mid_run_errors_naming_the_url_within_5_seconds(tmp_path):
    server = start_nx_27017(tmp_path / "nx")
    try:
        store = open_store(server.url, "w", histogram_bins=BINS)
        store.write_edges(0, block_tables(0)[1])
        server.stop()
        start = time.monotonic()
        with pytest.raises(StoreError, match="writing edges of block 1 failed") as error:
            store.write_edges(1, block_tables(1)[1])
        assert time.monotonic() - start < 5
        assert server.url in str(error.value)
        store.close()
    finally:
        server.stop()


class _InsertCounter(pymongo.monitoring.CommandListener):
    """Records the number of documents of each ``insert`` command into ``collection`` while ``active``."""

    def __init__(self, collection: str):
        self.collection, self.active, self.batches = collection, True, []

    def started(self, event):
        if self.active and event.command_name == "insert" and event.command.get("insert") == self.collection:
            self.batches.append(len(event.command["documents"]))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def test_mongodb_large_edge_write_is_split_into_bulk_calls_of_at_most_batch_size(mongodb_url):
    url = with_database(mongodb_url, f"affcons_batches_{os.getpid()}")
    n = 2500
    edges = EdgeTable(np.arange(n), np.arange(n) + 1, np.full(n, 0.25), np.ones(n), np.zeros((n, 0)))
    counter = _InsertCounter("edges")
    pymongo.monitoring.register(counter)  # global: applies to clients created from now on
    try:
        with open_store(url, "w", batch_size=1000) as store:
            store.write_edges(0, edges)
            assert store.count_edges() == n
        assert counter.batches == [1000, 1000, 500]
    finally:
        counter.active = False
        client = pymongo.MongoClient(mongodb_url)
        client.drop_database(f"affcons_batches_{os.getpid()}")
        client.close()


def test_a_pair_written_by_two_blocks_that_own_neither_endpoint_is_never_read_as_two_edges(store_url):
    """Outside the store's contract (an edge is written from the block of one of its endpoints) SQLite cannot see the
    other block on write; then reading the table refuses the pair, naming it. MongoDB refuses the second write."""
    edge = EdgeTable(np.array([7], np.uint64), np.array([9], np.uint64), [1.0], [1], np.zeros((1, BINS)))
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        store.write_edges(5, edge)
        if store_url.startswith("sqlite"):
            store.write_edges(6, edge)
            with pytest.raises(StoreError, match=r"edge \(7, 9\) is stored twice"):
                store.read_edges()
        else:
            with pytest.raises(StoreError, match=r"edge \(7, 9\) is already stored by block 5"):
                store.write_edges(6, edge)


def test_read_node_ids_are_every_stored_id_sorted(store_url):
    with open_store(store_url, "w", histogram_bins=BINS) as store:
        for block in (3, 1, 2):
            store.write_nodes(block, block_tables(block)[0])
        ids = store.read_node_ids()
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, expected_tables([1, 2, 3])[0].ids)
