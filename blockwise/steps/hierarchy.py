"""Step ``hierarchy``: the exact hierarchical (frozen-boundary) agglomeration, one daisy task per octree level.

A block of level ``k`` is a box of ``2^k`` fragment blocks per axis (clipped to the fragment-block grid), so level 0
is one fragment block and each level's blocks hold up to 2 x 2 x 2 blocks of the level below. The *top* level is
the first whose box covers the grid (the root), or the stop level if that comes first; it is one block, run by one
process, that finishes the whole residual. Per block (:mod:`affcons.segment.hierarchy`):

- level 0: ``block_state_from_store``: the block's nodes and edges and the edges leaving it, from the graph store;
- level k >= 1: ``parent_state_from_store``: the children's state files plus only the stored edges across the
  children's shared faces and the box's faces.

Each block writes its state to ``RUN_DIR/hierarchy/<k>/<grid index>.npz`` (the top level's to ``root.npz``),
atomically; a state is a pure function of the store and the children's files, so a retried or resumed block
rewrites the same bytes. Levels run one ``run_blockwise`` each (daisy 2.0.0 mis-schedules chained tasks), with the
done markers, coverage check, retries and failure report of every step. After the top level the driver assembles
the merge tree from every state (:meth:`HierarchicalAgglomeration.assemble`): byte for byte the global canonical
tree, so the lookup tables and ``extract`` are unchanged.

Fault injection (tests): a level's blocks match the step name ``hierarchy_<k>`` (the task id) at the point
``partial-write`` (state computed, not yet saved); the worker's ``start`` point matches ``hierarchy`` (every level).
"""

import math
import resource
import time

import numpy as np
from funlib.geometry import Coordinate, Roi

from affcons.errors import ConfigError
from affcons.files import atomic_write, write_json
from blockwise.faults import inject_fault
from blockwise.steps.base import BlockwiseStep
from blockwise.timers import Timers, read_records

#: Counters of a block's timer record summed per level in ``summary.json``.
STATE_COUNTERS = ("merges", "frozen_clusters", "members", "deferred_edges", "bytes")


def top_level(grid_shape, stop_level: int | None) -> int:
    """The level one process finishes: the first whose box (``2^k`` fragment blocks per axis) covers the grid,
    or ``stop_level`` if lower."""
    root = max(math.ceil(math.log2(n)) if n > 1 else 0 for n in grid_shape)
    return root if stop_level is None else min(root, stop_level)


