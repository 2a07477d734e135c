"""Step ``predict``: raw -> affinities (and the implicit/explicit disagreement map) with a trained CRAC network.

Geometry (see :mod:`affcons.predict`): the network sees ``patch`` voxels and keeps the central ``tile = patch -
2 * margin``. Tiles are anchored at the prediction ROI's begin; a block's write ROI is a whole number of tiles and of
output chunks, its read ROI grows it by the margin (raw outside the volume reads as 0). Every tile is therefore
computed from the same raw whatever the block size, and blockwise output equals whole-volume output
(:func:`affcons.predict.predict_volume`; ``tests/test_predict_blockwise.py`` checks it).

Per worker (:meth:`PredictStep.setup`): on GPUs one worker per GPU (:mod:`blockwise.gpus`); without a GPU, torch
threads ``cores // workers``. The model is loaded once per worker; patches go through the network in batches; bf16
autocast on GPU.

Overlap: a block is cut into sub-blocks (whole tiles and whole chunks, full block width in x); a reader thread
prefetches the raw of the next two sub-blocks while the network computes, and writer threads compress and write
finished sub-blocks. The block returns (and daisy writes its done marker) only after its last write.
"""

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pydantic
from funlib.geometry import Coordinate, Roi

from affcons.codecs import Compression
from affcons.config import StrictModel
from blockwise.faults import inject_fault
from blockwise.gpus import available_cores, claim_gpu
from blockwise.steps.base import BlockwiseStep
from blockwise.timers import Timers
from blockwise.volumes import box_for

#: Which map becomes the affinities when not chosen: ``auto`` = the mean of both maps for a CRAC checkpoint (best on
#: every gala run of the reduced protocol, never the worst map on ISBI; docs/design/predict.md "Which map"), the
#: explicit map for a checkpoint that trained only that one (the sparse-supervision baseline).
DEFAULT_MAP = "auto"


def resolve_map(requested: str, available) -> str:
    """The map ``requested`` (``auto``, ``implicit``, ``explicit`` or ``mean``) for a model whose trained outputs are
    ``available`` (:attr:`affcons.nets.CRACNetworks.available`): ``auto`` becomes ``mean`` when both maps are trained,
    else ``explicit``; any other choice is returned as it is (:class:`affcons.predict.Predictor` refuses a map the
    model did not train)."""
    if requested != "auto":
        return requested
    return "mean" if {"implicit", "explicit"} <= set(available) else "explicit"


Triple = tuple[int, int, int]


class PredictSettings(StrictModel):
    """How to predict: the network's map, output format, tiling and devices. The ``predict`` section of
    ``affcons run`` and the non-path options of ``affcons predict``. ``patch``, ``margin`` and ``chunk_shape`` are
    voxels (properties of the network and of the zarr arrays); the other lengths are nm (z, y, x)."""

    #: Use the EMA weights (EMA runs only).
    use_ema: bool = False
    #: Which representation becomes the affinities (``auto``: see :data:`DEFAULT_MAP`; resolved when the run is
    #: configured, so a run's recorded config names the map it used).
    map: Literal["auto", "implicit", "explicit", "mean"] = DEFAULT_MAP
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
    #: Run copies of the networks with their BatchNorms folded into the convolutions (affinities within ~1e-5 of the
    #: unfolded networks; CPU: x1.28 for 8-32 channel nets, x1.04 for the paper-size nets, ``benchmarks/predict.py``).
    fold_batchnorm: bool = True
    #: Threads per worker that compress and write finished sub-blocks (raise it on GPUs: at 1e8 voxels/s, 12
    #: uint8 channels are 1.2 GB/s before compression).
    writer_threads: int = pydantic.Field(2, ge=1)
    #: torch threads per CPU worker; 0 = cores // workers.
    threads: int = pydantic.Field(0, ge=0)
    #: The voxel size the model was trained at, nm (default: read from the training volume named in the checkpoint,
    #: when that file exists); the raw must match it.
    model_voxel_size: Triple | None = None
    #: Block (write ROI), nm; a multiple of the tile and of the chunk shape. Default: 4 x 8 x 8 tiles.
    block_size: Triple | None = None
    #: Output chunks, voxels (channels are never split); must divide the block. Default: 2 x 2 x 2 tiles.
    chunk_shape: Triple | None = None
    #: Compression of the outputs.
    compression: Compression = "blosc-zstd"


class PredictStep(BlockwiseStep):
    """Predict the affinities of one block (see the module docstring)."""

    name = "predict"

    def __init__(self, config):
        super().__init__(config)
        from affcons.predict import PatchGrid

        self.grid = PatchGrid(config.patch, config.margin)
        self.margin_nm = Coordinate(config.margin) * self.voxel_size
        self.raw = box_for(config.raw, config.raw_offset, config.voxel_size)
        self.raw.cache_bytes = config.execution.read_cache_mb * 2**20  # neighbouring blocks share context
        self.raw.require_chunks = config.raw_complete
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

    @property
    def needs_gpu(self) -> bool:
        return self.config.uses_gpu

    def rois(self) -> tuple[Roi, Roi, Roi]:
        total = self.roi.grow(self.margin_nm, self.margin_nm)
        read = Roi(-self.margin_nm, self.block_shape + self.margin_nm * 2)
        write = Roi((0, 0, 0), self.block_shape)
        return total, read, write

    # ----------------------------------------------------------------------------------------- per worker

    def setup(self) -> None:
        config = self.config
        gpu = None
        if config.uses_gpu and config.gpu_entries:
            gpu, handle = claim_gpu(config.gpu_entries, self.run_dir.gpu_locks)
            self._runtime["gpu_lock"] = handle
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # the driver's entry: an index, GPU or MIG UUID
        import torch

        if config.uses_gpu and torch.cuda.device_count() == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise RuntimeError(
                f"this prediction worker sees no GPU (CUDA_VISIBLE_DEVICES={visible}) but the run's device is cuda: "
                "request one GPU per worker job from the scheduler (the slurm and lsf launchers do unless their "
                "extra arguments name a GPU request), or run with --device cpu"
            )

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
            fold_batchnorm=config.fold_batchnorm,
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
