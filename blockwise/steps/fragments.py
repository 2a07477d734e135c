"""Step ``fragments``: watershed per block with context, globally unique ids, nodes into the graph store.

Per block: read the affinities of the write ROI grown by the context (clipped at the edge of the run's ROI), run
:func:`affcons.segment.watershed_from_affinities`, crop to the write ROI, renumber densely (``1..m`` in raster
order of first appearance) and add ``grid_index * (voxels_per_block + 1)``: ids are unique across blocks without
any coordination, and the same in every run. The fragments are written as uint64 into ``OUT.zarr/fragments``
(the write ROI covers whole chunks), the nodes (id, centre in nm, size) into the store under the block's grid
index, replacing whatever a failed earlier attempt of the block wrote.

The block also records how its watershed, which sees the context, labels the voxel pairs across each face it shares
with a neighbouring block: the face-link bits of :func:`affcons.segment.stitch.face_links`, written to
``RUN_DIR/face_links.zarr/links`` (uint8, the fragments' grid). The edges step turns them into the ``linked``
counts that stitch fragments cut by a face back together.
"""

import numpy as np
import pydantic
from funlib.geometry import Coordinate, Roi

from affcons.config import StrictModel
from blockwise.faults import inject_fault
from blockwise.steps.base import GraphStep
from blockwise.timers import Timers


class FragmentsConfig(StrictModel):
    """Watershed fragments per block (:func:`affcons.segment.watershed_from_affinities`)."""

    #: Boundary values (1 - mean affinity) below this are cell interior, where seeds are placed.
    boundary_threshold: float = pydantic.Field(0.5, ge=0.0, le=1.0)
    #: Fragments of fewer voxels (within one block's context window) are dissolved into their neighbours.
    min_size: int = pydantic.Field(0, ge=0)
    #: 2-D fragments per z-section (anisotropic data); the z affinities are then ignored by the watershed.
    per_slice: bool = False


class FragmentsStep(GraphStep):
    name = "fragments"

    def __init__(self, config):
        super().__init__(config, Coordinate(config.context), writes_fragments=True)

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        import fastremap

        from affcons.affinities import affinities_to_float
        from affcons.segment import NodeTable, node_table, watershed_from_affinities
        from affcons.segment.stitch import face_links

        options = self.config.fragments
        read_roi = write_roi.grow(self.grow, self.grow).intersect(self.roi)
        with timers.time("read"):
            affs = self.read_affinities(read_roi, block_index)
        with timers.time("compute"):
            affs = affinities_to_float(affs)
            fragments, _ = watershed_from_affinities(
                affs,
                boundary_threshold=options.boundary_threshold,
                min_size=options.min_size,
                per_slice=options.per_slice,
                voxel_size=tuple(self.voxel_size),
            )
            crop = tuple(
                slice(b, b + s)
                for b, s in zip((write_roi.begin - read_roi.begin) / self.voxel_size, write_roi.shape / self.voxel_size)
            )
            lower = tuple(b > r for b, r in zip(write_roi.begin, self.roi.begin))
            upper = tuple(e < r for e, r in zip(write_roi.end, self.roi.end))
            links = face_links(fragments, crop, lower, upper)
            local = np.ascontiguousarray(fragments[crop])
            local, _ = fastremap.renumber(local, preserve_zero=True, in_place=True)
            first = self.first_id(block_index)
            local_nodes = node_table(local, tuple(self.voxel_size), tuple(write_roi.begin))
            nodes = NodeTable(local_nodes.ids + np.uint64(first), local_nodes.position, local_nodes.size)
            fragments = local.astype(np.uint64)
            fragments[local != 0] += np.uint64(first)
        with timers.time("write"):
            self.fragments.write(write_roi, fragments)
            self.links.write(write_roi, links)
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_nodes(block_index, nodes)
        timers.count("nodes", len(nodes))
