"""In-memory affinity prediction on a global grid of fixed-size patches: the one function that whole-volume and
blockwise prediction share (``blockwise/predict.py`` runs it per block).

Geometry (:class:`PatchGrid`, voxels): the network sees input patches of shape ``patch``; each patch contributes
only its central ``tile = patch - 2 * margin`` voxels. Tiles cover the output region edge to edge, anchored at the
region's begin, so the patch of a tile always starts ``margin`` before it. A region whose begin lies on the global
tile grid (the prediction ROI's begin plus a whole number of tiles) therefore produces, voxel for voxel, the same
values as any other region that contains the same tiles: blockwise prediction with blocks that are whole numbers
of tiles equals whole-volume prediction by construction. Raw outside the volume is read as 0.

``margin`` trades compute for seam-freedom: the input is ``prod(patch) / prod(tile)`` times the output. The
U-Net's receptive field is far larger than any affordable margin, so the output of a voxel still depends (a little)
on where its patch lies; the margin only keeps tile borders away from the patch borders, where zero padding of the
convolutions dominates. The implicit long-range channels need more: the implicit affinity at offset ``o`` is 0
where ``p + o`` leaves the patch, so writing them requires ``margin >= |o|`` per axis (:func:`required_margin`).

:class:`Predictor` holds the networks (loaded once), the device, the precision and the batch size; it turns a raw
array covering a region plus context into uint8 (or float16) affinities of the chosen map and, optionally, the
disagreement map ``mean_c<3 |implicit_c - explicit_c|`` (uint8).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi

from affcons.devices import resolve_precision
from affcons.errors import CheckpointError, ConfigError, VolumeError

#: Affinity maps a CRAC model can produce (``CRACNetworks.affinities``).
MAPS = ("implicit", "explicit", "mean")
#: Output dtypes of the affinities.
DTYPES = ("uint8", "float16")
#: The short-range (nearest-neighbour) channels: the first three.
SHORT_RANGE = 3

Triple = tuple[int, int, int]


def _triple(value, name: str) -> Triple:
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ConfigError(f"{name} must have 3 entries (z, y, x), got {list(value)}")
    return values


@dataclass(frozen=True)
class PatchGrid:
    """Input patch and output margin in voxels (z, y, x); tiles of ``patch - 2 * margin`` cover the output."""

    patch: Triple
    margin: Triple

    def __post_init__(self):
        patch, margin = _triple(self.patch, "patch"), _triple(self.margin, "margin")
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "margin", margin)
        if min(margin) < 0:
            raise ConfigError(f"margin {list(margin)} must not be negative")
        if patch[1] % 16 or patch[2] % 16 or min(patch) < 1:
            raise ConfigError(f"patch {list(patch)}: y and x must be positive multiples of 16 (4 poolings by 2)")
        if min(self.tile) < 1:
            raise ConfigError(f"patch {list(patch)} minus twice the margin {list(margin)} leaves no output tile")

    @property
    def tile(self) -> Triple:
        return tuple(p - 2 * m for p, m in zip(self.patch, self.margin))

    @property
    def overhead(self) -> float:
        """Input voxels computed per output voxel (context cost of the margin)."""
        return math.prod(self.patch) / math.prod(self.tile)

    def tiles(self, shape: Sequence[int]) -> Triple:
        """Tiles per axis that cover an output region of ``shape`` voxels (the last ones may overhang it)."""
        return tuple(-(-int(s) // t) for s, t in zip(shape, self.tile))

    def input_shape(self, shape: Sequence[int]) -> Triple:
        """Raw voxels needed to predict an output region of ``shape`` (whole tiles plus the margin on each side)."""
        return tuple(n * t + 2 * m for n, t, m in zip(self.tiles(shape), self.tile, self.margin))

    def input_roi(self, roi: Roi, voxel_size: Sequence[int]) -> Roi:
        """World-unit version of :meth:`input_shape`: the raw ROI (nm) needed for the output ``roi`` (nm)."""
        voxel_size = Coordinate(voxel_size)
        shape = Coordinate(self.input_shape(roi.shape / voxel_size))
        margin = Coordinate(self.margin) * voxel_size
        return Roi(roi.begin - margin, shape * voxel_size)

    def tile_nm(self, voxel_size: Sequence[int]) -> Coordinate:
        return Coordinate(self.tile) * Coordinate(voxel_size)

    def on_grid(self, begin: Sequence[int], origin: Sequence[int], voxel_size: Sequence[int]) -> bool:
        """Whether ``begin`` (nm) lies on the tile grid anchored at ``origin`` (nm)."""
        step = self.tile_nm(voxel_size)
        return all((b - o) % s == 0 for b, o, s in zip(begin, origin, step))


def required_margin(offsets: Sequence[Sequence[int]], channels: int, prediction_map: str) -> Triple:
    """The smallest margin that keeps the implicit channels ``0..channels-1`` free of the patch-border zeros.

    The explicit map has no such constraint (only the context argument of the module docstring)."""
    if prediction_map == "explicit":
        return (0, 0, 0)
    needed = [0, 0, 0]
    for offset in offsets[:channels]:
        for axis, step in enumerate(offset):
            needed[axis] = max(needed[axis], abs(int(step)))
    # the nearest-neighbour border (|o| = 1) is filled from index 1 by fill_short_range_borders: no margin needed
    return tuple(0 if n <= 1 else n for n in needed)


def to_uint8(affs: torch.Tensor) -> torch.Tensor:
    """:func:`affcons.affinities.affinities_to_uint8` on a tensor (same rounding: clip, x255, half to even)."""
    return torch.round(torch.clamp(affs.float(), 0.0, 1.0) * 255.0).to(torch.uint8)


class Predictor:
    """A loaded CRAC model that predicts affinities of regions on a :class:`PatchGrid`.

    Args:
        networks: :class:`affcons.nets.CRACNetworks`, moved to ``device``, set to eval and (``channels_last``)
            converted in place: give each Predictor its own copy when several share a process.
        grid: patch and margin.
        prediction_map: ``implicit``, ``explicit`` or ``mean``: which map becomes the affinities.
        channels: how many affinity channels to return (the first ``channels`` offsets; 3 or all).
        disagreement: also return ``mean_c<3 |implicit - explicit|`` as uint8.
        dtype: ``uint8`` (0..255, :func:`affcons.affinities.affinities_to_uint8`) or ``float16``.
        device: torch device.
        precision: ``fp32`` or ``bf16`` (autocast); ``auto`` per device and GPU generation
            (:func:`affcons.devices.resolve_precision`).
        batch_size: patches per forward pass.
        raw_scale: raw is divided by this (the training config's ``raw_scale``, 255 for uint8 EM).
        channels_last: run the networks in the ``channels_last_3d`` memory format (may help cuDNN on GPUs).
        fold_batchnorm: run copies of the networks with their BatchNorms folded into the convolutions
            (:meth:`affcons.nets.CRACNetworks.folded`; affinities within ~1e-5 of the unfolded nets; on this project's
            CPU x1.28 for the demo's 8-32 channel nets, x1.04 for the paper-size nets, ``benchmarks/predict.py``).
    """

    def __init__(
        self,
        networks,
        grid: PatchGrid,
        prediction_map: str = "implicit",
        channels: int | None = None,
        disagreement: bool = False,
        dtype: str = "uint8",
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 4,
        raw_scale: float = 255.0,
        channels_last: bool = False,
        fold_batchnorm: bool = True,
    ):
        if prediction_map not in MAPS:
            raise ConfigError(f"map {prediction_map!r} is not one of {MAPS}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not one of {DTYPES}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.networks = networks.to(self.device).eval()
        if fold_batchnorm:
            self.networks = self.networks.folded()
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        if channels_last:
            self.networks = self.networks.to(memory_format=self.memory_format)
        self.grid = grid
        self.map = prediction_map
        total = len(networks.offsets)
        self.channels = total if channels is None else int(channels)
        if not SHORT_RANGE <= self.channels <= total:
            raise ConfigError(f"channels must lie in {SHORT_RANGE}..{total}, got {self.channels}")
        needed = required_margin(networks.offsets, self.channels, prediction_map)
        if any(m < n for m, n in zip(grid.margin, needed)):
            raise ConfigError(
                f"margin {list(grid.margin)} is smaller than {list(needed)}: the implicit affinities of channels "
                f"0-{self.channels - 1} (offsets up to {list(needed)}) would be 0 near every tile border; use a margin "
                f">= {list(needed)}, write only the {SHORT_RANGE} short-range channels, or use the explicit map"
            )
        self.disagreement = disagreement
        self.dtype = dtype
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = int(batch_size)
        self.raw_scale = float(raw_scale)
        needs = set()
        if prediction_map in ("implicit", "mean") or disagreement:
            needs.add("implicit")
        if prediction_map in ("explicit", "mean") or disagreement:
            needs.add("explicit")
        self.outputs = tuple(name for name in ("implicit", "explicit") if name in needs)
        untrained = needs - set(networks.available)
        if untrained:
            wanted = f"map {prediction_map!r}" + (" with the disagreement map" if disagreement else "")
            raise CheckpointError(
                f"{wanted} needs the {' and '.join(sorted(untrained))} output, which is not trained in this model (it "
                f"has {', '.join(networks.available)})"
            )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        use_ema: bool = False,
        patch: Sequence[int] | None = None,
        margin: Sequence[int] | None = None,
        device: str | torch.device = "auto",
        **options,
    ):
        """Load ``checkpoint`` (:func:`affcons.nets.load_model`); ``patch`` defaults to the training crop and
        ``margin`` to :func:`default_margin`. Returns ``(predictor, config)``."""
        from affcons.devices import select_device
        from affcons.nets import load_model

        device = select_device(device) if isinstance(device, str) else device
        networks, config = load_model(checkpoint, use_ema=use_ema, map_location="cpu")
        patch = tuple(patch or config.data.crop)
        channels = options.get("channels") or len(networks.offsets)
        if margin is None:
            margin = default_margin(patch, networks.offsets, channels, options.get("prediction_map", "implicit"))
        grid = PatchGrid(tuple(patch), tuple(margin))
        raw_scale = config.data.train.raw_scale
        return cls(networks, grid, device=device, raw_scale=raw_scale, **options), config

    # -------------------------------------------------------------------------------------------- prediction

    def _autocast(self):
        import contextlib

        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def predict_patches(self, patches: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw patches ``(B, *patch)`` (any numeric dtype) -> central tiles on ``self.device``:
        ``affs`` ``(B, channels, *tile)`` in the output dtype and, with ``disagreement``, ``(B, *tile)`` uint8."""
        tensor = torch.as_tensor(patches)
        if tuple(tensor.shape[1:]) != self.grid.patch:
            raise VolumeError(f"patches must be (B, {', '.join(map(str, self.grid.patch))}), got {tuple(tensor.shape)}")
        tensor = tensor.to(self.device, non_blocking=True)
        raw = (tensor.float() / self.raw_scale)[:, None].contiguous(memory_format=self.memory_format)
        with self._autocast():
            result = self.networks.affinities(raw, outputs=self.outputs)
        crop = (slice(None), slice(None)) + tuple(slice(m, m + t) for m, t in zip(self.grid.margin, self.grid.tile))
        maps = {name: value[crop].float() for name, value in result.items()}
        if self.map == "mean":
            affs = 0.5 * (maps["implicit"] + maps["explicit"])
        else:
            affs = maps[self.map]
        affs = affs[:, : self.channels]
        out = {"affs": to_uint8(affs) if self.dtype == "uint8" else torch.clamp(affs, 0.0, 1.0).to(torch.float16)}
        if self.disagreement:
            difference = (maps["implicit"][:, :SHORT_RANGE] - maps["explicit"][:, :SHORT_RANGE]).abs().mean(dim=1)
            out["disagreement"] = to_uint8(difference)
        return out

    def predict(self, raw: np.ndarray, shape: Sequence[int]) -> dict[str, np.ndarray]:
        """Affinities of an output region of ``shape`` voxels from ``raw`` = the region grown by the margin and
        padded to whole tiles (:meth:`PatchGrid.input_shape`; zeros where it leaves the volume).

        Returns ``{"affs": (channels, *shape)}`` (uint8 or float16) and, with ``disagreement``,
        ``{"disagreement": shape}`` (uint8)."""
        shape = _triple(shape, "shape")
        expected = self.grid.input_shape(shape)
        if raw.ndim != 3 or tuple(raw.shape) != expected:
            raise VolumeError(f"raw for an output of {list(shape)} voxels must be {list(expected)}, got {raw.shape}")
        tiles = self.grid.tiles(shape)
        tile, patch = self.grid.tile, self.grid.patch
        covered = tuple(n * t for n, t in zip(tiles, tile))
        dtype = np.uint8 if self.dtype == "uint8" else np.float16
        affs = np.empty((self.channels, *covered), dtype=dtype)
        disagreement = np.empty(covered, dtype=np.uint8) if self.disagreement else None
        starts = [
            (z * tile[0], y * tile[1], x * tile[2])
            for z in range(tiles[0])
            for y in range(tiles[1])
            for x in range(tiles[2])
        ]
        for first in range(0, len(starts), self.batch_size):
            batch = starts[first : first + self.batch_size]
            patches = np.stack(
                [raw[s[0] : s[0] + patch[0], s[1] : s[1] + patch[1], s[2] : s[2] + patch[2]] for s in batch]
            )
            result = self.predict_patches(patches)
            tiles_affs = result["affs"].cpu().numpy()
            tiles_dis = result["disagreement"].cpu().numpy() if self.disagreement else None
            for index, s in enumerate(batch):
                box = tuple(slice(b, b + t) for b, t in zip(s, tile))
                affs[(slice(None), *box)] = tiles_affs[index]
                if disagreement is not None:
                    disagreement[box] = tiles_dis[index]
        crop = tuple(slice(0, s) for s in shape)
        out = {"affs": affs[(slice(None), *crop)]}
        if disagreement is not None:
            out["disagreement"] = disagreement[crop]
        return out


def default_margin(patch: Sequence[int], offsets, channels: int, prediction_map: str) -> Triple:
    """A margin for ``patch``: at least :func:`required_margin`, about a fifth of the patch in z (>= 1) and a tenth
    in y/x (>= 16), then widened so that the y/x tiles are multiples of 16 (tidy chunk and block sizes)."""
    needed = required_margin(offsets, channels, prediction_map)
    margin = [max(needed[0], 1, int(patch[0]) // 5)]
    for p, n in zip(patch[1:], needed[1:]):
        m = max(n, 16, int(p) // 10)
        tile = (int(p) - 2 * m) // 16 * 16
        margin.append((int(p) - tile) // 2 if tile >= 16 else m)
    return tuple(margin)


def read_raw(array, roi: Roi) -> np.ndarray:
    """Raw of ``roi`` (nm) from a funlib Array, zeros outside the array (``to_ndarray(roi, fill_value=0)``)."""
    return np.asarray(array.to_ndarray(roi, fill_value=0))


def predict_volume(predictor: Predictor, raw_array, roi: Roi | None = None) -> dict[str, np.ndarray]:
    """Whole-region prediction in one call (the reference for blockwise prediction): ``roi`` (nm, default the
    raw's ROI) is one region whose tiles are anchored at ``roi.begin``."""
    roi = raw_array.roi if roi is None else roi
    voxel_size = raw_array.voxel_size
    raw = read_raw(raw_array, predictor.grid.input_roi(roi, voxel_size))
    return predictor.predict(raw, roi.shape / voxel_size)
