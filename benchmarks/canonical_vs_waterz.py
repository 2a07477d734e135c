"""The canonical exact merge order against the waterz replay, and the hierarchical tree against the global one.

On the bundled volumes (gala train and test, 50 x 100 x 200 FIB-SEM; ISBI, 30 x 512 x 512 ssTEM) with the affinity
recipe of ``benchmarks/segmentation.py`` (:func:`affcons.synthetic.degraded_affinities`: widened borders, blur 1,
noise 0.15, seed 0), quantised to uint8 as the pipeline stores them, so that both orders see the same values:

1. per threshold, VOI (nats) between the two orders' segmentations, and each one's VOI split / merge against the
   ground truth; plus how many merges sit on a tied score (equal float32 scores: where the two orders may differ);
2. the time to build each tree (best of 7, the two orders alternating), canonical / waterz, also on an ISBI crop
   whose RAG has about 4e4 edges;
3. the hierarchical (frozen-boundary) tree of a blockwise cut of the same watershed (per-block fragments, face
   stitching) for three block layouts: whether it is byte-identical to the global canonical tree, the frozen
   residual per level, and the time, hierarchical (all blocks in one process) / global;
4. peak memory per edge (RSS growth sampled every 5 ms, each case in a fresh process) on a 3-D lattice RAG of
   ~3.7e5 edges: the global canonical build, the waterz replay, a level-0 block with half its fragments on the
   boundary, and the one-process finish of a residual of the same size, against the models
   (:func:`affcons.segment.agglomerate.merge_tree_bytes_per_edge`,
   :func:`affcons.segment.hierarchy.level_bytes_per_edge`); quantile scoring uses 16 bins here.

    python benchmarks/canonical_vs_waterz.py [--scoring mean|quantile50]
"""

import argparse
import itertools
import subprocess
import sys
import threading
import time

import numpy as np

from affcons.affinities import affinities_to_float, affinities_to_uint8
from affcons.evaluate import evaluate
from affcons.segment import QUANTILE_BINS, apply_lookup, build_merge_tree, edge_table, watershed_from_affinities
from affcons.segment.agglomerate import merge_tree_bytes_per_edge, parse_scoring
from affcons.segment.hierarchy import BlockState, block_state, finish, hierarchical_merge_tree, level_bytes_per_edge
from affcons.segment.stitch import face_links
from affcons.segment.tables import EdgeTable
from affcons.synthetic import degraded_affinities
from blockwise.testing import GALA, GALA_TEST, ISBI

VOLUMES = {
    "gala train (50x100x200, FIB-SEM)": (GALA, "stack"),
    "gala test (50x100x200, FIB-SEM)": (GALA_TEST, "stack"),
    "isbi (30x512x512, ssTEM)": (ISBI, "labels/neurites_3dcc"),
}
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
LAYOUTS = [(25, 50, 50), (16, 32, 64), (10, 100, 40)]


