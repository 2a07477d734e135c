"""Step ``fragments``: watershed per block with context, globally unique ids, nodes into the graph store.

Per block: read the uint8 affinities of the write ROI grown by the context (clipped at the edge of the run's ROI)
and run the compiled kernel :func:`affcons.segment.block_fragments`: the watershed of
:func:`affcons.segment.watershed_from_affinities` (the same bytes), cropped to the write ROI, renumbered densely
(``1..m`` in raster order of first appearance) plus ``grid_index * (voxels_per_block + 1)``: ids are unique across
blocks without any coordination, and the same in every run. The fragments are written into ``OUT.zarr/fragments``
(uint32 where every id of the run fits, see :func:`blockwise.steps.base.ids_dtype`; the write ROI covers whole
chunks), the nodes (id, centre in nm, size) into the store under the block's grid index, replacing whatever a
failed earlier attempt of the block wrote. The kernel's phases (``levels``, ``distances``, ``seeds``, ``flood``,
``min_size``, ``links``, ``relabel``, ``nodes``, then ``edges``) are recorded as ``compute_<phase>`` in the
block's timers (summed per step in ``summary.json``).

While fragments and affinities are in memory, the block also computes the RAG of its interior (the edges of voxel
pairs with both voxels in the write ROI: :func:`affcons.segment.block_edges.interior_edge_table` for uint8
affinities with mean scoring, :func:`affcons.segment.edge_table` otherwise, the same rows; phase ``edges``) and
stores them as the block's *internal* edges; the edges step adds only the pairs across the block's lower faces.

The block also records how its watershed, which sees the context, labels the voxel pairs across each face it shares
with a neighbouring block: the face-link bits of :func:`affcons.segment.stitch.face_links`. It stores them with
its first and last section of fragments and the first section of affinities as its face sections
(:mod:`blockwise.faces`): all the edges step reads. The edges step turns the bits into the ``linked`` counts that
stitch fragments cut by a face back together.
"""

import time

import numpy as np
import pydantic
from funlib.geometry import Coordinate, Roi

from affcons.config import StrictModel
from blockwise.faults import inject_fault
from blockwise.steps.base import GraphStep, check_affinity_values, fragments_box
from blockwise.timers import Timers
from blockwise.volumes import box_for


class FragmentsConfig(StrictModel):
    """Watershed fragments per block (:func:`affcons.segment.block_fragments`)."""

    #: Boundary values (1 - mean affinity) below this are cell interior, where seeds are placed.
    boundary_threshold: float = pydantic.Field(0.5, ge=0.0, le=1.0)
    #: Fragments of fewer voxels (within one block's context window) are dissolved into their neighbours.
    min_size: int = pydantic.Field(0, ge=0)
    #: 2-D fragments per z-section (anisotropic data); the z affinities are then ignored by the watershed.
    per_slice: bool = False


class FragmentsStep(GraphStep):
    name = "fragments"

    def __init__(self, config):
        super().__init__(config, Coordinate(config.context))
        self.affs = box_for(config.affs, config.affs_offset, config.voxel_size)
        self.affs.require_chunks = config.affs_complete
        # the context of a block lies in its neighbours' chunks, which the worker's next blocks read again
        self.affs.cache_bytes = config.execution.read_cache_mb * 2**20
        self.fragments = fragments_box(config, writable=True)

    def read_affinities(self, roi: Roi, block_index: int) -> np.ndarray:
        """Channels 0-2 of the affinities in ``roi`` (nm), checked (:func:`check_affinity_values`)."""
        affs = self.affs.read(roi, channels=slice(0, 3))
        check_affinity_values(affs, f"{self.affs.path}, block {block_index} @ {roi} (nm)")
        return affs

    def teardown(self) -> None:
        super().teardown()
        for box in (self.affs, self.fragments):
            box.close()

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.segment import block_fragments, edge_table
        from affcons.segment.block_edges import interior_edge_table

        options = self.config.fragments
        read_roi = write_roi.grow(self.grow, self.grow).intersect(self.roi)
        with timers.time("read"):
            affs = self.read_affinities(read_roi, block_index)
        phases: dict[str, float] = {}
        with timers.time("compute"):
            crop = tuple(
                slice(b, b + s)
                for b, s in zip((write_roi.begin - read_roi.begin) / self.voxel_size, write_roi.shape / self.voxel_size)
            )
            fragments, links, nodes = block_fragments(
                affs,
                crop,
                lower=tuple(b > r for b, r in zip(write_roi.begin, self.roi.begin)),
                upper=tuple(e < r for e, r in zip(write_roi.end, self.roi.end)),
                first_id=self.first_id(block_index),
                voxel_size=tuple(self.voxel_size),
                offset=tuple(write_roi.begin),
                boundary_threshold=options.boundary_threshold,
                min_size=options.min_size,
                per_slice=options.per_slice,
                seconds=phases,
            )
            start = time.perf_counter()
            inner = affs[(slice(None),) + crop]
            if inner.dtype == np.uint8 and self.config.histogram_bins == 0:  # the compiled path, the same rows
                internal = interior_edge_table(fragments, inner, self.first_id(block_index), len(nodes))
            else:
                internal = edge_table(fragments, inner, self.config.histogram_bins)
            phases["edges"] = time.perf_counter() - start
        for phase, seconds in phases.items():
            timers.add(f"compute_{phase}", seconds)
        with timers.time("write"):
            fragments = fragments.astype(self.fragments.array.dtype, copy=False)
            self.fragments.write(write_roi, fragments)
            coords, begin, _ = self.voxel_box(write_roi)
            self.faces.write_block(coords, begin, fragments, links, inner)
            inject_fault(self.name, block_index, "partial-write")
            self.store.write_nodes(block_index, nodes)
            self.store.write_edges(block_index, internal, part="internal")
        timers.count("nodes", len(nodes))
        timers.count("internal_edges", len(internal))
