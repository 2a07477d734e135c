"""``affcons pyramid``: a multiscale (OME-Zarr 0.5) copy of a volume, computed blockwise on daisy workers, so a
volume of any size can be browsed in neuroglancer or napari.

The group ``c.zarr/name_multiscale`` holds ``s0`` (a copy of the source) and ``s1 ... sn``, each level halving the
finest axes until every axis has at most ``max_extent`` voxels (:func:`affcons.multiscale.pyramid_factors`).
Intensities and affinities are averaged, ids take the most frequent id of each window
(:func:`affcons.multiscale.downsample_block`). One daisy task per level (:mod:`blockwise.steps.downsample`), each
level after the level below is complete; a worker holds one chunk of its level and the matching region below, so
its memory does not grow with the volume. The ``ome`` metadata and ``complete: true`` are written last: a group
without them is unfinished, and re-running the same command resumes it (blocks done are skipped) and gives the
same bytes.
"""

import math
import time
from pathlib import Path

import numpy as np

from affcons.errors import ConfigError, VolumeError
from blockwise.config import PyramidConfig, PyramidOptions
from blockwise.layout import RunDir, pyramid_run_dir, read_attrs, update_attrs
from blockwise.runner import Driver
from blockwise.steps.downsample import DownsampleStep, group_location, level_chunks, level_geometry, level_name

#: Array names that hold ids, downsampled by mode under ``mode: auto`` whatever their dtype.
ID_NAMES = ("fragments", "segmentation", "labels", "ids", "neurites")


def resolve(options: PyramidOptions) -> PyramidConfig:
    """A complete :class:`PyramidConfig`: the source's geometry and dtype, the output group, the levels."""
    from affcons.io import open_volume, split_dataset_path
    from affcons.multiscale import pyramid_factors

    data = options.model_dump()
    if not data["source"]:
        raise ConfigError("missing source: name the array to downsample, e.g. out.zarr/segmentation_0.50")
    source = split_dataset_path(data["source"])
    if source.is_hdf5 or not source.dataset:
        raise ConfigError(f"source {data['source']}: give a zarr array, c.zarr/name (affcons import converts HDF5)")
    volume = open_volume(data["source"])
    channels = [int(c) for c in volume.shape[: len(volume.shape) - 3]]
    data["voxel_size"] = tuple(int(v) for v in volume.voxel_size)
    data["offset"] = tuple(int(o) for o in volume.roi.offset)
    data["shape"] = tuple(int(s) for s in volume.shape[-3:])
    data["channels"] = channels
    data["dtype"] = str(volume.dtype)
    name = source.dataset.rsplit("/", 1)[-1]
    out = data["out"] or f"{source.container}/{source.dataset}_multiscale"
    target = split_dataset_path(out)
    if target.is_hdf5 or not target.dataset:
        raise ConfigError(f"--out {out}: give a group inside a zarr container, e.g. out.zarr/{name}_multiscale")
    if Path(target.container).absolute() == Path(source.container).absolute() and target.dataset == source.dataset:
        raise ConfigError(f"--out {out} is the source itself; give another group")
    data["out"] = f"{Path(target.container).absolute()}/{target.dataset}"
    data["source"] = f"{Path(source.container).absolute()}/{source.dataset}"
    if data["mode"] == "auto":
        ids = np.dtype(data["dtype"]).kind in "iu" and np.dtype(data["dtype"]).itemsize >= 4
        data["mode"] = "mode" if ids or name.lower().startswith(ID_NAMES) else "mean"
    steps = pyramid_factors(data["voxel_size"], data["shape"], data["max_extent"])
    factors = [(1, 1, 1)]
    for step in steps:
        factors.append(tuple(f * s for f, s in zip(factors[-1], step)))
    data["factors"] = factors
    data["run_dir"] = str(Path(data["run_dir"] or pyramid_run_dir(data["out"])).absolute())
    for key in ("max_extent",):
        data.pop(key)
    return PyramidConfig.model_validate(data)


