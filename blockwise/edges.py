"""Step 2, ``edges``: RAG edges with mergeable statistics per block, each edge produced by exactly one block.

Per block: read fragments and affinities of the write ROI grown by ONE voxel at the low side of each axis (where
that voxel lies inside the run's ROI) and compute :func:`affcons.segment.edge_table` with that ``lower_context``.
Every voxel pair ``(p, p - e_c)`` is attributed to the block holding ``p``, so pairs across a block face are
counted once, by the upper block. Fragment ids are unique per block, so an edge (u, v) joins fragments of one block
or of two face neighbours, and all its voxel pairs lie in the same block: each (u, v) is written by exactly one
block and the stored table *is* the table of the whole volume (no combining across blocks). Histograms are kept
only for quantile scoring. Each edge also counts its pairs across a block face that both blocks' watersheds put in
one basin (the face-link bits the fragments step wrote; ``linked``, see :mod:`affcons.segment.stitch`). The rows go
to the store in bulk under the block's grid index.

This step reads the fragments of the neighbouring blocks below, so it runs after them (daisy orders the two tasks
block by block through their ROIs).
"""
from funlib.geometry import Roi

from blockwise.config import SegmentConfig
from blockwise.fragments import fragments_box, links_box
from blockwise.step import BlockwiseStep, Timers, inject_fault
from blockwise.volumes import box_for


class EdgesStep(BlockwiseStep):
    name = "edges"

    def __init__(self, config: SegmentConfig):
        super().__init__(config)
        self.affs = box_for(config.affs, config.affs_offset, config.voxel_size)
        self.fragments = fragments_box(config)
        self.links = links_box(config)
        self.histogram_bins = config.histogram_bins
        self.store = None

    def rois(self) -> tuple[Roi, Roi, Roi]:
        # The block reads one voxel below its write ROI; the ROI declared to daisy is grown on both sides, the
        # pattern whose block layout daisy 2.0.0 gets right (see blockwise.pipeline.Pipeline.run_task).
        total = self.roi.grow(self.voxel_size, self.voxel_size)
        read = Roi(-self.voxel_size, self.block_shape + self.voxel_size * 2)
        write = Roi((0, 0, 0), self.block_shape)
        return total, read, write

    def setup(self) -> None:
        from affcons.store import open_store

        self.store = open_store(self.config.graph, "a", self.histogram_bins)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self.affs.close()
        self.fragments.close()
        self.links.close()

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.affinities import affinities_to_float
        from affcons.segment import edge_table

        lower = tuple(int(b > r) for b, r in zip(write_roi.begin, self.roi.begin))
        grow = self.voxel_size * type(self.voxel_size)(lower)
        read_roi = Roi(write_roi.begin - grow, write_roi.shape + grow)
        with timers.time("read"):
            fragments = self.fragments.read(read_roi)
            affs = self.affs.read(read_roi, channels=slice(0, 3))
            links = self.links.read(read_roi)
        with timers.time("compute"):
            edges = edge_table(fragments, affinities_to_float(affs), self.histogram_bins, lower_context=lower,
                               links=links)  # fmt: skip
        with timers.time("write"):
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_edges(block_index, edges)
        timers.count("edges", len(edges))