def best_of(repeats: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def build_times(edges, ids, scoring: str, repeats: int = 7) -> dict[str, float]:
    """Best build time (s) of each order, the two alternating so that machine load hits both alike."""
    best = {"canonical": np.inf, "waterz": np.inf}
    for _ in range(repeats):
        for order in best:
            start = time.perf_counter()
            build_merge_tree(edges, scoring, ids, order=order)
            best[order] = min(best[order], time.perf_counter() - start)
    return best


def tied_merges(tree) -> int:
    """Merges whose float32 score equals that of another merge of the tree."""
    finite = tree.score[np.isfinite(tree.score)]
    _, counts = np.unique(finite, return_counts=True)
    return int(counts[counts > 1].sum())


def compare(name: str, labels: np.ndarray, scoring: str) -> None:
    stored = affinities_to_uint8(degraded_affinities(labels, sigma=1.0, noise=0.15, seed=0))
    affs = affinities_to_float(stored)
    bins = QUANTILE_BINS if parse_scoring(scoring) >= 0 else 0
    fragments, count = watershed_from_affinities(affs, min_size=10)
    edges = edge_table(fragments, stored, histogram_bins=bins)
    ids = np.arange(1, count + 1, dtype=np.uint64)
    canonical = build_merge_tree(edges, scoring, ids, order="canonical")  # also compiles outside the timings
    replay = build_merge_tree(edges, scoring, ids, order="waterz")
    times = build_times(edges, ids, scoring)
    print(f"\n## {name}: {count} fragments, {len(edges)} edges, scoring {scoring}")
    print(
        f"build (best of 7): canonical {times['canonical'] * 1e3:.1f} ms, waterz replay {times['waterz'] * 1e3:.1f} "
        f"ms, ratio {times['canonical'] / times['waterz']:.2f} | merges on a tied float32 score: canonical "
        f"{tied_merges(canonical)} / {len(canonical)}, waterz {tied_merges(replay)} / {len(replay)}"
    )
    print(
        f"{'threshold':>9} | {'VOI(canonical, waterz)':>22} | {'canonical split':>15} {'merge':>6} | "
        f"{'waterz split':>12} {'merge':>6}"
    )
    for threshold in THRESHOLDS:
        a = apply_lookup(fragments, canonical.ids, canonical.lookup(threshold))
        w = apply_lookup(fragments, replay.ids, replay.lookup(threshold))
        between = evaluate(a, w + np.uint64(1))["voi"]  # every voxel counts (no background in w + 1)
        ma, mw = evaluate(a, labels), evaluate(w, labels)
        print(
            f"{threshold:>9.2f} | {between:>22.2e} | {ma['voi_split']:>15.3f} {ma['voi_merge']:>6.3f} | "
            f"{mw['voi_split']:>12.3f} {mw['voi_merge']:>6.3f}"
        )
    for block in LAYOUTS:
        hierarchical_check(fragments, affs, stored, block, scoring, bins)


def cut_into_blocks(basins: np.ndarray, block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A blockwise watershed whose blocks see the whole volume: basins cut at every face (fresh ids per block), the
    face-link bits, and each fragment's block (grid coordinates), as ``blockwise.fragments`` makes them."""
    fragments = np.zeros(basins.shape, np.uint64)
    links = np.zeros(basins.shape, np.uint8)
    cells = [np.zeros((1, 3), np.int64)]  # id 0: no fragment
    last = 0
    for begin in itertools.product(*(range(0, n, b) for n, b in zip(basins.shape, block))):
        crop = tuple(slice(o, min(o + b, n)) for o, b, n in zip(begin, block, basins.shape))
        present = basins[crop] != 0
        local = np.unique(basins[crop][present], return_inverse=True)[1] + 1
        fragments[crop][present] = local + last
        last += int(local.max(initial=0))
        cells.append(np.tile(np.array(begin) // block, (int(local.max(initial=0)), 1)))
        lower = tuple(s.start > 0 for s in crop)
        upper = tuple(s.stop < n for s, n in zip(crop, basins.shape))
        links[crop] = face_links(basins, crop, lower, upper)
    return fragments, links, np.concatenate(cells)


def hierarchical_check(basins, affs, stored, block, scoring, bins) -> None:
    fragments, links, cells = cut_into_blocks(basins, block)
    edges = edge_table(fragments, stored, histogram_bins=bins, links=links)
    ids = np.arange(1, len(cells), dtype=np.uint64)
    cells = cells[1:]
    t_global, expected = best_of(1, lambda: build_merge_tree(edges, scoring, ids))
    t_hierarchical, (actual, report) = best_of(1, lambda: hierarchical_merge_tree(edges, ids, cells, scoring))
    identical = all(
        np.array_equal(getattr(actual, f), getattr(expected, f)) for f in ("ids", "kept", "absorbed", "score", "level")
    ) and all(actual.lookup(t).tobytes() == expected.lookup(t).tobytes() for t in THRESHOLDS)
    residual = ", ".join(
        f"L{r['level']}: {r['blocks']} blocks {r['frozen_clusters']} frozen {r['deferred_edges']} deferred "
        f"{r['max_block_bytes'] / 1e3:.1f} kB max"
        for r in report
    )
    print(
        f"blocks {block}: {len(ids)} fragments ({expected.num_stitches} stitched), {len(edges)} edges; hierarchical "
        f"== global canonical: {identical}; time hierarchical / global {t_hierarchical / t_global:.1f} "
        f"({t_hierarchical:.2f} s / {t_global:.3f} s) | {residual}"
    )


def timing_at_4e4_edges(scoring: str) -> None:
    """Build times of the two orders on an ISBI crop whose RAG has about 4e4 edges (best of 9, alternating)."""
    import h5py

    with h5py.File(ISBI, "r") as f:
        labels = f["labels/neurites_3dcc"][:, :300, :300].astype(np.uint64)
    stored = affinities_to_uint8(degraded_affinities(labels, sigma=1.0, noise=0.15, seed=0))
    fragments, count = watershed_from_affinities(affinities_to_float(stored), min_size=10)
    bins = QUANTILE_BINS if parse_scoring(scoring) >= 0 else 0
    edges = edge_table(fragments, stored, histogram_bins=bins)
    ids = np.arange(1, count + 1, dtype=np.uint64)
    times = build_times(edges, ids, scoring, repeats=9)
    print(
        f"\n## build time at ~4e4 edges (ISBI 30x300x300: {len(edges)} edges, scoring {scoring}, best of 9): "
        f"canonical {times['canonical'] * 1e3:.1f} ms, waterz replay {times['waterz'] * 1e3:.1f} ms, ratio "
        f"{times['canonical'] / times['waterz']:.2f}"
    )


MEMORY_CASES = ("global canonical", "global waterz", "level-0 block", "finish")


def lattice_rag(side: int, bins: int) -> tuple[EdgeTable, np.ndarray]:
    """Fragments on a side^3 lattice, edges to the face neighbours, random counts and affinities."""
    rng = np.random.default_rng(0)
    index = np.arange(1, side**3 + 1, dtype=np.uint64).reshape(side, side, side)
    u = np.concatenate([index.take(range(side - 1), axis=a).ravel() for a in range(3)])
    v = np.concatenate([index.take(range(1, side), axis=a).ravel() for a in range(3)])
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    count = rng.integers(1, 50, len(u)).astype(np.uint64)
    histogram = np.zeros((len(u), bins), np.uint32)
    if bins:
        histogram[np.arange(len(u)), rng.integers(0, bins, len(u))] = count
    quantised = count * rng.integers(0, 256, len(u)).astype(np.uint64)
    return EdgeTable(u, v, quantised / 255.0, count, histogram, None, quantised), index.ravel()


def memory_case(case: str, scoring: str, side: int = 50) -> None:
    """Run one memory case in this process and print its peak RSS growth per edge (a line the parent parses)."""
    import psutil

    bins = 16 if scoring != "mean" else 0
    edges, ids = lattice_rag(side, bins)
    if case == "finish":  # a residual of the same size: a state in which every fragment froze, every edge deferred
        none = np.zeros(0, np.uint64)
        residual = BlockState(
            level=0,
            quantile=parse_scoring(scoring),
            histogram_bins=bins,
            merge_lo=none,
            merge_hi=none,
            merge_num=none,
            merge_den=none,
            merge_stitched=np.zeros(0, bool),
            cluster_ids=ids,
            member_ids=ids,
            edge_u=edges.u,
            edge_v=edges.v,
            edge_quantised_sum=edges.quantised_sum,
            edge_count=edges.count,
            edge_stitched=np.zeros(len(edges), np.uint64),
            edge_histogram=edges.histogram.astype(np.uint64),
        )
        edges = EdgeTable.empty(bins)
    run = {
        "global canonical": lambda: build_merge_tree(edges, scoring, ids, order="canonical"),
        "global waterz": lambda: build_merge_tree(edges, scoring, ids, order="waterz"),
        "level-0 block": lambda: block_state(ids, edges, ids[::2], scoring),
        "finish": lambda: finish([residual], edges, scoring),
    }[case]
    warm = lattice_rag(3, bins)
    build_merge_tree(warm[0], scoring, warm[1], order="canonical" if case != "global waterz" else "waterz")
    finish([block_state(warm[1], warm[0], warm[1][:5], scoring)], EdgeTable.empty(bins), scoring)
    process = psutil.Process()
    base = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    size = 3 * side**2 * (side - 1)
    print(f"{(max(peak, process.memory_info().rss) - base) / size:.0f} {size}")


def memory(scoring: str) -> None:
    quantile = scoring != "mean"
    bins = 16 if quantile else 0
    models = {
        "global canonical": merge_tree_bytes_per_edge(bins, "canonical", quantile),
        "global waterz": merge_tree_bytes_per_edge(bins, "waterz", quantile),
        "level-0 block": level_bytes_per_edge(bins, quantile),
        "finish": level_bytes_per_edge(bins, quantile),
    }
    print(f"\n## peak memory per edge (RSS growth), 3-D lattice RAG, scoring {scoring}, {bins} bins")
    for case in MEMORY_CASES:
        command = [sys.executable, __file__, "--scoring", scoring, "--memory-case", case]
        measured, edges = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        print(f"{case:>17}: {edges} edges, measured {measured} B/edge, model {models[case]} B/edge")


def main() -> None:
    import h5py

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scoring", default="mean", choices=["mean", "quantile50"])
    parser.add_argument("--memory-case", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        memory_case(args.memory_case, args.scoring)
        return
    for name, (path, dataset) in VOLUMES.items():
        with h5py.File(path, "r") as f:
            labels = f[dataset][()].astype(np.uint64)
        compare(name, labels, args.scoring)
    timing_at_4e4_edges(args.scoring)
    memory(args.scoring)


if __name__ == "__main__":
    main()
