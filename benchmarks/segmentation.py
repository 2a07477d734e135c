"""Foundation benchmark: affcons fragments + merge tree against waterz on the same fragments, on real EM labels.

Affinities are derived from the ground truth like a network's output (``affcons.synthetic.degraded_affinities``:
widened borders, nearest-neighbour affinities, Gaussian blur sigma 1 voxel, noise sd 0.15, fixed seed, clip).
Prints, per volume: the time of each step and VOI split/merge (nats) and ARAND against the original labels, at
thresholds 0.05 ... 0.9, for (a) affcons: fragments + one merge tree in the waterz order (``order="waterz"``, the
replay this benchmark checks) + a cut per threshold, (b) waterz on the same fragments (one ``waterz.agglomerate``
call over all thresholds). Then the merge-tree timing at the 250^3 scale. The canonical order (the default) is
compared with the replay in ``benchmarks/canonical_vs_waterz.py``.

    python benchmarks/segmentation.py [--scoring mean|quantile50]
"""

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

from affcons.evaluate import evaluate
from affcons.segment import QUANTILE_BINS, apply_lookup, build_merge_tree, edge_table, watershed_from_affinities
from affcons.segment.agglomerate import parse_scoring
from affcons.segment.reference import WATERZ_SCORING, waterz_segmentations
from affcons.synthetic import degraded_affinities

DATA = Path(__file__).resolve().parents[1] / "data"
VOLUMES = {
    "isbi (30x512x512, ssTEM)": (DATA / "isbi2012_3d/isbi2012_with_3d_neurite_labels.h5", "labels/neurites_3dcc"),
    "gala test (50x100x200, FIB-SEM)": (DATA / "gala_fibsem/test-gt.lzf.h5", "stack"),
}
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def mirrored(labels: np.ndarray, shape) -> np.ndarray:
    """Tile ``labels`` by mirroring to ``shape``; each mirrored copy gets its own ids."""
    out = labels
    for axis, size in enumerate(shape):
        copies, flip = [], False
        offset = 0
        while sum(c.shape[axis] for c in copies) < size:
            piece = np.flip(out, axis) if flip else out
            copies.append(np.where(piece > 0, piece + offset, 0))
            offset += int(out.max()) + 1
            flip = not flip
        out = np.concatenate(copies, axis=axis)
        out = out.take(np.arange(size), axis=axis)
    return out


def compare(name: str, labels: np.ndarray, scoring: str) -> None:
    affs = degraded_affinities(labels, sigma=1.0, noise=0.15, seed=0)
    bins = QUANTILE_BINS if parse_scoring(scoring) >= 0 else 0
    start = time.perf_counter()
    fragments, count = watershed_from_affinities(affs, min_size=10)
    t_fragments = time.perf_counter() - start
    start = time.perf_counter()
    edges = edge_table(fragments, affs, histogram_bins=bins)
    t_rag = time.perf_counter() - start
    start = time.perf_counter()
    tree = build_merge_tree(edges, scoring, node_ids=np.arange(1, count + 1), order="waterz")
    t_tree = time.perf_counter() - start
    start = time.perf_counter()
    ours = [apply_lookup(fragments, tree.ids, tree.lookup(t)) for t in THRESHOLDS]
    t_cuts = time.perf_counter() - start
    start = time.perf_counter()
    reference = waterz_segmentations(affs, fragments, THRESHOLDS, scoring)
    t_waterz = time.perf_counter() - start
    print(f"\n## {name}: {labels.size / 1e6:.1f} Mvoxel, {count} fragments, {len(edges)} edges, scoring {scoring}")
    print(
        f"time: watershed {t_fragments:.2f} s | affcons RAG {t_rag:.2f} s + merge tree {t_tree:.3f} s + "
        f"{len(THRESHOLDS)} cuts and relabels {t_cuts:.2f} s | waterz agglomerate (same fragments) {t_waterz:.2f} s"
    )
    print(
        f"{'threshold':>9} | {'affcons split':>13} {'merge':>6} {'arand':>6} | {'waterz split':>12} {'merge':>6} "
        f"{'arand':>6} | VOI(affcons, waterz)"
    )
    for threshold, a, w in zip(THRESHOLDS, ours, reference):
        ma, mw = evaluate(a, labels), evaluate(w, labels)
        between = evaluate(a, w.astype(np.uint64) + 1)["voi"]
        print(
            f"{threshold:>9.2f} | {ma['voi_split']:>13.3f} {ma['voi_merge']:>6.3f} {ma['arand']:>6.3f} | "
            f"{mw['voi_split']:>12.3f} {mw['voi_merge']:>6.3f} {mw['arand']:>6.3f} | {between:.2e}"
        )


def merge_tree_scale(scoring: str) -> None:
    with h5py.File(DATA / "gala_fibsem/test-gt.lzf.h5", "r") as f:
        labels = mirrored(f["stack"][()].astype(np.uint64), (250, 250, 250))
    affs = degraded_affinities(labels, sigma=1.0, noise=0.15, seed=0)
    fragments, count = watershed_from_affinities(affs, min_size=500)
    bins = QUANTILE_BINS if parse_scoring(scoring) >= 0 else 0
    edges = edge_table(fragments, affs, histogram_bins=bins)
    build_merge_tree(edges, scoring, order="waterz")  # compile (numba caches) outside the timing
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        tree = build_merge_tree(edges, scoring, order="waterz")
        timings.append(time.perf_counter() - start)
    cut_timings = []
    for _ in range(5):
        start = time.perf_counter()
        tree.lookup(0.5)
        cut_timings.append(time.perf_counter() - start)
    print(
        f"\n## merge tree at the 250^3 scale (gala test mirrored to 250^3, min fragment size 500): "
        f"{count} fragments, {len(edges)} edges, scoring {scoring}"
    )
    print(
        f"merge tree: best of 3 {min(timings):.3f} s (target < 1 s); cut at one threshold: best of 5 "
        f"{min(cut_timings) * 1e3:.2f} ms (target < 100 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scoring", default="mean", choices=sorted(WATERZ_SCORING))
    args = parser.parse_args()
    for name, (path, dataset) in VOLUMES.items():
        with h5py.File(path, "r") as f:
            labels = f[dataset][()].astype(np.uint64)
        compare(name, labels, args.scoring)
    merge_tree_scale(args.scoring)


if __name__ == "__main__":
    main()
