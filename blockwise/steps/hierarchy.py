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

A per-worker memory budget (``agglomerate.worker_memory_bytes``) picks the top level at run time: before a level
k >= 1 runs, :meth:`HierarchicalAgglomeration.estimate` bounds each of its blocks' memory from the level below's
timer records (:func:`residual_bytes`); the first level whose largest block would exceed the budget becomes the top,
finished by the driver in its own process (exact all the same).

Fault injection (tests): a level's blocks match the step name ``hierarchy_<k>`` (the task id) at the point
``partial-write`` (state computed, not yet saved); the worker's ``start`` point matches ``hierarchy`` (every level).
"""

import math
import time

import numpy as np
from funlib.geometry import Coordinate, Roi

from affcons.errors import AgglomerationError, ConfigError
from affcons.files import atomic_write, write_json
from blockwise.faults import inject_fault
from blockwise.steps.base import BlockwiseStep
from blockwise.timers import Timers, peak_rss_bytes, read_records, reset_peak_rss

#: Counters of a block's timer record summed per level in ``summary.json`` (the state's sizes, and the edges the
#: block read across its box's faces and, above level 0, across its children's shared faces).
STATE_COUNTERS = (
    "merges",
    "frozen_clusters",
    "members",
    "deferred_edges",
    "bytes",
    "block_edges",
    "leaving_edges",
    "crossing_edges",
)


def residual_bytes(children: list[dict], histogram_bins: int, quantile: bool) -> int:
    """Upper bound of the bytes a parent block holds beyond its process's baseline, from its children's timer
    records (``bytes``, ``deferred_edges``, ``leaving_edges``): the children's states as loaded, the crossing edges
    as read (an ``EdgeTable`` row each) and the loop over deferred plus crossing edges
    (:func:`affcons.segment.hierarchy.level_bytes_per_edge`). The crossing edges are bounded by half the edges
    leaving the children (each crossing edge leaves two children; an edge leaving the parent leaves one)."""
    from affcons.segment import EdgeTable
    from affcons.segment.hierarchy import level_bytes_per_edge

    states = sum(int(c.get("bytes", 0)) for c in children)
    deferred = sum(int(c.get("deferred_edges", 0)) for c in children)
    crossing = sum(int(c.get("leaving_edges", 0)) for c in children) // 2
    bins = histogram_bins if quantile else 0
    return (
        states
        + crossing * EdgeTable.bytes_per_edge(histogram_bins)
        + (deferred + crossing) * level_bytes_per_edge(bins, quantile)
    )


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

    def __init__(self, config, level: int, top: int | None = None):
        super().__init__(config)
        self.fragment_grid = self.grid_shape
        self.top = top_level(self.fragment_grid, config.agglomerate.stop_level) if top is None else top
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
        self.baseline_rss = 0

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
        """Open the store, load the compiled loop (a two-fragment block), and take the process's resident memory
        then as its baseline: what the interpreter, the imports and the compiled code hold before any block."""
        import psutil

        from affcons.segment import EdgeTable
        from affcons.segment.hierarchy import block_state
        from affcons.store import open_store

        self.store = open_store(self.config.graph_url(), "r", self.config.histogram_bins)
        bins = self.config.histogram_bins
        one = np.ones(1, np.uint64)
        edge = EdgeTable(one, one + 1, np.ones(1), one, np.ones((1, bins), np.uint32), quantised_sum=one)
        block_state(np.array([1, 2], np.uint64), edge, np.array([2], np.uint64), self.scoring)
        reset_peak_rss()  # a warm worker's peak so far belongs to the steps it served before
        self.baseline_rss = psutil.Process().memory_info().rss

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.segment.hierarchy import BlockState, block_state_from_store, parent_state_from_store

        begin, end = self.box(block_index)
        counts = {}
        if self.level == 0:
            with timers.time("compute"):
                state = block_state_from_store(self.store, self.fragment_grid, begin, end, self.scoring, counts)
        else:
            with timers.time("read"):
                children = [BlockState.load(path) for path in self.child_paths(begin, end)]
            with timers.time("compute"):
                state = parent_state_from_store(
                    self.store,
                    self.fragment_grid,
                    begin,
                    end,
                    self.cell // 2,
                    children,
                    self.scoring,
                    self.level,
                    counts,
                )
        with timers.time("write"):
            inject_fault(self.task_id, block_index, "partial-write")
            path = self.state_path(block_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, state.save)
        for key, value in {**state.sizes(), **counts}.items():
            timers.count(key, value)
        timers.count("peak_rss_bytes", peak_rss_bytes())
        timers.count("baseline_rss_bytes", self.baseline_rss)


class HierarchicalAgglomeration:
    """The levels of a resolved ``SegmentConfig``, the memory estimate that may stop them early, and the assembly of
    their states into the merge tree (in the driver)."""

    def __init__(self, config):
        self.config = config
        probe = HierarchyStep(config, 0)
        #: One step per level, the last the top (one block); :meth:`stop_at` may make an earlier level the top.
        self.steps = [probe] + [HierarchyStep(config, level) for level in range(1, probe.top + 1)]
        #: Where the top level runs: ``worker`` (a daisy task of one block) or ``driver`` (after :meth:`stop_at`).
        self.top_process = "worker"

    def estimate(self, level: int) -> dict | None:
        """Memory of the blocks of ``level`` (>= 1) before it runs, from the level below's timer records:
        ``estimated_block_bytes`` (the largest block: ``estimated_base_bytes`` plus :func:`residual_bytes`),
        ``estimated_base_bytes`` (the largest peak RSS among the level below's processes: a worker's baseline and
        fixed costs, plus that level's own data, so the sum errs high) and, for the same residual finished in one
        process, ``estimated_finish_bytes``. None for level 0 (bounded by the block)."""
        from affcons.segment.agglomerate import parse_scoring

        if level == 0:
            return None
        below = self.steps[level - 1]
        records = read_records(below.timers_dir())
        step = self.steps[level]
        parents: dict[int, list[dict]] = {}
        for index, record in records.items():
            position = np.unravel_index(index, below.grid_shape)
            parent = 0 if step.is_top else int(np.ravel_multi_index(tuple(p // 2 for p in position), step.grid_shape))
            parents.setdefault(parent, []).append(record)
        bins = self.config.histogram_bins
        quantile = parse_scoring(self.config.agglomerate.scoring) >= 0
        base = max((int(r.get("peak_rss_bytes", 0)) for r in records.values()), default=0)
        largest = max((residual_bytes(c, bins, quantile) for c in parents.values()), default=0)
        return {
            "estimated_block_bytes": base + largest,
            "estimated_base_bytes": base,
            "estimated_finish_bytes": base + residual_bytes(list(records.values()), bins, quantile),
        }

    def stop_at(self, level: int) -> HierarchyStep:
        """Make ``level`` the top: its one block finishes the residual of the level below, in the driver."""
        step = HierarchyStep(self.config, level, top=level)
        self.steps = self.steps[:level] + [step]
        self.top_process = "driver"
        return step

    def stop_record(self, estimate: dict | None) -> dict:
        """Which level was the top, which process ran it and why (``summary.json``, ``agglomerate.json``);
        ``estimate`` is :meth:`estimate` of the top level."""
        top = self.steps[-1]
        budget = self.config.agglomerate.worker_memory_bytes
        root = top_level(top.fragment_grid, None)
        if self.top_process == "driver":
            reason = (
                f"level {top.level}'s largest block would need ~{estimate['estimated_block_bytes'] / 1e6:.1f} MB, "
                f"over the worker budget of {budget / 1e6:.1f} MB; the driver finished the residual"
            )
        elif top.level < root:
            reason = f"stop level {top.level} (agglomerate.stop_level)"
        else:
            reason = "the root (its box covers the block grid)"
            if budget is not None:
                reason += f"; every level within the worker budget of {budget / 1e6:.1f} MB"
        return {
            "level": top.level,
            "root_level": root,
            "process": self.top_process,
            "worker_memory_bytes": budget,
            "reason": reason,
        }

    @staticmethod
    def level_record(step: HierarchyStep, started: float) -> dict:
        """A level's entry in ``summary.json``: blocks, box (fragment blocks per axis), the states' sizes summed
        (``frozen_clusters``, ``deferred_edges``, ``bytes`` ...), the largest state, wall seconds since ``started``,
        and the memory of the level's processes: ``peak_rss_bytes`` (the largest high-water mark), the
        ``baseline_rss_bytes`` of that process (its resident memory after imports and set-up, before any block)
        and ``rss_growth_bytes`` (the largest peak above its own process's baseline)."""
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
        largest = max(records, key=lambda r: r.get("peak_rss_bytes", 0), default={})
        record["peak_rss_bytes"] = int(largest.get("peak_rss_bytes", 0))
        record["baseline_rss_bytes"] = int(largest.get("baseline_rss_bytes", 0))
        record["rss_growth_bytes"] = int(
            max((r.get("peak_rss_bytes", 0) - r.get("baseline_rss_bytes", 0) for r in records), default=0)
        )
        return record

    def assemble(self, fingerprint: str, levels: list[dict], stop: dict) -> dict:
        """Read the merges of every state of every level and the node ids, build the merge tree, save it and
        ``agglomerate.json`` (with the ``levels`` records and the ``stop`` record); return counts, timings and the
        driver's peak RSS."""
        from affcons.segment.hierarchy import BlockMerges, merge_tree_from_states
        from affcons.store import open_store
        from blockwise.layout import RunDir
        from blockwise.timers import RssSampler

        run_dir = RunDir(self.config.run_dir)
        timings = {}
        with RssSampler() as memory:
            start = time.perf_counter()
            # the merges only: frozen clusters, members and deferred edges are the levels' business
            states = [BlockMerges.load(path) for step in self.steps for path in step.state_paths()]
            with open_store(self.config.graph_url(), "r", self.config.histogram_bins) as store:
                node_ids = store.read_node_ids()
                num_edges = store.count_edges()
            timings["read_s"] = time.perf_counter() - start
            start = time.perf_counter()
            # every stored edge is read once: inside a level-0 box, or across the children's shared faces of the
            # one level where its two blocks join; an edge between blocks that share no face would be read never
            read = sum(
                int(level.get("block_edges" if i == 0 else "crossing_edges", 0)) for i, level in enumerate(levels)
            )
            if read != num_edges:
                raise AgglomerationError(
                    f"the hierarchical levels read {read} of the graph store's {num_edges} edges: some edges join "
                    "fragments of blocks that share no face (or nodes that were never stored), which the "
                    "blockwise steps never write; use --agglomeration global for such a graph"
                )
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
            "stop": stop,
            "assembly_peak_rss_bytes": memory.peak,
            "assembly_rss_growth_bytes": memory.peak - memory.baseline,
            **timings,
        }
        write_json(run_dir.agglomerate_info, info)
        return info
