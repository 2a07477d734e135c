"""In-memory segmentation core: watershed fragments, RAGs with mergeable statistics, merge trees and their cuts.

The blockwise pipeline calls the same functions per block; :func:`segment_affinities` chains them for a volume
that fits in memory.
"""

import numpy as np

from affcons.segment.agglomerate import MergeTree, build_merge_tree, parse_scoring
from affcons.segment.rag import edge_table, node_table
from affcons.segment.tables import EdgeTable, NodeTable
from affcons.segment.watershed import watershed_from_affinities

__all__ = [
    "EdgeTable",
    "MergeTree",
    "NodeTable",
    "agglomerate_fragments",
    "apply_lookup",
    "build_merge_tree",
    "edge_table",
    "node_table",
    "segment_affinities",
    "sweep_thresholds",
    "watershed_from_affinities",
]

#: Histogram bins per edge for quantile scores (waterz uses 256).
QUANTILE_BINS = 256


def apply_lookup(fragments: np.ndarray, ids: np.ndarray, segment_of: np.ndarray) -> np.ndarray:
    """Relabel ``fragments`` (uint64, 0 = none) by the table ``ids`` (sorted) -> ``segment_of``.

    Fragments missing from ``ids`` keep their own id.
    """
    flat = fragments.ravel()
    position = np.searchsorted(ids, flat)
    position = np.minimum(position, max(len(ids) - 1, 0))
    found = (len(ids) > 0) & (ids[position] == flat) if len(ids) else np.zeros(flat.shape, bool)
    out = flat.copy()
    out[found] = segment_of[position[found]]
    out[flat == 0] = 0
    return out.reshape(fragments.shape)


def agglomerate_fragments(
    fragments: np.ndarray,
    affs: np.ndarray,
    scoring: str = "mean",
    links: np.ndarray | None = None,
    order: str = "canonical",
) -> MergeTree:
    """The merge tree of ``fragments`` under ``affs`` (uint8 or float (C >= 3, z, y, x)), to the end.

    ``links``: optional face-link bits (uint8 (z, y, x)) of a blockwise watershed; fragments they join are
    stitched first (:mod:`affcons.segment.stitch`). ``order``: ``"canonical"`` or ``"waterz"``
    (:func:`affcons.segment.build_merge_tree`).
    """
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
    if fragments is None:
        fragments, _ = watershed_from_affinities(affs, **watershed_options)
    tree = agglomerate_fragments(fragments, affs, scoring, order=order)
    return {float(t): apply_lookup(fragments, tree.ids, tree.lookup(t)) for t in thresholds}


def sweep_thresholds(fragments: np.ndarray, tree: MergeTree, ground_truth: np.ndarray, thresholds) -> list[dict]:
    """Metrics (see :func:`affcons.evaluate.evaluate`) of the cut at each threshold, plus ``segments``."""
    from affcons.evaluate import evaluate

    rows = []
    for threshold in thresholds:
        segmentation = apply_lookup(fragments, tree.ids, tree.lookup(threshold))
        row = {"threshold": float(threshold), "segments": int(len(np.unique(tree.lookup(threshold))))}
        row.update(evaluate(segmentation, ground_truth))
        rows.append(row)
    return rows
