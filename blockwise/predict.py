"""Blockwise affinity prediction (``affcons predict``): a daisy task whose blocks are whole numbers of output tiles.

Geometry (see :mod:`affcons.predict`): the network sees ``patch`` voxels and keeps the central ``tile = patch -
2 * margin``. Tiles are anchored at the prediction ROI's begin; a block's write ROI is a whole number of tiles and of
output chunks, its read ROI grows it by the margin (raw outside the volume reads as 0). Every tile is therefore
computed from the same raw whatever the block size, and blockwise output equals whole-volume output
(:func:`affcons.predict.predict_volume`); ``tests/test_predict_blockwise.py`` checks it.

Execution: one daisy task, ``fit="shrink"`` (the last blocks end at the ROI's end; their tiles overhang and are
cropped), ``read_write_conflict=False`` (blocks read raw and write disjoint chunks). On GPUs one worker per GPU
(``requires={"gpu": 1}``, ``resources={"gpu": N}``); a worker claims a free GPU of ``gpus`` with an exclusive file
lock in ``RUN_DIR/gpu-locks`` (released by the OS when the worker dies, so a restarted worker takes over its GPU)
and sets ``CUDA_VISIBLE_DEVICES`` before CUDA starts. Without a GPU, N CPU workers with ``cores // N`` torch
threads each. The model is loaded once per worker; patches go through the network in batches; bf16 autocast on
GPU.

Overlap: a block is cut into sub-blocks (whole tiles and whole chunks, full block width in x); a reader thread
prefetches the raw of the next two sub-blocks while the network computes, and two writer threads compress and
write finished sub-blocks. The block returns (and daisy writes its done marker) only after its last write.

Reliability as in ``affcons segment``: the resolved config in ``RUN_DIR/predict.yaml``; done markers in
``RUN_DIR/tracking/predict`` (a re-run resumes, identical bytes); a different config for an existing run directory
or output is refused (:class:`~affcons.errors.OutputExistsError`, listing the differences); failed blocks are
retried ``max_retries`` times and then listed, with exit code 1; outputs are marked ``complete: true`` only when
every block succeeded.
"""

import datetime
import hashlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
from funlib.geometry import Coordinate, Roi

import affcons
from affcons.config import StrictModel, dump_config, load_config, validate
from affcons.errors import ConfigError, VolumeError
from blockwise.config import ExecutionConfig
from blockwise.pipeline import Driver, run_task
from blockwise.pipeline import dataset_attrs as dataset_attrs_at
from blockwise.step import BlockwiseStep, Timers, inject_fault
from blockwise.volumes import box_for

#: Which map becomes the affinities when not chosen: the best on the ISBI validation sections with the demo model
#: (docs/design/predict.md, "Which map").
DEFAULT_MAP = "implicit"
TASK_ID = "predict"
CONFIG_FILE = "predict.yaml"
PROVENANCE_ATTR = "affcons_predict"
#: Default block and chunk shapes in tiles (z, y, x), clipped to the ROI.
BLOCK_TILES = (4, 8, 8)
CHUNK_TILES = (2, 2, 2)

Triple = tuple[int, int, int]


