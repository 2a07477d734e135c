"""Post-processing throughput (issue 11): ``affcons segment`` vs monolithic baselines of equal quality, in one run.

    nice .venv/bin/python benchmarks/postprocess.py [--sizes 256 512] [--baseline-sizes 256] [--before DIR]
        [--unscored-sizes 1024]

``--unscored-sizes``: volumes made slab by slab (:func:`slabwise_affinities`: the same recipe without ever holding
the whole volume), run with the largest ``--workers`` only and not scored: the memory per worker at a scale whose
label volume would not fit here.

For each size S, an S^3 volume is made by mirroring a bundled FIB-SEM ground truth (default ``gala-test``, the
unseen NeuroProof-like volume, 10 nm; reflected at its faces until it covers S^3, then one id per connected piece),
with network-like uint8 affinities from :func:`affcons.synthetic.degraded_affinities` (seed 0). On it, each in a
child process whose process tree is sampled with psutil:

- ``DT-ws + waterz``: monolithic scikit-image distance-transform watershed + ``waterz.agglomerate`` on those
  fragments (:mod:`benchmarks.baselines`, the equal-quality baseline); ``waterz``: waterz with its own watershed
  (second reference). Only at ``--baseline-sizes`` (they hold the whole volume: ~20 GB at 500^3).
- ``affcons segment`` (SQLite graph store) with each of ``--workers`` (the warm worker pool, the default); with 2
  workers also with fresh worker processes per step (``execution.warm_workers: false``); with ``--before DIR`` also
  the ``affcons segment`` of another checkout of the repository (e.g. ``git worktree add DIR 36aeb8f``), 2 workers.

Printed per row: wall s (the child process from start to exit), Mvoxel/s (S^3 / wall), peak RSS of the largest
process of the tree (driver or worker) and of the largest worker (pool process or fresh daisy worker), VOI (nats) at
each threshold and the best; then the ratios of affcons 2 workers to the other rows, whether the outputs of every
affcons row are byte-identical (chunk digests), where the fragments of ``--before`` differ from these and by how
much VOI, and the per-step profile (read / compute / write and the compute phases of the fragments kernel, summed
over blocks, from the run's ``summary.json``). Every score comes from the (fragment, ground truth) contingency table
and the run's lookup tables (:func:`affcons.evaluate.scores_from_lut`, the same numbers as scoring the written
segmentations). Before the measured runs, each checkout segments a small volume once, so that numba's kernel caches
are warm (a fresh checkout's first run compiles the kernels in every worker)."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.baselines import RssSampler, run_baseline  # noqa: E402
from blockwise.layout import RunDir, segment_run_dir, segmentation_name  # noqa: E402
from blockwise.testing import chunk_digests, load_labels, mirror_to, segment_argv, write_affinities  # noqa: E402

#: Agglomeration thresholds (9, as in the issue's table).
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: The blockwise steps whose block work the plan's rates measure.
STEPS = ("fragments", "edges", "extract")


def affcons_segment(
    source: Path, affs: str, out: Path, thresholds, block, context, workers: int, fresh_workers: bool = False
) -> dict:
    """Run ``affcons segment`` of the repository checkout ``source`` in a child process; wall s, peak RSS, summary.
    ``fresh_workers``: daisy's fresh worker processes per step instead of the warm pool."""
    extra = []
    if fresh_workers:
        config = out.parent / f"{out.stem}-fresh-workers.yaml"
        config.write_text("execution:\n  warm_workers: false\n")
        extra = ["--config", str(config)]
    argv = segment_argv(affs, str(out), thresholds, block, context, workers, extra)
    environment = {**os.environ, "PYTHONPATH": str(source)}
    log = out.parent / f"{out.stem}.log"
    start = time.perf_counter()
    with open(log, "w") as output:
        command = [sys.executable, "-m", "affcons.cli", *argv]
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=source, env=environment)
        sampler = RssSampler(child.pid)
        code = child.wait()
    wall = time.perf_counter() - start
    sampler.stop()
    peak = sampler.largest  # the largest process: the driver or one worker
    # the warm pool's processes, or daisy's fresh local workers (with the pool these only relay)
    worker_peak = max(sampler.largest_of("blockwise.pool"), sampler.largest_of("daisy._subprocess_worker"))
    if code != 0:
        raise RuntimeError(f"affcons segment ({source}) failed with exit code {code}; see {log}")
    summary = json.loads(RunDir(segment_run_dir(out)).summary.read_text())
    return {"wall_s": wall, "peak_rss": peak, "worker_rss": worker_peak, "summary": summary, "workers": workers}


