"""Segmentation metrics: variation of information (split / merge) and adapted Rand error.

Both ignore voxels whose ground-truth id is 0, as scikit-image's ``variation_of_information(gt, seg,
ignore_labels=(0,))`` and ``adapted_rand_error(gt, seg, ignore_labels=(0,))`` do (checked against scikit-image in
the tests). ``voi_split = H(seg | gt)``, ``voi_merge = H(gt | seg)``, in nats (natural log, the unit of CRAC's
numbers); scikit-image 0.26 reports bits (log2), so ``voi_split_bits`` and ``voi_merge_bits`` are given as well.

At scale: the segmentations of one run are merges of the same fragments, so :func:`fragment_contingency` counts
(fragment, ground truth) pairs once, slab by slab with bounded memory, and :func:`scores_from_lut` scores any
fragment -> segment lookup table from it, with the numbers :func:`evaluate` gives on the relabelled volume.
"""

import json
from dataclasses import dataclass

import numba
import numpy as np

from affcons.errors import VolumeError


def contingency(segmentation: np.ndarray, ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlap counts of (gt id, seg id) pairs over voxels with gt != 0: ``(gt_index, seg_index, counts)``."""
    if segmentation.shape != ground_truth.shape:
        raise VolumeError(f"segmentation shape {segmentation.shape} differs from ground truth {ground_truth.shape}")
    keep = ground_truth.ravel() != 0
    gt = ground_truth.ravel()[keep]
    seg = segmentation.ravel()[keep]
    _, gt_index = np.unique(gt, return_inverse=True)
    _, seg_index = np.unique(seg, return_inverse=True)
    pairs = gt_index.astype(np.int64) * (int(seg_index.max(initial=0)) + 1) + seg_index
    pair_ids, counts = np.unique(pairs, return_counts=True)
    width = int(seg_index.max(initial=0)) + 1
    return pair_ids // width, pair_ids % width, counts.astype(np.float64)


def _entropy(probabilities: np.ndarray) -> float:
    probabilities = probabilities[probabilities > 0]
    return float(-(probabilities * np.log(probabilities)).sum())


def evaluate(segmentation: np.ndarray, ground_truth: np.ndarray) -> dict[str, float]:
    """``{"voi_split", "voi_merge", "voi", "arand", "arand_precision", "arand_recall"}`` of ``segmentation``."""
    return _scores(*contingency(segmentation, ground_truth))


def _scores(gt_index: np.ndarray, seg_index: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """The metrics of a contingency table as :func:`contingency` returns it (pairs sorted by gt, then seg index)."""
    total = counts.sum()
    if total == 0:
        raise VolumeError("the ground truth has no labelled voxel (all 0): nothing to evaluate")
    joint = counts / total
    gt_marginal = np.bincount(gt_index, weights=joint)
    seg_marginal = np.bincount(seg_index, weights=joint)
    joint_entropy = _entropy(joint)
    voi_split = joint_entropy - _entropy(gt_marginal)  # H(seg | gt)
    voi_merge = joint_entropy - _entropy(seg_marginal)  # H(gt | seg)
    gt_sizes = np.bincount(gt_index, weights=counts)
    seg_sizes = np.bincount(seg_index, weights=counts)
    same_in_both = counts @ counts - total
    same_in_gt = gt_sizes @ gt_sizes - total
    same_in_seg = seg_sizes @ seg_sizes - total
    precision = same_in_both / same_in_gt if same_in_gt else 1.0
    recall = same_in_both / same_in_seg if same_in_seg else 1.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    voi_split, voi_merge = max(voi_split, 0.0), max(voi_merge, 0.0)
    return {
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "arand": float(1.0 - fscore),
        "arand_precision": float(precision),
        "arand_recall": float(recall),
        "voi_split_bits": float(voi_split / np.log(2)),
        "voi_merge_bits": float(voi_merge / np.log(2)),
    }


@dataclass(frozen=True)
class Contingency:
    """Voxel counts of (fragment id, ground-truth id) pairs over all voxels of a region, one row per pair present,
    sorted by fragment then ground-truth id: ``fragments`` and ``ground_truth`` uint64[K], ``counts`` int64[K]. Rows
    of ground truth 0 are kept (they give the segments of the region) and ignored by the scores."""

    fragments: np.ndarray
    ground_truth: np.ndarray
    counts: np.ndarray


def fragment_contingency(fragments, ground_truth, roi=None, slab: int | None = None) -> Contingency:
    """The (fragment, ground truth) contingency table of ``roi``, read slab by slab.

    Args:
        fragments, ground_truth: integer label volumes (z, y, x): numpy arrays, or world-unit arrays (as
            :func:`affcons.io.open_volume` returns) with the same voxel size.
        roi: world-unit ``funlib.geometry.Roi`` (nm) inside both arrays; default: the fragments' ROI, which must
            then lie inside the ground truth's. Only for world-unit arrays; numpy arrays are counted whole.
        slab: z sections read at a time (default: about 2^24 voxels, a multiple of the fragments' z chunk).

    Memory: the two label slabs plus a hash table of the pairs (48 bytes per pair at most), not the volume.
    ``counts.sum()`` is the number of voxels of the region.
    Ground-truth ids must be non-negative (:class:`VolumeError`).
    """
    if isinstance(fragments, np.ndarray) != isinstance(ground_truth, np.ndarray):
        raise VolumeError("fragments and ground truth must both be numpy arrays or both world-unit arrays")
    if isinstance(fragments, np.ndarray):
        if roi is not None:
            raise VolumeError("a roi applies to world-unit arrays only; slice the numpy arrays instead")
        if fragments.shape != ground_truth.shape or fragments.ndim != 3:
            raise VolumeError(f"fragments {fragments.shape} and ground truth {ground_truth.shape} must be equal 3-D")
        shape = fragments.shape
        chunk = 1

        def read(z0, z1):
            return fragments[z0:z1], ground_truth[z0:z1]

    else:
        roi = _checked_roi(fragments, ground_truth, roi)
        voxel_size = fragments.voxel_size
        shape = tuple(roi.shape / voxel_size)
        chunk = int(getattr(fragments, "chunk_shape", (1,))[0])

        def read(z0, z1):
            from funlib.geometry import Coordinate, Roi

            begin = roi.offset + Coordinate(z0 * voxel_size[0], 0, 0)
            slab_roi = Roi(begin, Coordinate((z1 - z0) * voxel_size[0], roi.shape[1], roi.shape[2]))
            return fragments[slab_roi], ground_truth[slab_roi]

    if slab is None:
        slab = max(chunk, 2**24 // max(shape[1] * shape[2], 1) // chunk * chunk)
    if slab < 1:
        raise ValueError(f"slab must be at least 1 section, got {slab}")
    table = _empty_pair_table(1024)
    for z0 in range(0, shape[0], slab):
        labels, truth = read(z0, min(z0 + slab, shape[0]))
        for name, volume in (("fragment", labels), ("ground-truth", truth)):
            if not np.issubdtype(volume.dtype, np.integer):
                raise VolumeError(f"{name} ids must be integers, got {volume.dtype}")
            if np.issubdtype(volume.dtype, np.signedinteger) and volume.size and volume.min() < 0:
                raise VolumeError(f"{name} ids must be non-negative")
        table = _count_pairs(labels, truth, *table)
    keys_fragment, keys_truth, counts, _ = table
    used = counts > 0
    order = np.lexsort((keys_truth[used], keys_fragment[used]))
    return Contingency(keys_fragment[used][order], keys_truth[used][order], counts[used][order])


def _checked_roi(fragments, ground_truth, roi):
    if fragments.voxel_size != ground_truth.voxel_size:
        raise VolumeError(
            f"fragments voxel size {fragments.voxel_size} differs from ground truth {ground_truth.voxel_size}"
        )
    roi = fragments.roi if roi is None else roi
    voxel_size = fragments.voxel_size
    if any(o % v or s % v for o, s, v in zip(roi.offset, roi.shape, voxel_size)) or roi.empty:
        raise VolumeError(f"ROI {roi} must be non-empty and a multiple of the voxel size {voxel_size} (nm)")
    for name, array in (("fragments", fragments), ("ground truth", ground_truth)):
        if not array.roi.contains(roi):
            raise VolumeError(f"ROI {roi} is not inside the {name} ROI {array.roi}")
    return roi


def _empty_pair_table(capacity: int):
    """An open-addressing table (fragment keys, gt keys, counts, number of pairs); capacity a power of 2."""
    return np.zeros(capacity, np.uint64), np.zeros(capacity, np.uint64), np.zeros(capacity, np.int64), 0


@numba.njit(cache=True)
def _add_pair(keys_fragment, keys_truth, counts, size, fragment, truth, count):  # pragma: no cover - compiled
    """Add ``count`` to the pair's entry (linear probing; the table doubles when half full)."""
    if 2 * (size + 1) > len(counts):
        old_fragment, old_truth, old_counts = keys_fragment, keys_truth, counts
        keys_fragment = np.zeros(2 * len(old_counts), np.uint64)
        keys_truth = np.zeros(2 * len(old_counts), np.uint64)
        counts = np.zeros(2 * len(old_counts), np.int64)
        for i in range(len(old_counts)):
            if old_counts[i] > 0:
                _insert(keys_fragment, keys_truth, counts, old_fragment[i], old_truth[i], old_counts[i])
    if _insert(keys_fragment, keys_truth, counts, fragment, truth, count):
        size += 1
    return keys_fragment, keys_truth, counts, size


@numba.njit(cache=True)
def _insert(keys_fragment, keys_truth, counts, fragment, truth, count):  # pragma: no cover - compiled
    """Add ``count`` at the pair's slot; True if the pair was new."""
    mask = np.uint64(len(counts) - 1)
    slot = ((fragment * np.uint64(0x9E3779B97F4A7C15)) ^ (truth * np.uint64(0xC2B2AE3D27D4EB4F))) >> np.uint64(17)
    slot &= mask
    while counts[slot] > 0:
        if keys_fragment[slot] == fragment and keys_truth[slot] == truth:
            counts[slot] += count
            return False
        slot = (slot + np.uint64(1)) & mask
    keys_fragment[slot] = fragment
    keys_truth[slot] = truth
    counts[slot] = count
    return True


@numba.njit(cache=True)
def _count_pairs(fragments, ground_truth, keys_fragment, keys_truth, counts, size):  # pragma: no cover - compiled
    """Add the pairs of the voxels to the table, a run of equal pairs along x at a time."""
    nz, ny, nx = fragments.shape
    run_fragment, run_truth, run = np.uint64(0), np.uint64(0), 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                truth = np.uint64(ground_truth[z, y, x])
                fragment = np.uint64(fragments[z, y, x])
                if run > 0 and fragment == run_fragment and truth == run_truth:
                    run += 1
                    continue
                if run > 0:
                    keys_fragment, keys_truth, counts, size = _add_pair(
                        keys_fragment, keys_truth, counts, size, run_fragment, run_truth, run
                    )
                run_fragment, run_truth, run = fragment, truth, 1
    if run > 0:
        keys_fragment, keys_truth, counts, size = _add_pair(
            keys_fragment, keys_truth, counts, size, run_fragment, run_truth, run
        )
    return keys_fragment, keys_truth, counts, size


def scores_from_lut(contingency: Contingency, ids: np.ndarray, segment_of: np.ndarray) -> dict[str, float]:
    """:func:`evaluate` of the segmentation that relabels the fragments by ``ids`` (sorted uint64) ->
    ``segment_of`` (fragments missing from ``ids`` keep their id, 0 stays 0: ``affcons.segment.apply_lookup``),
    from the fragments' contingency table: the same contingency arrays, so the same numbers to the last bit."""
    labelled = contingency.ground_truth != 0
    if not labelled.any():
        raise VolumeError("the ground truth has no labelled voxel (all 0): nothing to evaluate")
    segments = _segments(contingency.fragments[labelled], ids, segment_of)
    order = np.lexsort((segments, contingency.ground_truth[labelled]))
    truth, segments = contingency.ground_truth[labelled][order], segments[order]
    counts = contingency.counts[labelled][order]
    starts = np.flatnonzero(np.r_[True, (truth[1:] != truth[:-1]) | (segments[1:] != segments[:-1])])
    gt_index = np.unique(truth[starts], return_inverse=True)[1]
    seg_index = np.unique(segments[starts], return_inverse=True)[1]
    return _scores(gt_index, seg_index, np.add.reduceat(counts, starts).astype(np.float64))


def segments_from_lut(contingency: Contingency, ids: np.ndarray, segment_of: np.ndarray) -> int:
    """The number of non-zero segments in the contingency's region after relabelling as in :func:`scores_from_lut`
    (over all its voxels, ground truth 0 or not)."""
    segments = np.unique(_segments(contingency.fragments, ids, segment_of))
    return int(np.count_nonzero(segments))


def _segments(fragments: np.ndarray, ids: np.ndarray, segment_of: np.ndarray) -> np.ndarray:
    from affcons.segment.lookup import apply_lookup

    return apply_lookup(fragments, np.asarray(ids, np.uint64), np.asarray(segment_of, np.uint64))


def format_table(rows: list[dict], columns=("threshold", "segments", "voi_split", "voi_merge", "voi", "arand")) -> str:
    """A fixed-width text table of metric rows (floats with 4 decimals)."""
    lines = ["  ".join(f"{c:>10}" for c in columns)]
    for row in rows:
        cells = [f"{row[c]:>10.4f}" if isinstance(row[c], float) else f"{row[c]:>10}" for c in columns]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def best_row(rows: list[dict], key: str = "voi") -> dict:
    """The row with the lowest ``key`` (ties: the first)."""
    return min(rows, key=lambda row: row[key])


def write_json(rows: list[dict], path) -> None:
    with open(path, "w") as stream:
        json.dump(rows, stream, indent=2)
