"""The typed, strict, serialisable schema of every blockwise command, one model family per command.

Each command has three models that build on each other, so a field is declared once:

- *settings* (:class:`SegmentSettings`, :class:`~blockwise.steps.predict.PredictSettings`): what decides the result
  besides the input and output paths; also the ``segment`` / ``predict`` sections of ``affcons run``'s config;
- *options* (:class:`SegmentOptions`, :class:`PredictOptions`): everything a user may give the command, in a config
  file or on the command line (the CLI writes its options into these keys); unresolved values are ``None``;
- *config* (:class:`SegmentConfig`, :class:`PredictConfig`): a resolved run (:mod:`blockwise.geometry`), every
  value filled in. The driver writes it to the run directory, and cluster workers rebuild their step from that file
  alone (``python -m blockwise.worker --config RUN_DIR/config.yaml --step NAME``).

``affcons run`` composes the settings in :class:`JobConfig`. Every length is in world units (nm, z y x) except the
storage chunk shape and the network's patch and margin, which are voxels. ``fingerprint_fields()`` lists what
decides the bytes of the outputs: a different value for an existing run directory or output is refused, nothing is
overwritten; thresholds, workers, launcher, timeouts and the agglomeration method may change between runs of the same
output.
"""

import hashlib
import json
from pathlib import Path
from typing import Literal

import pydantic

from affcons.codecs import Compression
from affcons.config import StrictModel
from blockwise.steps.agglomerate import AgglomerateConfig
from blockwise.steps.edges import EdgesConfig
from blockwise.steps.extract import ExtractConfig
from blockwise.steps.fragments import FragmentsConfig
from blockwise.steps.predict import PredictSettings

#: The dtypes accepted for affinities (uint8 0-255, or float in [0, 1]).
AFFINITY_DTYPES = ("uint8", "float32", "float16")

Triple = tuple[int, int, int]


class LauncherConfig(StrictModel):
    """How worker processes start.

    ``local``: daisy spawns ``workers`` processes on this machine running the step's block function.
    ``slurm``: each worker slot runs ``srun [extra_args] PYTHON -m blockwise.worker ...`` (or, with
    ``slurm_submit: sbatch``, ``sbatch --wait [extra_args] --wrap "..."``). ``lsf``: ``bsub -K [extra_args] ...``.
    The cluster worker connects back to this driver through ``DAISY_CONTEXT`` (forwarded in the job environment).
    """

    #: ``local``, ``slurm`` or ``lsf``.
    type: Literal["local", "slurm", "lsf"] = "local"
    #: Extra arguments for srun / sbatch / bsub, e.g. ``["-p", "cpu", "--mem=8G", "-t", "120"]``.
    extra_args: list[str] = []
    #: SLURM submission command: ``srun`` (blocking step) or ``sbatch`` (``sbatch --wait --wrap``).
    slurm_submit: Literal["srun", "sbatch"] = "srun"
    #: Python executable on the compute nodes (default: the driver's ``sys.executable``).
    python: str | None = None


class ExecutionConfig(StrictModel):
    """Workers and reliability settings; none of these changes the result."""

    #: Blocks processed at once (worker processes per blockwise step).
    workers: int = pydantic.Field(1, ge=1)
    #: Worker launcher.
    launcher: LauncherConfig = LauncherConfig()
    #: Seconds a block may take before daisy kills its worker and retries it (daisy's default is 600 s).
    block_timeout_s: float = pydantic.Field(3600.0, gt=0)
    #: Retries of a failed block before it counts as failed.
    max_retries: int = pydantic.Field(2, ge=0)
    #: Dirty worker exits tolerated per step before daisy abandons it.
    max_worker_restarts: int = pydantic.Field(10, ge=0)
    #: Show daisy's progress bar per task.
    progress: bool = True
    #: Decoded input chunks each worker keeps for its next blocks, MiB (0: none): blocks read with context decode
    #: the chunks of their neighbours' faces too (``blockwise.volumes.ChunkCache``).
    read_cache_mb: int = pydantic.Field(256, ge=0)
    #: Local launcher: start ``workers`` processes once per run and run every step's workers in them
    #: (``blockwise.pool``); False: daisy starts fresh ones for each step (~1.7 s CPU each before their first block).
    warm_workers: bool = True


#: The steps that store a block's RAG edges (a fingerprint field of ``affcons segment``).
RAG_STEPS = "internal edges: fragments; crossing edges: edges, from the face sections"


