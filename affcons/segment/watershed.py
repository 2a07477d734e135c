"""Watershed fragments from affinities (in memory; the blockwise fragments step calls this per block).

The boundary map is ``1 - mean`` of the nearest-neighbour affinity channels; seeds are the maxima of the distance
transform of the confident interior (``boundary < boundary_threshold``); the watershed floods the boundary map from
those seeds. Output ids are dense from 1 in raster order of first appearance, so the result is deterministic.

Everything runs in compiled passes over 8-bit levels and integer squared distances (see
``docs/design/segmentation-core.md``), and equals the scipy definition in
:mod:`affcons.segment.reference_watershed` bit for bit.
"""

import time
from contextlib import contextmanager

import numba
import numpy as np

from affcons.errors import VolumeError
from affcons.segment.flood import flood_padded, neighbour_offsets, queue_pool, queue_start
from affcons.segment.reference_watershed import distance_maxima_seeds
from affcons.segment.seeds import (
    WALL,
    label_maxima,
    levels_from_floats,
    levels_from_tables,
    squared_distance_limits_hold,
    squared_distances,
    threshold_for_comparison,
    uint8_tables,
)
from affcons.segment.tables import NodeTable


def _float_or_uint8(affs: np.ndarray) -> np.ndarray:
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise VolumeError(f"affinities must have shape (C >= 3, z, y, x), got {affs.shape}")
    if affs.dtype in (np.uint8, np.float32):
        return affs
    if np.issubdtype(affs.dtype, np.floating):
        return affs[:3].astype(np.float32)
    raise VolumeError(f"affinities must be uint8 (0-255) or float in [0, 1], got dtype {affs.dtype}")


@contextmanager
def _timed(seconds: dict | None, phase: str):
    """Add the wall time of the block to ``seconds[phase]`` (nothing when ``seconds`` is None)."""
    if seconds is None:
        yield
        return
    start = time.perf_counter()
    yield
    seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


def flooded_basins(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    per_slice: bool = False,
    voxel_size=(1, 1, 1),
    seconds: dict | None = None,
) -> tuple[np.ndarray, int]:
    """The watershed's labels before renumbering, and an upper bound of the labels.

    Labels are padded (z + 2, y + 2, x + 2) int32 (int64 beyond 2^31 voxels): 0 in the padding, outside the mask
    and where no seed reaches, else a basin label. Arguments: see :func:`watershed_from_affinities`; ``seconds``
    (optional) collects the wall time of the phases ``levels``, ``distances``, ``seeds``, ``flood``, ``min_size``.
    """
    affs = _float_or_uint8(affs)
    shape = affs.shape[1:]
    if mask is not None and mask.shape != shape:
        raise VolumeError(f"mask shape {mask.shape} differs from the affinities' spatial shape {shape}")
    with _timed(seconds, "levels"):
        mask = None if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
        padded = tuple(s + 2 for s in shape)
        levels = np.zeros(padded, np.uint8).reshape(-1)
        labels = np.full(padded, WALL, np.int32 if np.prod(padded) < 2**31 else np.int64).reshape(-1)
        interior = np.empty(shape, np.uint8)
        threshold = threshold_for_comparison(boundary_threshold)
        tables = uint8_tables(per_slice, threshold) if affs.dtype == np.uint8 else None
        if tables is not None:
            levels_from_tables(affs, mask, per_slice, *tables, levels, labels, interior)
        else:
            divisor = np.float32(255.0 if affs.dtype == np.uint8 else 1.0)
            levels_from_floats(affs, divisor, mask, per_slice, threshold, levels, labels, interior)
    has_boundary = ~interior.reshape(shape[0], -1).all(axis=1) if per_slice else ~interior.all(keepdims=True)
    if squared_distance_limits_hold(shape, voxel_size, per_slice) and has_boundary.all():
        with _timed(seconds, "distances"):
            weights = np.asarray([int(s) ** 2 for s in voxel_size], np.int64)
            bound = sum(int(n) ** 2 * int(w) for n, w in zip(shape, weights))
            distances = np.zeros(padded, np.int32 if bound < 2**31 else np.int64).reshape(-1)
            squared_distances(interior, weights, per_slice, distances)
        with _timed(seconds, "seeds"):
            seeds = label_maxima(distances, shape, per_slice, labels)
        del distances
    else:
        with _timed(seconds, "seeds"):
            reference_seeds = distance_maxima_seeds(interior.astype(bool), voxel_size, per_slice)
            inner = labels.reshape(padded)[1:-1, 1:-1, 1:-1]
            inner[reference_seeds > 0] = reference_seeds[reference_seeds > 0]
            seeds = int(reference_seeds.max(initial=0))
    del interior
    offsets = neighbour_offsets(shape, per_slice)
    with _timed(seconds, "flood"):
        pool = queue_pool(labels)
        flood_padded(levels, labels, queue_start(labels, offsets, shape), offsets, pool)
    if min_size > 0:
        with _timed(seconds, "min_size"):
            sizes = _label_sizes(labels, seeds)
            if (sizes[1:] < min_size).any():
                _dissolve(labels, levels, sizes, min_size)
                flood_padded(levels, labels, queue_start(labels, offsets, shape), offsets, pool)
    np.maximum(labels, 0, out=labels)
    return labels.reshape(padded), seeds


@numba.njit(cache=True)
def _label_sizes(labels, count):  # pragma: no cover - compiled
    sizes = np.zeros(count + 1, np.int64)
    for label in labels:
        if label > 0:
            sizes[label] += 1
    return sizes


