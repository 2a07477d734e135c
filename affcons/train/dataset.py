"""Training crops: sparse labelled (and optional unlabelled) random crops with CRAC targets.

Loader contract (what the trainer receives per batch, all float32 unless noted, ``C = len(offsets)``):

* ``raw`` (N, 1, D, H, W) in [0, 1];
* ``labels`` (N, D, H, W) int64, the sparse, border-widened ids of the crop (0 = unlabelled);
* ``target`` (N, C, D, H, W) affinity targets at the true offsets;
* ``label_mask`` (N, C, D, H, W) M_lab, already 0 on invalid (out-of-crop) pairs;
* ``weight`` (N, C, D, H, W) class-balance weights computed inside M_lab (per channel, ``data.balance``; 1 outside it);
* ``labelled`` (N,) bool: False for crops from the extra unlabelled source (their M_lab is 0 everywhere);
* only with ``with_truth``: ``truth`` (N, C, D, H, W), the true affinities of the dense labels (1 where both voxels
  carry the same non-zero id); ``truth_defined`` (N, C, D, H, W) bool, valid pairs with at least one voxel inside a
  neurite (a pair of two boundary voxels has no meaningful truth); ``truth_inside`` (bool, same shape), valid pairs
  with both voxels inside neurites (the split / merge decisions, without the boundary voxels). Unlabelled-source
  crops have none (0). The dense labels follow the sparse ones through the same augmentation (one combined id per
  voxel), so every other field of a sample is identical with and without them.

``N = batch_size + batch_size_unlabelled``; the first ``batch_size`` rows are labelled crops.

Determinism: sample ``k`` of the stream is a pure function of ``(seed, k)`` (its own ``numpy`` generator), so the
stream is the same for any ``num_workers`` and a resumed run continues it exactly (:func:`make_loader` starts at
``start_iteration * N``).

Volumes (``file.h5:dataset`` or zarr paths, opened with :func:`affcons.io.open_volume`) are read into memory once,
restricted to their ROI; sparse selection and border widening are applied to the whole training ROI, as the
reference ``Train.__init__`` does.
"""

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from affcons.affinities import affinities_from_labels, shifted_pair_slices
from affcons.errors import VolumeError
from affcons.train.augment import augment
from affcons.train.config import DataConfig, VolumeConfig, resolve_path
from affcons.train.sparse import SparseReport, class_balance_weights, crac_targets, select_instances, widen_borders

logger = logging.getLogger(__name__)


@dataclass
class LoadedVolume:
    """A volume's ROI in memory: raw float32 in [0, 1], labels (or None), voxel size (nm) and the ROI begin."""

    raw: np.ndarray
    labels: np.ndarray | None
    voxel_size: tuple[int, ...] | None
    begin: tuple[int, int, int]


def read_roi(spec: str, roi_begin: Sequence[int], roi_end: Sequence[int] | None, key: str) -> tuple[np.ndarray, tuple]:
    """Read voxels ``[begin, end)`` of the volume ``spec`` (repository-relative paths allowed) into memory.

    ``key`` names the config field in error messages. Returns ``(array, voxel_size or None)``.
    """
    from affcons.io import open_volume

    path = resolve_path(spec)
    try:
        array = open_volume(str(path))
    except VolumeError as error:
        raise VolumeError(f"{key}: {error} (relative paths in configs are taken from the repository root)") from None
    shape = tuple(array.shape[-3:])
    end = tuple(shape) if roi_end is None else tuple(roi_end)
    begin = tuple(roi_begin)
    if len(array.shape) != 3:
        raise VolumeError(f"{key}: {path} must be a 3-D (z, y, x) volume, got shape {tuple(array.shape)}")
    if any(b < 0 or e > s or b >= e for b, e, s in zip(begin, end, shape)):
        raise VolumeError(f"{key}: ROI [{list(begin)}, {list(end)}) does not fit {path} of shape {list(shape)}")
    data = np.asarray(array[tuple(slice(b, e) for b, e in zip(begin, end))])
    voxel_size = tuple(int(v) for v in array.voxel_size) if array.voxel_size is not None else None
    return data, voxel_size