class Fingerprinted:
    """A resolved config whose result-deciding fields are fingerprinted (mixin of the pydantic configs)."""

    def fingerprint_fields(self) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`fingerprint_fields`."""
        text = json.dumps(self.fingerprint_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def public_dump(self) -> dict:
        """The config as stored in outputs, summaries and messages (no secrets)."""
        return self.model_dump(mode="json")


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """``key: stored -> current`` for every fingerprint field that differs."""
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys if stored.get(k) != current.get(k)]


# ------------------------------------------------------------------------------------------- affcons segment


class SegmentSettings(StrictModel):
    """How to segment: blocks, watershed, scoring, thresholds, graph store (the ``segment`` section of
    ``affcons run``)."""

    #: Graph store URL: ``sqlite:///path.db`` or ``mongodb://[user@]host:port/db``; default SQLite in the run
    #: directory. A password in it is never stored (:mod:`affcons.secrets`).
    graph: str | None = None
    #: A file holding the graph store's password on its first line (mode 600), for a URL that names a user.
    graph_credentials: str | None = None
    #: Block (write ROI) shape, nm (z, y, x); a multiple of the voxel size and of the chunk shape. Default 64 x 256
    #: x 256 voxels.
    block_size: Triple | None = None
    #: Context read around each block by the watershed, nm (z, y, x). Default 8 x 32 x 32 voxels.
    context: Triple | None = None
    #: Zarr chunk shape of the outputs, voxels (z, y, x); must divide the block shape in voxels. Default: the block.
    chunk_shape: Triple | None = None
    #: Compression of the outputs (ids). ``zstd`` (level 3, no blosc) costs 2.7-2.9x less CPU to write and read than
    #: ``blosc-zstd`` for fragment and segment ids at 1.0-1.1x its size (``benchmarks/codecs.py``).
    compression: Compression = "zstd"
    #: Step sections.
    fragments: FragmentsConfig = FragmentsConfig()
    edges: EdgesConfig = EdgesConfig()
    agglomerate: AgglomerateConfig = AgglomerateConfig()
    extract: ExtractConfig


class SegmentOptions(SegmentSettings):
    """Everything a user may give ``affcons segment`` (config-file keys; lengths in nm)."""

    #: Affinities ``in.zarr/name`` or ``file.h5:name``: (C >= 3, z, y, x), uint8 or float; channels 0-2 used.
    affs: str | None = None
    #: Output zarr container: ``fragments`` and ``segmentation_<t>`` are written inside.
    out: str | None = None
    #: Run directory (config, done markers, logs, summary, merge tree); default ``<out>/../<name>.affcons-run``.
    run_dir: str | None = None
    #: Thresholds (required; ``--thresholds`` on the command line).
    extract: ExtractConfig | None = None
    #: Voxel size of the affinities, nm (z, y, x); only for affinities without one, must match a stored one.
    voxel_size: Triple | None = None
    #: Region to process, nm (z, y, x); default: the affinities' ROI.
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None
    #: Workers, launcher, timeouts.
    execution: ExecutionConfig = ExecutionConfig()


class SegmentConfig(Fingerprinted, SegmentOptions):
    """A resolved ``affcons segment`` run."""

    affs: str
    out: str
    run_dir: str
    graph: str
    extract: ExtractConfig
    voxel_size: Triple
    #: Offset of the affinities, nm (z, y, x).
    affs_offset: Triple | None = None
    #: The affinities say they are complete (written by affcons): a missing chunk is an error, not fill value.
    affs_complete: bool = False
    roi_offset: Triple
    roi_shape: Triple
    block_size: Triple
    context: Triple
    chunk_shape: Triple

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "SegmentConfig":
        problems = []
        if min(self.voxel_size) < 1:
            problems.append(f"voxel_size {self.voxel_size} must be positive")
        for name in ("roi_offset", "roi_shape", "block_size", "context"):
            value = getattr(self, name)
            if min(self.voxel_size) >= 1 and any(v % s for v, s in zip(value, self.voxel_size)):
                problems.append(f"{name} {value} nm is not a multiple of the voxel size {self.voxel_size} nm")
        if min(self.roi_shape) < 1 or min(self.block_size) < 1:
            problems.append(f"roi_shape {self.roi_shape} and block_size {self.block_size} must be positive")
        if min(self.context) < 0:
            problems.append(f"context {self.context} must not be negative")
        if min(self.chunk_shape) < 1:
            problems.append(f"chunk_shape {self.chunk_shape} must be positive")
        if problems:
            raise ValueError("; ".join(problems))
        from blockwise.geometry import check_block_chunks

        check_block_chunks(self.block_voxels, self.chunk_shape)
        return self

    @property
    def block_voxels(self) -> Triple:
        return tuple(b // s for b, s in zip(self.block_size, self.voxel_size))

    @property
    def roi_voxels(self) -> Triple:
        return tuple(r // s for r, s in zip(self.roi_shape, self.voxel_size))

    @property
    def histogram_bins(self) -> int:
        """Histogram bins per stored edge: 256 for quantile scoring, 0 for mean."""
        from affcons.segment import QUANTILE_BINS
        from affcons.segment.scoring import parse_scoring

        return QUANTILE_BINS if parse_scoring(self.agglomerate.scoring) >= 0 else 0

    def graph_url(self) -> str:
        """The graph store URL to connect with: :attr:`graph` plus the password from the environment or the
        credentials file (:func:`affcons.secrets.connect_url`)."""
        from affcons.secrets import connect_url

        return connect_url(self.graph, self.graph_credentials)

    def public_dump(self) -> dict:
        """The config with any password in the graph URL replaced by ``***`` (it holds none once resolved)."""
        from affcons.secrets import redact

        data = self.model_dump(mode="json")
        data["graph"] = redact(data["graph"])
        return data

    def fingerprint_fields(self) -> dict:
        """The fields that decide fragments, RAG and merge tree (and the bytes of the outputs)."""
        from affcons.secrets import redact

        data = self.model_dump(mode="json")
        keys = ("voxel_size", "roi_offset", "roi_shape", "block_size", "context", "chunk_shape", "compression")
        steps = ("fragments", "edges", "agglomerate")
        # the agglomeration method and its stop level decide how, not what: every method gives the same tree
        data["agglomerate"] = {"scoring": data["agglomerate"]["scoring"]}
        return {
            "affs": str(Path(self.affs).absolute()),
            "graph": redact(self.graph),
            **{key: data[key] for key in keys + steps},
            # which step stores which edges: a run begun by a version that split them otherwise cannot resume
            "rag_steps": RAG_STEPS,
        }


# ------------------------------------------------------------------------------------------- affcons predict


class PredictOptions(PredictSettings):
    """Everything a user may give ``affcons predict`` (config-file keys)."""

    #: Training checkpoint of ``affcons train`` (embedding + affinity nets and the config they were trained with).
    checkpoint: str | None = None
    #: Raw EM ``in.zarr/raw`` or ``file.h5:raw``, (z, y, x).
    raw: str | None = None
    #: Output affinities ``out.zarr/affs``: (channels, z, y, x).
    out: str | None = None
    #: Optional output ``out.zarr/disagreement``: (z, y, x) uint8, mean |implicit - explicit| of the 3 short-range
    #: channels (edge confidence for post-processing).
    disagreement: str | None = None
    #: Run directory (config, done markers, timers, logs, summary); default ``OUT/../NAME.DATASET.predict-run``.
    run_dir: str | None = None
    #: Voxel size of the raw, nm (from its attributes; give it only for raw without one).
    voxel_size: Triple | None = None
    #: Region to predict, nm; default: the raw's ROI.
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None
    #: Workers, launcher, timeouts, retries.
    execution: ExecutionConfig = ExecutionConfig()


class PredictConfig(Fingerprinted, PredictOptions):
    """A resolved ``affcons predict`` run."""

    checkpoint: str
    #: SHA-256 of the checkpoint file (part of the fingerprint).
    checkpoint_sha256: str
    raw: str
    out: str
    run_dir: str
    voxel_size: Triple
    #: Offset (nm) and shape (voxels) of the raw.
    raw_offset: Triple
    raw_shape: Triple
    #: The raw says it is complete (imported by affcons): a missing chunk is an error, not fill value.
    raw_complete: bool = False
    #: Local GPU workers: the driver's ``CUDA_VISIBLE_DEVICES`` entries of ``gpus`` (what each worker sets).
    gpu_entries: list[str] | None = None
    roi_offset: Triple
    roi_shape: Triple
    patch: Triple
    margin: Triple
    block_size: Triple
    chunk_shape: Triple
    #: The map this run writes (``auto`` is resolved against the checkpoint before the run is configured).
    map: Literal["implicit", "explicit", "mean"]

    @property
    def block_voxels(self) -> Triple:
        return tuple(b // s for b, s in zip(self.block_size, self.voxel_size))

    @property
    def uses_gpu(self) -> bool:
        return self.device == "cuda"

    def fingerprint_fields(self) -> dict:
        """What decides the bytes of the outputs (workers, GPUs, batch size, threads and timeouts do not)."""
        data = self.model_dump(mode="json")
        keys = (
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
        fields = {key: data[key] for key in keys}
        fields["raw"] = str(Path(self.raw).absolute())
        fields["out"] = str(Path(self.out).absolute())
        fields["disagreement"] = str(Path(self.disagreement).absolute()) if self.disagreement else None
        return fields


# ----------------------------------------------------------------------------------------------- affcons run


class JobPredict(PredictSettings):
    """The ``predict`` section of ``affcons run``: :class:`PredictSettings` plus the checkpoint."""

    #: Training checkpoint (repository-relative or absolute).
    checkpoint: str
    #: Also write the per-voxel implicit/explicit disagreement map ``OUT.zarr/disagreement``.
    disagreement: bool = True


class JobEvaluate(StrictModel):
    """Evaluation against dense ground truth (id 0 ignored)."""

    #: Ground-truth labels ``file.h5:name`` or ``gt.zarr/name`` (repository-relative or absolute).
    ground_truth: str
    #: Region scored, nm (default: the whole segmented region).
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None


class JobConfig(Fingerprinted, StrictModel):
    """A complete ``affcons run``. Relative paths are taken from the repository root."""

    #: Raw EM: ``file.h5:raw`` (imported to ``OUT.zarr/raw``) or ``in.zarr/raw`` (used in place).
    raw: str
    #: Voxel size of the raw, nm (only for raw without one).
    voxel_size: Triple | None = None
    #: Region to process, nm (default: the whole raw).
    roi_offset: Triple | None = None
    roi_shape: Triple | None = None
    #: Run directory (default ``runs/<config name>`` in the repository).
    run_dir: str | None = None
    #: Output container (default ``RUN_DIR/out.zarr``).
    out: str | None = None
    #: Chunks of an imported raw, voxels.
    import_chunks: Triple = (32, 256, 256)
    predict: JobPredict
    segment: SegmentSettings
    evaluate: JobEvaluate | None = None
    #: Workers, launcher, timeouts and retries of the blockwise stages (with GPUs, prediction runs one worker per
    #: GPU).
    execution: ExecutionConfig = ExecutionConfig()

    def fingerprint_fields(self) -> dict:
        """Everything but the execution settings and the run directory."""
        data = self.model_dump(mode="json")
        for key in ("execution", "run_dir"):
            data.pop(key)
        return data


# ------------------------------------------------------------------------------------------- affcons pyramid


class PyramidOptions(StrictModel):
    """What the user gives ``affcons pyramid`` (command line and ``--config`` file)."""

    #: The array to downsample: ``c.zarr/name`` (zarr v3, with funlib.persistence metadata).
    source: str | None = None
    #: The multiscale group to write (default: ``c.zarr/name_multiscale``).
    out: str | None = None
    #: ``mean`` (intensities, affinities), ``mode`` (ids), ``auto``: mode for integer arrays of 32 bits or more
    #: and for arrays named like ids (fragments, segmentation*, labels*), mean otherwise.
    mode: Literal["auto", "mean", "mode"] = "auto"
    #: Stop once every axis of the coarsest level has at most this many voxels.
    max_extent: int = pydantic.Field(256, ge=1)
    #: Chunks (= blocks) of every level, voxels (z, y, x); clipped to each level's shape.
    chunk_shape: Triple = (64, 256, 256)
    compression: Compression = "blosc-zstd"
    run_dir: str | None = None
    execution: ExecutionConfig = ExecutionConfig()


class PyramidConfig(Fingerprinted, StrictModel):
    """A resolved ``affcons pyramid`` run (:func:`blockwise.pyramid.resolve`); levels ``s0`` (a copy of the source)
    to ``s<n>``, each ``factors[k]`` coarser than the source."""

    source: str
    out: str
    mode: Literal["mean", "mode"]
    #: Of the source: nm (z, y, x), corner offset nm, spatial shape in voxels, leading channel axes, dtype.
    voxel_size: Triple
    offset: Triple
    shape: Triple
    channels: list[int]
    dtype: str
    #: Per level, its factor relative to the source (level 0: 1, 1, 1).
    factors: list[Triple]
    chunk_shape: Triple
    compression: Compression
    run_dir: str
    execution: ExecutionConfig = ExecutionConfig()

    def fingerprint_fields(self) -> dict:
        data = self.model_dump(mode="json")
        for key in ("execution", "run_dir"):
            data.pop(key)
        return data