@numba.njit(cache=True)
def _dissolve(labels, levels, sizes, min_size):  # pragma: no cover - compiled
    """Unlabel the voxels of labels with ``sizes[label] < min_size``."""
    for p in range(len(labels)):
        label = labels[p]
        if label > 0 and sizes[label] < min_size:
            labels[p] = -2 - np.int64(levels[p])


@numba.njit(cache=True)
def _renumber(basins, largest, starts, out):  # pragma: no cover - compiled
    """``out`` (uint64 (z, y, x)) = the padded ``basins`` (labels <= ``largest``) from ``starts`` (unpadded voxel
    of ``out[0, 0, 0]``), renumbered 1, 2, ... in raster order of first appearance (0 stays 0). Returns the
    number of basins."""
    nz, ny, nx = out.shape
    _, padded_y, padded_x = basins.shape
    remap = np.zeros(largest + 1, np.int64)
    flat = basins.reshape(-1)
    count = 0
    for z in range(nz):
        for y in range(ny):
            base = ((starts[0] + z + 1) * padded_y + starts[1] + y + 1) * padded_x + starts[2] + 1
            for x in range(nx):
                label = flat[base + x]
                if label == 0:
                    out[z, y, x] = 0
                    continue
                if remap[label] == 0:
                    count += 1
                    remap[label] = count
                out[z, y, x] = remap[label]
    return count


def watershed_from_affinities(
    affs: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    per_slice: bool = False,
    voxel_size=(1, 1, 1),
) -> tuple[np.ndarray, int]:
    """Fragments (uint64 (z, y, x), 0 outside ``mask``, ids dense 1..n) and n.

    Args:
        affs: (C >= 3, z, y, x) affinities: float in [0, 1], or uint8 0..255 meaning ``value / 255``.
        mask: optional bool (z, y, x); voxels outside stay 0.
        boundary_threshold: boundary values below this count as cell interior for the seeds.
        min_size: fragments of fewer voxels are dissolved and flooded by their neighbours.
        per_slice: 2-D fragments per z-slice (anisotropic data).
        voxel_size: (z, y, x) nm, for an anisotropic distance transform.
    """
    basins, largest = flooded_basins(
        affs,
        mask,
        boundary_threshold=boundary_threshold,
        min_size=min_size,
        per_slice=per_slice,
        voxel_size=voxel_size,
    )
    fragments = np.empty(tuple(s - 2 for s in basins.shape), np.uint64)
    count = _renumber(basins, largest, np.zeros(3, np.int64), fragments)
    return fragments, count


def block_fragments(
    affs: np.ndarray,
    crop: tuple[slice, ...],
    lower=(True,) * 3,
    upper=(True,) * 3,
    *,
    first_id: int = 0,
    voxel_size=(1, 1, 1),
    offset=(0, 0, 0),
    boundary_threshold: float = 0.5,
    min_size: int = 0,
    per_slice: bool = False,
    seconds: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, NodeTable]:
    """One block of the blockwise fragments step: watershed of the block grown by its context, kept on ``crop``.

    Returns ``(fragments, links, nodes)``: fragments uint64 with the shape of ``crop``, ids ``first_id + 1 ..
    first_id + m`` in raster order of first appearance (0 where the watershed leaves voxels unlabelled); the
    face-link bits of :func:`affcons.segment.stitch.face_links`; the node table of the fragments (centres in nm).
    The same bytes as :func:`watershed_from_affinities`, cropped, renumbered, then :func:`face_links` and
    :func:`node_table` (the fragments step before the compiled kernels).

    Args:
        affs: (C >= 3, z, y, x) affinities of the grown block (uint8 or float, as for
            :func:`watershed_from_affinities`).
        crop: slices of the write ROI inside ``affs``' spatial axes.
        lower, upper: per axis, whether a neighbouring block lies below / above the write ROI.
        first_id: added to the block's local ids 1..m.
        voxel_size: (z, y, x) nm.
        offset: world coordinate (nm) of the first voxel of ``crop``.
        boundary_threshold, min_size, per_slice: see :func:`watershed_from_affinities`.
        seconds: optional dict collecting the wall time per phase (those of :func:`flooded_basins`, then
            ``links``, ``relabel`` and ``nodes``).
    """
    from affcons.segment.rag import node_table
    from affcons.segment.stitch import face_links

    basins, largest = flooded_basins(
        affs,
        boundary_threshold=boundary_threshold,
        min_size=min_size,
        per_slice=per_slice,
        voxel_size=voxel_size,
        seconds=seconds,
    )
    inner = basins[1:-1, 1:-1, 1:-1]
    crop = tuple(slice(*c.indices(n)[:2]) for c, n in zip(crop, inner.shape))
    with _timed(seconds, "links"):
        links = face_links(inner, crop, lower, upper)
    with _timed(seconds, "relabel"):
        fragments = np.empty(tuple(c.stop - c.start for c in crop), np.uint64)
        _renumber(basins, largest, np.asarray([c.start for c in crop], np.int64), fragments)
    with _timed(seconds, "nodes"):
        local = node_table(fragments, voxel_size, offset)
    with _timed(seconds, "relabel"):
        if first_id:
            fragments[fragments != 0] += np.uint64(first_id)
    return fragments, links, NodeTable(local.ids + np.uint64(first_id), local.position, local.size)
