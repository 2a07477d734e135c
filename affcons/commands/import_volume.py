"""``affcons import SRC DEST``: convert an HDF5, TIFF or zarr (v2/v3) volume into a chunked, compressed zarr v3.

SRC is ``file.h5:dataset``, a multi-page ``.tif``/``.tiff`` file, a directory of single-page TIFF files (one z
section each, in natural name order: ``s2`` before ``s10``), or ``in.zarr/dataset``. DEST is ``out.zarr/name``.
The voxel size comes from ``--voxel-size`` or the source's attributes; the copy runs in z slabs of bounded size.
Everything is checked before DEST is touched.
"""

import argparse
import contextlib
import re
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from affcons.commands.arguments import positive_int
from affcons.errors import ConfigError, OutputExistsError, VolumeError
from affcons.io import copy_volume, create_volume, open_volume, read_voxel_size, split_dataset_path

TIFF_SUFFIXES = (".tif", ".tiff")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SRC", help="file.h5:dataset, a TIFF stack (file or directory) or in.zarr/name"
    )
    parser.add_argument("destination", metavar="DEST", help="out.zarr/name (zarr v3)")
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=positive_int,
        metavar=("Z", "Y", "X"),
        help="voxel size in nm (default: from the source's attributes; required for TIFF)",
    )
    parser.add_argument(
        "--offset",
        nargs=3,
        type=int,
        metavar=("Z", "Y", "X"),
        help="offset in nm, a multiple of the voxel size (default: the source's, else 0)",
    )
    parser.add_argument(
        "--chunks",
        nargs=3,
        type=positive_int,
        metavar=("Z", "Y", "X"),
        help="chunk shape in voxels (default: 64 per axis, clipped to the volume)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")


def run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    destination = split_dataset_path(args.destination)
    source_path = Path(args.source)
    with contextlib.ExitStack() as cleanup:
        if source_path.suffix.lower() in TIFF_SUFFIXES or (source_path.is_dir() and not _is_container(args.source)):
            tiff = cleanup.enter_context(TiffStack(source_path))
            voxel_size = _voxel_size(args, None)
            array = Array(tiff.to_dask(), voxel_size=voxel_size, types=["space"] * 3)
        elif _is_container(args.source):
            source = split_dataset_path(args.source)
            if (source.container.resolve(), source.dataset) == (destination.container.resolve(), destination.dataset):
                raise ConfigError(f"SRC and DEST are the same dataset: {source}")
            voxel_size = _voxel_size(args, read_voxel_size(source))
            array = open_volume(source, voxel_size=voxel_size)
        else:
            raise VolumeError(
                f"{args.source}: neither a TIFF file or directory nor a dataset path (file.h5:dataset, in.zarr/name)"
            )
        if array.spatial_dims != 3 or array.channel_dims > 1:
            raise VolumeError(
                f"{args.source}: expected a (z, y, x) or (c, z, y, x) volume with a 3-D voxel size, got shape "
                f"{tuple(array.shape)} and voxel size {array.voxel_size}"
            )
        offset = Coordinate(args.offset) if args.offset else array.offset
        try:
            target = create_volume(
                destination,
                Roi(offset, array.roi.shape),
                voxel_size,
                array.dtype,
                num_channels=array.shape[0] if array.channel_dims else None,
                chunk_shape=args.chunks,
                mode="w" if args.overwrite else "w-",
                attrs={"source": str(args.source)},
            )
        except OutputExistsError as error:
            raise OutputExistsError(f"{error}; pass --overwrite to replace it") from None
        slabs = copy_volume(array, target)
    print(
        f"imported {args.source} -> {destination}: shape {tuple(target.shape)} {target.dtype}, voxel size "
        f"{tuple(target.voxel_size)} nm, offset {tuple(target.offset)} nm, chunks {tuple(target.chunk_shape)}, "
        f"{slabs} slab(s) in {time.monotonic() - start:.1f} s"
    )
    return 0


class TiffStack:
    """A lazy (z, y, x) view of a multi-page TIFF file or of a directory of single-page TIFF files.

    Only headers are read on construction (every page must be 2-D with the same shape and dtype); planes are read
    when indexed, one z range at a time. Use as a context manager: it holds a multi-page file open.
    """

    def __init__(self, path: Path):
        if not path.exists():
            raise VolumeError(f"{path}: no such TIFF file or directory")
        self._lock = threading.Lock()
        self._file: tifffile.TiffFile | None = None
        self._files: list[Path] = []
        try:
            planes = self._directory_planes(path) if path.is_dir() else self._file_planes(path)
        except tifffile.TiffFileError as error:
            self.close()
            raise VolumeError(f"{path}: not a readable TIFF stack ({error})") from None
        except VolumeError:
            self.close()
            raise
        self.shape = (len(planes),) + planes[0][0]
        self.dtype = planes[0][1]
        self.ndim = 3

    def _directory_planes(self, path: Path) -> list[tuple[tuple[int, ...], np.dtype]]:
        self._files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES), key=lambda p: _natural_key(p.name)
        )
        if not self._files:
            raise VolumeError(f"{path}: directory holds no .tif/.tiff files")
        planes = []
        for file in self._files:
            with tifffile.TiffFile(file) as tiff:
                if len(tiff.pages) != 1:
                    raise VolumeError(f"{file}: expected one page per file in a directory, got {len(tiff.pages)}")
                planes.append(_plane(tiff.pages[0], str(file), planes))
        return planes

    def _file_planes(self, path: Path) -> list[tuple[tuple[int, ...], np.dtype]]:
        self._file = tifffile.TiffFile(path)
        planes: list[tuple[tuple[int, ...], np.dtype]] = []
        for index, page in enumerate(self._file.pages):
            planes.append(_plane(page, f"{path} page {index}", planes))
        return planes

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "TiffStack":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        z_range = range(*key[0].indices(self.shape[0]))
        with self._lock:
            if self._file is not None:
                planes = [self._file.pages[z].asarray() for z in z_range]
            else:
                planes = [tifffile.imread(self._files[z]) for z in z_range]
        stacked = np.stack(planes) if planes else np.empty((0,) + self.shape[1:], self.dtype)
        return stacked[(slice(None),) + tuple(key[1:])]

    def to_dask(self) -> da.Array:
        """A dask array with one chunk per z plane."""
        return da.from_array(self, chunks=(1,) + self.shape[1:], name=False, meta=np.empty((0, 0, 0), self.dtype))


def _plane(page, where: str, previous: list) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a TIFF page, checked to be 2-D and like the ``previous`` planes."""
    shape, dtype = tuple(page.shape), np.dtype(page.dtype)
    if len(shape) != 2:
        raise VolumeError(f"{where}: expected a 2-D single-channel plane, got shape {shape}")
    if previous and (shape, dtype) != previous[0]:
        first_shape, first_dtype = previous[0]
        raise VolumeError(f"{where}: shape {shape} {dtype} differs from the first plane's {first_shape} {first_dtype}")
    return shape, dtype


def _voxel_size(args: argparse.Namespace, stored: Coordinate | None) -> Coordinate:
    if args.voxel_size:
        return Coordinate(args.voxel_size)
    if stored is None:
        raise ConfigError(f"{args.source} has no voxel size attribute; pass --voxel-size Z Y X (nm)")
    return stored


def _is_container(path: str) -> bool:
    try:
        split_dataset_path(path)
    except VolumeError:
        return False
    return True


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
