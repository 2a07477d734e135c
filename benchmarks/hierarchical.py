"""Global vs hierarchical agglomeration on the same fragments and RAG: wall time and the peak RSS of the largest
process of each level.

    nice .venv/bin/python benchmarks/hierarchical.py [--sizes 256 512] [--block 64 64 64] [--workers 2]
    nice .venv/bin/python benchmarks/hierarchical.py --rag-only 256 512 [--block 64 64 64] [--worker-memory-gb 0.22]

For each size S an S^3 volume is made as ``benchmarks/postprocess.py`` makes it (the gala FIB-SEM ground truth
mirrored to S^3, one id per connected piece, degraded ground-truth affinities). ``affcons segment`` runs with
``--agglomeration global`` and with ``--agglomeration hierarchical`` into two outputs (fragments and RAG are
deterministic, so both agglomerate the same RAG; checked by its counts). It checks that both trees are equal array
for array and the lookup tables byte for byte, and prints per method: the agglomeration's wall time, the global
step's peak RSS (the driver, sampled) against each level's blocks, states and the largest peak RSS among its workers
(VmHWM since the level's set-up: ``blockwise.timers.peak_rss_bytes``), the assembly's peak RSS in the driver, and
the ratios.

``--rag-only`` measures the agglomeration alone at scales where the watershed would take too long here: it writes
a RAG of an S^3 volume straight into a SQLite graph store through the store's own API (:func:`write_lattice_rag`:
fragments of 8^3 voxels on a jittered lattice, the pipeline's integer statistics, tied means, stitched face
edges), then runs, each in a child process, the driver's global step (``GlobalAgglomeration``) and its hierarchical
levels (``SegmentDriver.run_hierarchy``: real daisy tasks and workers), and the lookup tables of both. No fragments
volume is written (neither agglomeration reads it). Per level it prints the blocks, frozen clusters, deferred
edges, state bytes and the memory of the largest process both absolute and above that process's own baseline
(its resident memory after imports and set-up, recorded by the worker / the global step before it reads), so the
agglomeration's own memory shows: the global step's grows with the volume, level 0's with the block, the top
level's with the surface.
"""

import argparse
import json
import os
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


#: ``--rag-only``: lattice spacing of the fragments (voxels), voxel size (nm).
SPACING = 8
VOXEL_NM = (8, 8, 8)


