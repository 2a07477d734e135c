"""In-memory segmentation core: watershed fragments, RAGs with mergeable statistics, merge trees and their cuts.

The blockwise pipeline calls the same functions per block; :func:`segment_affinities` chains them for a volume
that fits in memory.

The names below are imported from their submodules on first use (PEP 562), so that importing this package, or a
light submodule of it (``scoring``, ``lookup``, ``tables``), does not load numba and scipy: every daisy worker
process unpickles a config that validates its ``scoring`` here, and only the steps that run the compiled kernels
should pay for loading them.
"""

import importlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from affcons.segment.agglomerate import MergeTree

#: public name -> the submodule that defines it.
_SUBMODULE_OF = {
    "EdgeTable": "tables",
    "NodeTable": "tables",
    "MergeTree": "agglomerate",
    "build_merge_tree": "agglomerate",
    "parse_scoring": "scoring",
    "apply_lookup": "lookup",
    "edge_table": "rag",
    "node_table": "rag",
    "block_fragments": "watershed",
    "watershed_from_affinities": "watershed",
}


def __getattr__(name: str):
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE_OF[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "EdgeTable",
    "MergeTree",
    "NodeTable",
    "agglomerate_fragments",
    "apply_lookup",
    "block_fragments",
    "build_merge_tree",
    "edge_table",
    "node_table",
    "segment_affinities",
    "sweep_thresholds",
    "watershed_from_affinities",
]

#: Histogram bins per edge for quantile scores (waterz uses 256).
QUANTILE_BINS = 256


def agglomerate_fragments(
    fragments: np.ndarray,
    affs: np.ndarray,
    scoring: str = "mean",
    links: np.ndarray | None = None,
    order: str = "canonical",
) -> "MergeTree":
    """The merge tree of ``fragments`` under ``affs`` (uint8 or float (C >= 3, z, y, x)), to the end.

    ``links``: optional face-link bits (uint8 (z, y, x)) of a blockwise watershed; fragments they join are
    stitched first (:mod:`affcons.segment.stitch`). ``order``: ``"canonical"`` or ``"waterz"``
    (:func:`affcons.segment.build_merge_tree`).
    """
    from affcons.segment.agglomerate import build_merge_tree
    from affcons.segment.rag import edge_table
    from affcons.segment.scoring import parse_scoring

    bins = QUANTILE_BINS if parse_scoring(scoring) >= 0 else 0
    edges = edge_table(fragments, affs, histogram_bins=bins, links=links)
    return build_merge_tree(edges, scoring, node_ids=np.unique(fragments[fragments != 0]), order=order)


def segment_affinities(
    affs: np.ndarray,
    thresholds,
    scoring: str = "mean",
    fragments: np.ndarray | None = None,
    order: str = "canonical",
    **watershed_options,
) -> dict[float, np.ndarray]:
    """Segmentations (uint64 (z, y, x)) of ``affs`` (float32 (C >= 3, z, y, x) in [0, 1]) at each threshold.

    Fragments come from :func:`watershed_from_affinities` (``watershed_options`` are passed on) unless given.
    ``order``: the merge order (:func:`affcons.segment.build_merge_tree`).
    """
    from affcons.segment.lookup import apply_lookup
    from affcons.segment.watershed import watershed_from_affinities

    if fragments is None:
        fragments, _ = watershed_from_affinities(affs, **watershed_options)
    tree = agglomerate_fragments(fragments, affs, scoring, order=order)
    return {float(t): apply_lookup(fragments, tree.ids, tree.lookup(t)) for t in thresholds}


def sweep_thresholds(fragments: np.ndarray, tree: "MergeTree", ground_truth: np.ndarray, thresholds) -> list[dict]:
    """Metrics (see :func:`affcons.evaluate.evaluate`) of the cut at each threshold, plus ``segments``."""
    from affcons.evaluate import evaluate
    from affcons.segment.lookup import apply_lookup

    rows = []
    for threshold in thresholds:
        segmentation = apply_lookup(fragments, tree.ids, tree.lookup(threshold))
        row = {"threshold": float(threshold), "segments": int(len(np.unique(tree.lookup(threshold))))}
        row.update(evaluate(segmentation, ground_truth))
        rows.append(row)
    return rows