def mirror_index(length: int, size: int) -> np.ndarray:
    """Indices into an axis of ``length`` that reflect it at its ends until ``size`` (as :func:`mirror_to`)."""
    position = np.arange(size) % (2 * length)
    return np.where(position < length, position, 2 * length - 1 - position)


def slabwise_affinities(base: np.ndarray, size: int, voxel_size, path: str, slab: int = 64, halo: int = 8) -> None:
    """uint8 degraded affinities of ``base`` mirrored to ``size``^3, made per z-slab with a halo for the recipe's
    blur and widened boundaries (noise seeded per slab), so neither the labels nor the affinities of the whole volume
    are ever in memory. Affinities compare neighbouring labels only, so the mirrored ids need no relabelling."""
    from funlib.geometry import Coordinate, Roi

    from affcons.affinities import affinities_to_uint8
    from affcons.io import create_volume
    from affcons.synthetic import degraded_affinities

    roi = Roi((0, 0, 0), Coordinate((size,) * 3) * Coordinate(voxel_size))
    array = create_volume(path, roi, voxel_size, np.uint8, num_channels=3, chunk_shape=(64,) * 3, mode="w")
    z_index, y_index, x_index = (mirror_index(n, size) for n in base.shape)
    for begin in range(0, size, slab):
        low, high, end = max(begin - halo, 0), min(begin + slab + halo, size), min(begin + slab, size)
        labels = base[np.ix_(z_index[low:high], y_index, x_index)]
        affs = degraded_affinities(labels, seed=begin)[:, begin - low : end - low]
        box = Roi(
            Coordinate((begin, 0, 0)) * Coordinate(voxel_size),
            Coordinate((end - begin, size, size)) * Coordinate(voxel_size),
        )
        array[box] = affinities_to_uint8(affs)


def affcons_scores(out: Path, labels: np.ndarray, thresholds) -> dict[float, float]:
    """VOI per threshold of a run, from its fragments' contingency table and its lookup tables."""
    from affcons.evaluate import fragment_contingency, scores_from_lut
    from affcons.io import open_volume

    fragments = open_volume(f"{out}/fragments")
    table = fragment_contingency(fragments[fragments.roi], labels)
    run_dir = RunDir(segment_run_dir(out))
    ids = np.load(run_dir.lut_ids)
    return {t: scores_from_lut(table, ids, np.load(run_dir.lut_segments(t)))["voi"] for t in thresholds}


def baseline_scores(paths: dict[float, str], labels: np.ndarray) -> dict[float, float]:
    from affcons.evaluate import fragment_contingency, scores_from_lut
    from affcons.io import open_volume

    none = np.zeros(0, np.uint64)
    scores = {}
    for threshold, path in paths.items():
        segmentation = open_volume(path)
        scores[threshold] = scores_from_lut(fragment_contingency(segmentation[segmentation.roi], labels), none, none)[
            "voi"
        ]
    return scores


def fragments_difference(out: Path, other: Path) -> str:
    """Where the fragments of two runs differ (voxels, blocks), or that they are the same bytes."""
    import zarr

    mine, theirs = zarr.open_array(str(out / "fragments"))[:], zarr.open_array(str(other / "fragments"))[:]
    differ = mine != theirs
    if not differ.any():
        return "identical fragments (every voxel)"
    where = np.argwhere(differ)
    return (
        f"fragments differ at {len(where)} voxels ({len(where) / differ.size:.2e} of all), bounding box "
        f"{where.min(axis=0).tolist()}..{where.max(axis=0).tolist()}"
    )


def profile_lines(summary: dict, workers: int) -> list[str]:
    """Per step: wall s, the summed block seconds of each phase (read, compute and its sub-phases, write), and the
    wall time not spent in blocks: wall - (read + compute + write) / workers (worker start-up, scheduling, the
    driver's work between blocks)."""
    lines = []
    for step, stage in summary["stages"].items():
        phases = {key[:-2]: value for key, value in stage.items() if key.endswith("_s") and key not in ("wall_s",)}
        phases.pop("span", None)
        if not phases:
            continue
        order = ["read", "compute", *sorted(k for k in phases if k.startswith("compute_")), "write"]
        order += sorted(k for k in phases if k not in order)
        cells = ", ".join(f"{k} {phases[k]:.2f}" for k in order if k in phases)
        wall = stage.get("wall_s", 0)
        outside = ""
        if "read" in phases and "write" in phases:
            in_blocks = (phases["read"] + phases.get("compute", 0) + phases["write"]) / workers
            outside = f"; outside blocks {max(wall - in_blocks, 0):.2f} s"
        lines.append(f"  {step:12} wall {wall:7.2f} s; block seconds: {cells}{outside}")
    return lines


