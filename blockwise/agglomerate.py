"""Step 3, ``agglomerate``: the one global step. Reads the whole RAG from the graph store into compact arrays,
builds the merge tree, saves it in the run directory, and cuts it into lookup tables for ``extract``.

Memory is what decides whether this step fits one machine, so it never builds a graph of Python objects: the store
returns columnar numpy tables (:class:`affcons.segment.EdgeTable`, 40 B per edge plus 4 B per histogram bin), and
:func:`affcons.segment.build_merge_tree` works on flat arrays (modelled by
:func:`affcons.segment.agglomerate.merge_tree_bytes_per_edge`). The step measures its own peak resident memory
(sampled every 20 ms) and reports bytes per edge both ways. Fragments without any edge (isolated) come from the
node table, so every fragment has a row in the lookup tables.

Fragments that a block face cut apart are stitched first (edges whose face-link counts say both blocks saw one
basin, :mod:`affcons.segment.stitch`); the tree records those unions as merges at level ``-inf``. The result does
not depend on the block size: the stored edge table is exactly the whole volume's table (see
:mod:`blockwise.edges`), and the tree is a deterministic function of it: for the same (stitched) fragments it is
the tree of the whole volume. ``merge_tree.npz`` and the tables are
written to a temporary name and renamed, so a driver killed here leaves either nothing or a complete file.
"""

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from blockwise.config import SegmentConfig
from blockwise.extract import lut_paths
from blockwise.pipeline import write_json

TREE_FILE = "merge_tree.npz"
INFO_FILE = "agglomerate.json"


class RssSampler:
    """Peak resident memory of this process while the ``with`` block runs (a thread samples every ``interval``)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def atomic_save(path: Path, save) -> None:
    """``save(tmp_path)`` then rename to ``path``: readers see the old file, nothing, or the complete new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    save(tmp)
    os.replace(tmp, path)


def _warm_up(scoring: str, histogram_bins: int) -> None:
    from affcons.segment import EdgeTable, build_merge_tree

    u = np.array([1, 2], np.uint64)
    edges = EdgeTable(u, u + 1, np.array([0.5, 0.7]), np.ones(2, np.uint64), np.ones((2, histogram_bins), np.uint32))
    build_merge_tree(edges, scoring).lookup(0.5)


class AgglomerateStep:
    """Global agglomeration (runs in the driver process)."""

    name = "agglomerate"

    def __init__(self, config: SegmentConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)

    @property
    def tree_path(self) -> Path:
        return self.run_dir / TREE_FILE

    def done(self, fingerprint: str) -> dict | None:
        """The info of a finished agglomeration of this configuration, or None."""
        info_path = self.run_dir / INFO_FILE
        if not (self.tree_path.is_file() and info_path.is_file()):
            return None
        info = json.loads(info_path.read_text())
        return info if info.get("fingerprint") == fingerprint else None

    def run(self, fingerprint: str) -> dict:
        """Read the RAG, build and save the merge tree; return counts, timings and bytes per edge."""
        from affcons.segment import build_merge_tree
        from affcons.segment.agglomerate import merge_tree_bytes_per_edge
        from affcons.store import open_store

        timings = {}
        _warm_up(self.config.agglomerate.scoring, self.config.histogram_bins)  # load compiled code before measuring
        with RssSampler() as memory:
            start = time.perf_counter()
            with open_store(self.config.graph, "r", self.config.histogram_bins) as store:
                nodes = store.read_nodes()
                edges = store.read_edges()
            timings["read_s"] = time.perf_counter() - start
            after_read = memory.process.memory_info().rss
            start = time.perf_counter()
            tree = build_merge_tree(edges, self.config.agglomerate.scoring, node_ids=nodes.ids)
            timings["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        atomic_save(self.tree_path, tree.save)
        timings["save_s"] = time.perf_counter() - start
        num_edges = len(edges)
        info = {
            "fingerprint": fingerprint,
            "nodes": len(nodes),
            "edges": num_edges,
            "isolated_nodes": int(len(nodes) - len(np.union1d(edges.u, edges.v))),
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
        write_json(self.run_dir / INFO_FILE, info)
        return info

    def write_luts(self, thresholds) -> dict[str, int]:
        """Cut the saved tree at each threshold; save the lookup tables; return segments per threshold."""
        from affcons.segment import MergeTree

        tree = MergeTree.load(self.tree_path)
        (self.run_dir / "luts").mkdir(parents=True, exist_ok=True)
        segments = {}
        atomic_save(lut_paths(self.run_dir, 0.0)[0], lambda p: np.save(p, tree.ids))
        for threshold in thresholds:
            lut_path = lut_paths(self.run_dir, threshold)[1]
            lookup = tree.lookup(threshold)
            atomic_save(lut_path, lambda p, lookup=lookup: np.save(p, lookup))
            segments[f"{threshold:.2f}"] = int(len(np.unique(lookup)))
        return segments
