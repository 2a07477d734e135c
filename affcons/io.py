"""Volume I/O: open, create, check and copy zarr (v3 and v2) and HDF5 volumes in world units (nm).

A volume path names a dataset inside a container: ``out.zarr/affs`` (zarr, ``/``-separated inside) or
``file.h5:raw`` (HDF5, also ``file.h5/raw``). Every ROI, offset and voxel size here is in nm, ordered (z, y, x);
voxels appear only at the array boundary (shapes, chunk shapes). Arrays are :class:`funlib.persistence.Array`s;
affcons writes zarr v3 only, HDF5 is read-only. Local files only.
"""

import datetime
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import dask.array as da
import h5py
import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from funlib.persistence.arrays.metadata import MetaDataFormat
from numpy.typing import DTypeLike

import affcons
from affcons.codecs import zarr_compressors
from affcons.errors import ConfigError, OutputExistsError, VolumeError
from affcons.volume_paths import HDF5_SUFFIXES, PathLike, VolumePath, split_dataset_path

logger = logging.getLogger(__name__)

#: Attributes holding the voxel size (nm, z y x), in order of precedence.
VOXEL_SIZE_ATTRS = ("voxel_size", "resolution_zyx_nm", "resolution")

#: What :func:`create_volume` writes: a channel axis (if any), then z, y, x in nm.
AXIS_NAMES = ("c^", "z", "y", "x")
AXIS_TYPES = ("channel", "space", "space", "space")
UNITS = ("nm", "nm", "nm")

#: Default spatial chunk shape in voxels (clipped to the volume).
DEFAULT_CHUNK_SHAPE = (64, 64, 64)

#: Upper bound (bytes) on one slab held in memory by :func:`copy_volume`.
SLAB_BYTES = 128 * 2**20

# funlib's default attribute names, fixed here so that a stray funlib_persistence.toml cannot change them.
_METADATA_FORMAT = MetaDataFormat()
_FUNLIB_ATTRS = ("voxel_size", "offset", "axis_names", "units", "types")


class StorageLayout(NamedTuple):
    """How a dataset is stored: ``format`` ("zarr v3", "zarr v2" or "hdf5") and ``chunks`` (voxels, every axis;
    ``None`` for a contiguous HDF5 dataset)."""

    format: str
    chunks: tuple[int, ...] | None


def list_datasets(container: str | os.PathLike) -> list[str]:
    """The arrays inside a zarr container (v3 and v2) or the datasets inside an HDF5 file, sorted."""
    container = Path(container)
    if not container.exists():
        return []
    if container.suffix.lower() in HDF5_SUFFIXES:
        names: list[str] = []
        with h5py.File(container, "r") as file:
            file.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
        return sorted(names)
    names = []
    for directory, subdirectories, _ in os.walk(container):
        if _zarr_node(Path(directory)) in (("array", 3), ("array", 2)):
            names.append(Path(directory).relative_to(container).as_posix())
            subdirectories.clear()
        else:
            subdirectories.sort()
    return sorted("" if name == "." else name for name in names)


def read_voxel_size(path: PathLike) -> Coordinate | None:
    """The voxel size (nm) stored with a zarr or HDF5 dataset, or ``None`` if it has none.

    Reads the first of the attributes ``voxel_size``, ``resolution_zyx_nm``, ``resolution``.
    """
    volume = split_dataset_path(path)
    if volume.is_hdf5:
        with _open_hdf5_file(volume) as file:
            return _stored_voxel_size(_hdf5_dataset(file, volume).attrs, volume)
    return _stored_voxel_size(_open_zarr(volume, "r").attrs.asdict(), volume)


def storage_layout(path: PathLike) -> StorageLayout:
    """The storage format and chunk shape (voxels) of a zarr or HDF5 dataset."""
    volume = split_dataset_path(path)
    if volume.is_hdf5:
        with _open_hdf5_file(volume) as file:
            return StorageLayout("hdf5", _hdf5_dataset(file, volume).chunks)
    data = _open_zarr(volume, "r")
    return StorageLayout(f"zarr v{data.metadata.zarr_format}", tuple(data.chunks))


