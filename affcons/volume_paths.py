"""Volume paths (``out.zarr/affs``, ``file.h5:raw``) split into container and dataset: a light module (no zarr,
h5py or funlib), so that cluster workers rebuilding a step from its config do not pay :mod:`affcons.io`'s imports
(funlib.persistence pulls in dask, xarray and pandas: seconds per worker process). :mod:`affcons.io` re-exports it.
"""

import os
from pathlib import Path
from typing import NamedTuple

from affcons.errors import VolumeError

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5")


class VolumePath(NamedTuple):
    """A dataset inside a container.

    ``container`` is a ``.zarr`` directory or an HDF5 file; ``dataset`` is the path inside it (``/``-separated, no
    leading slash; ``""`` is the container root).
    """

    container: Path
    dataset: str

    @property
    def is_hdf5(self) -> bool:
        return self.container.suffix.lower() in HDF5_SUFFIXES

    def __str__(self) -> str:
        if not self.dataset:
            return str(self.container)
        return f"{self.container}{':' if self.is_hdf5 else '/'}{self.dataset}"


PathLike = str | os.PathLike | VolumePath


def split_dataset_path(path: PathLike) -> VolumePath:
    """Split ``out.zarr/affs``, ``file.h5:raw`` or ``file.h5/labels/ids`` into container and dataset.

    The container is the first path component ending in ``.zarr``, ``.h5``, ``.hdf`` or ``.hdf5``; a ``:`` right
    after it also separates the dataset. A path without such a component is a :class:`VolumeError`.
    """
    if isinstance(path, VolumePath):
        return path
    parts = Path(path).parts
    for index, part in enumerate(parts):
        head, colon, tail = part.partition(":")
        if Path(head).suffix.lower() in ZARR_SUFFIXES + HDF5_SUFFIXES:
            inner = ([tail] if colon else []) + list(parts[index + 1 :])
            dataset = "/".join(piece.strip("/") for piece in inner if piece.strip("/"))
            return VolumePath(Path(*parts[:index], head), dataset)
    raise VolumeError(
        f"{str(path)!r} names no container: expected a path like out.zarr/name or file.h5:name "
        f"(container suffixes: {', '.join(ZARR_SUFFIXES + HDF5_SUFFIXES)})"
    )
