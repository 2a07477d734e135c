"""Sparse annotation and the supervised targets of CRAC (method.md sections 1-2, with the section 8 fixes).

* :func:`select_instances` simulates sparse annotation: a random subset of whole 3-D instances, deterministic for a
  seed, with a report of the id fraction and the voxel fraction.
* :func:`widen_borders` is ``seg_widen_border(tsz_h=1)``: per z-slice, a voxel becomes 0 when its 3x3 window
  (reflect-padded) holds two different non-zero ids. Labelled-versus-0 borders are left alone.
* :func:`crac_targets` gives affinity targets at the true offsets (no long-range z bug), the offset validity and
  the labelled mask ``M_lab = valid AND ((lb(p) > 0) OR (target == 0))``.
* :func:`class_balance_weights` is ``weight_binary_ratio`` computed inside M_lab only (per channel by default in
  the data pipeline, ``data.balance``).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from affcons.affinities import affinities_from_labels
from affcons.errors import ConfigError, VolumeError


@dataclass(frozen=True)
class SparseReport:
    """What a sparse selection kept."""

    kept_ids: tuple[int, ...]  # the labelled instance ids, sorted
    total_ids: int  # non-zero ids in the dense labels
    id_fraction: float  # kept_ids / total_ids
    voxel_fraction: float  # labelled voxels / non-zero voxels of the dense labels
    labelled_fraction: float  # labelled voxels / all voxels

    def summary(self) -> str:
        return (
            f"{len(self.kept_ids)}/{self.total_ids} instances ({100 * self.id_fraction:.2f} % of ids, "
            f"{100 * self.voxel_fraction:.2f} % of foreground voxels, {100 * self.labelled_fraction:.2f} % of "
            f"all voxels)"
        )


def select_instances(
    labels: np.ndarray, mode: str = "fraction", value: float = 0.05, seed: int = 555
) -> tuple[np.ndarray, SparseReport]:
    """Keep a random subset of the non-zero ids of ``labels`` (whole masks), set the rest to 0.

    Args:
        labels: dense integer instance labels, 0 = background / membrane.
        mode: ``"fraction"`` keeps ``ceil(value * n_ids)`` ids, ``"count"`` keeps ``value`` ids, ``"all"`` keeps
            every id (labels used as given).
        seed: the subset is a function of ``seed`` and the sorted set of ids only.

    Returns:
        ``(sparse_labels, report)``; ``sparse_labels`` has the dtype of ``labels``.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        raise VolumeError(f"labels must be integer, got {labels.dtype}")
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if mode == "all":
        keep = ids
    elif mode in ("fraction", "count"):
        if mode == "fraction":
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"sparse fraction must lie in (0, 1], got {value}")
            n_keep = int(np.ceil(value * len(ids) - 1e-9))
        else:
            if value < 1 or value != int(value):
                raise ConfigError(f"sparse count must be a positive integer, got {value}")
            n_keep = int(value)
        n_keep = min(max(n_keep, 1), len(ids))
        keep = np.sort(np.random.default_rng(seed).permutation(ids)[:n_keep])
    else:
        raise ConfigError(f"sparse mode must be 'all', 'fraction' or 'count', got {mode!r}")
    sparse = np.where(np.isin(labels, keep), labels, 0).astype(labels.dtype)
    foreground = int(np.count_nonzero(labels))
    labelled = int(np.count_nonzero(sparse))
    report = SparseReport(
        kept_ids=tuple(int(i) for i in keep),
        total_ids=len(ids),
        id_fraction=len(keep) / max(len(ids), 1),
        voxel_fraction=labelled / max(foreground, 1),
        labelled_fraction=labelled / max(labels.size, 1),
    )
    return sparse, report


