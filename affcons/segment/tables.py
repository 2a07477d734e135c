"""Compact, columnar tables of RAG nodes and edges: the currency between the segmentation core, the graph stores
and the blockwise steps. One numpy array per column, never one Python object per node or edge.

Edge statistics are *mergeable*: the table of a whole volume is the concatenation of the tables of its pieces
followed by :meth:`EdgeTable.combine` (sums add, counts add, histograms add).
"""

from dataclasses import dataclass

import numpy as np

ID_DTYPE = np.uint64


@dataclass(frozen=True)
class NodeTable:
    """Fragments: ``ids`` uint64[N], ``position`` float64[N, 3] centre of mass (z, y, x) in nm, ``size`` uint64[N]
    voxels."""

    ids: np.ndarray
    position: np.ndarray
    size: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "ids", np.ascontiguousarray(self.ids, dtype=ID_DTYPE))
        object.__setattr__(self, "position", np.ascontiguousarray(self.position, dtype=np.float64).reshape(-1, 3))
        object.__setattr__(self, "size", np.ascontiguousarray(self.size, dtype=np.uint64))
        if not len(self.ids) == len(self.position) == len(self.size):
            raise ValueError("NodeTable columns differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def empty() -> "NodeTable":
        return NodeTable(np.zeros(0, ID_DTYPE), np.zeros((0, 3)), np.zeros(0, np.uint64))

    @staticmethod
    def concatenate(tables: list["NodeTable"]) -> "NodeTable":
        if not tables:
            return NodeTable.empty()
        return NodeTable(
            np.concatenate([t.ids for t in tables]),
            np.concatenate([t.position for t in tables]),
            np.concatenate([t.size for t in tables]),
        )


@dataclass(frozen=True)
class EdgeTable:
    """RAG edges with mergeable affinity statistics.

    ``u < v`` uint64[E] fragment ids; ``affinity_sum`` float64[E] sum of the affinities of all voxel pairs across
    the face between u and v; ``count`` uint64[E] number of such pairs; ``histogram`` uint32[E, B] counts of those
    affinities in B equal bins over [0, 1] (B = 0 columns when quantile scores are not needed); ``linked``
    uint64[E] how many of those pairs cross a block face and lie in one watershed basin in the views of both blocks
    (:mod:`affcons.segment.stitch`; zeros when not given, as for a volume segmented in one piece);
    ``quantised_sum`` uint64[E] the exact integer sum of the same affinities quantised to 0..255 (uint8 affinities
    as they are, float ones as ``round(a * 255)`` after clipping to [0, 1]), the statistic of the canonical mean
    linkage (:mod:`affcons.segment.agglomerate`). :func:`affcons.segment.edge_table` always fills it; a table built
    by hand without it gets ``round(affinity_sum * 255)``, the sum quantised as a whole (0 where the sum is not
    finite, at most 2^62).
    """

    u: np.ndarray
    v: np.ndarray
    affinity_sum: np.ndarray
    count: np.ndarray
    histogram: np.ndarray
    linked: np.ndarray | None = None
    quantised_sum: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "u", np.ascontiguousarray(self.u, dtype=ID_DTYPE))
        object.__setattr__(self, "v", np.ascontiguousarray(self.v, dtype=ID_DTYPE))
        object.__setattr__(self, "affinity_sum", np.ascontiguousarray(self.affinity_sum, dtype=np.float64))
        object.__setattr__(self, "count", np.ascontiguousarray(self.count, dtype=np.uint64))
        histogram = np.ascontiguousarray(self.histogram, dtype=np.uint32)
        if histogram.ndim != 2:
            raise ValueError(f"EdgeTable.histogram must be 2-D (edges, bins), got shape {histogram.shape}")
        object.__setattr__(self, "histogram", histogram)
        linked = np.zeros(len(self.u), np.uint64) if self.linked is None else self.linked
        object.__setattr__(self, "linked", np.ascontiguousarray(linked, dtype=np.uint64))
        if self.quantised_sum is None:  # the float sum quantised as a whole: 0 when not finite, at most 2^62
            with np.errstate(invalid="ignore", over="ignore"):
                scaled = np.rint(self.affinity_sum * 255.0)
            quantised = np.where(np.isfinite(scaled), np.clip(scaled, 0.0, 2.0**62), 0.0)
        else:
            quantised = np.asarray(self.quantised_sum)
            if quantised.dtype.kind not in "ui" or (quantised.size and quantised.min() < 0):
                raise ValueError("EdgeTable.quantised_sum must hold non-negative integers")
        object.__setattr__(self, "quantised_sum", np.ascontiguousarray(quantised, dtype=np.uint64))
        if not (
            len(self.u)
            == len(self.v)
            == len(self.affinity_sum)
            == len(self.count)
            == len(self.histogram)
            == len(self.linked)
            == len(self.quantised_sum)
        ):
            raise ValueError("EdgeTable columns differ in length")

    def __len__(self) -> int:
        return len(self.u)

    @property
    def histogram_bins(self) -> int:
        return self.histogram.shape[1]

    @staticmethod
    def bytes_per_edge(histogram_bins: int = 0) -> int:
        """Bytes of one row: u, v, sum, count, linked, quantised sum (8 B each) and the histogram (4 B per bin)."""
        return 6 * 8 + 4 * histogram_bins

    @property
    def nbytes(self) -> int:
        columns = (self.u, self.v, self.affinity_sum, self.count, self.histogram, self.linked, self.quantised_sum)
        return sum(a.nbytes for a in columns)

    @staticmethod
    def empty(histogram_bins: int = 0) -> "EdgeTable":
        return EdgeTable(
            np.zeros(0, ID_DTYPE),
            np.zeros(0, ID_DTYPE),
            np.zeros(0),
            np.zeros(0, np.uint64),
            np.zeros((0, histogram_bins), np.uint32),
            quantised_sum=np.zeros(0, np.uint64),
        )

    def mean_affinity(self) -> np.ndarray:
        return self.affinity_sum / np.maximum(self.count, 1)

    @staticmethod
    def concatenate(tables: list["EdgeTable"], histogram_bins: int = 0) -> "EdgeTable":
        if not tables:
            return EdgeTable.empty(histogram_bins)
        return EdgeTable(
            np.concatenate([t.u for t in tables]),
            np.concatenate([t.v for t in tables]),
            np.concatenate([t.affinity_sum for t in tables]),
            np.concatenate([t.count for t in tables]),
            np.concatenate([t.histogram for t in tables]),
            np.concatenate([t.linked for t in tables]),
            np.concatenate([t.quantised_sum for t in tables]),
        )

    def combine(self) -> "EdgeTable":
        """Merge rows with the same (u, v) by adding their statistics; rows come out sorted by (u, v).

        Sums are added in a fixed order (sorted by (u, v), then by original row), so the result is deterministic.
        """
        if len(self) == 0:
            return self
        order = np.lexsort((self.v, self.u))
        u, v = self.u[order], self.v[order]
        starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
        histogram = self.histogram[order]
        return EdgeTable(
            u[starts],
            v[starts],
            np.add.reduceat(self.affinity_sum[order], starts),
            np.add.reduceat(self.count[order], starts),
            np.add.reduceat(histogram, starts, axis=0) if histogram.shape[1] else np.zeros((len(starts), 0)),
            np.add.reduceat(self.linked[order], starts),
            np.add.reduceat(self.quantised_sum[order], starts),
        )