class PredictConfig(StrictModel):
    """A complete ``affcons predict`` run. Lengths are nm (z, y, x) except ``patch``, ``margin`` and
    ``chunk_shape``, which are voxels (properties of the network and of the zarr arrays)."""

    #: Training checkpoint of ``affcons train`` (embedding + affinity nets and the config they were trained with).
    checkpoint: str
    #: SHA-256 of the checkpoint file (filled in by the driver; part of the fingerprint).
    checkpoint_sha256: str | None = None
    #: Use the EMA weights (EMA runs only).
    use_ema: bool = False
    #: Raw EM ``in.zarr/raw`` or ``file.h5:raw``, (z, y, x).
    raw: str
    #: Output affinities ``out.zarr/affs``: (channels, z, y, x).
    out: str
    #: Optional output ``out.zarr/disagreement``: (z, y, x) uint8, mean |implicit - explicit| of the 3 short-range
    #: channels (edge confidence for post-processing).
    disagreement: str | None = None
    #: Run directory (config, done markers, timers, logs, summary).
    run_dir: str
    #: Which representation becomes the affinities.
    map: Literal["implicit", "explicit", "mean"] = DEFAULT_MAP
    #: Output dtype: uint8 (0..255) or float16 (0..1).
    dtype: Literal["uint8", "float16"] = "uint8"
    #: ``all`` offsets of the model (12 for CRAC) or only the ``short``-range (nearest-neighbour) three.
    channels: Literal["all", "short"] = "all"
    #: Network input patch, voxels; default: the training crop.
    patch: Triple | None = None
    #: Output crop margin per side, voxels; default: :func:`affcons.predict.default_margin`.
    margin: Triple | None = None
    #: Patches per forward pass; 0 = 8 on GPU, 4 on CPU (a batch of >= 2 uses the fast oneDNN 3-D convolution).
    batch_size: int = pydantic.Field(0, ge=0)
    #: ``auto`` = bf16 autocast on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: ``auto`` = CUDA when the driver sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: GPU indices, one worker each; default: every visible GPU.
    gpus: list[int] | None = None
    #: Run the networks in the channels_last_3d memory format (GPU tuning; does not change the result's meaning).
    channels_last: bool = False
    #: Threads per worker that compress and write finished sub-blocks (raise it on GPUs: at 1e8 voxels/s, 12
    #: uint8 channels are 1.2 GB/s before compression).
    writer_threads: int = pydantic.Field(2, ge=1)
    #: torch threads per CPU worker; 0 = cores // workers.
    threads: int = pydantic.Field(0, ge=0)
    #: Voxel size of the raw, nm (from its attributes; give it only for raw without one).
    voxel_size: Triple | None = None
    #: The voxel size the model was trained at, nm (default: read from the training volume named in the checkpoint,
    #: when that file exists); the raw must match it.
    model_voxel_size: Triple | None = None
    #: Offset of the raw, nm (filled in by the driver).
    raw_offset: Triple | None = None
    #: Shape of the raw, voxels (filled in by the driver).
    raw_shape: Triple | None = None
    #: Region to predict, nm; default: the raw's ROI.
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None
    #: Block (write ROI), nm; a multiple of the tile and of the chunk shape. Default: 4 x 8 x 8 tiles.
    block_size: Triple | None = None
    #: Output chunks, voxels (channels are never split); must divide the block. Default: 2 x 2 x 2 tiles.
    chunk_shape: Triple | None = None
    #: Compression of the outputs.
    compression: Literal["blosc-zstd", "blosc-lz4", "gzip", "none"] = "blosc-zstd"
    #: Workers, launcher, timeouts, retries.
    execution: ExecutionConfig = ExecutionConfig()

    @property
    def block_voxels(self) -> Triple:
        return tuple(b // s for b, s in zip(self.block_size, self.voxel_size))

    @property
    def uses_gpu(self) -> bool:
        return self.device == "cuda"

    def fingerprint_fields(self) -> dict:
        """What decides the bytes of the outputs (workers, GPUs, batch size, threads and timeouts do not)."""
        data = self.model_dump(mode="json")
        fields = {
            key: data[key]
            for key in (
                "checkpoint_sha256",
                "use_ema",
                "map",
                "dtype",
                "channels",
                "patch",
                "margin",
                "precision",
                "voxel_size",
                "raw_offset",
                "roi_offset",
                "roi_shape",
                "block_size",
                "chunk_shape",
                "compression",
            )
        }
        fields["raw"] = str(Path(self.raw).absolute())
        fields["out"] = str(Path(self.out).absolute())
        fields["disagreement"] = str(Path(self.disagreement).absolute()) if self.disagreement else None
        return fields

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint_fields(), sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- resolution


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_run_dir(out: str) -> Path:
    """``/data/out.zarr/affs`` -> ``/data/out.affs.predict-run``."""
    from affcons.io import split_dataset_path

    volume = split_dataset_path(out)
    name = volume.dataset.replace("/", "_") or "affs"
    return volume.container.absolute().parent / f"{volume.container.stem}.{name}.predict-run"


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _model_voxel_size(config) -> tuple[Triple | None, str]:
    """The voxel size of the model's training raw, read from that volume if it exists here."""
    from affcons.io import read_voxel_size
    from affcons.train.config import resolve_path

    path = resolve_path(config.data.train.raw)
    try:
        stored = read_voxel_size(str(path))
    except (VolumeError, OSError):
        return None, f"{path} (not readable here)"
    return (tuple(stored) if stored is not None else None), str(path)


def detect_gpus(config: PredictConfig) -> tuple[str, list[int] | None]:
    """``(device, gpus)`` after resolving ``auto`` and the GPU list in the driver."""
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        if config.gpus:
            raise ConfigError(f"--gpus {config.gpus} given but the device is cpu")
        return "cpu", None
    if config.execution.launcher.type != "local":
        return "cuda", config.gpus  # the cluster scheduler assigns GPUs to each job
    if not torch.cuda.is_available():
        raise ConfigError("device cuda requested but this machine has no CUDA device (use --device cpu)")
    count = torch.cuda.device_count()
    gpus = list(config.gpus) if config.gpus else list(range(count))
    bad = [g for g in gpus if not 0 <= g < count]
    if bad or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {gpus}: this machine has GPUs 0..{count - 1} (each at most once)")
    return "cuda", gpus


def resolve(options: dict, block_voxels=None) -> tuple[PredictConfig, object]:
    """A complete :class:`PredictConfig` from user options (``block_voxels``, from ``--block-size``, is converted to
    nm with the raw's voxel size); also loads the checkpoint once to check it.

    Raises :class:`~affcons.errors.CheckpointError` (missing file, foreign file, weights that do not match the
    recorded config), :class:`~affcons.errors.VolumeError` (raw not 3-D, voxel size missing or different from the
    model's), :class:`~affcons.errors.ConfigError` (geometry). Returns ``(config, networks)``.
    """
    from affcons.io import open_volume, read_voxel_size
    from affcons.nets import load_model
    from affcons.predict import SHORT_RANGE, PatchGrid, Predictor, default_margin, required_margin

    options = dict(options)
    for key in ("checkpoint", "raw", "out"):
        if not options.get(key):
            raise ConfigError(f"missing {key}: pass --{key} or set '{key}' in the config file")
    if not str(split_container(options["out"])).endswith(".zarr"):
        raise ConfigError(f"--out must name a dataset in a zarr container (out.zarr/affs), got {options['out']}")
    checkpoint = str(Path(options["checkpoint"]).absolute())
    options["checkpoint"] = checkpoint
    networks, model_config = load_model(checkpoint, use_ema=bool(options.get("use_ema", False)))
    options["checkpoint_sha256"] = file_sha256(checkpoint)

    raw_path = options["raw"]
    stored = read_voxel_size(raw_path)
    given = tuple(options["voxel_size"]) if options.get("voxel_size") else None
    if stored is not None and given is not None and tuple(stored) != given:
        raise VolumeError(f"raw {raw_path}: stored voxel size {tuple(stored)} nm differs from --voxel-size {given} nm")
    voxel_size = given or (tuple(stored) if stored is not None else None)
    if voxel_size is None:
        raise VolumeError(f"raw {raw_path} has no voxel size attribute; pass --voxel-size Z Y X (nm)")
    raw = open_volume(raw_path, voxel_size=voxel_size)
    if len(raw.shape) != 3:
        raise VolumeError(
            f"raw {raw_path}: expected 3 axes (z, y, x) of grey values, got {len(raw.shape)} (shape {tuple(raw.shape)})"
        )
    expected = tuple(options["model_voxel_size"]) if options.get("model_voxel_size") else None
    source = "--model-voxel-size"
    if expected is None:
        expected, source = _model_voxel_size(model_config)
    if expected is not None and tuple(expected) != tuple(voxel_size):
        raise VolumeError(
            f"raw {raw_path}: voxel size {tuple(voxel_size)} nm differs from the model's training voxel size "
            f"{tuple(expected)} nm (from {source}); resample the raw, or pass --model-voxel-size if the model "
            "was trained at this resolution"
        )
    options["model_voxel_size"] = tuple(expected) if expected is not None else None
    options["voxel_size"] = tuple(voxel_size)
    options["raw_offset"] = tuple(raw.roi.offset)
    options["raw_shape"] = tuple(raw.shape)
    options["raw"] = str(Path(raw_path).absolute())
    options["out"] = str(Path(options["out"]).absolute())
    if options.get("disagreement"):
        options["disagreement"] = str(Path(options["disagreement"]).absolute())
        if not str(split_container(options["disagreement"])).endswith(".zarr"):
            raise ConfigError(f"--disagreement must name a dataset in a zarr container, got {options['disagreement']}")

    offset = tuple(options.get("roi_offset") or raw.roi.offset)
    shape = tuple(options.get("roi_shape") or (raw.roi.end - Coordinate(offset)))
    roi = Roi(offset, shape)
    if any(v % s for v, s in zip(offset + shape, voxel_size + voxel_size)) or roi.empty:
        raise ConfigError(f"ROI offset {offset} / shape {shape} nm must be non-empty multiples of {voxel_size} nm")
    if not raw.roi.contains(roi):
        raise ConfigError(f"ROI {roi} (nm) is not inside the raw's ROI {raw.roi} ({raw_path})")
    options["roi_offset"], options["roi_shape"] = offset, shape
    if block_voxels is not None:
        options["block_size"] = tuple(int(b) * v for b, v in zip(block_voxels, voxel_size))

    channels = SHORT_RANGE if options.get("channels", "all") == "short" else len(networks.offsets)
    prediction_map = options.get("map", DEFAULT_MAP)
    patch = tuple(options.get("patch") or model_config.data.crop)
    margin = tuple(options.get("margin") or default_margin(patch, networks.offsets, channels, prediction_map))
    try:
        grid = PatchGrid(patch, margin)
    except ConfigError as error:
        needed = required_margin(networks.offsets, channels, prediction_map)
        raise ConfigError(
            f"{error}. The {prediction_map} map's channels 0-{channels - 1} need a margin of at least {list(needed)} "
            "voxels (implicit long-range offsets); use a larger --patch, --channels short, or --map explicit"
        ) from None
    Predictor(networks, grid, prediction_map, channels, dtype=options.get("dtype", "uint8"))  # checks the margin
    options["patch"], options["margin"] = grid.patch, grid.margin

    roi_voxels = tuple(s // v for s, v in zip(shape, voxel_size))
    covered = tuple(_round_up(r, t) for r, t in zip(roi_voxels, grid.tile))
    if options.get("chunk_shape") is None:
        options["chunk_shape"] = tuple(min(c * t, r) for c, t, r in zip(CHUNK_TILES, grid.tile, covered))
    chunk = tuple(options["chunk_shape"])
    if options.get("block_size") is None:
        block = tuple(
            _round_up(min(b * t, r), math.lcm(t, c)) for b, t, r, c in zip(BLOCK_TILES, grid.tile, covered, chunk)
        )
        options["block_size"] = tuple(b * v for b, v in zip(block, voxel_size))
    block_nm = tuple(options["block_size"])
    if any(b % v for b, v in zip(block_nm, voxel_size)) or min(block_nm) < 1:
        raise ConfigError(f"block size {block_nm} nm is not a positive multiple of the voxel size {voxel_size} nm")
    block = tuple(b // v for b, v in zip(block_nm, voxel_size))
    problems = []
    if any(b % t for b, t in zip(block, grid.tile)):
        problems.append(
            f"block {list(block)} voxels is not a whole number of output tiles {list(grid.tile)} (patch "
            f"{list(grid.patch)} minus twice the margin {list(grid.margin)}): blockwise output would differ from "
            "whole-volume output"
        )
    if any(b % c for b, c in zip(block, chunk)):
        problems.append(
            f"block {list(block)} voxels is not a multiple of the output chunk shape {list(chunk)}: blocks would "
            "share chunks and zarr has no locking"
        )
    if problems:
        raise ConfigError("; ".join(problems))

    device, gpus = detect_gpus(validate(PredictConfig, {**options, "run_dir": "."}, "affcons predict"))
    options["device"], options["gpus"] = device, gpus
    import torch

    from affcons.predict import resolve_precision

    options["precision"] = resolve_precision(options.get("precision", "auto"), torch.device(device))
    options["batch_size"] = options.get("batch_size") or (8 if device == "cuda" else 4)
    options["run_dir"] = str(Path(options.get("run_dir") or default_run_dir(options["out"])).absolute())
    execution = dict(options.get("execution") or {})
    if device == "cuda" and gpus:
        execution["workers"] = len(gpus)
    options["execution"] = execution
    return validate(PredictConfig, options, "affcons predict"), networks


def split_container(path: str) -> Path:
    from affcons.io import split_dataset_path

    return split_dataset_path(path).container


# ------------------------------------------------------------------------------------------------------ step


class PredictStep(BlockwiseStep):
    """Predict the affinities of one block (see the module docstring)."""

    name = TASK_ID

    def __init__(self, config: PredictConfig):
        super().__init__(config)
        from affcons.predict import PatchGrid

        self.grid = PatchGrid(config.patch, config.margin)
        self.margin_nm = Coordinate(config.margin) * self.voxel_size
        self.raw = box_for(config.raw, config.raw_offset, config.voxel_size)
        self.raw_roi = Roi(config.raw_offset, Coordinate(config.raw_shape) * self.voxel_size)
        self.out = box_for(config.out, config.roi_offset, config.voxel_size, writable=True)
        self.disagreement = (
            box_for(config.disagreement, config.roi_offset, config.voxel_size, writable=True)
            if config.disagreement
            else None
        )
        chunk = config.chunk_shape
        block = config.block_voxels
        # sub-blocks: whole tiles and whole chunks in z and y, the full block in x
        self.sub_block = (
            Coordinate((math.lcm(self.grid.tile[0], chunk[0]), math.lcm(self.grid.tile[1], chunk[1]), block[2]))
            * self.voxel_size
        )
        self._runtime: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runtime"] = {}
        state["_ready"] = False
        return state

    def rois(self) -> tuple[Roi, Roi, Roi]:
        total = self.roi.grow(self.margin_nm, self.margin_nm)
        read = Roi(-self.margin_nm, self.block_shape + self.margin_nm * 2)
        write = Roi((0, 0, 0), self.block_shape)
        return total, read, write

    # ----------------------------------------------------------------------------------------- per worker

    def setup(self) -> None:
        config = self.config
        gpu = None
        if config.uses_gpu and config.gpus and config.execution.launcher.type == "local":
            gpu, handle = claim_gpu(config.gpus, self.run_dir / "gpu-locks")
            self._runtime["gpu_lock"] = handle
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        import torch

        from affcons.nets import load_model
        from affcons.predict import SHORT_RANGE, Predictor

        if config.uses_gpu:
            device = torch.device("cuda:0")
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            device = torch.device("cpu")
            threads = config.threads or max(1, available_cores() // config.execution.workers)
            torch.set_num_threads(threads)
        networks, model_config = load_model(config.checkpoint, use_ema=config.use_ema, map_location="cpu")
        channels = SHORT_RANGE if config.channels == "short" else len(networks.offsets)
        self._runtime["predictor"] = Predictor(
            networks,
            self.grid,
            config.map,
            channels,
            disagreement=config.disagreement is not None,
            dtype=config.dtype,
            device=device,
            precision=config.precision,
            batch_size=config.batch_size,
            raw_scale=model_config.data.train.raw_scale,
            channels_last=config.channels_last,
        )
        self._runtime["reader"] = ThreadPoolExecutor(1, thread_name_prefix="predict-read")
        self._runtime["writer"] = ThreadPoolExecutor(config.writer_threads, thread_name_prefix="predict-write")
        self._runtime["device"] = f"{device}" + (
            f" (GPU {gpu}: {torch.cuda.get_device_name(0)})" if gpu is not None or device.type == "cuda" else ""
        )

    def teardown(self) -> None:
        for key in ("reader", "writer"):
            executor = self._runtime.pop(key, None)
            if executor is not None:
                executor.shutdown(wait=True)
        handle = self._runtime.pop("gpu_lock", None)
        if handle is not None:
            handle.close()
        for box in (self.raw, self.out, self.disagreement):
            if box is not None:
                box.close()

    # ------------------------------------------------------------------------------------------ per block

    def sub_blocks(self, write_roi: Roi) -> list[Roi]:
        boxes = []
        for z in range(write_roi.begin[0], write_roi.end[0], self.sub_block[0]):
            for y in range(write_roi.begin[1], write_roi.end[1], self.sub_block[1]):
                for x in range(write_roi.begin[2], write_roi.end[2], self.sub_block[2]):
                    boxes.append(Roi((z, y, x), self.sub_block).intersect(write_roi))
        return boxes

    def read_raw(self, roi: Roi) -> np.ndarray:
        """Raw of ``roi`` (nm), zeros outside the raw volume."""
        shape = roi.shape / self.voxel_size
        data = np.zeros(shape, dtype=self.raw.array.dtype)
        inside = roi.intersect(self.raw_roi)
        if not inside.empty:
            target = tuple(
                slice(b, b + s)
                for b, s in zip((inside.begin - roi.begin) / self.voxel_size, inside.shape / self.voxel_size)
            )
            data[target] = self.raw.read(inside)
        return data

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        predictor = self._runtime["predictor"]
        reader, writer = self._runtime["reader"], self._runtime["writer"]
        lock = threading.Lock()
        spent = {"read": 0.0, "write": 0.0}

        def timed(phase, function, *args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                with lock:
                    spent[phase] += time.perf_counter() - start

        def write(roi: Roi, result: dict, first: bool) -> None:
            self.out.write(roi, result["affs"])
            if self.disagreement is not None:
                self.disagreement.write(roi, result["disagreement"])
            if first:
                inject_fault(self.name, block_index, "partial-write")

        boxes = self.sub_blocks(write_roi)
        inputs = {}
        for i in range(min(2, len(boxes))):
            inputs[i] = reader.submit(timed, "read", self.read_raw, self.grid.input_roi(boxes[i], self.voxel_size))
        writes = []
        try:
            for i, box in enumerate(boxes):
                with timers.time("stall"):
                    raw = inputs.pop(i).result()
                if i + 2 < len(boxes):
                    roi = self.grid.input_roi(boxes[i + 2], self.voxel_size)
                    inputs[i + 2] = reader.submit(timed, "read", self.read_raw, roi)
                with timers.time("compute"):
                    result = predictor.predict(raw, box.shape / self.voxel_size)
                if i == 0:
                    # the partial-write fault must see one finished write: write the first sub-block in line
                    timed("write", write, box, result, True)
                else:
                    writes.append(writer.submit(timed, "write", write, box, result, False))
            with timers.time("drain"):
                for future in writes:
                    future.result()
        finally:
            for future in list(inputs.values()) + writes:
                future.cancel()
            for future in writes:
                if not future.cancelled():
                    try:
                        future.result()
                    except Exception:  # the first error is already propagating
                        pass
        timers.seconds["read"] += spent["read"]
        timers.seconds["write"] += spent["write"]
        timers.count("voxels", math.prod(write_roi.shape / self.voxel_size))
        timers.count("sub_blocks", len(boxes))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def claim_gpu(gpus: list[int], lock_dir: Path):
    """Lock the first free GPU of ``gpus`` (exclusive ``flock`` on ``lock_dir/gpu<N>.lock``); returns
    ``(gpu, open lock file)``. The lock lives as long as the file stays open, i.e. as long as the worker."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(lock_dir / f"gpu{gpu}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return gpu, handle
    raise RuntimeError(f"no free GPU among {gpus}: every one is held by another worker of this run ({lock_dir})")


# ---------------------------------------------------------------------------------------------------- driver


class PredictJob(Driver):
    """One ``affcons predict`` run of a resolved config: guards, outputs, the daisy task, summary, exit code (the
    guards, failure report and summary are :class:`blockwise.pipeline.Driver`'s, as in ``affcons segment``)."""

    command = "affcons predict"
    provenance_attr = PROVENANCE_ATTR
    config_file = CONFIG_FILE
    incomplete = "the outputs are not marked complete"

    def outputs(self) -> list[tuple[str, int | None, str]]:
        """``(path, channels or None, dtype)`` of each output."""
        from affcons.predict import SHORT_RANGE

        config = self.config
        channels = SHORT_RANGE if config.channels == "short" else None
        result = [(config.out, channels, config.dtype)]
        if config.disagreement:
            result.append((config.disagreement, None, "uint8"))
        return result

    def check_existing(self) -> list[str]:
        """Refuse state of another config (writes nothing); returns the outputs that already exist."""
        self.check_run_dir()
        return [path for path, _, _ in self.outputs() if self.check_output(path, dataset_attrs(path))]

    def create_outputs(self, existing: list[str]) -> bool:
        """Create the missing outputs; True if any was created now (then old done markers are void)."""
        from affcons.io import create_volume

        created = False
        for path, channels, dtype in self.outputs():
            if path in existing:
                continue
            num_channels = channels
            if channels is None and path == self.config.out:
                num_channels = self.num_channels()
            create_volume(
                path,
                Roi(self.config.roi_offset, self.config.roi_shape),
                self.config.voxel_size,
                dtype,
                num_channels=num_channels,
                chunk_shape=self.config.chunk_shape,
                compression=self.config.compression,
                mode="w-",
                attrs=self.provenance(),
            )
            created = True
        return created

    def num_channels(self) -> int:
        from affcons.train.checkpoint import read_checkpoint

        _, model_config = read_checkpoint(self.config.checkpoint)
        return len(model_config.model.offsets)

    @property
    def resource(self) -> str:
        return "gpu" if self.config.uses_gpu else "cpu"

    def run(self) -> int:
        from blockwise.launchers import process_function
        from blockwise.pipeline import summarise_timers

        existing = self.check_existing()
        started = time.time()
        config = self.config
        self.summary = {
            "fingerprint": self.fingerprint,
            "affcons_version": affcons.__version__,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": self.public_config(),
            "device": describe_device(config),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, self.run_dir / CONFIG_FILE)
        from daisy import logging as daisy_logging

        daisy_logging.set_log_basedir(str(self.run_dir / "logs"))
        fresh = self.create_outputs(existing)
        step = PredictStep(config)
        execution = config.execution
        self.say(
            f"predict: {step.num_blocks} blocks of {list(config.block_voxels)} voxels (tiles {list(step.grid.tile)}, "
            f"patch {list(config.patch)}, margin {list(config.margin)}: {step.grid.overhead:.2f}x input per output "
            f"voxel), {execution.workers} {self.resource.upper()} worker(s), map {config.map}, {config.dtype}, "
            f"{config.precision}"
        )
        function = process_function(step, execution.launcher, str(self.run_dir / CONFIG_FILE), "blockwise.predict")
        report = run_task(
            step,
            function,
            execution,
            self.run_dir,
            {self.resource: 1},
            reset=fresh,
            progress=execution.progress and not self.quiet,
        )
        wall = time.time() - started
        timers = summarise_timers(step.timers_dir(), since=started)
        voxels = math.prod(config.roi_shape) // math.prod(config.voxel_size)
        processed = voxels_processed(step.timers_dir(), since=started)
        self.summary.update(
            {
                "task": report.as_dict(),
                "timers": timers,
                "wall_s": round(wall, 3),
                "voxels": voxels,
                "voxels_per_s": round(processed / timers["span_s"], 1) if timers["span_s"] else None,
            }
        )
        status = 0
        if report.ok:
            for path, _, _ in self.outputs():
                set_attrs(path, {"complete": True})
            self.summary["status"] = "complete"
            self.say(
                f"predict: done in {wall:.1f} s ({report.skipped} of {report.total} blocks were already "
                f"done); {config.out}" + (f", {config.disagreement}" if config.disagreement else "")
            )
        else:
            status = self.fail([report])
        self.write_summary()
        return status


def voxels_processed(directory: Path, since: float) -> int:
    """Output voxels of the blocks that started at or after ``since`` (their last record each)."""
    from blockwise.pipeline import read_timer_records

    records = read_timer_records(directory).values()
    return sum(int(record.get("voxels", 0)) for record in records if record["start"] >= since)


def format_plan(config: PredictConfig) -> str:
    """What a run of ``config`` would do (``--dry-run``)."""
    from affcons.predict import PatchGrid

    grid = PatchGrid(config.patch, config.margin)
    step = PredictStep(config)
    voxels = math.prod(config.roi_shape) // math.prod(config.voxel_size)
    channels = 3 if config.channels == "short" else None
    lines = [
        "affcons predict: plan (dry run; nothing written)",
        f"  raw         {config.raw}: voxel size {list(config.voxel_size)} nm, offset {list(config.raw_offset)} nm",
        f"  region      offset {list(config.roi_offset)} nm, shape {list(config.roi_shape)} nm = "
        f"{[s // v for s, v in zip(config.roi_shape, config.voxel_size)]} voxels ({voxels / 1e6:.1f} Mvoxel)",
        f"  network     {config.checkpoint} (sha256 {str(config.checkpoint_sha256)[:12]}), map {config.map}, "
        f"precision {config.precision}, batch {config.batch_size}",
        f"  tiles       patch {list(grid.patch)} - 2 x margin {list(grid.margin)} = tile {list(grid.tile)}: "
        f"{grid.overhead:.2f} input voxels per output voxel",
        f"  blocks      {list(config.block_voxels)} voxels, grid {list(step.grid_shape)} = {step.num_blocks} blocks; "
        f"chunks {list(config.chunk_shape)}; sub-blocks {list(step.sub_block / step.voxel_size)}",
        f"  outputs     {config.out} ({channels or 'all'} channels, {config.dtype})"
        + (f", {config.disagreement} (uint8)" if config.disagreement else ""),
        f"  workers     {config.execution.workers} on {config.device}"
        + (f" (GPUs {config.gpus})" if config.gpus else "")
        + f"; run dir {config.run_dir}",
    ]
    return "\n".join(lines)


def describe_device(config: PredictConfig) -> dict:
    import torch

    info = {"type": config.device, "precision": config.precision, "torch": torch.__version__}
    if config.device == "cuda" and torch.cuda.is_available():
        info["gpus"] = {str(g): torch.cuda.get_device_name(g) for g in (config.gpus or [])}
    else:
        info["cores"] = available_cores()
        info["workers"] = config.execution.workers
        info["threads_per_worker"] = config.threads or max(1, available_cores() // config.execution.workers)
    return info


def dataset_attrs(path: str) -> dict | None:
    """Attributes of the zarr dataset ``out.zarr/name`` (:func:`blockwise.pipeline.dataset_attrs`)."""
    from affcons.io import split_dataset_path

    volume = split_dataset_path(path)
    return dataset_attrs_at(volume.container / volume.dataset)


def set_attrs(path: str, attrs: dict) -> None:
    import zarr

    from affcons.io import split_dataset_path

    volume = split_dataset_path(path)
    zarr.open_array(str(volume.container / volume.dataset), mode="r+").attrs.update(attrs)


def main(argv: list[str] | None = None) -> int:
    """Cluster worker: ``python -m blockwise.predict --config RUN_DIR/predict.yaml``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m blockwise.predict", description=main.__doc__)
    parser.add_argument("--config", required=True, help="RUN_DIR/predict.yaml written by affcons predict")
    args = parser.parse_args(argv)
    from blockwise.step import serve_blocks

    return serve_blocks(PredictStep(load_config(PredictConfig, args.config)))


if __name__ == "__main__":
    sys.exit(main())
