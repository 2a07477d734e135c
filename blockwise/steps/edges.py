"""Step ``edges``: the RAG edges across block faces, each edge produced by exactly one block.

Every voxel pair ``(p, p - e_c)`` is attributed to the block holding ``p``. The fragments step already stored the
pairs with both voxels inside a block (the block's *internal* edges, computed while its fragments were in memory);
this step adds the pairs across each lower face of a block: per axis c with a block below it reads the two-section
slab across that face from the face sections the fragments step stored (:mod:`blockwise.faces`: fragments and
face-link bits of the neighbour's last and the block's first section, affinity channel c of the first; a pair's
affinity is its upper voxel's) and computes :func:`affcons.segment.edge_table` of its c-pairs. Fragment
ids are unique per block, so an edge (u, v) joins fragments of one block or of two face neighbours, and all its voxel
pairs lie in the same block: each (u, v) is written by exactly one block and the stored table *is* the table of the
whole volume (no combining across blocks), the same bytes as one :func:`edge_table` of each block grown by one voxel
at its low sides. Histograms are kept only for quantile scoring. Each face edge also counts its pairs that both
blocks' watersheds put in one basin (the face-link bits the fragments step wrote; ``linked``, see
:mod:`affcons.segment.stitch`). The rows go to the store in bulk as the block's *crossing* edges.

This step reads the face sections of the neighbouring blocks below, so it runs after the fragments step has finished
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
        super().__init__(config, Coordinate(config.voxel_size))
        self.affs_dtype = None  # of the stored face sections, read once per worker

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.segment import EdgeTable, edge_table

        bins = self.config.histogram_bins
        coords, begin, shape = self.voxel_box(write_roi)
        faces = []
        for axis in range(3):
            if coords[axis] == 0:
                continue  # no block below along this axis
            with timers.time("read"):
                if self.affs_dtype is None:
                    self.affs_dtype = self.faces.affinities_dtype()
                fragments, links, affs = self.faces.read_face(axis, coords, begin, shape, self.affs_dtype)
            with timers.time("compute"):
                lower = tuple(int(a == axis) for a in range(3))
                faces.append(edge_table(fragments, affs, bins, lower_context=lower, links=links, channels=(axis,)))
        edges = EdgeTable.concatenate(faces, bins)  # disjoint: each face pairs this block with another neighbour
        with timers.time("write"):
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_edges(block_index, edges, part="crossing")
        timers.count("edges", len(edges))
