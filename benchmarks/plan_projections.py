"""The ``--dry-run`` plans of ``affcons segment`` for volumes no one has here: Kasthuri15 (10747 x 12895 x 1850 voxels
at 6 x 6 x 30 nm) with mean and quantile50 scoring, and a 1e12-voxel volume (10^4 voxels per axis at 8 nm), each
with the hierarchical agglomeration, blocks 64 x 256 x 256 and context 8 x 32 x 32 voxels, and a worker memory
budget of 16 GB (the plan projects which level the driver would finish). RAG densities are the
plan's assumed ones (Kasthuri15's typical 4e8 edges), rates those measured on this project's machine
(:data:`blockwise.plan.MEASURED`).

    .venv/bin/python benchmarks/plan_projections.py
"""

from blockwise.config import SegmentConfig
from blockwise.plan import format_segment_plan, segment_plan

BLOCK = (64, 256, 256)
CONTEXT = (8, 32, 32)
WORKER_MEMORY_BYTES = 16_000_000_000
VOLUMES = {
    "Kasthuri15": ((1850, 12895, 10747), (30, 6, 6)),
    "1e12 voxels": ((10000, 10000, 10000), (8, 8, 8)),
}


def plan_of(shape, voxel_size, scoring: str, method: str = "hierarchical") -> str:
    """The printed plan of a volume of ``shape`` voxels at ``voxel_size`` nm (paths are placeholders)."""
    config = SegmentConfig.model_validate(
        {
            "affs": "/data/affs.zarr/affs",
            "out": "/data/out.zarr",
            "run_dir": "/data/out.affcons-run",
            "graph": "sqlite:////data/rag.db",
            "extract": {"thresholds": [0.5]},
            "voxel_size": voxel_size,
            "roi_offset": (0, 0, 0),
            "roi_shape": tuple(s * v for s, v in zip(shape, voxel_size)),
            "block_size": tuple(b * v for b, v in zip(BLOCK, voxel_size)),
            "context": tuple(c * v for c, v in zip(CONTEXT, voxel_size)),
            "chunk_shape": BLOCK,
            "agglomerate": {"scoring": scoring, "method": method, "worker_memory_bytes": WORKER_MEMORY_BYTES},
        }
    )
    return format_segment_plan(segment_plan(config))


def main() -> None:
    for name, (shape, voxel_size) in VOLUMES.items():
        for scoring in ("mean", "quantile50") if name == "Kasthuri15" else ("mean",):
            print(f"== {name}, {scoring} scoring")
            print(plan_of(shape, voxel_size, scoring))
            print()


if __name__ == "__main__":
    main()
