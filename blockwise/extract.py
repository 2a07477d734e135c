"""Step 4, ``extract``: one blockwise task relabels the fragments into a segmentation per requested threshold.

The driver cuts the merge tree at each threshold (:meth:`affcons.segment.MergeTree.lookup`) and saves the lookup
tables in the run directory: ``luts/ids.npy`` (all fragment ids, sorted) and ``luts/segments_<t>.npy`` (segment id
per fragment; a segment is named by its smallest fragment id). Workers memory-map them. Per block the fragments are
read once; since the ids of a block are ``first_id + 1 .. first_id + m``, its slice of the tables is found by two
binary searches and applied by direct indexing (a general sorted lookup is the fallback). Each segmentation is
written into ``OUT.zarr/segmentation_<t:.2f>`` (uint64, chunk-aligned write ROIs).

A later run with new thresholds reuses the merge tree: it only cuts and relabels. The task id names the thresholds
it writes (``extract_0.50_0.70``), so done markers are kept per set of thresholds and thresholds completed earlier
are not touched.
"""

from pathlib import Path

import numpy as np
from funlib.geometry import Roi

from blockwise.config import SegmentConfig, threshold_name
from blockwise.fragments import fragments_box
from blockwise.step import BlockwiseStep, Timers, inject_fault
from blockwise.volumes import Box


def segmentation_name(threshold: float) -> str:
    return f"segmentation_{threshold_name(threshold)}"


def lut_paths(run_dir: Path, threshold: float) -> tuple[Path, Path]:
    """``(ids.npy, segments_<t>.npy)`` of the lookup table at ``threshold``."""
    return run_dir / "luts" / "ids.npy", run_dir / "luts" / f"segments_{threshold_name(threshold)}.npy"


class ExtractStep(BlockwiseStep):
    name = "extract"

    def __init__(self, config: SegmentConfig, thresholds=None):
        super().__init__(config)
        self.thresholds = sorted(config.extract.thresholds if thresholds is None else thresholds)
        self.fragments = fragments_box(config)
        self.outputs = [
            Box(str(config.out), segmentation_name(t), tuple(config.roi_offset), tuple(config.voxel_size), True)
            for t in self.thresholds
        ]
        self.ids = None
        self.segments = None

    @property
    def task_id(self) -> str:
        return "extract_" + "_".join(threshold_name(t) for t in self.thresholds)

    def rois(self) -> tuple[Roi, Roi, Roi]:
        block = Roi((0, 0, 0), self.block_shape)
        return self.roi, block, block

    def setup(self) -> None:
        self.ids = np.load(lut_paths(self.run_dir, self.thresholds[0])[0], mmap_mode="r")
        self.segments = [np.load(lut_paths(self.run_dir, t)[1], mmap_mode="r") for t in self.thresholds]

    def teardown(self) -> None:
        self.ids = self.segments = None
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
            nonzero = fragments != 0
            local = np.where(nonzero, fragments - np.uint64(first), 0).astype(np.int64)
            dense = count == 0 or (int(ids[0]) == first + 1 and int(ids[-1]) == first + count)
            dense = dense and int(local.max(initial=0)) <= count
            results = []
            for segments in self.segments:
                table = np.asarray(segments[low:high])
                if dense:
                    padded = np.concatenate([np.zeros(1, np.uint64), table])
                    results.append(padded[local])
                else:
                    results.append(apply_lookup(fragments, ids, table))
        with timers.time("write"):
            for index, (output, segmentation) in enumerate(zip(self.outputs, results)):
                output.write(write_roi, segmentation)
                if index == 0:
                    inject_fault(self.name, block_index, "partial-write")
        timers.count("fragments", count)
