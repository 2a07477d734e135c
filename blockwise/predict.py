"""``affcons predict``: resolve the options into a :class:`~blockwise.config.PredictConfig` (loading the model once to
check it), guard existing outputs, run the ``predict`` step as one daisy task, summarise, exit code.

Execution: one daisy task, ``fit="shrink"`` (the last blocks end at the ROI's end; their tiles overhang and are
cropped), ``read_write_conflict=False`` (blocks read raw and write disjoint chunks). On GPUs one worker per GPU
(``requires={"gpu": 1}``, ``resources={"gpu": N}``, :mod:`blockwise.gpus`); without a GPU, N CPU workers with
``cores // N`` torch threads each.

Reliability as in ``affcons segment``: the resolved config in ``RUN_DIR/predict.yaml``; done markers in
``RUN_DIR/tracking/predict`` (a re-run resumes, identical bytes); a different config for an existing run directory
or output is refused (:class:`~affcons.errors.OutputExistsError`, listing the differences); failed blocks are
retried ``max_retries`` times and then listed, with exit code 1; outputs are marked ``complete: true`` only when
every block succeeded.
"""

import math
import time
from pathlib import Path

from affcons.config import validate
from affcons.errors import ConfigError, VolumeError
from affcons.files import file_sha256
from blockwise.config import PredictConfig, PredictOptions
from blockwise.geometry import check_block_chunks, resolve_roi, resolve_voxel_size, to_nm
from blockwise.gpus import describe_device, gpu_capability, resolve_gpus
from blockwise.layout import RunDir, input_is_complete, predict_run_dir, read_attrs, update_attrs
from blockwise.runner import Driver
from blockwise.steps.predict import PredictStep, resolve_map
from blockwise.timers import summarise, voxels_since

#: Default block and chunk shapes in tiles (z, y, x), clipped to the ROI.
BLOCK_TILES = (4, 8, 8)
CHUNK_TILES = (2, 2, 2)

Triple = tuple[int, int, int]


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _model_voxel_size(model_config) -> tuple[Triple | None, str]:
    """The voxel size of the model's training raw, read from that volume if it exists here."""
    from affcons.io import read_voxel_size
    from affcons.train.config import resolve_path

    path = resolve_path(model_config.data.train.raw)
    try:
        stored = read_voxel_size(str(path))
    except (VolumeError, OSError):
        return None, f"{path} (not readable here)"
    return (tuple(stored) if stored is not None else None), str(path)


def _zarr_dataset(path: str, option: str) -> str:
    """``path`` made absolute; it must name a dataset inside a zarr container."""
    from affcons.io import split_dataset_path

    if not str(split_dataset_path(path).container).endswith(".zarr"):
        raise ConfigError(f"{option} must name a dataset in a zarr container (out.zarr/name), got {path}")
    return str(Path(path).absolute())