def plan_rates(summary: dict, size: int, block, context, workers: int, thresholds) -> dict:
    """The :class:`blockwise.plan.Rates` this run measured: per worker and second of block work (read + compute +
    write), the agglomeration's rates in the driver, and the wall time per step outside blocks."""
    from blockwise.plan import read_voxels

    stages = summary["stages"]
    work = {step: sum(stages[step][f"{phase}_s"] for phase in ("read", "compute", "write")) for step in STEPS}
    read, _ = read_voxels((size,) * 3, block, context)
    agglomerate = stages["agglomerate"]
    return {
        "fragments_read_voxels_per_s": read / work["fragments"],
        "edges_voxels_per_s": size**3 / work["edges"],
        "extract_voxels_per_s": size**3 * len(thresholds) / work["extract"],
        "store_read_edges_per_s": agglomerate["edges"] / agglomerate["read_s"],
        "agglomerate_edges_per_s": agglomerate["edges"] / agglomerate["build_s"],
        "agglomerate_bytes_per_edge": agglomerate["measured_bytes_per_edge"],
        "worker_startup_s": sum(stages[step]["wall_s"] - work[step] / workers for step in STEPS) / len(STEPS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512], help="cube edge lengths, voxels")
    parser.add_argument(
        "--baseline-sizes", nargs="*", type=int, default=None, help="sizes with the monolithic baselines (default all)"
    )
    parser.add_argument("--volume", default="gala-test", choices=("gala", "gala-test"), help="bundled ground truth")
    parser.add_argument("--block", nargs=3, type=int, default=[128, 128, 128])
    parser.add_argument("--context", nargs=3, type=int, default=[8, 8, 8])
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--before", type=Path, help="another checkout of the repository to run as 'before' (2 workers)")
    parser.add_argument("--before-sizes", nargs="*", type=int, default=None, help="sizes with --before (default all)")
    parser.add_argument("--work-dir", help="default: a temporary directory (removed at the end)")
    parser.add_argument(
        "--unscored-sizes",
        nargs="*",
        type=int,
        default=[],
        help="sizes made slab by slab and run with the largest --workers only, not scored (memory per worker at a "
        "scale whose label volume would not fit here), e.g. 1024",
    )
    args = parser.parse_args()

    import cc3d

    from affcons.synthetic import degraded_affinities

    baseline_sizes = args.sizes if args.baseline_sizes is None else args.baseline_sizes
    before_sizes = args.sizes if args.before_sizes is None else args.before_sizes
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="affcons-postprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"{os.cpu_count()} cores; uptime at start: {uptime}", flush=True)
    print(
        f"volume {args.volume} mirrored, uint8 degraded affinities; blocks {args.block}, context {args.context}, "
        f"{len(args.thresholds)} thresholds {args.thresholds}, SQLite graph store",
        flush=True,
    )
    base, voxel_size = load_labels(args.volume)
    # numba caches its compiled kernels beside the sources: the first run of a fresh checkout compiles them in every
    # worker. One small run per checkout first, so every measured run starts with warm caches.
    warm_affs = f"{work}/warm.zarr/affs"
    warm_labels = cc3d.connected_components(mirror_to(base, (64,) * 3), connectivity=6).astype(np.uint64)
    write_affinities(warm_affs, degraded_affinities(warm_labels, seed=0), voxel_size, dtype=np.uint8)
    for source in [REPO] + ([args.before.resolve()] if args.before else []):
        out = work / "warm_out.zarr"
        affcons_segment(source, warm_affs, out, args.thresholds[:1], [32, 32, 32], args.context, 1)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(segment_run_dir(out), ignore_errors=True)
    for size in args.sizes + args.unscored_sizes:
        scored = size not in args.unscored_sizes
        labels = None
        affs = f"{work}/in{size}.zarr/affs"
        if scored:
            labels = cc3d.connected_components(mirror_to(base, (size,) * 3), connectivity=6).astype(np.uint64)
            write_affinities(
                affs, degraded_affinities(labels, seed=0), voxel_size, dtype=np.uint8, chunk_shape=(64,) * 3
            )
        else:
            start = time.perf_counter()
            slabwise_affinities(base, size, voxel_size, affs)
            print(f"\n{size}^3 affinities made slab by slab in {time.perf_counter() - start:.0f} s", flush=True)
        mega = size**3 / 1e6
        rows: dict[str, tuple[float, int, dict]] = {}
        if scored and size in baseline_sizes:
            for method, name in (("dt-watershed", "DT-ws + waterz"), ("waterz", "waterz own ws")):
                result = run_baseline(method, affs, work / f"{method}{size}", args.thresholds, voxel_size=voxel_size)
                rows[name] = (
                    result.wall_s,
                    result.peak_rss_sampled,
                    baseline_scores(result.segmentations, labels),
                    None,
                )
                shutil.rmtree(work / f"{method}{size}", ignore_errors=True)
        runs, digests = {}, {}
        counts = args.workers if scored else [max(args.workers)]
        variants = [(f"affcons {w} worker{'s' if w > 1 else ''}", REPO, w, False) for w in counts]
        if scored and 2 in counts:
            variants.append(("affcons 2, fresh per step", REPO, 2, True))
        if scored and args.before and size in before_sizes:
            variants.append(("affcons before, 2 workers", args.before.resolve(), 2, False))
        for name, source, workers, fresh in variants:
            out = work / f"out{size}_{len(runs)}.zarr"
            run = affcons_segment(source, affs, out, args.thresholds, args.block, args.context, workers, fresh)
            scores = affcons_scores(out, labels, args.thresholds) if scored else {}
            rows[name] = (run["wall_s"], run["peak_rss"], scores, run["worker_rss"])
            runs[name] = (out, run)
            if scored:
                digests[name] = json.dumps(chunk_digests(out, ["fragments", *map(segmentation_name, args.thresholds)]))

        print(f"\n=== {size}^3 ({mega:.1f} Mvoxel); uptime now: {os.getloadavg()} (1/5/15 min load) ===")
        header = (
            f"{'run':26} {'wall s':>8} {'Mvox/s':>7} {'peak RSS':>9} {'worker RSS':>10} {'best VOI':>9}  "
            "VOI per threshold"
        )
        print(header)
        for name, (wall, rss, voi, worker) in rows.items():
            per = " ".join(f"{voi[t]:.3f}" for t in args.thresholds) if voi else "(not scored)"
            best = f"{min(voi.values()):9.3f}" if voi else f"{'-':>9}"
            worker = f"{worker / 2**30:7.2f} GB" if worker else f"{'-':>10}"
            print(f"{name:26} {wall:8.1f} {mega / wall:7.2f} {rss / 2**30:7.2f} GB {worker} {best}  {per}")
        two = rows.get("affcons 2 workers")
        for reference in ("DT-ws + waterz", "waterz own ws", "affcons 2, fresh per step", "affcons before, 2 workers"):
            if two and reference in rows:
                print(f"ratio affcons 2 workers / {reference}: {rows[reference][0] / two[0]:.2f}x throughput")
        current = [name for name in digests if "before" not in name]
        if len(current) > 1:
            same = len({digests[name] for name in current}) == 1
            print(f"outputs of {', '.join(current)} byte-identical (fragments + segmentations): {same}")
        if "affcons before, 2 workers" in rows and two:
            before = rows["affcons before, 2 workers"][2]
            gap = max(abs(before[t] - two[2][t]) for t in args.thresholds)
            print(f"before vs now: largest VOI difference over thresholds {gap:.4f} nats")
            print(
                "before vs now: "
                + fragments_difference(runs["affcons 2 workers"][0], runs["affcons before, 2 workers"][0])
            )
        for name, (out, run) in runs.items():
            print(f"profile, {name} (summary.json):")
            print("\n".join(profile_lines(run["summary"], run["workers"])))
            if name == "affcons 2 workers":
                rates = plan_rates(run["summary"], size, args.block, args.context, 2, args.thresholds)
                print("  rates for blockwise.plan.MEASURED: " + ", ".join(f"{k}={v:.3g}" for k, v in rates.items()))
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(segment_run_dir(out), ignore_errors=True)
        shutil.rmtree(f"{work}/in{size}.zarr", ignore_errors=True)
        labels = None
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
