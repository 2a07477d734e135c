"""Multiscale volumes: per-block downsampling and OME-Zarr 0.5 ``multiscales`` metadata.

A multiscale volume is a zarr v3 group whose arrays ``s0, s1, ...`` hold the volume at decreasing resolution; level
``k`` is level 0 downsampled by an integer factor per spatial axis (z, y, x), leading channel axes untouched. The
group's ``ome`` attribute (OME-NGFF 0.5, the version for zarr v3) describes the levels, which neuroglancer
(``zarr3://`` sources) and napari (OME-Zarr readers) use to show coarse levels when zoomed out.

Coordinates: affcons offsets are the *corner* of voxel 0 (funlib.persistence, nm); OME-NGFF places a voxel at its
*centre*. Level ``k`` with voxel size ``v * f`` (nm) therefore gets the translation ``offset + v * f / 2``: its voxel
``j`` covers exactly the level-0 voxels ``j * f ... (j + 1) * f - 1``, in every viewer.

Every function here is pure and works on one block in memory, so a blockwise step can compute level ``k + 1``
from level ``k`` block by block: with write blocks whose shapes are multiples of the factor, the blockwise result
equals the whole-volume result (a window cut by the volume's upper edge uses the voxels it has).
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from affcons.errors import VolumeError

DownsampleMode = Literal["mean", "mode"]
DOWNSAMPLE_MODES = ("mean", "mode")
OME_VERSION = "0.5"
SPATIAL_AXES = ("z", "y", "x")
# bound on the (windows x window x window) comparison table of mode downsampling, in elements
_MODE_TABLE_ELEMENTS = 1 << 24


def downsample_block(data: np.ndarray, factor: Sequence[int], mode: DownsampleMode) -> np.ndarray:
    """Downsample the trailing ``len(factor)`` axes of ``data`` by ``factor``; leading (channel) axes are kept.

    Args:
        data: ``(..., z, y, x)`` block, any numeric dtype.
        factor: integer factor per spatial axis, e.g. ``(1, 2, 2)``.
        mode: ``"mean"`` for intensities and affinities: the window mean, rounded to the nearest integer for
            integer dtypes. ``"mode"`` for ids (fragments, segmentations): the most frequent value of the window,
            ties going to the value met first in C order (so windows of all-different ids give ``data[::f]``, a
            strided pick). Mode never invents an id, keeps thin objects a mean or interpolation would erase, and
            is the same at every block, unlike any id arithmetic.

    Returns:
        ``(..., ceil(z / fz), ceil(y / fy), ceil(x / fx))`` in ``data``'s dtype. A window cut by the upper edge of
        ``data`` uses the voxels it has.
    """
    factor = tuple(int(f) for f in factor)
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f"downsample mode must be one of {DOWNSAMPLE_MODES}, got {mode!r}")
    if not factor or min(factor) < 1 or len(factor) > data.ndim:
        raise ValueError(f"factor {factor} must hold 1 to {data.ndim} positive integers (one per spatial axis)")
    lead, spatial = data.shape[: data.ndim - len(factor)], data.shape[data.ndim - len(factor) :]
    out_spatial = tuple(math.ceil(s / f) for s, f in zip(spatial, factor))
    padding = [(0, 0)] * len(lead) + [(0, o * f - s) for o, f, s in zip(out_spatial, factor, spatial)]
    ragged = any(after for _, after in padding)
    windows = _windows(np.pad(data, padding) if ragged else data, lead, out_spatial, factor)
    valid = None
    if ragged:
        mask = np.pad(np.ones(spatial, dtype=bool), padding[len(lead) :])
        valid = _windows(mask, (), out_spatial, factor)
    if mode == "mean":
        return _window_mean(windows, valid, data.dtype)
    return _window_mode(windows, valid)


def _windows(data: np.ndarray, lead: tuple, out_spatial: tuple, factor: tuple) -> np.ndarray:
    """View ``data`` (spatial shape a multiple of ``factor``) as ``lead + out_spatial + (window size,)``."""
    split = lead + tuple(n for pair in zip(out_spatial, factor) for n in pair)
    blocked = data.reshape(split)
    spatial_dims = len(out_spatial)
    order = (
        list(range(len(lead)))
        + [len(lead) + 2 * i for i in range(spatial_dims)]
        + [len(lead) + 2 * i + 1 for i in range(spatial_dims)]
    )
    return blocked.transpose(order).reshape(lead + out_spatial + (-1,))


def _window_mean(windows: np.ndarray, valid: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    exact_in_float32 = (dtype.kind in "iub" and dtype.itemsize <= 2) or dtype in (np.float16, np.float32)
    accumulator = np.float32 if exact_in_float32 else np.float64
    if valid is None:
        mean = windows.mean(axis=-1, dtype=accumulator)
    else:
        total = np.where(valid, windows, 0).sum(axis=-1, dtype=accumulator)
        mean = total / valid.sum(axis=-1).astype(accumulator)
    if dtype.kind in "iub":
        mean = np.rint(mean)
    return mean.astype(dtype)


def _window_mode(windows: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    out_shape = windows.shape[:-1]
    size = windows.shape[-1]
    flat = windows.reshape(-1, size)
    flat_valid = None if valid is None else np.broadcast_to(valid, windows.shape).reshape(-1, size)
    result = np.empty(flat.shape[0], dtype=windows.dtype)
    rows = max(1, _MODE_TABLE_ELEMENTS // (size * size))
    for start in range(0, flat.shape[0], rows):
        part = flat[start : start + rows]
        equal = part[:, :, None] == part[:, None, :]
        if flat_valid is not None:
            part_valid = flat_valid[start : start + rows]
            equal &= part_valid[:, None, :] & part_valid[:, :, None]
        counts = equal.sum(axis=2, dtype=np.int32)
        result[start : start + rows] = part[np.arange(part.shape[0]), counts.argmax(axis=1)]
    return result.reshape(out_shape)


def pyramid_factors(voxel_size: Sequence[int], shape: Sequence[int], max_extent: int = 256) -> list[tuple[int, ...]]:
    """Per-level factors (relative to the previous level) until no spatial extent exceeds ``max_extent`` voxels.

    Each level halves the axes whose voxel size is at most half the largest one (EM sections: 50 x 4 x 4 nm becomes
    50 x 8 x 8, 50 x 16 x 16, 50 x 32 x 32), and all axes once the voxels are within a factor 2 of isotropic; an
    axis already 1 voxel thick is not halved.

    Args:
        voxel_size: nm (z, y, x) of level 0.
        shape: voxels (z, y, x) of level 0.
        max_extent: stop once every axis of the coarsest level has at most this many voxels.
    """
    if len(voxel_size) != len(shape) or min(voxel_size) <= 0 or min(shape) <= 0 or max_extent < 1:
        raise ValueError(f"need positive voxel size and shape of equal length, got {voxel_size} and {shape}")
    size, extent = list(voxel_size), list(shape)
    factors = []
    while max(extent) > max_extent:
        thick = [e > 1 for e in extent]
        largest = max(s for s, t in zip(size, thick) if t)
        fine = [t and 2 * s <= largest for s, t in zip(size, thick)]
        halve = fine if any(fine) else thick
        factor = tuple(2 if h else 1 for h in halve)
        factors.append(factor)
        size = [s * f for s, f in zip(size, factor)]
        extent = [math.ceil(e / f) for e, f in zip(extent, factor)]
    return factors


@dataclass(frozen=True)
class Level:
    """One level of a multiscale group: its array path (relative to the group), voxel size and corner offset (nm)."""

    path: str
    voxel_size: tuple[float, ...]
    offset: tuple[float, ...]


@dataclass(frozen=True)
class Multiscales:
    """The multiscales metadata of a group: axis names (channel axes first), their types, and the levels."""

    name: str
    axis_names: tuple[str, ...]
    axis_types: tuple[str, ...]
    levels: tuple[Level, ...]

    @property
    def channel_axes(self) -> int:
        return sum(t == "channel" for t in self.axis_types)


def write_multiscales_metadata(
    group_path: str | Path,
    levels: Sequence[tuple[str, Sequence[int]]],
    voxel_size: Sequence[int],
    offset: Sequence[int],
    *,
    channel_axes: int = 0,
    method: DownsampleMode = "mean",
    name: str | None = None,
) -> dict:
    """Write OME-NGFF 0.5 ``multiscales`` metadata into the zarr v3 group ``group_path`` (created if missing).

    Args:
        group_path: the group that holds (or will hold) the level arrays.
        levels: ``(array path relative to the group, factor (z, y, x) relative to level 0)`` per level, finest
            first, e.g. ``[("s0", (1, 1, 1)), ("s1", (1, 2, 2))]``.
        voxel_size: nm (z, y, x) of level 0.
        offset: nm (z, y, x), the corner of voxel 0 (as funlib.persistence and affcons store it).
        channel_axes: number of leading channel axes of the arrays (1 for affinities ``(c, z, y, x)``).
        method: how the levels were computed (``mean`` or ``mode``), recorded as the multiscale's ``type``.
        name: the multiscale's name (default: the group's directory name).

    Returns:
        The ``ome`` attribute written.
    """
    group_path = Path(group_path)
    if not levels:
        raise ValueError("write_multiscales_metadata needs at least one level")
    if len(voxel_size) != 3 or len(offset) != 3:
        raise ValueError(f"voxel size and offset are (z, y, x) nm, got {voxel_size} and {offset}")
    channel_names = ["c"] if channel_axes == 1 else [f"c{i}" for i in range(channel_axes)]
    axes = [{"name": channel, "type": "channel"} for channel in channel_names]
    axes += [{"name": axis, "type": "space", "unit": "nanometer"} for axis in SPATIAL_AXES]
    datasets = []
    for path, factor in levels:
        factor = tuple(int(f) for f in factor)
        if len(factor) != 3 or min(factor) < 1:
            raise ValueError(f"level {path!r}: factor must be 3 positive integers (z, y, x), got {factor}")
        level_size = [v * f for v, f in zip(voxel_size, factor)]
        centre = [o + s / 2 for o, s in zip(offset, level_size)]
        datasets.append(
            {
                "path": path,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0] * channel_axes + [float(s) for s in level_size]},
                    {"type": "translation", "translation": [0.0] * channel_axes + [float(c) for c in centre]},
                ],
            }
        )
    multiscale = {"name": name or group_path.name, "axes": axes, "datasets": datasets, "type": method}
    ome = {"version": OME_VERSION, "multiscales": [multiscale]}
    try:
        group = zarr.open_group(str(group_path), mode="a", zarr_format=3)
    except (zarr.errors.ContainsArrayError, zarr.errors.GroupNotFoundError, ValueError) as error:
        raise VolumeError(f"{group_path}: cannot hold a multiscale group ({error})") from None
    group.attrs["ome"] = ome
    return ome


def read_multiscales(group_path: str | Path) -> Multiscales | None:
    """The first ``multiscales`` entry of an OME-Zarr 0.5 group (0.4-style top-level key accepted), else ``None``.

    Levels get affcons' corner offsets back (translation minus half a voxel); a malformed entry is a VolumeError.
    """
    metadata_file = Path(group_path) / "zarr.json"
    if not metadata_file.is_file():
        return None
    node = json.loads(metadata_file.read_text())
    if node.get("node_type") != "group":
        return None
    attributes = node.get("attributes", {})
    multiscales = attributes.get("ome", attributes).get("multiscales")
    if not multiscales:
        return None
    try:
        entry = multiscales[0]
        axes = entry["axes"]
        levels = []
        for dataset in entry["datasets"]:
            scale, translation = [1.0] * len(axes), [0.0] * len(axes)
            for transform in dataset.get("coordinateTransformations", []):
                if transform["type"] == "scale":
                    scale = [float(s) for s in transform["scale"]]
                elif transform["type"] == "translation":
                    translation = [float(t) for t in transform["translation"]]
            spatial = [i for i, axis in enumerate(axes) if axis.get("type") != "channel"]
            voxel_size = tuple(scale[i] for i in spatial)
            offset = tuple(translation[i] - scale[i] / 2 for i in spatial)
            levels.append(Level(dataset["path"], voxel_size, offset))
        return Multiscales(
            name=entry.get("name", Path(group_path).name),
            axis_names=tuple(axis["name"] for axis in axes),
            axis_types=tuple(axis.get("type", "space") for axis in axes),
            levels=tuple(levels),
        )
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise VolumeError(f"{metadata_file}: malformed OME multiscales metadata ({error!r})") from None
