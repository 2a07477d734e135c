"""Evaluation at scale: a threshold sweep scored from one fragment x ground-truth table, against ``affcons evaluate``
of each segmentation as it was (whole volumes in memory), in one run.

    nice .venv/bin/python benchmarks/evaluate_sweep.py [--size 500] [--block 100] [--old-thresholds 9]

The volume: the gala FIB-SEM ground truth mirrored to S^3 voxels (10 nm), one id per connected piece, with
network-like affinities (:func:`affcons.synthetic.degraded_affinities`, computed per block with a margin, uint8).
Fragments, their RAG and the mean-affinity merge tree are made block by block in this process as the blockwise
pipeline makes them (:func:`affcons.segment.block_fragments` with a context of 8, ids offset per block, edge tables
with one voxel of lower context, combined; no face stitching), and each of the 9 thresholds 0.1 .. 0.9 is written
as a uint64 segmentation, as the extract step writes it. All volumes are zarr v3 on disk, chunks ``block / 2``.

"old": per threshold, a child process running the code of ``affcons evaluate`` at commit 3b88176 (read the whole
segmentation and ground truth, :func:`affcons.evaluate.evaluate`). "new": one child process running ``affcons
evaluate --fragments --tree --thresholds`` (the fragment contingency counted once in z slabs, each threshold from
its lookup table). Both are sampled for peak RSS with psutil. The benchmark asserts identical metrics and prints
seconds, peak memory and the speed-up of the sweep. ``--old-thresholds K`` times the old path on the first K
thresholds only (memory-bound machines) and extrapolates its sweep time by 9 / K, saying so.
"""

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import RssSampler  # noqa: E402

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CONTEXT = 8
MARGIN = 6  # voxels of labels around a grown block for the blur (sigma 1, truncate 4) and the widened boundaries

OLD_EVALUATE = textwrap.dedent(
    """
    import json, sys
    from affcons.evaluate import evaluate
    from affcons.io import open_volume
    segmentation, ground_truth = open_volume(sys.argv[1]), open_volume(sys.argv[2])
    print(json.dumps(evaluate(segmentation[segmentation.roi], ground_truth[ground_truth.roi])))
    """
)