def load_volume(cfg: VolumeConfig, key: str, need_labels: bool) -> LoadedVolume:
    """Load a :class:`VolumeConfig` (raw scaled by ``raw_scale``, labels as integers)."""
    raw, voxel_size = read_roi(cfg.raw, cfg.roi.begin, cfg.roi.end, f"{key}.raw")
    labels = None
    if cfg.labels is not None:
        labels, _ = read_roi(cfg.labels, cfg.roi.begin, cfg.roi.end, f"{key}.labels")
        if labels.shape != raw.shape:
            raise VolumeError(f"{key}: labels ROI shape {labels.shape} differs from raw ROI shape {raw.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise VolumeError(f"{key}.labels must be integer ids, got {labels.dtype}")
    elif need_labels:
        raise VolumeError(f"{key}.labels is required here")
    return LoadedVolume((raw.astype(np.float32) / np.float32(cfg.raw_scale)), labels, voxel_size, tuple(cfg.roi.begin))


def _window(volume_shape: Sequence[int], window: Sequence[int], rng: np.random.Generator) -> tuple[slice, ...]:
    """A uniformly random window start; a volume smaller than the window is covered from 0 (padded later)."""
    slices = []
    for size, length in zip(volume_shape, window):
        start = int(rng.integers(0, size - length + 1)) if size >= length else 0
        slices.append(slice(start, start + length))
    return tuple(slices)


def _read_padded(volume: np.ndarray, slices: tuple[slice, ...], window: Sequence[int]) -> np.ndarray:
    """``volume[slices]``, reflect-padded (symmetric) at the end of each axis up to ``window``."""
    data = volume[slices]
    missing = [(0, w - s) for w, s in zip(window, data.shape)]
    if any(after for _, after in missing):
        data = np.pad(data, missing, mode="symmetric")
    return data


class CropDataset(Dataset):
    """The stream of training samples (see the module docstring for the contract).

    Args:
        cfg: the ``data`` section.
        offsets: affinity offsets (z, y, x).
        seed: stream seed (``run.seed``).
        batch_size: labelled crops per batch (the rest of each batch of ``batch_size + batch_size_unlabelled``
            comes from ``cfg.unlabelled``).
        with_truth: add the true affinities of the dense labels (``truth``, ``truth_defined``) to each sample.
    """

    def __init__(
        self,
        cfg: DataConfig,
        offsets: Sequence[Sequence[int]],
        seed: int,
        batch_size: int,
        with_truth: bool = False,
    ):
        self.cfg = cfg
        self.with_truth = with_truth
        self.offsets = [tuple(o) for o in offsets]
        self.seed = seed
        self.batch_size = batch_size
        self.group = batch_size + cfg.batch_size_unlabelled
        train = load_volume(cfg.train, "data.train", need_labels=True)
        sparse, report = select_instances(train.labels, cfg.sparse.mode, cfg.sparse.value, cfg.sparse.seed)
        self.sparse_report: SparseReport = report
        logger.info("sparse annotation of data.train: %s", report.summary())
        self.raw = train.raw
        self.labels = widen_borders(sparse) if cfg.widen_border else sparse
        # dense id * 2 + (sparse label present): geometric augmentations move both with the same nearest lookup
        self.combined = None
        if with_truth:
            self.combined = train.labels.astype(np.int64) * 2 + (self.labels > 0)
        self.voxel_size = train.voxel_size
        self.unlabelled_raw = None
        if cfg.unlabelled is not None and cfg.batch_size_unlabelled > 0:
            self.unlabelled_raw = load_volume(cfg.unlabelled, "data.unlabelled", need_labels=False).raw

    def __len__(self) -> int:
        return 2**62  # an endless stream; the sampler decides which indices are drawn

    def is_labelled(self, index: int) -> bool:
        """Whether stream position ``index`` is a labelled crop."""
        return index % self.group < self.batch_size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        crop = np.asarray(self.cfg.crop)
        window = crop + 2 * np.asarray(self.cfg.margin)
        labelled = self.is_labelled(index)
        source = self.raw if labelled else self.unlabelled_raw
        slices = _window(source.shape, window, rng)
        raw = _read_padded(source, slices, window)
        labels = None
        if labelled:
            labels = _read_padded(self.labels if self.combined is None else self.combined, slices, window)
        raw, labels = augment(raw, labels, self.cfg.augment, rng)
        inner = tuple(slice(m, m + c) for m, c in zip(self.cfg.margin, crop))
        raw = np.ascontiguousarray(raw[inner], dtype=np.float32)
        dense = None
        if labels is not None and self.combined is not None:
            dense = labels // 2
            labels = np.where(labels % 2 == 1, dense, 0)
        if labels is None:
            labels = np.zeros(raw.shape, dtype=np.int64)
            target, valid, _ = crac_targets(labels, self.offsets)
            label_mask = np.zeros_like(target)
            weight = np.ones_like(target)
        else:
            labels = np.ascontiguousarray(labels[inner]).astype(np.int64)
            target, valid, label_mask = crac_targets(labels, self.offsets)
            weight = class_balance_weights(target, label_mask, per_channel=self.cfg.balance == "per_channel")
        sample = {
            "raw": raw[None],
            "labels": labels,
            "target": target,
            "label_mask": label_mask,
            "weight": weight,
            "labelled": np.bool_(labelled),
        }
        if self.with_truth:
            sample.update(self._truth(None if dense is None else np.ascontiguousarray(dense[inner]), valid))
        return sample

    def _truth(self, dense: np.ndarray | None, valid: np.ndarray) -> dict[str, np.ndarray]:
        """``truth``, ``truth_defined`` and ``truth_inside`` of a crop's dense ids (None: an unlabelled-source crop,
        all 0)."""
        if dense is None:
            none = np.zeros(valid.shape, dtype=bool)
            return {"truth": np.zeros_like(valid), "truth_defined": none, "truth_inside": none.copy()}
        truth, both_inside = affinities_from_labels(dense, self.offsets, unlabelled=0)
        inside = dense > 0
        defined = np.zeros(valid.shape, dtype=bool)
        for channel, offset in enumerate(self.offsets):
            at_p, at_partner = shifted_pair_slices(dense.shape, offset)
            defined[channel][at_p] = inside[at_p] | inside[at_partner]
        return {"truth": truth, "truth_defined": defined & (valid > 0), "truth_inside": (both_inside > 0) & (valid > 0)}


class StreamSampler(Sampler[int]):
    """Consecutive stream indices ``start, start + 1, ...`` (endless)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        index = self.start
        while True:
            yield index
            index += 1


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: CropDataset, start_iteration: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """An endless loader of batches of ``dataset.group`` samples, continuing the stream after ``start_iteration``
    completed iterations."""
    return DataLoader(
        dataset,
        batch_size=dataset.group,
        sampler=StreamSampler(start_iteration * dataset.group),
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
        # a private generator: creating the iterator must not consume the global torch RNG (exact resume)
        generator=torch.Generator().manual_seed(dataset.seed),
    )
