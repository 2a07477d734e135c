"""The contract of a blockwise step and the block grid every step shares.

A step is built from its command's resolved config alone (``SegmentConfig`` or ``PredictConfig``, both in
:mod:`blockwise.config`), so the driver can pickle it to daisy's local worker processes and a cluster worker can
rebuild it from the run directory's config file (:mod:`blockwise.worker`). Its interface:

- ``name`` / ``task_id``: the step's name and daisy task id;
- ``rois()``: daisy's total, read and write ROIs in nm (one block at the origin; blocks tile at the write stride);
- ``setup()``: per worker process, once (open arrays, stores, networks);
- ``process_block(write_roi, block_index, timers)``: read, compute, write one block; idempotent, so a retried or
  resumed block overwrites its own earlier output with the same bytes;
- ``teardown()``: per worker process, at the end;
- ``worker_arguments()``: what a cluster worker needs besides the config to rebuild this step.

Blocks are identified by their *grid index* (:meth:`BlockwiseStep.block_index`), the linear index of the write
ROI's position in the block grid of the run's ROI. It depends only on geometry, never on daisy's scheduling, so
fragment ids (``local_id + grid_index * (voxels_per_block + 1)``) and graph-store keys are the same in every run.
"""

import atexit
import math

import numpy as np
from funlib.geometry import Coordinate, Roi

from affcons.errors import VolumeError
from blockwise.faces import FaceSections
from blockwise.layout import FRAGMENTS, RunDir
from blockwise.timers import Timers
from blockwise.volumes import Box