def make_run(work: Path, size: int, block: int) -> dict:
    """Ground truth, fragments, merge tree and segmentations of an S^3 mirrored gala volume, block by block."""
    import cc3d
    from funlib.geometry import Roi

    from affcons.affinities import affinities_to_uint8
    from affcons.io import create_volume
    from affcons.segment import EdgeTable, apply_lookup, block_fragments, build_merge_tree, edge_table
    from affcons.synthetic import degraded_affinities
    from blockwise.testing import load_labels, mirror_to

    base, voxel_size = load_labels("gala")
    labels = cc3d.connected_components(mirror_to(base, (size,) * 3), connectivity=6).astype(np.uint64)
    roi = Roi((0, 0, 0), tuple(size * v for v in voxel_size))
    chunks = (block // 2,) * 3
    paths = {"gt": f"{work}/run.zarr/gt", "fragments": f"{work}/run.zarr/fragments"}
    create_volume(paths["gt"], roi, voxel_size, np.uint64, chunk_shape=chunks)[roi] = labels
    fragments = create_volume(paths["fragments"], roi, voxel_size, np.uint64, chunk_shape=chunks)
    tables, node_ids = [], []
    for index, begin in enumerate(itertools.product(range(0, size, block), repeat=3)):
        begin = np.asarray(begin)
        end = np.minimum(begin + block, size)
        start, stop = np.maximum(begin - CONTEXT, 0), np.minimum(end + CONTEXT, size)
        low, high = np.maximum(start - MARGIN, 0), np.minimum(stop + MARGIN, size)
        window = labels[tuple(slice(a, b) for a, b in zip(low, high))]
        affs = affinities_to_uint8(degraded_affinities(window, seed=index))
        affs = affs[(slice(None),) + tuple(slice(a - c, b - c) for a, b, c in zip(start, stop, low))]
        crop = tuple(slice(b - a, e - a) for a, b, e in zip(start, begin, end))
        local, _, nodes = block_fragments(affs, crop, first_id=index * (block**3 + 1), voxel_size=voxel_size)
        block_roi = Roi(tuple(begin * voxel_size), tuple((end - begin) * voxel_size))
        fragments[block_roi] = local
        node_ids.append(nodes.ids)
        # edges: the block and one voxel of lower context (fragments of the blocks below, already written)
        context = tuple(int(b > 0) for b in begin)
        lower = begin - np.asarray(context)
        with_context = fragments[Roi(tuple(lower * voxel_size), tuple((end - lower) * voxel_size))]
        pairs = affs[(slice(None),) + tuple(slice(a - s, e - s) for a, e, s in zip(lower, end, start))]
        tables.append(edge_table(with_context, affs=pairs.astype(np.float32) / np.float32(255), lower_context=context))
    tree = build_merge_tree(EdgeTable.concatenate(tables, 0).combine(), "mean", node_ids=np.concatenate(node_ids))
    paths["tree"] = str(work / "merge_tree.npz")
    tree.save(paths["tree"])
    del labels
    paths["segmentations"] = {}
    for threshold in THRESHOLDS:
        path = f"{work}/run.zarr/segmentation_{threshold:.2f}"
        output = create_volume(path, roi, voxel_size, np.uint64, chunk_shape=chunks)
        lookup = tree.lookup(threshold)
        for z in range(0, size, block):
            slab = Roi((z * voxel_size[0], 0, 0), (min(block, size - z) * voxel_size[0],) + roi.shape[1:])
            output[slab] = apply_lookup(fragments[slab], tree.ids, lookup)
        paths["segmentations"][threshold] = path
    return paths


def sampled(command: list[str]) -> tuple[dict | list, float, int]:
    """Run ``command`` (JSON on the last line of stdout): its result, wall seconds and peak RSS (bytes)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sampler = RssSampler(child.pid)
    output, errors = child.communicate()
    wall, peak = time.perf_counter() - start, sampler.stop()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{errors}")
    return json.loads(output.strip().splitlines()[-1]), wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=500, help="edge of the volume, voxels")
    parser.add_argument("--block", type=int, default=100, help="block edge for making the fragments, voxels")
    parser.add_argument(
        "--old-thresholds", type=int, default=len(THRESHOLDS), help="thresholds to time the old path on"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="affcons-evaluate-") as directory:
        work = Path(directory)
        start = time.perf_counter()
        paths = make_run(work, args.size, args.block)
        made = time.perf_counter() - start
        print(f"{args.size}^3 volume, fragments, merge tree and 9 segmentations made in {made:.0f} s")

        command = [sys.executable, "-m", "affcons.cli", "evaluate", "--fragments", paths["fragments"]]
        command += ["--gt", paths["gt"], "--tree", paths["tree"], "--json", "--thresholds", *map(str, THRESHOLDS)]
        rows, new_wall, new_peak = sampled(command)
        old_walls, old_peaks = [], []
        for threshold, row in zip(THRESHOLDS[: args.old_thresholds], rows):
            segmentation = paths["segmentations"][threshold]
            old, wall, peak = sampled([sys.executable, "-c", OLD_EVALUATE, segmentation, paths["gt"]])
            assert {key: row[key] for key in old} == old, f"metrics differ at {threshold}: {old} vs {row}"
            old_walls.append(wall)
            old_peaks.append(peak)
            print(f"  {threshold:.1f}: old {wall:.1f} s, {peak / 2**30:.2f} GiB, VOI {old['voi']:.4f}: identical")
        old_sweep = sum(old_walls) * len(THRESHOLDS) / len(old_walls)
        extrapolated = "" if len(old_walls) == len(THRESHOLDS) else f" (extrapolated from {len(old_walls)} thresholds)"
        print(
            f"9-threshold sweep on {args.size}^3: old {old_sweep:.1f} s{extrapolated}, peak "
            f"{max(old_peaks) / 2**30:.2f} GiB | new {new_wall:.1f} s, peak {new_peak / 2**30:.2f} GiB | "
            f"speed-up {old_sweep / new_wall:.1f}x, memory {max(old_peaks) / new_peak:.1f}x less; metrics identical"
        )


if __name__ == "__main__":
    main()
