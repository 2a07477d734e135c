"""Step ``agglomerate``: the one global step, run by the driver in its own process. Reads the whole RAG from the
graph store into compact arrays, builds the merge tree, saves it in the run directory, and cuts it into the lookup
tables the ``extract`` step applies.

Memory is what decides whether this step fits one machine, so it never builds a graph of Python objects: the store
returns columnar numpy tables (:class:`affcons.segment.EdgeTable`, 40 B per edge plus 4 B per histogram bin), and
:func:`affcons.segment.build_merge_tree` works on flat arrays (modelled by
:func:`affcons.segment.agglomerate.merge_tree_bytes_per_edge`). The step measures its own peak resident memory
(sampled every 20 ms) and reports bytes per edge both ways. Fragments without any edge (isolated) come from the
node table, so every fragment has a row in the lookup tables.

Fragments that a block face cut apart are stitched first (edges whose face-link counts say both blocks saw one
basin, :mod:`affcons.segment.stitch`); the tree records those unions as merges at level ``-inf``. The result does
not depend on the block size: the stored edge table is exactly the whole volume's table (see
:mod:`blockwise.steps.edges`), and the tree is a deterministic function of it. ``merge_tree.npz``, the lookup
tables and ``agglomerate.json`` are written atomically, so a driver killed here leaves either nothing or complete
files.
"""

import json
import time
from typing import Literal

import numpy as np
import pydantic

from affcons.config import StrictModel
from affcons.files import atomic_write, write_json
from blockwise.layout import RunDir, threshold_name
from blockwise.timers import RssSampler


class AgglomerateConfig(StrictModel):
    """Agglomeration of the stored RAG into one merge tree: globally in the driver (compact arrays) or exactly by
    levels of blocks (:mod:`blockwise.steps.hierarchy`); both give the same tree byte for byte."""

    #: Edge score: ``mean`` (1 - mean affinity) or ``quantileQ`` (1 - Q-th percentile, e.g. ``quantile50``).
    scoring: str = "mean"
    #: ``global`` (the whole RAG in the driver's memory) or ``hierarchical`` (one daisy task per octree level of
    #: fragment blocks; a worker holds one block's edges or residual). Does not change the result.
    method: Literal["global", "hierarchical"] = "global"
    #: Hierarchical only: the level (>= 1) whose whole residual one process finishes; default none: the levels go
    #: up to the root. Does not change the result.
    stop_level: int | None = pydantic.Field(None, ge=1)
    #: Hierarchical only: memory of one worker process, bytes (an integer >= 1). Before each level >= 1 runs, its
    #: largest block is estimated from the level below's records (``HierarchicalAgglomeration.estimate``); the
    #: first level over the budget is finished by the driver in one process instead. Does not change the result.
    worker_memory_bytes: pydantic.StrictInt | None = pydantic.Field(None, ge=1)

    @pydantic.model_validator(mode="after")
    def _levels_are_hierarchical(self) -> "AgglomerateConfig":
        options = (("stop_level", "--stop-level"), ("worker_memory_bytes", "--worker-memory-gb"))
        for key, option in options:
            if getattr(self, key) is not None and self.method != "hierarchical":
                raise ValueError(
                    f"{key} {getattr(self, key)} applies to the hierarchical agglomeration only; pass "
                    f"--agglomeration hierarchical (agglomerate.method: hierarchical) or drop {option}"
                )
        return self

    @pydantic.field_validator("scoring")
    @classmethod
    def _known_scoring(cls, value: str) -> str:
        from affcons.segment.scoring import parse_scoring

        parse_scoring(value)  # ConfigError naming the accepted forms
        return value


def _warm_up(scoring: str, histogram_bins: int) -> None:
    """Load the compiled merge loop on a two-edge table (so its compilation is not measured)."""
    from affcons.segment import EdgeTable, build_merge_tree

    u = np.array([1, 2], np.uint64)
    edges = EdgeTable(u, u + 1, np.array([0.5, 0.7]), np.ones(2, np.uint64), np.ones((2, histogram_bins), np.uint32))
    build_merge_tree(edges, scoring).lookup(0.5)