def write_lattice_rag(url: str, size: int, block: int, seed: int = 0) -> tuple[int, int]:
    """A RAG of a ``size``^3 volume in the graph store at ``url``, written block by block as the fragments and edges
    steps write it: one fragment per ``SPACING``^3 cell of a lattice (ids contiguous per block and shuffled within
    it, jittered centres and sizes), edges to the 6 face neighbours and to half of the (0, 1, 1) diagonal neighbours
    (not across a block's edge: in a real RAG fragments touch only within a block or across a face), each written by
    the block of its ``u``. Statistics as the pipeline's: ``count`` voxel pairs, ``quantised_sum`` an integer sum of
    uint8 affinities (bimodal means; half of the edges exactly ``level * count``, so many means tie), ``affinity_sum
    = quantised_sum / 255``; a fifth of the edges across a fragment-block face are stitched (``linked = count``).
    Returns ``(nodes, edges)``."""
    from affcons.segment import EdgeTable, NodeTable
    from affcons.store import open_store

    rng = np.random.default_rng(seed)
    cells = size // SPACING
    index = np.arange(cells**3).reshape((cells,) * 3)
    position = np.stack(np.unravel_index(index.ravel(), index.shape), axis=1)
    node_block = np.ravel_multi_index(tuple((position * SPACING // block).T), ((size + block - 1) // block,) * 3)
    # ids as the pipeline's: one contiguous range per block (so a block's rows land together in the store's
    # B-trees), in random order within the block (so ties between equal scores break in no spatial order)
    rank = np.empty(cells**3, np.int64)
    rank[np.lexsort((rng.permutation(cells**3), node_block))] = np.arange(cells**3)
    ids = rank.astype(np.uint64) + 1
    pairs = [np.stack([index[:-1].ravel(), index[1:].ravel()], 1)]
    pairs.append(np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()], 1))
    pairs.append(np.stack([index[:, :, :-1].ravel(), index[:, :, 1:].ravel()], 1))
    diagonal = np.stack([index[:, :-1, :-1].ravel(), index[:, 1:, 1:].ravel()], 1)
    # fragments touch only within a block or across a face: no diagonal across a block's edge
    apart = (position[diagonal[:, 0]] * SPACING // block != position[diagonal[:, 1]] * SPACING // block).sum(1)
    pairs.append(diagonal[(rng.random(len(diagonal)) < 0.5) & (apart <= 1)])
    face = SPACING * SPACING
    counts = [rng.integers(face // 2, face + 1, len(p)) for p in pairs[:3]] + [
        rng.integers(1, SPACING + 1, len(pairs[3]))
    ]
    pairs, count = np.concatenate(pairs), np.concatenate(counts).astype(np.uint64)
    level = np.where(rng.random(len(pairs)) < 0.6, rng.integers(0, 7, len(pairs)), rng.integers(9, 16, len(pairs)))
    level = (level * 17).astype(np.uint64)  # 0, 17, ..., 255: uint8 affinity levels
    noise = np.where(rng.random(len(pairs)) < 0.5, 0, rng.integers(0, 17, len(pairs))).astype(np.uint64)
    quantised = np.minimum(level * count + noise * count // 17, 255 * count)
    a, b = ids[pairs[:, 0]], ids[pairs[:, 1]]
    u, v = np.minimum(a, b), np.maximum(a, b)
    owner = np.where(a < b, node_block[pairs[:, 0]], node_block[pairs[:, 1]])
    stitched = (node_block[pairs[:, 0]] != node_block[pairs[:, 1]]) & (rng.random(len(pairs)) < 0.2)
    linked = np.where(stitched, count, 0).astype(np.uint64)
    centre = (position * SPACING + SPACING / 2 + rng.uniform(-2, 2, position.shape)) * np.asarray(VOXEL_NM)
    sizes = rng.integers(SPACING**3 // 2, SPACING**3 + 1, len(ids)).astype(np.uint64)
    with open_store(url, "w", 0) as store:
        by_block = np.argsort(node_block, kind="stable")
        starts = np.searchsorted(node_block[by_block], np.arange(node_block.max() + 2))
        for block_id in range(node_block.max() + 1):
            rows = by_block[starts[block_id] : starts[block_id + 1]]
            store.write_nodes(block_id, NodeTable(ids[rows], centre[rows], sizes[rows]))
        by_owner = np.argsort(owner, kind="stable")
        starts = np.searchsorted(owner[by_owner], np.arange(node_block.max() + 2))
        for block_id in range(node_block.max() + 1):
            rows = by_owner[starts[block_id] : starts[block_id + 1]]
            edges = EdgeTable(
                u[rows],
                v[rows],
                quantised[rows] / 255.0,
                count[rows],
                np.zeros((len(rows), 0), np.uint32),
                linked=linked[rows],
                quantised_sum=quantised[rows],
            )
            store.write_edges(block_id, edges)
    return len(ids), len(pairs)


def rag_only_config(work: Path, size: int, block, workers: int, method: str, url: str, budget=None) -> Path:
    """A resolved segment config of the lattice volume (``method`` ``global`` or ``hierarchical``, with the worker
    memory ``budget`` in bytes if given) in the method's run directory; the affinities it names do not exist (the
    agglomeration never reads them). Returns its file."""
    from affcons.config import dump_config
    from blockwise.config import SegmentConfig

    run_dir = work / f"{method}{size}.affcons-run"
    config = SegmentConfig.model_validate(
        {
            "affs": str(work / "unused.zarr" / "affs"),
            "out": str(work / f"{method}{size}.zarr"),
            "run_dir": str(run_dir),
            "graph": url,
            "extract": {"thresholds": list(THRESHOLDS)},
            "voxel_size": VOXEL_NM,
            "roi_offset": (0, 0, 0),
            "roi_shape": tuple(size * v for v in VOXEL_NM),
            "block_size": tuple(b * v for b, v in zip(block, VOXEL_NM)),
            "context": (0, 0, 0),
            "chunk_shape": tuple(block),
            "agglomerate": {"scoring": "mean", "method": method, "worker_memory_bytes": budget},
            "execution": {"workers": workers, "progress": False},
        }
    )
    path = work / f"{method}{size}{'-budget' if budget else ''}.yaml"
    dump_config(config, path)
    return path


def agglomerate_only(config_path: str) -> None:
    """Child process of ``--rag-only``: the driver's agglomeration of the config's method and its lookup tables;
    prints the agglomeration's info as JSON on the last line."""
    import daisy.logging

    from affcons.config import load_config
    from blockwise.config import SegmentConfig
    from blockwise.segment import SegmentDriver
    from blockwise.steps.agglomerate import GlobalAgglomeration

    config = load_config(SegmentConfig, config_path)
    driver = SegmentDriver(config, quiet=True)
    driver.lock()
    driver.start_summary(stages={}, tasks={})
    driver.write_config()
    daisy.logging.set_log_basedir(str(driver.run_dir.logs))
    start = time.perf_counter()
    if config.agglomerate.method == "global":
        info = GlobalAgglomeration(config).run(driver.fingerprint)
    else:
        failed, info = driver.run_hierarchy()
        if failed is not None:
            sys.exit(f"hierarchical agglomeration failed: {failed.failure_line()}")
    info["wall_s"] = time.perf_counter() - start
    GlobalAgglomeration(config).write_luts(config.extract.thresholds)
    print(json.dumps(info))


def import_baseline() -> int:
    """Resident bytes of a fresh interpreter after importing what a hierarchy worker imports (a cross-check of the
    baselines the processes record themselves)."""
    code = (
        "import psutil, daisy, blockwise.worker, blockwise.steps.hierarchy, affcons.segment.hierarchy, affcons.store;"
        "print(psutil.Process().memory_info().rss)"
    )
    return int(subprocess.check_output([sys.executable, "-c", code], cwd=REPO).split()[-1])


def agglomerate_child(config: Path) -> dict:
    """:func:`agglomerate_only` of ``config`` in a child process; its info (a failure ends the benchmark)."""
    output = subprocess.run(
        [sys.executable, __file__, "--agglomerate-only", str(config)], capture_output=True, text=True, cwd=REPO
    )
    if output.returncode != 0:
        sys.exit(f"agglomeration of {config} failed:\n{output.stdout}\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def measure_rag_only(size: int, block, workers: int, work: Path, budget_gb: float | None = None) -> None:
    url = f"sqlite:///{work / f'rag{size}.db'}"
    start = time.perf_counter()
    nodes, edges = write_lattice_rag(url, size, block[0])
    grid = -(-size // block[0])
    print(
        f"\n{size}^3 lattice RAG (fragments {SPACING}^3 voxels): {nodes} nodes, {edges} edges written in "
        f"{time.perf_counter() - start:.1f} s; blocks {list(block)}, grid {grid}^3, {workers} workers"
    )
    infos, luts, trees = {}, {}, {}
    for method in ("global", "hierarchical"):
        infos[method] = agglomerate_child(rag_only_config(work, size, block, workers, method, url))
        trees[method], luts[method] = snapshot(RunDir(work / f"{method}{size}.affcons-run"))
    same = all(
        np.array_equal(getattr(trees["global"], name), getattr(trees["hierarchical"], name))
        for name in ("ids", "kept", "absorbed", "score", "level")
    )
    print(
        f"  merge trees equal: {same}; lookup tables byte-identical ({len(luts['global'])} files): "
        f"{luts['global'] == luts['hierarchical']}"
    )
    glob, hier, mb = infos["global"], infos["hierarchical"], 1e6
    growth = glob["rss_growth_bytes"]
    print(
        f"  global:       {glob['wall_s']:.1f} s (read {glob['read_s']:.1f} s, build {glob['build_s']:.1f} s); "
        f"driver peak RSS {glob['peak_rss_bytes'] / mb:.0f} MB = baseline "
        f"{(glob['peak_rss_bytes'] - growth) / mb:.0f} MB + {growth / mb:.0f} MB ({growth / edges:.0f} B/edge)"
    )
    stop = hier["stop"]
    print(
        f"  hierarchical: {hier['wall_s']:.1f} s in {len(hier['levels'])} levels; top {stop['level']}: {stop['reason']}"
    )
    print("    level  blocks   frozen  deferred  states_MB  est_block_MB  peak_MB  baseline_MB  above_base_MB  wall_s")
    for level in hier["levels"]:
        estimate = level.get("estimated_block_bytes")
        print(
            f"    {level['level']:>5}  {level['blocks']:>6}  {level['frozen_clusters']:>7}  "
            f"{level['deferred_edges']:>8}  {level['bytes'] / mb:>9.1f}  "
            f"{'-' if estimate is None else f'{estimate / mb:.0f}':>12}  {level['peak_rss_bytes'] / mb:>7.0f}  "
            f"{level['baseline_rss_bytes'] / mb:>11.0f}  {level['rss_growth_bytes'] / mb:>13.1f}  "
            f"{level['wall_s']:>6.1f}"
        )
    print(
        f"    assembly in the driver: peak RSS {hier['assembly_peak_rss_bytes'] / mb:.0f} MB, "
        f"{hier['assembly_rss_growth_bytes'] / mb:.0f} MB above its baseline"
    )
    top, level0 = hier["levels"][-1], hier["levels"][0]
    print(
        f"  memory above the baseline / the global step's: level-0 worker {level0['rss_growth_bytes'] / growth:.3f}, "
        f"top level {top['rss_growth_bytes'] / growth:.3f}, assembly {hier['assembly_rss_growth_bytes'] / growth:.3f}; "
        f"absolute peak RSS, top level / global: {top['peak_rss_bytes'] / glob['peak_rss_bytes']:.2f}"
    )
    if budget_gb is None:
        return
    # the same run directory again with a worker memory budget: the levels below the stop are reused
    run_dir = RunDir(work / f"hierarchical{size}.affcons-run")
    for path in (run_dir.merge_tree, run_dir.agglomerate_info):
        path.unlink()
    shutil.rmtree(run_dir.lut_ids.parent)
    budget = round(budget_gb * 1e9)
    info = agglomerate_child(rag_only_config(work, size, block, workers, "hierarchical", url, budget))
    tree, budget_luts = snapshot(run_dir)
    stop, top = info["stop"], info["levels"][-1]
    same = all(np.array_equal(getattr(tree, n), getattr(trees["global"], n)) for n in ("kept", "absorbed", "score"))
    print(
        f"  with --worker-memory-gb {budget_gb}: top level {stop['level']} in the {stop['process']}: {stop['reason']}; "
        f"its peak RSS {top['peak_rss_bytes'] / mb:.0f} MB ({top['rss_growth_bytes'] / mb:.0f} MB above its "
        f"baseline; estimated {top.get('estimated_finish_bytes', 0) / mb:.0f} MB); merge tree equal to the global "
        f"one: {same}; lookup tables byte-identical: {budget_luts == luts['global']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], help="cube edge lengths, voxels")
    parser.add_argument("--rag-only", nargs="+", type=int, metavar="SIZE", help="lattice RAGs of SIZE^3 voxels")
    parser.add_argument("--block", nargs=3, type=int, default=[64, 64, 64], help="fragment block, voxels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--worker-memory-gb",
        type=float,
        metavar="GB",
        help="--rag-only: agglomerate again with this worker memory budget (levels below the stop reused)",
    )
    parser.add_argument("--agglomerate-only", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agglomerate_only:
        agglomerate_only(args.agglomerate_only)
        return
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) at the start")
    work = Path(tempfile.mkdtemp(prefix="affcons-hierarchical-"))
    try:
        if args.rag_only:
            print(f"a fresh interpreter after a worker's imports: {import_baseline() / 1e6:.0f} MB resident")
            for size in args.rag_only:
                measure_rag_only(size, tuple(args.block), args.workers, work, args.worker_memory_gb)
        else:
            for size in args.sizes:
                measure(size, tuple(args.block), args.workers, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min) at the end")


if __name__ == "__main__":
    main()