class BlockwiseStep:
    """Base class of the blockwise steps (see the module docstring for the contract)."""

    #: Step name: the ``--step`` of the cluster worker and the key of :data:`blockwise.registry.STEPS`.
    name: str = ""

    def __init__(self, config):
        self.config = config
        self.voxel_size = Coordinate(config.voxel_size)
        self.roi = Roi(config.roi_offset, config.roi_shape)
        self.block_shape = Coordinate(config.block_size)
        self.grid_shape = tuple(math.ceil(r / b) for r, b in zip(config.roi_shape, config.block_size))
        self.voxels_per_block = math.prod(config.block_voxels)
        self.run_dir = RunDir(config.run_dir)
        self._ready = False

    # ------------------------------------------------------------------------------------------- the contract

    @property
    def task_id(self) -> str:
        return self.name

    def rois(self) -> tuple[Roi, Roi, Roi]:
        """``(total_roi, read_roi, write_roi)`` for daisy, nm."""
        raise NotImplementedError

    def setup(self) -> None:
        """Open what ``process_block`` needs (once per worker process)."""

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Close what ``setup`` opened."""

    @property
    def needs_gpu(self) -> bool:
        """Whether each worker of this step computes on a GPU (cluster launchers then request one per job)."""
        return False

    def worker_arguments(self) -> list[str]:
        """Command-line arguments of ``python -m blockwise.worker`` besides ``--config`` and ``--step``."""
        return []

    # ------------------------------------------------------------------------------------------- the grid

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block_index(self, write_roi: Roi) -> int:
        """Linear (C-order) index of the block whose write ROI begins at ``write_roi.begin`` in the block grid."""
        position = (write_roi.begin - self.roi.begin) / self.block_shape
        if (write_roi.begin - self.roi.begin) % self.block_shape != Coordinate((0, 0, 0)):
            raise ValueError(f"{self.task_id}: write ROI {write_roi} is not on the block grid of {self.roi}")
        index = 0
        for p, n in zip(position, self.grid_shape):
            index = index * n + int(p)
        return index

    def block_roi(self, block_index: int) -> Roi:
        """Write ROI of the block with this grid index (clipped to the run's ROI)."""
        position = []
        for n in reversed(self.grid_shape):
            position.append(block_index % n)
            block_index //= n
        begin = self.roi.begin + Coordinate(tuple(reversed(position))) * self.block_shape
        return Roi(begin, self.block_shape).intersect(self.roi)

    def voxel_box(self, write_roi: Roi) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(grid coordinates, first voxel relative to the ROI, shape in voxels) of a block's write ROI."""
        begin = (write_roi.begin - self.roi.begin) / self.voxel_size
        coords = tuple(int(b) // int(s) for b, s in zip(begin, self.block_shape / self.voxel_size))
        return coords, tuple(int(b) for b in begin), tuple(int(s) for s in write_roi.shape / self.voxel_size)

    def first_id(self, block_index: int) -> int:
        """Fragment ids of a block are ``first_id + 1 .. first_id + voxels_per_block``."""
        return block_index * (self.voxels_per_block + 1)

    @property
    def ids_dtype(self) -> np.dtype:
        """The narrowest of uint32 and uint64 that holds every fragment (and so every segment) id of the run."""
        return ids_dtype(self.num_blocks, self.voxels_per_block)

    def ensure_setup(self) -> None:
        """:meth:`setup` once per process; :meth:`teardown` at exit."""
        if not self._ready:
            self.setup()
            self._ready = True
            atexit.register(self.teardown)

    def timers_dir(self):
        return self.run_dir.timers(self.task_id)


def ids_dtype(num_blocks: int, voxels_per_block: int) -> np.dtype:
    """uint32 if the largest possible fragment id, ``num_blocks * (voxels_per_block + 1)``, fits, else uint64
    (half the bytes to compress and write; e.g. 128^3 blocks: up to 2047 blocks, a 1.6^3 Gvoxel volume)."""
    largest = num_blocks * (voxels_per_block + 1)
    return np.dtype(np.uint32 if largest <= np.iinfo(np.uint32).max else np.uint64)


def fragments_box(config, writable: bool = False) -> Box:
    """``OUT.zarr/fragments``: the ids of :func:`ids_dtype` (uint64 in runs made before it), the run's ROI, the
    affinities' voxel size."""
    return Box(str(config.out), FRAGMENTS, tuple(config.roi_offset), tuple(config.voxel_size), writable)


def face_sections(config) -> FaceSections:
    """``RUN_DIR/faces.zarr``: the blocks' face sections (:mod:`blockwise.faces`) on the run's block grid."""
    grid = tuple(math.ceil(r / b) for r, b in zip(config.roi_shape, config.block_size))
    volume = tuple(r // v for r, v in zip(config.roi_shape, config.voxel_size))
    return FaceSections(RunDir(config.run_dir).faces, grid, config.block_voxels, volume)


#: Float affinities must lie in [0, 1]; this much rounding error is tolerated.
AFFINITY_TOLERANCE = 1e-6


def check_affinity_values(affs: np.ndarray, where: str) -> None:
    """Float affinities must be finite and in [0, 1] (uint8 ones always are); else a VolumeError naming ``where``
    and the fix. Catches the silent failures: 0..255 stored as float (everything merges), negative or NaN values
    (empty segmentations)."""
    if affs.dtype == np.uint8 or affs.size == 0:
        return
    finite = np.isfinite(affs)
    if not finite.all():
        raise VolumeError(
            f"affinities {where}: {int(affs.size - finite.sum())} of {affs.size} values are NaN or infinite; "
            "affinities must be finite (fix the prediction that wrote them)"
        )
    low, high = float(affs.min()), float(affs.max())
    if low < -AFFINITY_TOLERANCE or high > 1 + AFFINITY_TOLERANCE:
        fix = "float affinities must lie in [0, 1]"
        if high > 1.5:
            fix = "they look like uint8 affinities (0-255) stored as float: divide by 255 or store them as uint8"
        raise VolumeError(f"affinities {where}: values in [{low:g}, {high:g}], outside [0, 1]; {fix}")


class GraphStep(BlockwiseStep):
    """A step that writes to the graph store and shares the run's face sections (fragments, edges). A block reads its
    write ROI grown by ``grow`` (nm) on every side, as declared to daisy; arrays and store open in the worker."""

    def __init__(self, config, grow: Coordinate):
        super().__init__(config)
        self.grow = grow
        self.faces = face_sections(config)
        self.store = None

    def rois(self) -> tuple[Roi, Roi, Roi]:
        total = self.roi.grow(self.grow, self.grow)
        read = Roi(-self.grow, self.block_shape + self.grow * 2)
        write = Roi((0, 0, 0), self.block_shape)
        return total, read, write

    def setup(self) -> None:
        from affcons.store import open_store

        self.store = open_store(self.config.graph_url(), "a", self.config.histogram_bins)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
