"""Step ``edges``: RAG edges with mergeable statistics per block, each edge produced by exactly one block.

Per block: read fragments and affinities of the write ROI grown by ONE voxel at the low side of each axis (where
that voxel lies inside the run's ROI) and compute :func:`affcons.segment.edge_table` with that ``lower_context``.
Every voxel pair ``(p, p - e_c)`` is attributed to the block holding ``p``, so pairs across a block face are
counted once, by the upper block. Fragment ids are unique per block, so an edge (u, v) joins fragments of one block
or of two face neighbours, and all its voxel pairs lie in the same block: each (u, v) is written by exactly one
block and the stored table *is* the table of the whole volume (no combining across blocks). Histograms are kept
only for quantile scoring. Each edge also counts its pairs across a block face that both blocks' watersheds put in
one basin (the face-link bits the fragments step wrote; ``linked``, see :mod:`affcons.segment.stitch`). The rows go
to the store in bulk under the block's grid index.

This step reads the fragments of the neighbouring blocks below, so it runs after the fragments step has finished
(see ``docs/design/blockwise.md``: why the steps run one after the other).
"""

from funlib.geometry import Coordinate, Roi

from affcons.config import StrictModel
from blockwise.faults import inject_fault
from blockwise.steps.base import GraphStep
from blockwise.timers import Timers


class EdgesConfig(StrictModel):
    """RAG edges with mergeable statistics per block; histograms are kept only for quantile scoring (set by the
    ``agglomerate`` section's scoring). No options yet."""


class EdgesStep(GraphStep):
    name = "edges"

    def __init__(self, config):
        # The block reads one voxel below its write ROI; the ROI declared to daisy is grown on both sides, the
        # pattern whose block layout daisy 2.0.0 gets right.
        super().__init__(config, Coordinate(config.voxel_size), writes_fragments=False)

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.affinities import affinities_to_float
        from affcons.segment import edge_table

        lower = tuple(int(b > r) for b, r in zip(write_roi.begin, self.roi.begin))
        grow = self.voxel_size * type(self.voxel_size)(lower)
        read_roi = Roi(write_roi.begin - grow, write_roi.shape + grow)
        with timers.time("read"):
            fragments = self.fragments.read(read_roi)
            affs = self.read_affinities(read_roi, block_index)
            links = self.links.read(read_roi)
        with timers.time("compute"):
            edges = edge_table(
                fragments, affinities_to_float(affs), self.config.histogram_bins, lower_context=lower, links=links
            )
        with timers.time("write"):
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_edges(block_index, edges)
        timers.count("edges", len(edges))
