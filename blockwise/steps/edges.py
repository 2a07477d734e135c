"""Step ``edges``: the RAG edges across block faces, each edge produced by exactly one block.

Every voxel pair ``(p, p - e_c)`` is attributed to the block holding ``p``. The fragments step already stored the
pairs with both voxels inside a block (the block's *internal* edges, computed while its fragments were in memory);
this step adds the pairs across each lower face of a block: it reads the block's own fragments, face-link bits and
affinities once (whole chunks are decoded anyway), and per axis c with a block below the last section of that
neighbour's fragments and face-link bits, and computes :func:`affcons.segment.edge_table` of the c-pairs of the
two-section slab (affinities: channel c of the block's first section; a pair's affinity is its upper voxel's). Fragment
ids are unique per block, so an edge (u, v) joins fragments of one block or of two face neighbours, and all its voxel
pairs lie in the same block: each (u, v) is written by exactly one block and the stored table *is* the table of the
whole volume (no combining across blocks), the same bytes as one :func:`edge_table` of each block grown by one voxel
at its low sides. Histograms are kept only for quantile scoring. Each face edge also counts its pairs that both
blocks' watersheds put in one basin (the face-link bits the fragments step wrote; ``linked``, see
:mod:`affcons.segment.stitch`). The rows go to the store in bulk as the block's *crossing* edges.

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
        import numpy as np

        from affcons.segment import EdgeTable, edge_table

        bins = self.config.histogram_bins
        axes = [axis for axis in range(3) if write_roi.begin[axis] > self.roi.begin[axis]]  # faces with a block below
        faces = []
        if axes:
            with timers.time("read"):  # the block's own chunks once, for all its faces
                own_fragments = self.fragments.read(write_roi)
                own_links = self.links.read(write_roi)
                own_affs = self.read_affinities(write_roi, block_index)
        for axis in axes:
            first = tuple(slice(0, 1) if a == axis else slice(None) for a in range(3))
            begin, shape = list(write_roi.begin), list(write_roi.shape)
            begin[axis] -= self.voxel_size[axis]
            shape[axis] = self.voxel_size[axis]
            below = Roi(begin, shape)  # the last section of the neighbour below
            with timers.time("read"):
                below_fragments = self.fragments.read(below)
                below_links = self.links.read(below)
            with timers.time("compute"):
                fragments = np.concatenate([below_fragments, own_fragments[first]], axis=axis)
                links = np.concatenate([below_links, own_links[first]], axis=axis)
                # only the upper voxel's affinity of a pair is used: the section below gets zeros
                affs = np.concatenate(
                    [np.zeros_like(own_affs[(slice(None),) + first]), own_affs[(slice(None),) + first]], axis=axis + 1
                )
                lower = tuple(int(a == axis) for a in range(3))
                faces.append(edge_table(fragments, affs, bins, lower_context=lower, links=links, channels=(axis,)))
        edges = EdgeTable.concatenate(faces, bins)  # disjoint: each face pairs this block with another neighbour
        with timers.time("write"):
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_edges(block_index, edges, part="crossing")
        timers.count("edges", len(edges))
