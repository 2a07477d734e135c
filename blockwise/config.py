"""Typed, strict, serialisable configuration of ``affcons segment``.

One :class:`SegmentConfig` describes a whole run; the driver writes it, resolved (voxel size and ROI filled in), to
``RUN_DIR/config.yaml``, and cluster workers rebuild their step from that file alone
(``python -m blockwise.worker --config RUN_DIR/config.yaml --step NAME``). Every length is in world units (nm,
z y x) except the storage chunk shape, which is a property of the zarr arrays and therefore in voxels.

Each step section carries a ``step_type`` tag; :mod:`blockwise.registry` maps tags to step classes and rejects
unknown ones by name. :meth:`SegmentConfig.fingerprint_fields` lists what decides the *result* (fragments, RAG,
merge tree): a different value for an existing run directory or output is refused, nothing is overwritten. The
thresholds, the worker count, the launcher and the timeouts may change between runs of the same output.
"""

import hashlib
import json
from pathlib import Path
from typing import Literal

import pydantic

from affcons.config import StrictModel
from affcons.errors import ConfigError

#: The dtypes accepted for affinities (uint8 0-255, or float in [0, 1]).
AFFINITY_DTYPES = ("uint8", "float32", "float16")
#: The blockwise steps in pipeline order; ``agglomerate`` is the one global (non-blockwise) step.
STEP_NAMES = ("fragments", "edges", "agglomerate", "extract")
#: The zarr compressions of :func:`affcons.io.create_volume`.
COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "gzip", "none")

Triple = tuple[int, int, int]


def threshold_name(threshold: float) -> str:
    """``0.5 -> "0.50"``: the suffix of ``segmentation_<t>``."""
    return f"{threshold:.2f}"


class FragmentsConfig(StrictModel):
    """Watershed fragments per block (:func:`affcons.segment.watershed_from_affinities`)."""

    #: Registry tag of the step.
    step_type: Literal["fragments"] = "fragments"
    #: Boundary values (1 - mean affinity) below this are cell interior, where seeds are placed.
    boundary_threshold: float = pydantic.Field(0.5, ge=0.0, le=1.0)
    #: Fragments of fewer voxels (within one block's context window) are dissolved into their neighbours.
    min_size: int = pydantic.Field(0, ge=0)
    #: 2-D fragments per z-section (anisotropic data); the z affinities are then ignored by the watershed.
    per_slice: bool = False


class EdgesConfig(StrictModel):
    """RAG edges with mergeable statistics per block; histograms are kept only for quantile scoring."""

    #: Registry tag of the step.
    step_type: Literal["edges"] = "edges"


class AgglomerateConfig(StrictModel):
    """Global agglomeration of the stored RAG into one merge tree (one process, compact arrays)."""

    #: Registry tag of the step.
    step_type: Literal["agglomerate"] = "agglomerate"
    #: Edge score: ``mean`` (1 - mean affinity) or ``quantileQ`` (1 - Q-th percentile, e.g. ``quantile50``).
    scoring: str = "mean"

    @pydantic.field_validator("scoring")
    @classmethod
    def _known_scoring(cls, value: str) -> str:
        from affcons.segment.agglomerate import parse_scoring

        parse_scoring(value)  # ConfigError naming the accepted forms
        return value


class ExtractConfig(StrictModel):
    """Segmentations at thresholds: a cut of the merge tree and a blockwise relabel of the fragments."""

    #: Registry tag of the step.
    step_type: Literal["extract"] = "extract"
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


class SegmentConfig(StrictModel):
    """A complete ``affcons segment`` run."""

    #: Affinities ``in.zarr/name`` or ``file.h5:name``: (C >= 3, z, y, x), uint8 or float; channels 0-2 used.
    affs: str
    #: Output zarr container: ``fragments`` and ``segmentation_<t>`` are written inside.
    out: str
    #: Run directory (config, done markers, logs, summary, merge tree); default ``<out>/../<name>.affcons-run``.
    run_dir: str
    #: Graph store URL: ``sqlite:///path.db`` or ``mongodb://host:port/db``.
    graph: str
    #: Voxel size of the affinities, nm (z, y, x).
    voxel_size: Triple
    #: Offset of the affinities, nm (z, y, x); resolved from the dataset by the driver when not given.
    affs_offset: Triple | None = None
    #: Begin of the processed region, nm (z, y, x); a multiple of the voxel size.
    roi_offset: Triple
    #: Shape of the processed region, nm (z, y, x); a multiple of the voxel size.
    roi_shape: Triple
    #: Block (write ROI) shape, nm (z, y, x); a multiple of the voxel size and of the chunk shape.
    block_size: Triple
    #: Context read around each block by the watershed, nm (z, y, x).
    context: Triple
    #: Zarr chunk shape of the outputs, voxels (z, y, x); must divide the block shape in voxels.
    chunk_shape: Triple
    #: Compression of the outputs.
    compression: Literal["blosc-zstd", "blosc-lz4", "gzip", "none"] = "blosc-zstd"
    #: Step sections.
    fragments: FragmentsConfig = FragmentsConfig()
    edges: EdgesConfig = EdgesConfig()
    agglomerate: AgglomerateConfig = AgglomerateConfig()
    extract: ExtractConfig
    #: Workers, launcher, timeouts.
    execution: ExecutionConfig = ExecutionConfig()

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
        elif not problems:
            block_voxels = self.block_voxels
            if any(b % c for b, c in zip(block_voxels, self.chunk_shape)):
                problems.append(
                    f"block size {block_voxels} voxels is not a multiple of the output chunk shape {self.chunk_shape} "
                    "voxels: blocks would share chunks, and zarr has no locking (choose a block size that is a "
                    "multiple of the chunk shape, or a chunk shape that divides the block size)"
                )
        if problems:
            raise ValueError("; ".join(problems))
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
        from affcons.segment.agglomerate import parse_scoring

        return QUANTILE_BINS if parse_scoring(self.agglomerate.scoring) >= 0 else 0

    def step_config(self, name: str):
        if name not in STEP_NAMES:
            raise ConfigError(f"unknown step {name!r}; the steps are {', '.join(STEP_NAMES)}")
        return getattr(self, name)

    def fingerprint_fields(self) -> dict:
        """The fields that decide fragments, RAG and merge tree (and the bytes of the outputs)."""
        from affcons.store.base import redact

        data = self.model_dump(mode="json")
        return {
            "affs": str(Path(self.affs).absolute()),
            "graph": redact(self.graph),
            **{
                key: data[key]
                for key in (
                    "voxel_size",
                    "roi_offset",
                    "roi_shape",
                    "block_size",
                    "context",
                    "chunk_shape",
                    "compression",
                    "fragments",
                    "edges",
                    "agglomerate",
                )
            },
        }

    def fingerprint(self) -> str:
        text = json.dumps(self.fingerprint_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_differences(stored: dict, current: dict) -> list[str]:
    """``key: stored -> current`` for every fingerprint field that differs."""
    keys = sorted(set(stored) | set(current))
    return [f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys if stored.get(k) != current.get(k)]
