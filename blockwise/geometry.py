"""Geometry resolution shared by ``affcons predict`` and ``affcons segment``: voxel size, region and chunks.

Options give lengths in nm; command-line block sizes and contexts come in voxels and are converted here, once the
voxel size is known. Every function raises :class:`~affcons.errors.VolumeError` (the data) or
:class:`~affcons.errors.ConfigError` (the request) with the offending path and values.
"""

from funlib.geometry import Coordinate, Roi

from affcons.errors import ConfigError, VolumeError

Triple = tuple[int, int, int]


def resolve_voxel_size(path: str, given: Triple | None, what: str) -> Triple:
    """The voxel size (nm) of the volume at ``path``: the stored one, or ``given`` for a volume without one; both
    must agree when both exist. ``what`` names the volume in messages (``raw``, ``affinities``)."""
    from affcons.io import read_voxel_size

    stored = read_voxel_size(path)
    if stored is not None and given is not None and tuple(stored) != tuple(given):
        raise VolumeError(
            f"{what} {path}: stored voxel size {tuple(stored)} nm differs from --voxel-size {tuple(given)} nm"
        )
    voxel_size = tuple(given) if given is not None else (tuple(stored) if stored is not None else None)
    if voxel_size is None:
        raise VolumeError(
            f"{what} {path} has no voxel size attribute; give it (--voxel-size Z Y X in nm, or voxel_size in the "
            "config file)"
        )
    return voxel_size


def to_nm(voxels: Triple, voxel_size: Triple) -> Triple:
    """Voxel counts (z, y, x) -> nm."""
    return tuple(int(v) * s for v, s in zip(voxels, voxel_size))


def resolve_roi(volume_roi: Roi, offset: Triple | None, shape: Triple | None, voxel_size: Triple, path: str) -> Roi:
    """The region to process (nm): ``offset``/``shape`` where given, else the volume's; an offset without a shape
    runs to the volume's end, a shape without an offset starts at the volume's begin. Must be non-empty, on the
    voxel grid and inside the volume."""
    begin = Coordinate(offset) if offset is not None else volume_roi.offset
    size = Coordinate(shape) if shape is not None else volume_roi.end - begin
    roi = Roi(begin, size)
    if any(v % s for v, s in zip(tuple(begin) + tuple(size), tuple(voxel_size) * 2)):
        raise ConfigError(
            f"ROI offset {tuple(begin)} / shape {tuple(size)} nm are not multiples of the voxel size {voxel_size} nm"
        )
    if roi.empty or not volume_roi.contains(roi):
        raise ConfigError(f"ROI {roi} (nm) is empty or not inside the volume's ROI {volume_roi} ({path})")
    return roi


def check_block_chunks(block_voxels: Triple, chunk_voxels: Triple) -> None:
    """Blocks must be whole numbers of output chunks: zarr has no locking, so blocks must never share a chunk."""
    if any(b % c for b, c in zip(block_voxels, chunk_voxels)):
        raise ConfigError(
            f"block size {tuple(block_voxels)} voxels is not a multiple of the output chunk shape "
            f"{tuple(chunk_voxels)} voxels: blocks would share chunks, and zarr has no locking (choose a block size "
            "that is a multiple of the chunk shape, or a chunk shape that divides the block size)"
        )
