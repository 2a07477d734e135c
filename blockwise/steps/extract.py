"""Step ``extract``: one blockwise task relabels the fragments into a segmentation per requested threshold.

The agglomerate step cuts the merge tree at each threshold and saves the lookup tables in the run directory
(``luts/ids.npy``: all fragment ids, sorted; ``luts/segments_<t>.npy``: the segment of each, named by its smallest
fragment id). Workers memory-map them. Per block the fragments are read once; since the ids of a block are
``first_id + 1 .. first_id + m``, its slice of the tables is found by two binary searches and applied by direct
indexing, the block's local indices once for all thresholds (:class:`affcons.segment.relabel.BlockRelabeller`; a
general sorted lookup is the fallback). Each segmentation is written into
``OUT.zarr/segmentation_<t:.2f>`` (the fragments' dtype, chunk-aligned write ROIs).

A later run with new thresholds reuses the merge tree: it only cuts and relabels. The task id names the thresholds
it writes (``extract_0.50_0.70``; for more than four, the first, the last, the count and a digest of all, so the
name stays short), so done markers are kept per set of thresholds and thresholds completed earlier are not touched.
"""

import hashlib

import numpy as np
import pydantic
from funlib.geometry import Roi

from affcons.config import StrictModel
from blockwise.faults import inject_fault
from blockwise.layout import segmentation_name, threshold_name
from blockwise.steps.base import BlockwiseStep, fragments_box
from blockwise.timers import Timers
from blockwise.volumes import Box


class ExtractConfig(StrictModel):
    """Segmentations at thresholds: a cut of the merge tree and a blockwise relabel of the fragments."""

    #: Merge thresholds in [0, 1] with at most two decimals (``OUT.zarr/segmentation_<t:.2f>``), ascending.
    thresholds: list[float] = pydantic.Field(min_length=1)

    @pydantic.field_validator("thresholds")
    @classmethod
    def _valid_thresholds(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {value} is outside [0, 1]")
            if abs(round(value, 2) - value) > 1e-9:
                raise ValueError(
                    f"threshold {value} has more than two decimals (outputs are named segmentation_<t:.2f>)"
                )
        names = [threshold_name(v) for v in values]
        if len(set(names)) != len(names):
            raise ValueError(f"thresholds repeat: {values}")
        return sorted(round(v, 2) for v in values)


class ExtractStep(BlockwiseStep):
    name = "extract"

    def __init__(self, config, thresholds=None):
        super().__init__(config)
        self.thresholds = sorted(config.extract.thresholds if thresholds is None else thresholds)
        self.fragments = fragments_box(config)
        self.outputs = [
            Box(str(config.out), segmentation_name(t), tuple(config.roi_offset), tuple(config.voxel_size), True)
            for t in self.thresholds
        ]
        self.ids = None
        self.segments = None
        self.relabeller = None

    @property
    def task_id(self) -> str:
        names = [threshold_name(t) for t in self.thresholds]
        if len(names) <= 4:
            return "extract_" + "_".join(names)
        digest = hashlib.sha256(",".join(names).encode()).hexdigest()[:12]
        return f"extract_{names[0]}-{names[-1]}_{len(names)}_{digest}"

    def worker_arguments(self) -> list[str]:
        return ["--thresholds", *(threshold_name(t) for t in self.thresholds)]

    def rois(self) -> tuple[Roi, Roi, Roi]:
        block = Roi((0, 0, 0), self.block_shape)
        return self.roi, block, block

    def setup(self) -> None:
        self.ids = np.load(self.run_dir.lut_ids, mmap_mode="r")
        self.segments = [np.load(self.run_dir.lut_segments(t), mmap_mode="r") for t in self.thresholds]
        from affcons.segment.relabel import BlockRelabeller  # numba: loaded in the workers only

        self.relabeller = BlockRelabeller()

    def teardown(self) -> None:
        self.ids = self.segments = self.relabeller = None
        self.fragments.close()
        for output in self.outputs:
            output.close()

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.segment import apply_lookup

        with timers.time("read"):
            fragments = self.fragments.read(write_roi)
        with timers.time("compute"):
            first = self.first_id(block_index)
            low = int(np.searchsorted(self.ids, np.uint64(first + 1)))
            high = int(np.searchsorted(self.ids, np.uint64(first + self.voxels_per_block + 1)))
            ids = np.asarray(self.ids[low:high])
            count = high - low
            dense = count == 0 or (int(ids[0]) == first + 1 and int(ids[-1]) == first + count)
            dense = dense and self.relabeller.index(fragments, first, count)
        for index, (segments, output) in enumerate(zip(self.segments, self.outputs)):
            with timers.time("compute"):
                dtype = output.array.dtype  # the fragments' (uint32 where the run's ids fit)
                table = np.asarray(segments[low:high]).astype(dtype)
                if dense:
                    segmentation = self.relabeller.relabel(np.concatenate([np.zeros(1, dtype), table]))
                else:
                    segmentation = apply_lookup(fragments, ids, table).astype(dtype, copy=False)
            with timers.time("write"):
                output.write(write_roi, segmentation)
            if index == 0:
                inject_fault(self.name, block_index, "partial-write")
        timers.count("fragments", count)