def resolve(options: PredictOptions, voxels: dict | None = None) -> tuple[PredictConfig, object]:
    """A complete :class:`PredictConfig` from the user's options; also loads the checkpoint once to check it.

    ``voxels`` holds lengths given in voxels (``block_size`` from the command line); they are converted to nm with
    the raw's voxel size. Raises :class:`~affcons.errors.CheckpointError` (missing file, foreign file, weights that
    do not match the recorded config), :class:`~affcons.errors.VolumeError` (raw not 3-D, voxel size missing or
    different from the model's), :class:`~affcons.errors.ConfigError` (geometry). Returns ``(config, networks)``.
    """
    from affcons.io import open_volume
    from affcons.nets import load_model
    from affcons.predict import SHORT_RANGE, PatchGrid, Predictor, default_margin, required_margin

    data = options.model_dump()
    for key in ("checkpoint", "raw", "out"):
        if not data.get(key):
            raise ConfigError(f"missing {key}: pass --{key} or set '{key}' in the config file")
    data["out"] = _zarr_dataset(data["out"], "--out")
    if data["disagreement"]:
        data["disagreement"] = _zarr_dataset(data["disagreement"], "--disagreement")
    data["checkpoint"] = str(Path(data["checkpoint"]).absolute())
    networks, model_config = load_model(data["checkpoint"], use_ema=data["use_ema"])
    data["checkpoint_sha256"] = file_sha256(data["checkpoint"])
    data["map"] = resolve_map(data["map"], networks.available)

    raw_path = data["raw"]
    voxel_size = resolve_voxel_size(raw_path, data["voxel_size"], "raw")
    raw = open_volume(raw_path, voxel_size=voxel_size)
    data["raw_complete"] = input_is_complete(raw_path)
    if len(raw.shape) != 3:
        raise VolumeError(
            f"raw {raw_path}: expected 3 axes (z, y, x) of grey values, got {len(raw.shape)} (shape {tuple(raw.shape)})"
        )
    expected, source = data["model_voxel_size"], "--model-voxel-size"
    if expected is None:
        expected, source = _model_voxel_size(model_config)
    if expected is not None and tuple(expected) != tuple(voxel_size):
        raise VolumeError(
            f"raw {raw_path}: voxel size {tuple(voxel_size)} nm differs from the model's training voxel size "
            f"{tuple(expected)} nm (from {source}); resample the raw, or pass --model-voxel-size if the model "
            "was trained at this resolution"
        )
    data["model_voxel_size"] = tuple(expected) if expected is not None else None
    data["voxel_size"] = voxel_size
    data["raw_offset"] = tuple(raw.roi.offset)
    data["raw_shape"] = tuple(raw.shape)
    data["raw"] = str(Path(raw_path).absolute())
    roi = resolve_roi(raw.roi, data["roi_offset"], data["roi_shape"], voxel_size, raw_path)
    data["roi_offset"], data["roi_shape"] = tuple(roi.offset), tuple(roi.shape)
    for key, value in (voxels or {}).items():
        if value is not None:
            data[key] = to_nm(value, voxel_size)

    channels = SHORT_RANGE if data["channels"] == "short" else len(networks.offsets)
    patch = tuple(data["patch"] or model_config.data.crop)
    margin = tuple(data["margin"] or default_margin(patch, networks.offsets, channels, data["map"]))
    try:
        grid = PatchGrid(patch, margin)
    except ConfigError as error:
        needed = required_margin(networks.offsets, channels, data["map"])
        raise ConfigError(
            f"{error}. The {data['map']} map's channels 0-{channels - 1} need a margin of at least {list(needed)} "
            "voxels (implicit long-range offsets); use a larger --patch, --channels short, or --map explicit"
        ) from None
    # checks the margin and that the model trained what the map and the disagreement map need
    Predictor(networks, grid, data["map"], channels, disagreement=bool(data["disagreement"]), dtype=data["dtype"])
    data["patch"], data["margin"] = grid.patch, grid.margin
    roi_voxels = tuple(s // v for s, v in zip(roi.shape, voxel_size))
    data["chunk_shape"], data["block_size"] = _blocks(data, grid, roi_voxels, voxel_size)

    launcher = data["execution"]["launcher"]["type"]
    device, gpus, entries = resolve_gpus(data["device"], data["gpus"], launcher)
    data["device"], data["gpus"], data["gpu_entries"] = device, gpus, entries
    import torch

    from affcons.devices import resolve_precision

    if device == "cpu" or gpus:  # else each cluster worker resolves "auto" on its own GPU
        capability = gpu_capability(gpus) if gpus else None
        data["precision"] = resolve_precision(data["precision"], torch.device(device), capability)
    data["batch_size"] = data["batch_size"] or (8 if device == "cuda" else 4)
    data["run_dir"] = str(Path(data["run_dir"] or predict_run_dir(data["out"])).absolute())
    if device == "cuda" and gpus:
        data["execution"]["workers"] = len(gpus)
    return validate(PredictConfig, data, "affcons predict"), networks


def _blocks(data: dict, grid, roi_voxels, voxel_size: Triple) -> tuple[Triple, Triple]:
    """``(chunk_shape voxels, block_size nm)``: the given ones checked, or the defaults (2 x 2 x 2 tiles per chunk,
    4 x 8 x 8 tiles per block, clipped to the ROI rounded up to whole tiles)."""
    covered = tuple(_round_up(r, t) for r, t in zip(roi_voxels, grid.tile))
    chunk = data["chunk_shape"] or tuple(min(c * t, r) for c, t, r in zip(CHUNK_TILES, grid.tile, covered))
    if data["block_size"] is None:
        block = tuple(
            _round_up(min(b * t, r), math.lcm(t, c)) for b, t, r, c in zip(BLOCK_TILES, grid.tile, covered, chunk)
        )
        return tuple(chunk), to_nm(block, voxel_size)
    block_nm = tuple(data["block_size"])
    if any(b % v for b, v in zip(block_nm, voxel_size)) or min(block_nm) < 1:
        raise ConfigError(f"block size {block_nm} nm is not a positive multiple of the voxel size {voxel_size} nm")
    block = tuple(b // v for b, v in zip(block_nm, voxel_size))
    if any(b % t for b, t in zip(block, grid.tile)):
        raise ConfigError(
            f"block {list(block)} voxels is not a whole number of output tiles {list(grid.tile)} (patch "
            f"{list(grid.patch)} minus twice the margin {list(grid.margin)}): blockwise output would differ from "
            "whole-volume output"
        )
    check_block_chunks(block, chunk)
    return tuple(chunk), block_nm


class PredictDriver(Driver):
    """One ``affcons predict`` run of a resolved config: guards, outputs, the daisy task, summary, exit code."""

    command = "affcons predict"
    provenance_attr = "affcons_predict"
    config_file = RunDir.PREDICT_CONFIG

    def __init__(self, config: PredictConfig, quiet: bool = False, stream=None):
        super().__init__(config, config.run_dir, quiet, stream)

    def outputs(self) -> list[tuple[str, int | None, str]]:
        """``(path, channels, dtype)`` of each output; channels None: none (disagreement) or all of the model's."""
        from affcons.predict import SHORT_RANGE

        config = self.config
        channels = SHORT_RANGE if config.channels == "short" else None
        result = [(config.out, channels, config.dtype)]
        if config.disagreement:
            result.append((config.disagreement, None, "uint8"))
        return result

    def num_channels(self) -> int:
        from affcons.train.checkpoint import read_checkpoint

        _, model_config = read_checkpoint(self.config.checkpoint)
        return len(model_config.model.offsets)

    def check_existing(self) -> list[str]:
        """Refuse state of another config (writes nothing); returns the outputs that already exist."""
        self.check_run_dir()
        return [path for path, _, _ in self.outputs() if self.check_output(path, read_attrs(path))]

    def create_outputs(self, existing: list[str]) -> bool:
        """Create the missing outputs; True if any was created now (then old done markers are void)."""
        from funlib.geometry import Roi

        from affcons.io import create_volume

        created = False
        for path, channels, dtype in self.outputs():
            if path in existing:
                continue
            create_volume(
                path,
                Roi(self.config.roi_offset, self.config.roi_shape),
                self.config.voxel_size,
                dtype,
                num_channels=self.num_channels() if channels is None and path == self.config.out else channels,
                chunk_shape=self.config.chunk_shape,
                compression=self.config.compression,
                mode="w-",
                attrs=self.provenance(),
            )
            created = True
        return created

    @property
    def resource(self) -> str:
        return "gpu" if self.config.uses_gpu else "cpu"

    def plan(self) -> str:
        """What a run would do (``--dry-run``), after the same guards as a run."""
        from blockwise.plan import format_predict_plan

        self.check_existing()
        self.check_launcher()
        return format_predict_plan(self.config, PredictStep(self.config))

    def run(self) -> int:
        self.check_existing()  # refusals write nothing
        self.check_launcher()
        self.lock()
        existing = self.check_existing()  # again: no other driver can write here now
        config = self.config
        execution = config.execution
        device = describe_device(config.device, config.precision, config.gpus, execution.workers, config.threads)
        started = self.start_summary(device=device)
        self.write_config()
        from daisy import logging as daisy_logging

        daisy_logging.set_log_basedir(str(self.run_dir.logs))
        fresh = self.create_outputs(existing)
        step = PredictStep(config)
        self.say(
            f"predict: {step.num_blocks} blocks of {list(config.block_voxels)} voxels (tiles {list(step.grid.tile)}, "
            f"patch {list(config.patch)}, margin {list(config.margin)}: {step.grid.overhead:.2f}x input per output "
            f"voxel), {execution.workers} {self.resource.upper()} worker(s), map {config.map}, {config.dtype}, "
            f"{config.precision}"
        )
        report = self.run_step(step, {self.resource: 1}, reset=fresh)
        wall = time.time() - started
        timers = summarise(step.timers_dir(), since=started)
        processed = voxels_since(step.timers_dir(), since=started)
        self.summary.update(
            {
                "task": report.as_dict(),
                "timers": timers,
                "wall_s": round(wall, 3),
                "voxels": math.prod(config.roi_shape) // math.prod(config.voxel_size),
                "voxels_per_s": round(processed / timers["span_s"], 1) if timers["span_s"] else None,
            }
        )
        status = 0
        if report.ok:
            for path, _, _ in self.outputs():
                update_attrs(path, {"complete": True})
            self.summary["status"] = "complete"
            also = f", {config.disagreement}" if config.disagreement else ""
            self.say(
                f"predict: done in {wall:.1f} s ({report.skipped} of {report.total} blocks were already done); "
                f"{config.out}{also}"
            )
        else:
            status = self.fail([report])
        self.write_summary()
        return status
