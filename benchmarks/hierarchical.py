"""Global vs hierarchical agglomeration on the same fragments and RAG: wall time and the peak RSS of the largest
process of each level.

    nice .venv/bin/python benchmarks/hierarchical.py [--sizes 256 512] [--block 64 64 64] [--workers 2]

For each size S an S^3 volume is made as ``benchmarks/postprocess.py`` makes it (the gala FIB-SEM ground truth
mirrored to S^3, one id per connected piece, degraded ground-truth affinities). ``affcons segment`` runs with
``--agglomeration global`` and with ``--agglomeration hierarchical`` into two outputs (fragments and RAG are
deterministic, so both agglomerate the same RAG; checked by its counts). It checks that both trees are equal array
for array and the lookup tables byte for byte, and prints per method: the agglomeration's wall time, the global
step's peak RSS (the driver, sampled) against each level's blocks, states and the largest peak RSS among its workers
(``ru_maxrss``), the assembly's peak RSS in the driver, and the ratios.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cc3d
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affcons.segment import MergeTree  # noqa: E402
from blockwise.layout import RunDir, segment_run_dir  # noqa: E402
from blockwise.testing import load_labels, mirror_to, segment_argv, write_affinities  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7)


def make_volume(size: int, work: Path) -> str:
    """Affinities of the gala ground truth mirrored to ``size``^3 (float32, chunks 64^3); returns the path."""
    from affcons.synthetic import degraded_affinities

    base, voxel_size = load_labels("gala")
    labels = cc3d.connected_components(mirror_to(base, (size,) * 3), connectivity=6).astype(np.uint64)
    path = str(work / f"in{size}.zarr" / "affs")
    write_affinities(path, degraded_affinities(labels, seed=0), voxel_size, chunk_shape=(64, 64, 64))
    return path


def segment(argv: list[str], log: Path) -> float:
    """``affcons ARGV`` as a child process; its wall time, s (a failure ends the benchmark with its log)."""
    start = time.perf_counter()
    with open(log, "w") as output:
        code = subprocess.call([sys.executable, "-m", "affcons.cli", *argv], stdout=output, stderr=subprocess.STDOUT)
    if code != 0:
        sys.exit(f"affcons {' '.join(argv)} failed with exit code {code}; log:\n{log.read_text()}")
    return time.perf_counter() - start


def snapshot(run_dir: RunDir) -> tuple[MergeTree, dict[str, bytes]]:
    tree = MergeTree.load(run_dir.merge_tree)
    return tree, {p.name: p.read_bytes() for p in sorted(run_dir.lut_ids.parent.glob("*.npy"))}


def measure(size: int, block, workers: int, work: Path) -> None:
    start = time.perf_counter()
    affs = make_volume(size, work)
    print(f"\n{size}^3 volume made in {time.perf_counter() - start:.1f} s; blocks {block}, {workers} workers")
    out = work / f"out{size}.zarr"
    argv = segment_argv(affs, str(out), THRESHOLDS, block, (8, 8, 8), workers=workers)
    run_dir = RunDir(segment_run_dir(out))

    wall = segment(argv, work / f"global{size}.log")
    summary = json.loads(run_dir.summary.read_text())
    global_stage = summary["stages"]["agglomerate"]
    global_tree, global_luts = snapshot(run_dir)
    nodes, edges = summary["nodes"], summary["edges"]
    print(
        f"  whole run (global): {wall:.1f} s; {nodes} nodes, {edges} edges, "
        f"fragment grid {[-(-size // b) for b in block]}"
    )

    out = work / f"hierarchical{size}.zarr"
    argv = segment_argv(affs, str(out), THRESHOLDS, block, (8, 8, 8), workers=workers)
    run_dir = RunDir(segment_run_dir(out))
    wall = segment(argv + ["--agglomeration", "hierarchical"], work / f"hierarchical{size}.log")
    summary = json.loads(run_dir.summary.read_text())
    levels_stage = summary["stages"]["agglomerate"]
    same_rag = (summary["nodes"], summary["edges"]) == (nodes, edges)
    tree, luts = snapshot(run_dir)
    same = all(
        np.array_equal(getattr(tree, name), getattr(global_tree, name))
        for name in ("ids", "kept", "absorbed", "score", "level")
    )
    same_luts = luts == global_luts
    print(f"  whole run (hierarchical): {wall:.1f} s; same RAG: {same_rag}")
    print(f"  merge trees equal: {same}; lookup tables byte-identical: {same_luts}")

    global_peak = global_stage["peak_rss_bytes"]
    print(
        f"  global:       agglomerate {global_stage['wall_s']:.2f} s (read {global_stage['read_s']:.2f} s, "
        f"build {global_stage['build_s']:.2f} s), one process peak RSS {global_peak / 1e6:.0f} MB "
        f"(growth {global_stage['rss_growth_bytes'] / 1e6:.0f} MB)"
    )
    print(f"  hierarchical: agglomerate {levels_stage['wall_s']:.2f} s in {len(levels_stage['levels'])} levels")
    print("    level  blocks  box  frozen  deferred  states_MB  largest_state_kB  wall_s  worker_peak_MB")
    for level in levels_stage["levels"]:
        print(
            f"    {level['level']:>5}  {level['blocks']:>6}  {level['box_blocks']:>3}  {level['frozen_clusters']:>6}  "
            f"{level['deferred_edges']:>8}  {level['bytes'] / 1e6:>9.2f}  {level['max_block_bytes'] / 1e3:>16.1f}  "
            f"{level['wall_s']:>6.2f}  {level['peak_rss_bytes'] / 1e6:>14.0f}"
        )
    assembly = levels_stage["assembly_peak_rss_bytes"]
    print(
        f"    assembly in the driver: read {levels_stage['read_s']:.2f} s, build {levels_stage['build_s']:.2f} s, "
        f"peak RSS {assembly / 1e6:.0f} MB"
    )
    worker_peak = max(level["peak_rss_bytes"] for level in levels_stage["levels"])
    top_peak = levels_stage["levels"][-1]["peak_rss_bytes"]
    print(
        f"  ratios: hierarchical / global wall {levels_stage['wall_s'] / global_stage['wall_s']:.2f}; "
        f"largest level worker / global peak RSS {worker_peak / global_peak:.2f}; top level / global "
        f"{top_peak / global_peak:.2f}; assembly / global {assembly / global_peak:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], help="cube edge lengths, voxels")
    parser.add_argument("--block", nargs=3, type=int, default=[64, 64, 64], help="fragment block, voxels")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="affcons-hierarchical-"))
    try:
        for size in args.sizes:
            measure(size, tuple(args.block), args.workers, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