def widen_borders(labels: np.ndarray) -> np.ndarray:
    """Zero every voxel whose in-plane 3x3 window (reflect padding) contains two different non-zero ids.

    Works per z-slice on (z, y, x) labels and returns a new array; 0 stays 0.
    """
    if labels.ndim != 3:
        raise VolumeError(f"labels must be (z, y, x), got shape {labels.shape}")
    if labels.shape[1] < 2 or labels.shape[2] < 2:
        return labels.copy()
    padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    height, width = labels.shape[1:]
    big = np.iinfo(labels.dtype).max
    lowest = np.full(labels.shape, big, dtype=labels.dtype)
    highest = np.zeros_like(labels)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + height, dx : dx + width]
            highest = np.maximum(highest, window)
            lowest = np.minimum(lowest, np.where(window == 0, big, window))
    conflict = (highest != 0) & (lowest != big) & (lowest != highest)
    return np.where(conflict, 0, labels).astype(labels.dtype)


def crac_targets(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affinity targets, offset validity and the labelled mask of sparse ``labels`` (z, y, x).

    * ``target[c](p) = 1`` iff ``lb(p) == lb(p + o_c)`` (including ``0 == 0``), at the true offset.
    * ``valid[c](p)`` -- ``p + o_c`` lies inside the crop.
    * ``label_mask[c](p) = valid AND (lb(p) > 0 OR target == 0)``: pairs whose target is known. Pairs of two 0 voxels
      (target 1) are unknown.

    Returns three float32 arrays of shape (C, z, y, x).
    """
    target, valid = affinities_from_labels(labels, offsets, unlabelled=None)
    labelled = (labels > 0)[None]
    label_mask = (valid > 0) & (labelled | (target == 0))
    return target, valid, label_mask.astype(np.float32)


def class_balance_weights(target: np.ndarray, label_mask: np.ndarray, per_channel: bool = False) -> np.ndarray:
    """``weight_binary_ratio`` computed inside ``label_mask`` (method.md section 8, item 7: "compute f inside M_lab,
    or per channel").

    ``f`` = fraction of target 1 among masked entries, clipped to [0.05, 0.99]. If ``f > 0.5`` positives weigh 1 and
    negatives ``f / (1 - f)``, otherwise positives weigh ``(1 - f) / f`` and negatives 1. Every entry of the mask gets
    the weight of its target class; entries outside the mask (unknown pairs, which only the pseudo terms use) weigh 1.
    That is their weight in the code: its ``f`` over the whole crop is dominated by unknown ``0 == 0`` pairs (target
    1), so ``f > 0.5`` and the positive class, unknown pairs included, weighs 1. Giving them the in-mask positive
    weight instead (~5 pooled, up to 19 per channel) would scale the pseudo terms up 5-19x against the supervised
    ones (docs/design/crac.md section 2). Without any masked entry all weights are 1.

    ``per_channel=False`` uses one ``f`` over all entries (the code's ``separate_weight=False``); ``per_channel=True``
    computes ``f`` separately for each index of axis 0 (the offset channels of a (C, z, y, x) target). Pooled over the
    12 CRAC channels, ``f`` inside M_lab is dominated by the long-range channels (mostly boundaries: ``f`` ~ 0.05 at
    27 voxels) and lands near 0.2, so positives get weight ~5 in the nearest-neighbour channels, where they are
    already the majority (``f`` ~ 0.7): the MSE optimum at any unsure pair is then ~0.93 and no boundary is learned
    (docs/design/crac.md section 2). Returns float32 of the shape of ``target``.
    """
    if per_channel and target.ndim >= 2:
        return np.stack([class_balance_weights(target[c], label_mask[c]) for c in range(target.shape[0])])
    selected = label_mask > 0
    count = int(selected.sum())
    if count == 0:
        return np.ones(target.shape, dtype=np.float32)
    fraction = float(np.clip(target[selected].sum() / count, 0.05, 0.99))
    if fraction > 0.5:
        positive, negative = 1.0, fraction / (1.0 - fraction)
    else:
        positive, negative = (1.0 - fraction) / fraction, 1.0
    return np.where(selected, np.where(target > 0.5, positive, negative), 1.0).astype(np.float32)
