"""Block I/O in the workers: read and write boxes given in nm, straight through zarr (or h5py), without dask.

The driver opens and checks volumes with :mod:`affcons.io` (funlib.persistence) and records offset and voxel size;
workers only need those two numbers, so they skip funlib's import cost (~2 s per worker process) and dask's per-call
overhead. A :class:`Box` is picklable (a path and two coordinates) and opens its array lazily in the process that
uses it.

A read-only zarr Box can keep the chunks it decoded (:class:`ChunkCache`, ``cache_bytes``): a block read with
context decodes every chunk its grown ROI touches (with 64^3 chunks, 128^3 blocks and 8 voxels of context, 64
chunks for 8 chunks of its own), and the neighbouring blocks a worker processes next read many of the same chunks.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from funlib.geometry import Coordinate, Roi

from affcons.errors import VolumeError


@dataclass
class Box:
    """A dataset with a world-unit frame: ``container`` (``.zarr`` directory or HDF5 file) and ``dataset`` inside
    it, ``offset`` and ``voxel_size`` (nm, z y x). Arrays may have leading channel axes. Build one with
    :func:`box_for`."""

    container: str
    dataset: str
    offset: tuple
    voxel_size: tuple
    writable: bool = False
    #: The data claims to be complete: reading a chunk that does not exist is an error (zarr would return fill value).
    require_chunks: bool = False
    #: Read-only zarr: keep up to this many bytes of decoded chunks in the process (0: none).
    cache_bytes: int = 0
    _array: object = field(default=None, repr=False, compare=False)
    _file: object = field(default=None, repr=False, compare=False)
    _cache: object = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        state["_file"] = None
        state["_cache"] = None
        return state

    @property
    def array(self):
        if self._array is None:
            if self.is_hdf5:
                import h5py

                self._file = h5py.File(self.container, "r")
                self._array = self._file[self.dataset]
            else:
                self._array = open_zarr(f"{self.container}/{self.dataset}", self.writable)
        return self._array

    @property
    def is_hdf5(self) -> bool:
        return not self.container.endswith(".zarr")

    @property
    def path(self) -> str:
        return f"{self.container}{':' if self.is_hdf5 else '/'}{self.dataset}"

    def slices(self, roi: Roi) -> tuple[slice, ...]:
        """Voxel slices of the spatial axes for ``roi`` (nm), which must lie inside the array and on the grid."""
        voxel_size = Coordinate(self.voxel_size)
        begin = (roi.begin - Coordinate(self.offset)) / voxel_size
        shape = roi.shape / voxel_size
        spatial = self.array.shape[-3:]
        if (roi.begin - Coordinate(self.offset)) % voxel_size != Coordinate((0, 0, 0)) or any(
            b < 0 or b + s > n for b, s, n in zip(begin, shape, spatial)
        ):
            raise VolumeError(f"{self.path}: ROI {roi} lies outside the array (offset {self.offset}, shape {spatial})")
        return tuple(slice(b, b + s) for b, s in zip(begin, shape))

    def index(self, roi: Roi, channels: slice | None = None) -> tuple[slice, ...]:
        """The index of ``roi`` (nm) into the whole array: every leading (channel) axis in full, or ``channels`` on
        the first one, then the spatial slices."""
        leading = (slice(None),) * (len(self.array.shape) - 3)
        if channels is not None:
            if not leading:
                raise VolumeError(f"{self.path}: channels {channels} requested from an array without a channel axis")
            leading = (channels,) + leading[1:]
        return leading + self.slices(roi)

    def read(self, roi: Roi, channels: slice | None = None) -> np.ndarray:
        """The data in ``roi``: (z, y, x), or (c, z, y, x) for an array with a channel axis (all channels, or
        those ``channels`` selects). With :attr:`require_chunks`, a missing chunk is a VolumeError naming it."""
        index = self.index(roi, channels)
        if self.require_chunks:
            missing = self.missing_chunks(index)
            if missing:
                raise VolumeError(
                    f"{self.path}: {len(missing)} chunk(s) of ROI {roi} (nm) are missing although the array is marked "
                    f"complete, e.g. {missing[0]}; the data there is lost: re-create it (re-run the step that wrote "
                    "it, after removing its done markers) or restore the file"
                )
        if self.cache_bytes and not self.writable and not self.is_hdf5:
            if self._cache is None:
                self._cache = ChunkCache(self.array, self.cache_bytes)
            return self._cache.read(index)
        return np.asarray(self.array[index])

    def missing_chunks(self, index: tuple[slice, ...]) -> list[str]:
        """Chunk files of a local zarr array that ``index`` touches and that do not exist (others: nothing known)."""
        import itertools
        from pathlib import Path

        array = self.array
        root = getattr(array.store, "root", None)
        if self.is_hdf5 or root is None:
            return []
        ranges = []
        for part, chunk, size in zip(index, array.chunks, array.shape):
            start, stop, _ = part.indices(size)
            ranges.append(range(start // chunk, (stop - 1) // chunk + 1) if stop > start else range(0))
        directory = Path(root) / array.path
        keys = (array.metadata.encode_chunk_key(coords) for coords in itertools.product(*ranges))
        return [str(directory / key) for key in keys if not (directory / key).is_file()]

    def write(self, roi: Roi, data: np.ndarray) -> None:
        """Write ``data`` to ``roi`` (nm): (z, y, x), or (c, z, y, x) with every channel for an array with a channel
        axis. The shape must match exactly (zarr would broadcast a smaller array silently)."""
        index = self.index(roi)
        expected = tuple(self.array.shape[: len(index) - 3]) + tuple(s.stop - s.start for s in index[-3:])
        if tuple(np.shape(data)) != expected:
            raise VolumeError(f"{self.path}: data of shape {tuple(np.shape(data))} for ROI {roi} of shape {expected}")
        self.array[index] = data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._array = None
        self._cache = None


def open_zarr(path: str, writable: bool = False):
    """The zarr array at ``path``, read-only or writable. A writable one stores every written chunk, also one equal to
    the fill value: zarr then skips comparing each chunk with it (over half of a chunk write's CPU), and a missing
    chunk always means an unwritten one. (zarr 3.1's ``open_array`` ignores a ``config=`` argument for an existing
    array: hence ``with_config``.)"""
    import zarr

    array = zarr.open_array(path, mode="r+" if writable else "r")
    return array.with_config({"write_empty_chunks": True}) if writable else array


class ChunkCache:
    """Decoded chunks of one read-only zarr array, the least recently used dropped first beyond ``capacity`` bytes.

    A read assembles its box from whole chunks; the chunks it lacks are decoded in one zarr call over their bounding
    box (a neighbour's context usually leaves a box of missing chunks). Returns exactly what ``array[index]``
    returns."""

    def __init__(self, array, capacity: int):
        self.array = array
        self.capacity = int(capacity)
        self.chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.bytes = 0
        self.decoded = 0  # chunks decoded so far (for tests and measurements)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        import itertools

        chunk_shape, shape = self.array.chunks, self.array.shape
        bounds = [part.indices(size)[:2] for part, size in zip(index, shape)]
        ranges = [range(start // c, (stop - 1) // c + 1) for (start, stop), c in zip(bounds, chunk_shape)]
        keys = list(itertools.product(*ranges))
        missing = [key for key in keys if key not in self.chunks]
        if missing:
            self._decode(missing, chunk_shape, shape)
        out = np.empty(tuple(max(stop - start, 0) for start, stop in bounds), self.array.dtype)
        for key in keys:
            chunk = self.chunks[key]
            self.chunks.move_to_end(key)
            source, target = [], []
            for k, c, (start, stop) in zip(key, chunk_shape, bounds):
                low, high = max(start, k * c), min(stop, (k + 1) * c)
                source.append(slice(low - k * c, high - k * c))
                target.append(slice(low - start, high - start))
            out[tuple(target)] = chunk[tuple(source)]
        self._evict()
        return out

    def _decode(self, missing, chunk_shape, shape) -> None:
        import itertools

        low = [min(key[d] for key in missing) for d in range(len(shape))]
        high = [max(key[d] for key in missing) + 1 for d in range(len(shape))]
        box = tuple(slice(lo * c, min(hi * c, n)) for lo, hi, c, n in zip(low, high, chunk_shape, shape))
        data = np.asarray(self.array[box])
        for key in itertools.product(*(range(lo, hi) for lo, hi in zip(low, high))):
            part = tuple(slice((k - lo) * c, (k - lo + 1) * c) for k, lo, c in zip(key, low, chunk_shape))
            if key in self.chunks:
                self.chunks.move_to_end(key)
                continue
            self.chunks[key] = chunk = data[part].copy()
            self.bytes += chunk.nbytes
            self.decoded += 1

    def _evict(self) -> None:
        while self.bytes > self.capacity and len(self.chunks) > 1:
            _, chunk = self.chunks.popitem(last=False)
            self.bytes -= chunk.nbytes


def box_for(path: str, offset, voxel_size, writable: bool = False) -> Box:
    """A :class:`Box` for ``c.zarr/name`` or ``f.h5:name`` (split by :mod:`affcons.volume_paths`, which a cluster
    worker rebuilding its step imports without funlib)."""
    from affcons.errors import ConfigError
    from affcons.volume_paths import split_dataset_path

    if offset is None or voxel_size is None:
        raise ConfigError(f"{path}: offset and voxel size must be resolved (affcons segment does this) before use")
    volume = split_dataset_path(path)
    return Box(str(volume.container), volume.dataset, tuple(offset), tuple(voxel_size), writable)
