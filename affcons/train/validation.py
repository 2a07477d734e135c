"""Validation during training: stitched prediction of a whole (small) volume, segmentation and VOI / ARAND.

Prediction follows the reference providers (method.md section 6): reflect-pad the volume, slide a patch with the
last patch on each axis moved to end at the border, weight each patch output with a Gaussian
``1e-6 + exp(-d^2 / (2 * 0.2^2))`` (``d`` the distance to the patch centre on a [-1, 1] grid), accumulate, divide by
the summed weights, crop the padding. Segmentation uses :func:`affcons.segment.segment_affinities` on the three
nearest-neighbour channels; scores come from :func:`affcons.evaluate.evaluate` against the dense labels.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from affcons.errors import ConfigError


def gaussian_patch_weights(patch: Sequence[int], sigma: float = 0.2) -> np.ndarray:
    """``1e-6 + exp(-d^2 / (2 sigma^2))`` over a patch, ``d`` = Euclidean norm of a linspace(-1, 1) grid."""
    grids = np.meshgrid(*(np.linspace(-1.0, 1.0, size) for size in patch), indexing="ij")
    distance2 = sum(grid**2 for grid in grids)
    return (1e-6 + np.exp(-distance2 / (2.0 * sigma**2))).astype(np.float32)


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch starts covering ``[0, size)`` with ``stride``; the last one ends exactly at ``size``."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch, stride))
    starts.append(size - patch)
    return sorted(set(starts))


def default_stride(patch: Sequence[int]) -> tuple[int, ...]:
    """The reference geometry (patch 18x160x160, stride 10x80x80): z overlap 8 for deep patches (half the patch for
    patches under 16 sections), half-patch overlap in y/x."""
    z = patch[0] - 8 if patch[0] >= 16 else max(1, patch[0] // 2)
    return (z, max(16, patch[1] // 2), max(16, patch[2] // 2))


@torch.no_grad()
def predict_volume(
    predict: Callable[[torch.Tensor], torch.Tensor],
    raw: np.ndarray,
    patch: Sequence[int],
    stride: Sequence[int],
    channels: int,
    device: torch.device,
    batch_size: int = 2,
) -> np.ndarray:
    """Blend ``predict`` (``(B, 1, *patch)`` float32 tensor -> ``(B, >=channels, *patch)``) over ``raw`` (z, y, x).

    Patches go through ``predict`` ``batch_size`` at a time. On the CPU a lone patch is sent twice: for a batch of
    one with few channels PyTorch picks its slow native 3-D convolution instead of oneDNN's (measured 6x slower per
    patch of 12 x 128 x 224 with 8-32 channel nets). The networks must be in eval mode (outputs independent of the
    batch). Returns float32 ``(channels, z, y, x)`` holding the first ``channels`` output channels.
    """
    if raw.ndim != 3:
        raise ConfigError(f"validation raw must be (z, y, x), got {raw.shape}")
    if patch[1] % 16 or patch[2] % 16:
        raise ConfigError(f"validation patch {list(patch)}: y and x must be multiples of 16")
    pad = [max(0, (p - s) // 2) for p, s in zip(patch, stride)]
    widths = []
    for axis, size in enumerate(raw.shape):
        extra = max(0, patch[axis] - (size + 2 * pad[axis]))
        widths.append((pad[axis], pad[axis] + extra))
    padded = np.pad(raw, widths, mode="symmetric").astype(np.float32)
    weights = gaussian_patch_weights(patch)
    output = np.zeros((channels, *padded.shape), dtype=np.float32)
    total = np.zeros(padded.shape, dtype=np.float32)
    boxes = [
        (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        for z in patch_starts(padded.shape[0], patch[0], stride[0])
        for y in patch_starts(padded.shape[1], patch[1], stride[1])
        for x in patch_starts(padded.shape[2], patch[2], stride[2])
    ]
    for first in range(0, len(boxes), max(1, batch_size)):
        group = boxes[first : first + max(1, batch_size)]
        inputs = [padded[box] for box in group]
        if len(inputs) == 1 and device.type == "cpu":
            inputs = inputs * 2
        tensor = torch.from_numpy(np.stack(inputs)[:, None]).to(device)
        results = predict(tensor)[: len(group), :channels].float().cpu().numpy()
        for box, result in zip(group, results):
            output[(slice(None), *box)] += result * weights
            total[box] += weights
    output /= total
    crop = tuple(slice(before, before + size) for (before, _), size in zip(widths, raw.shape))
    return np.ascontiguousarray(output[(slice(None), *crop)])


def score_segmentations(
    affs: np.ndarray, ground_truth: np.ndarray, thresholds: Sequence[float], scoring: str, metric: str
) -> dict:
    """Segment ``affs`` (3, z, y, x) at each threshold and score against ``ground_truth``.

    Returns ``{"threshold", "voi_split", "voi_merge", "voi", "arand", "per_threshold": {thr: scores}}`` for the
    threshold that is best for ``metric`` (``"voi"`` = split + merge, or ``"arand"``; lower is better).
    """
    from affcons.evaluate import evaluate
    from affcons.segment import segment_affinities

    segmentations = segment_affinities(
        np.ascontiguousarray(affs[:3], dtype=np.float32), list(thresholds), scoring=scoring
    )
    per_threshold = {}
    for threshold, segmentation in segmentations.items():
        scores = evaluate(segmentation, ground_truth)
        per_threshold[float(threshold)] = {
            "voi_split": float(scores["voi_split"]),
            "voi_merge": float(scores["voi_merge"]),
            "voi": float(scores["voi_split"]) + float(scores["voi_merge"]),
            "arand": float(scores["arand"]),
        }
    if not per_threshold:
        raise ConfigError("validation produced no segmentation (empty threshold list?)")
    best = min(per_threshold, key=lambda t: (per_threshold[t][metric], t))
    return {"threshold": best, **per_threshold[best], "per_threshold": per_threshold}


def is_better(value: float, best: float | None) -> bool:
    """Lower is better; NaN never wins."""
    return not math.isnan(value) and (best is None or value < best)
