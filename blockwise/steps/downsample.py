"""Step ``downsample``: one level of a multiscale pyramid (:mod:`blockwise.pyramid`), block by block.

Level 0 (``s0``) is a copy of the source; level ``k`` is level ``k - 1`` downsampled by the factor between them
(:func:`affcons.multiscale.downsample_block`: window mean for intensities, window mode for ids). A block is one
chunk of the level it writes; it reads the same region (nm) of the level below, clipped to that level, so a window
cut by the volume's upper edge uses the voxels it has, exactly as the whole-volume computation does. Each level is
one daisy task, run after the level below is complete.
"""

import math

import numpy as np
from funlib.geometry import Coordinate, Roi

from blockwise.layout import RunDir
from blockwise.steps.base import BlockwiseStep
from blockwise.timers import Timers
from blockwise.volumes import Box, box_for


def level_name(level: int) -> str:
    """The array of level ``level`` inside the multiscale group: ``s0``, ``s1``, ..."""
    return f"s{level}"


def group_location(out: str) -> tuple[str, str]:
    """``(container, group)`` of a multiscale group ``c.zarr/name``."""
    from affcons.volume_paths import split_dataset_path

    location = split_dataset_path(out)
    return str(location.container), location.dataset


def level_geometry(config, level: int) -> tuple[Coordinate, Coordinate]:
    """``(voxel_size nm, shape voxels)`` of level ``level`` (spatial axes)."""
    factor = config.factors[level]
    voxel_size = Coordinate(v * f for v, f in zip(config.voxel_size, factor))
    shape = Coordinate(math.ceil(s / f) for s, f in zip(config.shape, factor))
    return voxel_size, shape


def level_chunks(config, level: int) -> Coordinate:
    """Chunks (= blocks) of level ``level``, voxels: the configured chunk shape clipped to the level."""
    _, shape = level_geometry(config, level)
    return Coordinate(min(c, s) for c, s in zip(config.chunk_shape, shape))


class DownsampleStep(BlockwiseStep):
    name = "downsample"

    def __init__(self, config, level: int):
        self.config = config
        self.level = int(level)
        self.voxel_size, shape = level_geometry(config, self.level)
        self.roi = Roi(config.offset, shape * self.voxel_size)
        self.block_shape = level_chunks(config, self.level) * self.voxel_size
        self.grid_shape = tuple(math.ceil(r / b) for r, b in zip(self.roi.shape, self.block_shape))
        self.voxels_per_block = math.prod(level_chunks(config, self.level))
        self.run_dir = RunDir(config.run_dir)
        self._ready = False
        container, group = group_location(config.out)
        if self.level == 0:
            self.below = box_for(config.source, config.offset, config.voxel_size)
            self.below_roi = Roi(config.offset, Coordinate(config.shape) * Coordinate(config.voxel_size))
            self.factor = (1, 1, 1)
        else:
            below_voxel_size, below_shape = level_geometry(config, self.level - 1)
            below = f"{group}/{level_name(self.level - 1)}"
            self.below = Box(container, below, tuple(config.offset), tuple(below_voxel_size))
            self.below_roi = Roi(config.offset, below_shape * below_voxel_size)
            self.factor = tuple(a // b for a, b in zip(config.factors[self.level], config.factors[self.level - 1]))
        target = f"{group}/{level_name(self.level)}"
        self.target = Box(container, target, tuple(config.offset), tuple(self.voxel_size), writable=True)

    @property
    def task_id(self) -> str:
        return f"{self.name}_{level_name(self.level)}"

    def rois(self) -> tuple[Roi, Roi, Roi]:
        block = Roi((0, 0, 0), self.block_shape)
        return self.roi, block, block

    def worker_arguments(self) -> list[str]:
        return ["--level", str(self.level)]

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        from affcons.multiscale import downsample_block

        with timers.time("read"):
            data = self.below.read(write_roi.intersect(self.below_roi))
        with timers.time("compute"):
            if self.factor != (1, 1, 1):
                data = downsample_block(data, self.factor, self.config.mode)
        with timers.time("write"):
            self.target.write(write_roi, np.ascontiguousarray(data))

    def teardown(self) -> None:
        for box in (self.below, self.target):
            box.close()