def isolated_nodes(node_ids: np.ndarray, edges) -> int:
    """How many of the sorted ``node_ids`` no edge touches (every endpoint is among them)."""
    touched = np.zeros(len(node_ids), bool)
    for endpoint in (edges.u, edges.v):
        touched[np.searchsorted(node_ids, endpoint)] = True
    return int(len(node_ids) - np.count_nonzero(touched))


class GlobalAgglomeration:
    """The global agglomeration of a resolved ``SegmentConfig`` (runs in the driver process)."""

    name = "agglomerate"

    def __init__(self, config):
        self.config = config
        self.run_dir = RunDir(config.run_dir)

    def warm_up(self) -> None:
        """Load the compiled merge loop now (the driver does it while the edges step runs)."""
        _warm_up(self.config.agglomerate.scoring, self.config.histogram_bins)

    def done(self, fingerprint: str) -> dict | None:
        """The info of a finished agglomeration of this configuration, or None."""
        tree, info_path = self.run_dir.merge_tree, self.run_dir.agglomerate_info
        if not (tree.is_file() and info_path.is_file()):
            return None
        info = json.loads(info_path.read_text())
        return info if info.get("fingerprint") == fingerprint else None

    def run(self, fingerprint: str) -> dict:
        """Read the RAG, build and save the merge tree; return counts, timings and bytes per edge."""
        from affcons.segment import build_merge_tree
        from affcons.segment.agglomerate import merge_tree_bytes_per_edge
        from affcons.store import open_store

        timings = {}
        self.warm_up()  # loaded already when the driver ran the edges step
        with RssSampler() as memory:
            start = time.perf_counter()
            with open_store(self.config.graph_url(), "r", self.config.histogram_bins) as store:
                node_ids = store.read_node_ids()
                edges = store.read_edges()
            timings["read_s"] = time.perf_counter() - start
            after_read = memory.process.memory_info().rss
            start = time.perf_counter()
            tree = build_merge_tree(edges, self.config.agglomerate.scoring, node_ids=node_ids)
            timings["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        atomic_write(self.run_dir.merge_tree, tree.save)
        timings["save_s"] = time.perf_counter() - start
        num_edges = len(edges)
        info = {
            "fingerprint": fingerprint,
            "method": "global",
            "nodes": len(node_ids),
            "edges": num_edges,
            "isolated_nodes": isolated_nodes(node_ids, edges),
            "merges": len(tree),
            "stitches": tree.num_stitches,
            "edge_table_bytes_per_edge": edges.nbytes / num_edges if num_edges else 0.0,
            "merge_tree_model_bytes_per_edge": merge_tree_bytes_per_edge(self.config.histogram_bins),
            "peak_rss_bytes": memory.peak,
            "rss_growth_bytes": memory.peak - memory.baseline,
            "build_rss_growth_bytes": memory.peak - after_read,
            "measured_bytes_per_edge": (memory.peak - memory.baseline) / num_edges if num_edges else 0.0,
            **timings,
        }
        write_json(self.run_dir.agglomerate_info, info)
        return info

    def write_luts(self, thresholds) -> dict[str, int]:
        """Cut the saved tree at each threshold; save the lookup tables; return segments per threshold."""
        from affcons.segment import MergeTree

        tree = MergeTree.load(self.run_dir.merge_tree)
        self.run_dir.lut_ids.parent.mkdir(parents=True, exist_ok=True)
        segments = {}
        atomic_write(self.run_dir.lut_ids, lambda path: np.save(path, tree.ids))
        for threshold in thresholds:
            lookup = tree.lookup(threshold)
            atomic_write(self.run_dir.lut_segments(threshold), lambda path, lookup=lookup: np.save(path, lookup))
            segments[threshold_name(threshold)] = int(len(np.unique(lookup)))
        return segments