def open_volume(path: PathLike, mode: Literal["r", "r+"] = "r", voxel_size: Sequence[int] | None = None) -> Array:
    """Open a zarr (v3 or v2) dataset, or an HDF5 dataset read-only, as a world-unit Array.

    Args:
        path: ``out.zarr/name`` or ``file.h5:name``.
        mode: "r" (read) or "r+" (read and write existing data; zarr only).
        voxel_size: nm (z, y, x). Overrides the stored voxel size (attributes ``voxel_size``, ``resolution_zyx_nm``,
            ``resolution``); without either, the voxel size is 1 and a warning is logged.

    The offset is the ``offset`` attribute (nm), else 0. A missing container or dataset is a :class:`VolumeError`
    that lists the datasets in the container.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"open_volume: mode must be 'r' or 'r+', got {mode!r}")
    volume = split_dataset_path(path)
    if volume.is_hdf5:
        if mode != "r":
            raise VolumeError(f"{volume}: HDF5 volumes are read-only; import them to zarr with `affcons import`")
        file = _open_hdf5_file(volume)
        try:
            dataset = _hdf5_dataset(file, volume)
        except VolumeError:
            file.close()
            raise
        attrs, shape = dataset.attrs, dataset.shape
    else:
        dataset = _open_zarr(volume, mode)
        attrs, shape = dataset.attrs.asdict(), dataset.shape
    stored = _stored_voxel_size(attrs, volume)
    offset = _coordinate_attr(attrs, "offset", volume, positive=False)
    if voxel_size is not None:
        voxel_size = Coordinate(voxel_size)
        if stored is not None and stored != voxel_size:
            logger.warning("%s: using voxel size %s nm instead of the stored %s nm", volume, voxel_size, stored)
    elif stored is not None:
        voxel_size = stored
    else:
        logger.warning(
            "%s has no voxel size attribute (%s); assuming 1 nm per voxel", volume, ", ".join(VOXEL_SIZE_ATTRS)
        )
    spatial_dims = [len(c) for c in (voxel_size, offset) if c is not None]
    if len(set(spatial_dims)) > 1 or any(dims > len(shape) for dims in spatial_dims):
        raise VolumeError(f"{volume}: voxel size {voxel_size} and offset {offset} do not fit an array of shape {shape}")
    if volume.is_hdf5:
        types = None
        if voxel_size is not None:
            types = ["channel"] * (len(shape) - len(voxel_size)) + ["space"] * len(voxel_size)
        return Array(da.from_array(dataset, chunks=dataset.chunks or "auto"), offset, voxel_size, types=types)
    return open_ds(
        str(volume.container / volume.dataset),
        mode=mode,
        metadata_format=_METADATA_FORMAT,
        offset=offset,
        voxel_size=voxel_size,
    )


def read_hdf5(path: PathLike) -> tuple[np.ndarray, Coordinate | None]:
    """Read a whole HDF5 dataset (``file.h5:name``) into memory: ``(data, voxel_size in nm or None)``."""
    volume = split_dataset_path(path)
    if not volume.is_hdf5:
        raise VolumeError(f"{volume} is not an HDF5 path (expected file.h5:dataset)")
    with _open_hdf5_file(volume) as file:
        dataset = _hdf5_dataset(file, volume)
        return dataset[()], _stored_voxel_size(dataset.attrs, volume)


def create_volume(
    path: PathLike,
    roi: Roi,
    voxel_size: Sequence[int],
    dtype: DTypeLike,
    num_channels: int | None = None,
    chunk_shape: Sequence[int] | None = None,
    compression: str = "blosc-zstd",
    mode: Literal["w-", "a", "w"] = "w-",
    attrs: dict | None = None,
) -> Array:
    """Create a zarr v3 dataset covering ``roi`` and return it opened for writing ("r+").

    Args:
        path: ``out.zarr/name``; missing parent groups are created.
        roi: nm (z, y, x); offset and shape must be multiples of ``voxel_size``.
        voxel_size: nm (z, y, x).
        dtype: numpy dtype of the voxels.
        num_channels: ``None`` for a (z, y, x) array, else the length of a leading channel axis (c, z, y, x).
        chunk_shape: voxels (z, y, x); channels are never split. Default: 64 per axis, clipped to the volume.
        compression: one of :data:`affcons.codecs.COMPRESSIONS`.
        mode: "w-" refuses an existing dataset (:class:`OutputExistsError`, nothing changes); "a" reuses an existing
            dataset of the same shape, dtype, voxel size, ROI and (if given) chunk shape, and refuses a different one;
            "w" replaces an existing dataset. A new dataset appears at once, complete (created under a temporary
            name and renamed).
        attrs: extra JSON attributes (e.g. ``{"config": ...}``); ``affcons_version`` and ``created`` (UTC, ISO 8601)
            are added unless given. With mode "a" an existing dataset's attributes are updated with ``attrs``.

    Metadata follows funlib.persistence 0.7: ``voxel_size``, ``offset`` (nm), ``axis_names`` (``c^``, ``z``, ``y``,
    ``x``), ``units`` (nm) and ``types`` (``channel``/``space``, which is what 0.7 reads to find channel axes).
    """
    volume = split_dataset_path(path)
    voxel_size = Coordinate(voxel_size)
    dtype = np.dtype(dtype)
    if volume.is_hdf5 or not volume.dataset:
        raise VolumeError(f"{volume}: can only create a dataset inside a zarr container (out.zarr/name)")
    if mode not in ("w-", "a", "w"):
        raise ValueError(f"create_volume: mode must be 'w-', 'a' or 'w', got {mode!r}")
    if attrs is not None and set(attrs) & set(_FUNLIB_ATTRS):
        raise ConfigError(f"{volume}: attrs may not set {sorted(set(attrs) & set(_FUNLIB_ATTRS))} (written from roi)")
    shape_voxels = _roi_shape_voxels(volume, roi, voxel_size)
    requested_chunks = chunk_shape
    if chunk_shape is None:
        chunk_shape = tuple(min(c, s) for c, s in zip(DEFAULT_CHUNK_SHAPE, shape_voxels))
    chunk_shape = tuple(int(c) for c in chunk_shape)
    if len(chunk_shape) != 3 or min(chunk_shape) < 1:
        raise ConfigError(f"{volume}: chunk shape must be 3 positive voxel counts (z, y, x), got {chunk_shape}")
    if num_channels is not None and num_channels < 1:
        raise ConfigError(f"{volume}: num_channels must be None or positive, got {num_channels}")
    compressors = zarr_compressors(compression)
    channel_shape = () if num_channels is None else (num_channels,)
    shape, chunks = channel_shape + shape_voxels, channel_shape + chunk_shape

    dataset_dir = volume.container / volume.dataset
    _check_parents(volume)
    existing = _zarr_node(dataset_dir)
    if existing is not None and existing[0] != "array":
        raise VolumeError(f"{volume} exists and is a zarr group, not an array; refusing to replace it")
    if existing is not None and mode == "w-":
        raise OutputExistsError(f"{volume} exists (mode 'w-'); refusing to overwrite it")
    if existing is not None and mode == "a":
        array = open_volume(volume, "r+")
        differences = [
            f"{what} {got} != requested {wanted}"
            for what, got, wanted in (
                ("shape", tuple(array.shape), shape),
                ("dtype", array.dtype, dtype),
                ("voxel size", array.voxel_size, voxel_size),
                ("ROI", array.roi, roi),
                ("chunk shape", tuple(array.chunk_shape), None if requested_chunks is None else chunks),
            )
            if wanted is not None and got != wanted
        ]
        if differences:
            raise OutputExistsError(f"{volume} exists and differs: {'; '.join(differences)}")
        if attrs:
            array.attrs.update(attrs)
        return array

    types = AXIS_TYPES[1:] if num_channels is None else AXIS_TYPES
    axis_names = AXIS_NAMES[1:] if num_channels is None else AXIS_NAMES
    attributes = {
        "voxel_size": list(voxel_size),
        "offset": list(roi.offset),
        "axis_names": list(axis_names),
        "units": list(UNITS),
        "types": list(types),
        "affcons_version": affcons.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **(attrs or {}),
    }
    create_array_atomically(
        volume, shape, chunks, dtype, compressors, attributes, list(axis_names), replace=existing is not None
    )
    return open_volume(volume, "r+")


def create_array_atomically(
    path: PathLike, shape, chunks, dtype, compressors, attributes: dict, dimension_names, replace: bool = False
) -> None:
    """Create the zarr v3 array ``c.zarr/name`` under a hidden temporary name and rename it into place: a crash
    leaves the old state or the complete new array, never a half-written one (the existence of an output marks it
    created). ``replace`` removes an existing array at ``path`` first."""
    volume = split_dataset_path(path)
    parent, _, leaf = volume.dataset.rpartition("/")
    temporary = "/".join(filter(None, [parent, f".{leaf}.{os.getpid()}.tmp"]))
    shutil.rmtree(volume.container / temporary, ignore_errors=True)
    zarr.create_array(
        store=str(volume.container),
        name=temporary,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        compressors=compressors,
        attributes=attributes,
        dimension_names=list(dimension_names),
        zarr_format=3,
    )
    if replace:
        shutil.rmtree(volume.container / volume.dataset)
    os.rename(volume.container / temporary, volume.container / volume.dataset)


def check_volume(
    array: Array,
    *,
    ndim: int | None = None,
    num_channels: int | None = None,
    dtypes: Iterable[DTypeLike] | DTypeLike | None = None,
    voxel_size: Sequence[int] | None = None,
    name: str,
) -> None:
    """Raise a :class:`VolumeError` naming ``name`` and every mismatch, expected vs got.

    Args:
        ndim: number of axes, channel axes included (3 for (z, y, x), 4 for (c, z, y, x)).
        num_channels: required length of the single channel axis.
        dtypes: the allowed dtype or dtypes.
        voxel_size: required voxel size, nm (z, y, x).
    """
    problems = []
    if ndim is not None and len(array.shape) != ndim:
        problems.append(f"expected {ndim} axes, got {len(array.shape)}")
    if num_channels is not None:
        channel_lengths = [size for size, kind in zip(array.shape, array.types) if kind not in ("space", "time")]
        if channel_lengths != [num_channels]:
            got = f"channel axes of lengths {channel_lengths}" if channel_lengths else "no channel axis"
            problems.append(f"expected one channel axis of length {num_channels}, got {got}")
    if dtypes is not None:
        allowed = [np.dtype(d) for d in ([dtypes] if isinstance(dtypes, (str, type, np.dtype)) else dtypes)]
        if np.dtype(array.dtype) not in allowed:
            problems.append(f"expected dtype {' or '.join(str(d) for d in allowed)}, got {array.dtype}")
    if voxel_size is not None and Coordinate(voxel_size) != array.voxel_size:
        problems.append(f"expected voxel size {Coordinate(voxel_size)} nm, got {array.voxel_size} nm")
    if problems:
        raise VolumeError(
            f"{name}: {'; '.join(problems)} (shape {tuple(array.shape)}, axes {', '.join(array.axis_names)}, "
            f"dtype {array.dtype}, voxel size {array.voxel_size} nm)"
        )


def copy_volume(source: Array, target: Array, *, max_slab_bytes: int = SLAB_BYTES) -> int:
    """Copy ``source`` into ``target`` slab by slab along z; return the number of slabs.

    Both must have the same shape and voxel size; their offsets may differ (source ``roi.offset`` lands on target
    ``roi.offset``). Slabs are whole multiples of the target's z chunk size (so no chunk is written twice) holding
    at most ``max_slab_bytes`` where a single chunk row allows.
    """
    if tuple(source.shape) != tuple(target.shape) or source.voxel_size != target.voxel_size:
        raise VolumeError(
            f"cannot copy shape {tuple(source.shape)} at {source.voxel_size} nm into shape "
            f"{tuple(target.shape)} at {target.voxel_size} nm"
        )
    z_axis = next(axis for axis, kind in enumerate(target.types) if kind in ("space", "time"))
    z_chunk = target.chunk_shape[z_axis]
    plane_bytes = int(np.prod(target.shape[:z_axis] + target.shape[z_axis + 1 :])) * np.dtype(source.dtype).itemsize
    slab_voxels = z_chunk * max(1, max_slab_bytes // max(1, z_chunk * plane_bytes))
    slab_nm = slab_voxels * target.voxel_size[0]
    shift = source.roi.offset - target.roi.offset
    begin, end = target.roi.begin, target.roi.end
    slabs = 0
    for z in range(begin[0], end[0], slab_nm):
        slab = Roi((z,) + tuple(begin[1:]), (min(slab_nm, end[0] - z),) + tuple(target.roi.shape[1:]))
        target[slab] = source[slab.shift(shift)]
        slabs += 1
    return slabs


def _zarr_node(directory: Path) -> tuple[str, int] | None:
    """``(node_type, zarr_format)`` of a zarr node stored in ``directory``, or ``None`` if there is none."""
    metadata = directory / "zarr.json"
    if metadata.is_file():
        try:
            return json.loads(metadata.read_text())["node_type"], 3
        except (ValueError, KeyError) as error:
            raise VolumeError(f"{metadata}: not valid zarr v3 metadata ({error})") from None
    if (directory / ".zarray").is_file():
        return "array", 2
    if (directory / ".zgroup").is_file():
        return "group", 2
    return None


def _missing(volume: VolumePath, problem: str) -> VolumeError:
    """A VolumeError for ``volume`` that lists the datasets its container does hold."""
    names = list_datasets(volume.container)
    shown = ", ".join(name or "(root)" for name in names[:20])
    if len(names) > 20:
        shown += f", ... ({len(names)} in all)"
    return VolumeError(f"{volume}: {problem}; datasets in {volume.container}: {shown or 'none'}")


def _open_zarr(volume: VolumePath, mode: str) -> zarr.Array:
    if not volume.container.exists():
        raise VolumeError(f"{volume}: container {volume.container} does not exist")
    node = _zarr_node(volume.container / volume.dataset)
    if node is None:
        raise _missing(volume, f"no dataset {volume.dataset!r}")
    if node[0] != "array":
        raise _missing(volume, f"{volume.dataset or 'the root'} is a group, not an array")
    return zarr.open_array(str(volume.container / volume.dataset), mode=mode)


def _open_hdf5_file(volume: VolumePath) -> h5py.File:
    if not volume.container.is_file():
        raise VolumeError(f"{volume}: file {volume.container} does not exist")
    try:
        return h5py.File(volume.container, "r")
    except OSError as error:
        raise VolumeError(f"{volume}: cannot open {volume.container} as HDF5 ({error})") from None


def _hdf5_dataset(file: h5py.File, volume: VolumePath) -> h5py.Dataset:
    if not volume.dataset:
        raise _missing(volume, "no dataset given (use file.h5:dataset)")
    node = file.get(volume.dataset)
    if not isinstance(node, h5py.Dataset):
        raise _missing(volume, f"no dataset {volume.dataset!r}" if node is None else f"{volume.dataset} is a group")
    return node


def _coordinate_attr(attrs, key: str, volume: VolumePath, positive: bool) -> Coordinate | None:
    """Attribute ``key`` as an integer Coordinate (nm), ``None`` if absent; non-integers are a VolumeError."""
    if key not in attrs:
        return None
    values = np.asarray(attrs[key])
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number) or not np.all(values == np.round(values)):
        raise VolumeError(f"{volume}: attribute {key}={attrs[key]!r} is not a list of whole numbers of nm")
    if positive and not np.all(values > 0):
        raise VolumeError(f"{volume}: attribute {key}={attrs[key]!r} must be positive")
    return Coordinate(tuple(int(v) for v in values))


def _stored_voxel_size(attrs, volume: VolumePath) -> Coordinate | None:
    for key in VOXEL_SIZE_ATTRS:
        if key in attrs:
            return _coordinate_attr(attrs, key, volume, positive=True)
    return None


def _roi_shape_voxels(volume: VolumePath, roi: Roi, voxel_size: Coordinate) -> tuple[int, ...]:
    """The ROI's shape in voxels, after checking that it is 3-D, non-empty and aligned to the voxel size."""
    if roi.dims != 3 or voxel_size.dims != 3 or min(voxel_size) < 1:
        raise VolumeError(f"{volume}: need a 3-D ROI and positive 3-D voxel size, got {roi} and {voxel_size}")
    if roi.empty:
        raise VolumeError(f"{volume}: ROI {roi} is empty")
    for what, value in (("offset", roi.offset), ("shape", roi.shape)):
        if value % voxel_size != Coordinate((0, 0, 0)):
            raise VolumeError(f"{volume}: ROI {what} {value} nm is not a multiple of the voxel size {voxel_size} nm")
    return tuple(roi.shape / voxel_size)


def _check_parents(volume: VolumePath) -> None:
    """Refuse to create ``volume`` below a zarr v2 group or inside an array."""
    parts = volume.dataset.split("/")[:-1]
    for depth in range(len(parts) + 1):
        parent = volume.container.joinpath(*parts[:depth])
        node = _zarr_node(parent)
        if node == ("group", 2):
            raise VolumeError(f"{volume}: {parent} is a zarr v2 group; affcons writes zarr v3, use another container")
        if node is not None and node[0] == "array":
            raise VolumeError(f"{volume}: {parent} is an array, it cannot hold datasets")
