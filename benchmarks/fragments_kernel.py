"""The fragments step's per-block computation, before and after the compiled kernels, phase by phase.

    nice .venv/bin/python benchmarks/fragments_kernel.py [--size 144] [--context 8] [--repeats 3]

The block: the gala FIB-SEM ground truth (50 x 100 x 200 at 10 nm) mirrored to S^3 voxels (default 144 = a 128^3
block grown by a context of 8), with network-like affinities (:func:`affcons.synthetic.degraded_affinities`, as
``blockwise/testing.py`` makes them) stored as uint8, as prediction writes them.

"old" is the fragments step of commit 3b88176 (``blockwise/fragments.py``): ``affinities_to_float``, the scipy
watershed (:mod:`affcons.segment.reference_watershed`: boundary map, distance-transform seeds, bucket-queue flood,
min_size, ``fastremap.renumber``), ``face_links``, crop + ``fastremap.renumber``, the ``bincount`` node table (copied
below), the block's id offset. "new" is :func:`affcons.segment.block_fragments`. For each setting (per_slice false /
true, min_size 0 / 100) it prints the seconds per phase (best of ``--repeats``, wall clock), the total, Mvoxel/s of
the grown block, the ratio old / new, and asserts that fragments, face links and node table are byte-identical.
Wall and CPU seconds are both printed: on a shared machine the CPU time of the process is the steadier measure.
"""

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import fastremap
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affcons.affinities import affinities_to_float, affinities_to_uint8  # noqa: E402
from affcons.segment import NodeTable, block_fragments  # noqa: E402
from affcons.segment.reference_watershed import boundary_map, distance_maxima_seeds, reference_flood  # noqa: E402
from affcons.segment.stitch import face_links  # noqa: E402
from affcons.synthetic import degraded_affinities  # noqa: E402
from blockwise.testing import load_labels, mirror_to  # noqa: E402


@contextmanager
def timed(seconds: dict, phase: str):
    start = time.perf_counter()
    yield
    seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


def bincount_node_table(fragments, voxel_size, offset) -> NodeTable:
    """``affcons.segment.node_table`` of commit 3b88176 (float64 coordinate arrays of the block, ``bincount``)."""
    flat = fragments.ravel()
    largest = int(flat.max(initial=0))
    if largest <= 4 * flat.size:
        index, ids = flat.astype(np.int64), np.arange(largest + 1, dtype=np.uint64)
    else:
        ids, index = np.unique(flat, return_inverse=True)
    sizes = np.bincount(index, minlength=len(ids))
    nz, ny, nx = fragments.shape
    coordinates = (
        np.repeat(np.arange(nz, dtype=np.float64), ny * nx),
        np.tile(np.repeat(np.arange(ny, dtype=np.float64), nx), nz),
        np.tile(np.arange(nx, dtype=np.float64), nz * ny),
    )
    sums = np.stack([np.bincount(index, weights=c, minlength=len(ids)) for c in coordinates], axis=1)
    keep = (sizes > 0) & (ids != 0)
    centres = sums[keep] / sizes[keep][:, None]
    centres = centres * np.asarray(voxel_size, np.float64) + np.asarray(offset, np.float64)
    return NodeTable(ids[keep], centres, sizes[keep])


