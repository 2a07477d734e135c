"""Helpers for the blockwise tests and benchmarks: real-data volumes with degraded ground-truth affinities, the
``affcons segment`` command in-process or as a subprocess, and byte-level comparison of zarr outputs.

Real data only: ``data/gala_fibsem/*-gt.lzf.h5`` (50 x 100 x 200, ~10 nm isotropic) and the ISBI 2012 3-D neurite
labels (30 x 512 x 512 at 50 x 4 x 4 nm). Affinities follow the foundation benchmark's recipe,
:func:`affcons.synthetic.degraded_affinities` (widened boundaries, blur 1, noise 0.15, fixed seed).
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from blockwise.steps.base import BlockwiseStep

REPO = Path(__file__).resolve().parents[1]
GALA = REPO / "data" / "gala_fibsem" / "train-gt.lzf.h5"
GALA_TEST = REPO / "data" / "gala_fibsem" / "test-gt.lzf.h5"
ISBI = REPO / "data" / "isbi2012_3d" / "isbi2012_with_3d_neurite_labels.h5"


def load_labels(name: str = "gala") -> tuple[np.ndarray, tuple[int, int, int]]:
    """Ground-truth labels (uint64) and voxel size (nm): ``gala`` (train), ``gala-test``, or ``isbi`` (first 10
    sections, 128 x 128)."""
    import h5py

    if name in ("gala", "gala-test"):
        with h5py.File(GALA if name == "gala" else GALA_TEST, "r") as file:
            return file["stack"][()].astype(np.uint64), (10, 10, 10)
    if name == "isbi":
        with h5py.File(ISBI, "r") as file:
            return file["labels/neurites_3dcc"][:10, :128, :128].astype(np.uint64), (50, 4, 4)
    raise ValueError(f"unknown test volume {name!r}")


def mirror_to(volume: np.ndarray, shape) -> np.ndarray:
    """Tile ``volume`` by mirroring (reflect at each face) until it covers ``shape``; crop to ``shape``."""
    out = volume
    for axis, size in enumerate(shape):
        pieces, length, flip = [out], out.shape[axis], True
        while length < size:
            piece = np.flip(out, axis=axis) if flip else out
            pieces.append(piece)
            length += piece.shape[axis]
            flip = not flip
        out = np.concatenate(pieces, axis=axis)
        out = out[tuple(slice(0, size) if a == axis else slice(None) for a in range(out.ndim))]
    return np.ascontiguousarray(out)


def write_affinities(path: str, affs: np.ndarray, voxel_size, dtype=np.float32, chunk_shape=None, offset=(0, 0, 0)):
    """Write (3, z, y, x) affinities in [0, 1] to ``path`` (zarr v3) as float32/float16 or uint8 (0-255)."""
    from funlib.geometry import Coordinate, Roi

    from affcons.affinities import affinities_to_uint8
    from affcons.io import create_volume

    data = affinities_to_uint8(affs) if np.dtype(dtype) == np.uint8 else affs.astype(dtype)
    roi = Roi(offset, Coordinate(affs.shape[1:]) * Coordinate(voxel_size))
    array = create_volume(
        path, roi, voxel_size, data.dtype, num_channels=data.shape[0], chunk_shape=chunk_shape, mode="w"
    )
    array[roi] = data
    return array


def segment_argv(
    affs: str, out: str, thresholds=(0.3, 0.5, 0.7), block=(25, 50, 100), context=(8, 8, 8), workers: int = 2, extra=()
) -> list[str]:
    return [
        "segment",
        "--affs",
        affs,
        "--out",
        out,
        "--thresholds",
        *map(str, thresholds),
        "--block-size",
        *map(str, block),
        "--context",
        *map(str, context),
        "--workers",
        str(workers),
        "--quiet",
        *extra,
    ]


def face_links_of_run(out) -> np.ndarray:
    """The face-link bits a run of ``affcons segment --out OUT`` recorded (default run directory), as a volume."""
    from affcons.config import load_config
    from blockwise.config import SegmentConfig
    from blockwise.layout import RunDir, segment_run_dir
    from blockwise.steps.base import face_sections

    run_dir = RunDir(segment_run_dir(out))
    return face_sections(load_config(SegmentConfig, run_dir / RunDir.SEGMENT_CONFIG)).links_volume()


def run_cli(argv: list[str]) -> int:
    """``affcons ARGV`` in this process (daisy's workers are still separate processes)."""
    from affcons.cli import main

    return main(argv)


def run_cli_subprocess(argv: list[str], env=None, **kwargs) -> subprocess.Popen:
    """``affcons ARGV`` as a child process (for kill tests)."""
    environment = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "affcons.cli", *argv], env=environment, **kwargs)