def level_grid(grid_shape, level: int) -> tuple[int, int, int]:
    """Blocks per axis of a (non-top) level: the fragment grid in boxes of ``2^level`` blocks, rounded up."""
    return tuple(-(-n // 2**level) for n in grid_shape)


class HierarchyStep(BlockwiseStep):
    """One level of the hierarchical agglomeration (see the module docstring)."""

    name = "hierarchy"

    def __init__(self, config, level: int):
        super().__init__(config)
        self.fragment_grid = self.grid_shape
        self.top = top_level(self.fragment_grid, config.agglomerate.stop_level)
        if not 0 <= level <= self.top:
            raise ConfigError(f"hierarchy level {level} outside 0..{self.top} for the block grid {self.fragment_grid}")
        self.level = level
        self.is_top = level == self.top
        self.cell = 2**level
        if self.is_top:
            self.block_shape = Coordinate(self.roi.shape)
            self.grid_shape = (1, 1, 1)
        else:
            self.block_shape = self.block_shape * self.cell
            self.grid_shape = level_grid(self.fragment_grid, level)
        self.scoring = config.agglomerate.scoring
        self.store = None

    @property
    def task_id(self) -> str:
        """``hierarchy_<k>``; the top level ``hierarchy_<k>_root`` (its one block covers the grid, so its done marker
        is not that of a level-k block of a run with a higher top)."""
        return f"hierarchy_{self.level}" + ("_root" if self.is_top else "")

    def worker_arguments(self) -> list[str]:
        return ["--level", str(self.level)]

    def rois(self) -> tuple[Roi, Roi, Roi]:
        block = Roi((0, 0, 0), self.block_shape)
        return self.roi, block, block

    def box(self, block_index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(begin, end)`` of a block in fragment-grid coordinates, clipped to the grid."""
        if self.is_top:
            return (0, 0, 0), tuple(self.fragment_grid)
        position = np.unravel_index(block_index, self.grid_shape)
        begin = tuple(int(p) * self.cell for p in position)
        return begin, tuple(min(b + self.cell, n) for b, n in zip(begin, self.fragment_grid))

    def state_path(self, block_index: int):
        return self.run_dir.hierarchy_state(self.level, None if self.is_top else block_index)

    def state_paths(self) -> list:
        return [self.state_path(index) for index in range(self.num_blocks)]

    def child_paths(self, begin, end) -> list:
        """State files of the level-(k-1) blocks inside the box ``[begin, end)``."""
        child = self.cell // 2
        child_grid = level_grid(self.fragment_grid, self.level - 1)
        ranges = [range(b // child, -(-e // child)) for b, e in zip(begin, end)]
        positions = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
        indices = np.ravel_multi_index(tuple(positions.T), child_grid)
        return [self.run_dir.hierarchy_state(self.level - 1, int(i)) for i in indices]

    def setup(self) -> None:
        from affcons.store import open_store

        self.store = open_store(self.config.graph_url(), "r", self.config.histogram_bins)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.segment.hierarchy import BlockState, block_state_from_store, parent_state_from_store

        begin, end = self.box(block_index)
        if self.level == 0:
            with timers.time("compute"):
                state = block_state_from_store(self.store, self.fragment_grid, begin, end, self.scoring)
        else:
            with timers.time("read"):
                children = [BlockState.load(path) for path in self.child_paths(begin, end)]
            with timers.time("compute"):
                state = parent_state_from_store(
                    self.store, self.fragment_grid, begin, end, self.cell // 2, children, self.scoring, self.level
                )
        with timers.time("write"):
            inject_fault(self.task_id, block_index, "partial-write")
            path = self.state_path(block_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, state.save)
        for key, value in state.sizes().items():
            timers.count(key, value)
        timers.count("peak_rss_bytes", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class HierarchicalAgglomeration:
    """The levels of a resolved ``SegmentConfig`` and the assembly of their states into the merge tree (in the
    driver)."""

    def __init__(self, config):
        self.config = config
        probe = HierarchyStep(config, 0)
        self.steps = [probe] + [HierarchyStep(config, level) for level in range(1, probe.top + 1)]

    @staticmethod
    def level_record(step: HierarchyStep, started: float) -> dict:
        """A level's entry in ``summary.json``: blocks, box (fragment blocks per axis), the states' sizes summed
        (``frozen_clusters``, ``deferred_edges``, ``bytes`` ...), the largest state, wall seconds since ``started``,
        and the peak RSS of the level's workers (the largest of their processes' high-water marks)."""
        records = read_records(step.timers_dir()).values()
        record = {
            "level": step.level,
            "task": step.task_id,
            "blocks": step.num_blocks,
            "box_blocks": step.cell if not step.is_top else max(step.fragment_grid),
            "wall_s": round(time.time() - started, 3),
            "processed_this_run": sum(r["start"] >= started for r in records),
        }
        for key in STATE_COUNTERS:
            record[key] = int(sum(r.get(key, 0) for r in records))
        record["max_block_bytes"] = int(max((r.get("bytes", 0) for r in records), default=0))
        record["peak_rss_bytes"] = int(max((r.get("peak_rss_bytes", 0) for r in records), default=0))
        return record

    def assemble(self, fingerprint: str, levels: list[dict]) -> dict:
        """Read every state of every level and the node ids, build the merge tree, save it and
        ``agglomerate.json``; return counts, timings and the driver's peak RSS."""
        from affcons.segment.hierarchy import BlockState, merge_tree_from_states
        from affcons.store import open_store
        from blockwise.layout import RunDir
        from blockwise.timers import RssSampler

        run_dir = RunDir(self.config.run_dir)
        timings = {}
        with RssSampler() as memory:
            start = time.perf_counter()
            states = [BlockState.load(path) for step in self.steps for path in step.state_paths()]
            with open_store(self.config.graph_url(), "r", self.config.histogram_bins) as store:
                node_ids = store.read_nodes().ids
                num_edges = store.count_edges()
            timings["read_s"] = time.perf_counter() - start
            start = time.perf_counter()
            tree = merge_tree_from_states(states, node_ids, self.config.agglomerate.scoring)
            timings["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        atomic_write(run_dir.merge_tree, tree.save)
        timings["save_s"] = time.perf_counter() - start
        info = {
            "fingerprint": fingerprint,
            "method": "hierarchical",
            "nodes": len(node_ids),
            "edges": num_edges,
            "merges": len(tree),
            "stitches": tree.num_stitches,
            "states": len(states),
            "levels": levels,
            "assembly_peak_rss_bytes": memory.peak,
            **timings,
        }
        write_json(run_dir.agglomerate_info, info)
        return info
