"""Segmentation metrics: variation of information (split / merge) and adapted Rand error.

Both ignore voxels whose ground-truth id is 0, as scikit-image's ``variation_of_information(gt, seg,
ignore_labels=(0,))`` and ``adapted_rand_error(gt, seg, ignore_labels=(0,))`` do (checked against scikit-image in
the tests). ``voi_split = H(seg | gt)``, ``voi_merge = H(gt | seg)``, in nats (natural log, the unit of CRAC's
numbers); scikit-image 0.26 reports bits (log2), so ``voi_split_bits`` and ``voi_merge_bits`` are given as well.
"""

import json

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
    gt_index, seg_index, counts = contingency(segmentation, ground_truth)
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