def chunk_digests(container, datasets=None) -> dict[str, str]:
    """sha256 of every chunk file of the given datasets (default: all arrays) inside a zarr container, by relative
    path. Metadata (``zarr.json``: attributes with dates) is left out."""
    container = Path(container)
    digests = {}
    for path in sorted(container.rglob("*")):
        if not path.is_file() or path.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            continue
        relative = path.relative_to(container).as_posix()
        if datasets is not None and relative.split("/", 1)[0] not in datasets:
            continue
        digests[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def tree_snapshot(root) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file below ``root``: a cheap "nothing changed" check."""
    root = Path(root)
    if not root.exists():
        return {}
    files = (p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` and ``b`` label the same voxel sets (ids may differ), zero included as a label."""
    if a.shape != b.shape:
        return False
    _, index_a = np.unique(a, return_inverse=True)
    _, index_b = np.unique(b, return_inverse=True)
    index_a, index_b = index_a.ravel().astype(np.int64), index_b.ravel().astype(np.int64)
    pairs = np.unique(index_a * (int(index_b.max(initial=0)) + 1) + index_b)
    return len(pairs) == int(index_a.max(initial=0)) + 1 == int(index_b.max(initial=0)) + 1


# ------------------------------------------------------------------------------------------ shared reference run
# The reliability tests (resume, crashes, cluster launchers) compare their bytes with one clean run of the same
# command. It is computed once per test process and kept in a temporary directory removed at exit.

RELIABILITY_THRESHOLDS = (0.3, 0.5, 0.7)
RELIABILITY_BLOCK = (25, 50, 50)
RELIABILITY_CONTEXT = (8, 8, 8)
_cache: dict = {}


def _scratch() -> Path:
    if "scratch" not in _cache:
        import atexit
        import shutil
        import tempfile

        _cache["scratch"] = Path(tempfile.mkdtemp(prefix="affcons-blockwise-"))
        atexit.register(shutil.rmtree, _cache["scratch"], True)
    return _cache["scratch"]


def reliability_volume() -> str:
    """Affinities of gala (50, 100, 100) at 10 nm, float32, chunks (25, 50, 50): 8 blocks of the reliability runs."""
    if "volume" not in _cache:
        from affcons.synthetic import degraded_affinities

        labels, voxel_size = load_labels("gala")
        path = str(_scratch() / "reliability.zarr" / "affs")
        write_affinities(path, degraded_affinities(labels[:, :, :100], seed=3), voxel_size, chunk_shape=(25, 50, 50))
        _cache["volume"] = path
    return _cache["volume"]


def reliability_argv(out, thresholds=RELIABILITY_THRESHOLDS, workers: int = 2, extra=()) -> list[str]:
    return segment_argv(
        reliability_volume(), str(out), thresholds, RELIABILITY_BLOCK, RELIABILITY_CONTEXT, workers, extra
    )


def reference_run() -> tuple[Path, dict[str, str]]:
    """The clean reliability run: ``(output container, chunk digests)``."""
    if "reference" not in _cache:
        out = _scratch() / "reference.zarr"
        code = run_cli(reliability_argv(out))
        if code != 0:
            raise RuntimeError(f"the reference run failed with exit code {code}")
        _cache["reference"] = (out, chunk_digests(out))
    return _cache["reference"]


class NoopStep(BlockwiseStep):
    """A blockwise step that does nothing but leave its records, for tests of the runner with real daisy workers: a
    grid of ``grid`` blocks of 10 nm^3 with its records in ``run_dir``; faults are injected as for every step (step
    name ``noop``)."""

    name = "noop"

    def __init__(self, run_dir, grid=(1, 2, 2)):
        from types import SimpleNamespace

        super().__init__(
            SimpleNamespace(
                voxel_size=(10, 10, 10),
                roi_offset=(0, 0, 0),
                roi_shape=tuple(10 * g for g in grid),
                block_size=(10, 10, 10),
                block_voxels=(1, 1, 1),
                run_dir=str(run_dir),
            )
        )

    def rois(self):
        from funlib.geometry import Roi

        block = Roi((0, 0, 0), self.block_shape)
        return self.roi, block, block

    def process_block(self, write_roi, block_index, timers):
        timers.count("voxels", 1000)