def old_block(affs, crop, voxel_size, offset, first_id, min_size, per_slice, seconds):
    """The fragments step's compute of commit 3b88176, phase by phase (an interior block: faces on all sides)."""
    with timed(seconds, "affinities to float"):
        affs = affinities_to_float(affs)
    with timed(seconds, "boundary map"):
        boundary = boundary_map(affs, per_slice)
    with timed(seconds, "seeds (EDT, maxima, label)"):
        seeds = distance_maxima_seeds(boundary < 0.5, voxel_size, per_slice)
    with timed(seconds, "flood"):
        fragments = reference_flood(boundary, seeds, None, per_slice)
    if min_size > 0:
        with timed(seconds, "min_size"):
            sizes = np.bincount(fragments.ravel())
            small = sizes < min_size
            small[0] = False
            if small.any():
                fragments[small[fragments]] = 0
                fragments = reference_flood(boundary, fragments, None, per_slice)
    with timed(seconds, "renumber, crop, renumber, ids"):
        fragments, _ = fastremap.renumber(fragments, in_place=True, preserve_zero=True)
        fragments = fragments.astype(np.uint64, copy=False)
    with timed(seconds, "face links"):
        links = face_links(fragments, crop)
    with timed(seconds, "renumber, crop, renumber, ids"):
        local = np.ascontiguousarray(fragments[crop])
        local, _ = fastremap.renumber(local, preserve_zero=True, in_place=True)
    with timed(seconds, "node table"):
        nodes = bincount_node_table(local, voxel_size, offset)
        nodes = NodeTable(nodes.ids + np.uint64(first_id), nodes.position, nodes.size)
    with timed(seconds, "renumber, crop, renumber, ids"):
        fragments = local.astype(np.uint64)
        fragments[local != 0] += np.uint64(first_id)
    return fragments, links, nodes


def new_block(affs, crop, voxel_size, offset, first_id, min_size, per_slice, seconds):
    return block_fragments(
        affs,
        crop,
        first_id=first_id,
        voxel_size=voxel_size,
        offset=offset,
        min_size=min_size,
        per_slice=per_slice,
        seconds=seconds,
    )


def best_of(function, repeats: int, *args):
    """Run ``function(*args, seconds)`` ``repeats`` times: the last result, per-phase seconds and total wall and CPU
    seconds of the fastest run."""
    best = None
    for _ in range(repeats):
        seconds = {}
        wall, cpu = time.perf_counter(), time.process_time()
        result = function(*args, seconds)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best[2]:
            best = (seconds, result, wall, cpu)
    return best


def same_nodes(a: NodeTable, b: NodeTable) -> bool:
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in ((a.ids, b.ids), (a.position, b.position), (a.size, b.size))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=144, help="edge of the grown block, voxels")
    parser.add_argument("--context", type=int, default=8, help="context per side, voxels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    labels, voxel_size = load_labels("gala")
    shape = (args.size,) * 3
    affs = affinities_to_uint8(degraded_affinities(mirror_to(labels, shape), seed=1))
    crop = tuple(slice(args.context, n - args.context) for n in shape)
    offset = tuple(args.context * v for v in voxel_size)
    first_id = 7 * (args.size - 2 * args.context) ** 3 + 7
    voxels = np.prod(shape)
    print(f"block {shape} uint8 affinities (gala mirrored, degraded), crop {args.context} voxels per side")
    block_fragments(affs[:, :16, :16, :16], (slice(2, 14),) * 3)  # compile (or load) the kernels
    for per_slice in (False, True):
        for min_size in (0, 100):
            arguments = (affs, crop, voxel_size, offset, first_id, min_size, per_slice)
            old_seconds, old, old_wall, old_cpu = best_of(old_block, args.repeats, *arguments)
            new_seconds, new, new_wall, new_cpu = best_of(new_block, args.repeats, *arguments)
            assert old[0].dtype == new[0].dtype and old[0].tobytes() == new[0].tobytes(), "fragments differ"
            assert old[1].dtype == new[1].dtype and old[1].tobytes() == new[1].tobytes(), "face links differ"
            assert same_nodes(old[2], new[2]), "node tables differ"
            print(f"\nper_slice={per_slice} min_size={min_size}: {len(new[2])} fragments, outputs byte-identical")
            for name, seconds in (("old", old_seconds), ("new", new_seconds)):
                print(f"  {name}: " + ", ".join(f"{phase} {s:.3f}" for phase, s in seconds.items()))
            for what, old_s, new_s in (("wall", old_wall, new_wall), ("CPU", old_cpu, new_cpu)):
                print(
                    f"  {what}: old {old_s:.3f} s ({voxels / old_s / 1e6:.2f} Mvoxel/s), new {new_s:.3f} s "
                    f"({voxels / new_s / 1e6:.2f} Mvoxel/s): {old_s / new_s:.1f}x"
                )


if __name__ == "__main__":
    main()