class PyramidDriver(Driver):
    """One ``affcons pyramid`` run of a resolved config."""

    command = "affcons pyramid"
    provenance_attr = "affcons_pyramid"
    config_file = RunDir.PYRAMID_CONFIG
    incomplete = "the multiscale group is not marked complete"

    def __init__(self, config: PyramidConfig, quiet: bool = False, stream=None):
        super().__init__(config, config.run_dir, quiet, stream)

    def check_existing(self) -> None:
        """Refuse a run directory or output group of another config (writes nothing)."""
        self.check_run_dir()
        self.check_output(self.config.out, read_attrs(self.config.out))

    def levels(self) -> list[dict]:
        """Per level: name, factor, voxel size (nm), shape and chunks (voxels), blocks."""
        rows = []
        for level, factor in enumerate(self.config.factors):
            voxel_size, shape = level_geometry(self.config, level)
            chunks = level_chunks(self.config, level)
            blocks = math.prod(math.ceil(s / c) for s, c in zip(shape, chunks))
            rows.append(
                {
                    "name": level_name(level),
                    "factor": list(factor),
                    "voxel_size_nm": list(voxel_size),
                    "shape": list(shape),
                    "chunks": list(chunks),
                    "blocks": blocks,
                }
            )
        return rows

    def plan(self) -> str:
        config = self.config
        lines = [
            f"{self.command}: plan (dry run; nothing written)",
            f"  source  {config.source}: {config.shape} voxels at {config.voxel_size} nm, {config.dtype}"
            + (f", channels {config.channels}" if config.channels else ""),
            f"  output  {config.out} (OME-Zarr 0.5 multiscales, {config.mode} downsampling), run dir {config.run_dir}",
        ]
        for row in self.levels():
            lines.append(
                f"  {row['name']:<4} x{tuple(row['factor'])}: {row['shape']} voxels at {row['voxel_size_nm']} nm, "
                f"chunks {row['chunks']}, {row['blocks']} blocks"
            )
        return "\n".join(lines)

    def run(self, dry_run: bool = False) -> int:
        import daisy.logging

        self.check_existing()  # refusals write nothing
        self.check_launcher()
        if dry_run:
            print(self.plan(), file=self.stream)
            return 0
        self.lock()
        self.check_existing()  # again: no other driver can write here now
        started = self.start_summary(levels=self.levels(), stages={}, tasks={})
        self.write_config()
        daisy.logging.set_log_basedir(str(self.run_dir.logs))
        return self.run_recorded(self._run_levels, started, self.create_levels(), started)

    def _run_levels(self, fresh: list[bool], started: float) -> int:
        from affcons.multiscale import write_multiscales_metadata

        config = self.config
        for level in range(len(config.factors)):
            start = time.time()
            step = DownsampleStep(config, level)
            self.say(f"{step.task_id}: {step.num_blocks} blocks, {config.execution.workers} worker(s)")
            report = self.run_step(step, {"cpu": 1}, reset=fresh[level])
            self.summary["tasks"][step.task_id] = report.as_dict()
            self.summary["stages"][step.task_id] = self.stage_record(start, step)
            if not report.ok:
                return self.fail([report])
        levels = [(level_name(k), factor) for k, factor in enumerate(config.factors)]
        write_multiscales_metadata(
            config.out, levels, config.voxel_size, config.offset, channel_axes=len(config.channels), method=config.mode
        )
        update_attrs(config.out, {"complete": True})
        self.summary["status"] = "complete"
        self.summary["wall_s"] = round(time.time() - started, 3)
        print(
            f"{self.command}: {config.out}: {len(levels)} levels ({', '.join(name for name, _ in levels)}) in "
            f"{self.summary['wall_s']:.1f} s; view it: affcons view {config.out}",
            file=self.stream,
            flush=True,
        )
        return 0

    def create_levels(self) -> list[bool]:
        """The output group (with this run's provenance) and every level's array, each created atomically
        (:func:`affcons.io.create_array_atomically`); True per level created now."""
        import zarr

        from affcons.codecs import zarr_compressors
        from affcons.io import create_array_atomically

        config = self.config
        container, group = group_location(config.out)
        if read_attrs(config.out) is None:
            zarr.open_group(f"{container}/{group}", mode="w-", zarr_format=3, attributes=self.provenance())
        channel_names = ["c^"] if len(config.channels) == 1 else [f"c{i}^" for i in range(len(config.channels))]
        fresh = []
        for level in range(len(config.factors)):
            path = f"{container}/{group}/{level_name(level)}"
            if Path(path).exists():
                fresh.append(False)
                continue
            _, shape = level_geometry(config, level)
            try:
                create_array_atomically(
                    path,
                    shape=tuple(config.channels) + tuple(shape),
                    chunks=tuple(config.channels) + tuple(level_chunks(config, level)),
                    dtype=config.dtype,
                    compressors=zarr_compressors(config.compression),
                    attributes={},
                    dimension_names=channel_names[: len(config.channels)] + ["z", "y", "x"],
                )
            except (OSError, ValueError) as error:
                raise VolumeError(f"{path}: cannot create level {level}: {error}") from error
            fresh.append(True)
        return fresh
