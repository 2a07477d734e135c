"""Step 1, ``fragments``: watershed per block with context, globally unique ids, nodes into the graph store.

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

from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.config import SegmentConfig
from blockwise.step import BlockwiseStep, Timers, inject_fault
from blockwise.volumes import Box, box_for


class GraphStep(BlockwiseStep):
    """A step that reads affinities and writes to the graph store (fragments, edges). A block reads its write ROI
    grown by ``grow`` (nm) on every side, as declared to daisy; the boxes open lazily in the worker."""

    def __init__(self, config: SegmentConfig, grow: Coordinate, writes_fragments: bool):
        super().__init__(config)
        self.grow = grow
        self.affs = box_for(config.affs, config.affs_offset, config.voxel_size)
        self.fragments = fragments_box(config, writable=writes_fragments)
        self.links = links_box(config, writable=writes_fragments)
        self.store = None

    def rois(self) -> tuple[Roi, Roi, Roi]:
        total = self.roi.grow(self.grow, self.grow)
        read = Roi(-self.grow, self.block_shape + self.grow * 2)
        write = Roi((0, 0, 0), self.block_shape)
        return total, read, write

    def setup(self) -> None:
        from affcons.store import open_store

        self.store = open_store(self.config.graph, "a", self.config.histogram_bins)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        for box in (self.affs, self.fragments, self.links):
            box.close()


class FragmentsStep(GraphStep):
    name = "fragments"

    def __init__(self, config: SegmentConfig):
        super().__init__(config, Coordinate(config.context), writes_fragments=True)

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        import fastremap

        from affcons.affinities import affinities_to_float
        from affcons.segment import NodeTable, node_table, watershed_from_affinities
        from affcons.segment.stitch import face_links

        options = self.config.fragments
        read_roi = write_roi.grow(self.grow, self.grow).intersect(self.roi)
        with timers.time("read"):
            affs = self.affs.read(read_roi, channels=slice(0, 3))
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


def fragments_box(config: SegmentConfig, writable: bool = False) -> Box:
    """``OUT.zarr/fragments``: uint64, the run's ROI, the affinities' voxel size."""
    return Box(str(config.out), "fragments", tuple(config.roi_offset), tuple(config.voxel_size), writable)


def links_box(config: SegmentConfig, writable: bool = False) -> Box:
    """``RUN_DIR/face_links.zarr/links``: uint8 face-link bits, the fragments' grid (run-internal state)."""
    return Box(
        str(Path(config.run_dir) / LINKS_CONTAINER),
        "links",
        tuple(config.roi_offset),
        tuple(config.voxel_size),
        writable,
    )


LINKS_CONTAINER = "face_links.zarr"
