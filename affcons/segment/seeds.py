"""Watershed seeds in compiled code: boundary levels from affinities, an exact integer distance transform, and the
labelled plateaus of its local maxima. Each function reproduces a step of the scipy reference
(:func:`affcons.segment.reference_watershed.reference_watershed`) bit for bit; why each is exact is said where it
is done.

Arrays that the flood shares (levels, labels, squared distances) are *padded*: one voxel more on each side of each
axis, so that neighbour offsets need no bounds checks. The padding of labels is a wall (-1), that of squared
distances 0 (never above a seed candidate's).
"""

from functools import lru_cache

import numba
import numpy as np

from affcons.segment.reference_watershed import boundary_map, reference_levels

#: Labels of voxels the flood never enters: the padding and voxels outside the mask. An unlabelled voxel of level
#: ``l`` holds ``-2 - l``, a labelled one its label (> 0).
WALL = -1

#: Squared distances stay below this, so that distinct integers have distinct float64 square roots (see
#: :func:`squared_distance_limits_hold`).
EXACT_SQUARE_ROOTS = 2**48


def threshold_for_comparison(boundary_threshold) -> float:
    """``boundary_threshold`` rounded as numpy compares it with a float32 boundary map (float32 for a Python
    number, the scalar's own precision for a numpy float64), as a float64 value."""
    dtype = np.result_type(np.float32, boundary_threshold)
    return float(np.asarray(boundary_threshold).astype(dtype))


@lru_cache(maxsize=16)
def uint8_tables(per_slice: bool, boundary_threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Level and interior lookup tables for uint8 affinities, or None where no table is exact.

    With ``per_slice`` the boundary depends on the pair (A_y, A_x): the tables have 65536 entries (index
    ``256 A_y + A_x``), computed by the reference's own float32 code on every pair, so they are exact by
    construction. Otherwise the boundary ``1 - (A_z + A_y + A_x) / 765`` depends on the triple; the tables are
    indexed by the sum ``s`` (0..765). The exact level ``rint(255 - s / 3)`` has a fractional part of 0, 1/3 or
    2/3, at least 1/6 of a level from a rounding tie, while float32 evaluation errs by less than 1e-4 levels, so the
    reference's level is ``(766 - s) // 3`` for every triple (checked on all 2^24 triples in the tests). The
    interior test ``1 - s / 765 < t`` is decided by ``s`` unless ``t`` lies within 1e-5 of some ``1 - s / 765``
    (float32 error is below 1e-6): then None, and the caller evaluates the reference's float32 arithmetic per voxel.

    Args:
        per_slice: ignore the z channel.
        boundary_threshold: already rounded by :func:`threshold_for_comparison`.
    """
    if per_slice:
        pairs = np.zeros((3, 1, 1, 256 * 256), np.float32)
        pairs[1:, 0, 0] = np.indices((256, 256)).reshape(2, -1).astype(np.float32) / np.float32(255.0)
        boundary = boundary_map(pairs, per_slice=True)[0, 0]
        return reference_levels(boundary), boundary.astype(np.float64) < boundary_threshold
    sums = np.arange(3 * 255 + 1)
    exact = (765 - sums) / 765.0
    if np.any(np.abs(exact - boundary_threshold) <= 1e-5):
        return None
    return ((766 - sums) // 3).astype(np.uint8), exact < boundary_threshold


@numba.njit(cache=True)
def _pad_index(z, y, x, padded_y, padded_x):  # pragma: no cover - compiled
    return ((z + 1) * padded_y + (y + 1)) * padded_x + x + 1


@numba.njit(cache=True)
def levels_from_tables(affs, mask, per_slice, level_table, inside_table, levels, labels, interior):  # pragma: no cover
    """uint8 affinities (C >= 3, z, y, x) -> padded levels, padded labels (unlabelled ``-2 - level`` in the mask,
    WALL outside), interior (uint8 (z, y, x), 1 inside cells and the mask), through the tables of
    :func:`uint8_tables`. ``mask``: bool (z, y, x) or None (everything; numba prunes the test)."""
    _, nz, ny, nx = affs.shape
    padded_y, padded_x = ny + 2, nx + 2
    for z in range(nz):
        for y in range(ny):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            for x in range(nx):
                if per_slice:
                    key = np.int64(affs[1, z, y, x]) * 256 + np.int64(affs[2, z, y, x])
                else:
                    key = np.int64(affs[0, z, y, x]) + np.int64(affs[1, z, y, x]) + np.int64(affs[2, z, y, x])
                level = level_table[key]
                levels[base + x] = level
                inside = True if mask is None else mask[z, y, x]
                interior[z, y, x] = inside_table[key] and inside
                labels[base + x] = -2 - np.int64(level) if inside else WALL


@numba.njit(cache=True)
def levels_from_floats(affs, divisor, mask, per_slice, threshold, levels, labels, interior):  # pragma: no cover
    """As :func:`levels_from_tables`, evaluating the reference's float32 arithmetic per voxel: affinities divided
    by ``divisor`` (float32 255 for uint8, 1 for float32: x / 1 is exact), ``1 - ((A_z + A_y) + A_x) / 3`` (or
    ``1 - (A_y + A_x) / 2``), levels ``clip(rint(255 b), 0, 255)`` and interior ``b < threshold`` (float64, from
    :func:`threshold_for_comparison`)."""
    _, nz, ny, nx = affs.shape
    padded_y, padded_x = ny + 2, nx + 2
    scale = np.float32(255.0)
    first = 1 if per_slice else 0
    count = np.float32(3 - first)
    for z in range(nz):
        for y in range(ny):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            for x in range(nx):
                total = np.float32(0.0)
                for channel in range(first, 3):
                    value = np.float32(np.float32(affs[channel, z, y, x]) / divisor)
                    total = np.float32(total + value) if channel > first else value
                boundary = np.float32(np.float32(1.0) - np.float32(total / count))
                level = np.uint8(min(max(np.rint(np.float32(boundary * scale)), np.float32(0.0)), scale))
                levels[base + x] = level
                inside = True if mask is None else mask[z, y, x]
                interior[z, y, x] = np.float64(boundary) < threshold and inside
                labels[base + x] = -2 - np.int64(level) if inside else WALL


def squared_distance_limits_hold(shape, voxel_size, per_slice: bool) -> bool:
    """Whether :func:`squared_distances` is exact here: integer voxel sizes, every squared distance (bounded by
    ``sum((n_i s_i)^2)``) below :data:`EXACT_SQUARE_ROOTS`, and the envelope's cross products within int64.

    Below 2^48, ``sqrt(n + 1) - sqrt(n) > 2^-25`` while float64 rounds a square root below 2^24 by at most 2^-30,
    so distinct squared distances keep their order (and inequality) as the reference's float64 distances.
    """
    axes = (1, 2) if per_slice else (0, 1, 2)
    sizes = [float(voxel_size[a]) for a in axes]
    if any(s <= 0 or s != int(s) for s in sizes):
        return False
    bound = sum((int(shape[a]) * int(s)) ** 2 for a, s in zip(axes, sizes))
    widest = max(int(s) ** 2 * int(shape[a]) for a, s in zip(axes, sizes))
    return bound < EXACT_SQUARE_ROOTS and 8 * bound * widest < 2**62


@numba.njit(cache=True, inline="always")
def _lower_envelope(values, length, weight, out, sites, boundary_num, boundary_den):  # pragma: no cover
    """``out[x] = min_p weight (x - p)^2 + values[p]`` over ``p`` with ``values[p] >= 0`` (-1: none), x < length.

    Felzenszwalb & Huttenlocher's lower envelope of parabolas in exact integer arithmetic: the intersections are
    kept as fractions (numerator, positive denominator) and compared by cross-multiplication.
    """
    top = -1
    for q in range(length):
        value_q = values[q]
        if value_q < 0:
            continue
        if top < 0:
            top = 0
            sites[0] = q
            continue
        while True:
            p = sites[top]
            numerator = (value_q + weight * q * q) - (values[p] + weight * p * p)
            denominator = 2 * weight * (q - p)
            if top > 0 and numerator * boundary_den[top] <= boundary_num[top] * denominator:
                top -= 1
            else:
                break
        top += 1
        sites[top] = q
        boundary_num[top] = numerator
        boundary_den[top] = denominator
    if top < 0:
        for x in range(length):
            out[x] = -1
        return
    j = 0
    for x in range(length):
        while j < top and boundary_num[j + 1] < x * boundary_den[j + 1]:
            j += 1
        p = sites[j]
        out[x] = weight * (x - p) * (x - p) + values[p]


@numba.njit(cache=True)
def squared_distances(interior, weights, per_slice, out):  # pragma: no cover - compiled
    """Exact squared Euclidean distance of each interior voxel to the nearest non-interior voxel (0 there), in the
    units of ``weights`` (squared voxel sizes, int (z, y, x)), written into the padded ``out`` (its padding stays
    0); separable: a 1-D scan along x, then lower envelopes along y and (unless ``per_slice``) z. -1 where no
    non-interior voxel exists (in the volume, or in the section with ``per_slice``)."""
    nz, ny, nx = interior.shape
    padded_y, padded_x = ny + 2, nx + 2
    longest = max(nz, ny, nx)
    values = np.empty(longest, np.int64)
    line = np.empty(longest, np.int64)
    sites = np.empty(longest, np.int64)
    boundary_num = np.empty(longest, np.int64)
    boundary_den = np.empty(longest, np.int64)
    weight_z, weight_y, weight_x = np.int64(weights[0]), np.int64(weights[1]), np.int64(weights[2])
    for z in range(nz):
        for y in range(ny):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            last = -1
            for x in range(nx):
                if not interior[z, y, x]:
                    last = x
                line[x] = x - last if last >= 0 else -1
            last = -1
            for x in range(nx - 1, -1, -1):
                if not interior[z, y, x]:
                    last = x
                if last >= 0 and (line[x] < 0 or last - x < line[x]):
                    line[x] = last - x
                out[base + x] = weight_x * line[x] * line[x] if line[x] >= 0 else -1
        for x in range(nx):
            for y in range(ny):
                values[y] = out[_pad_index(z, y, x, padded_y, padded_x)]
            _lower_envelope(values, ny, weight_y, line, sites, boundary_num, boundary_den)
            for y in range(ny):
                out[_pad_index(z, y, x, padded_y, padded_x)] = line[y]
    if per_slice:
        return
    plane = np.empty((nz, nx), np.int64)
    for y in range(ny):
        for z in range(nz):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            for x in range(nx):
                plane[z, x] = out[base + x]
        for x in range(nx):
            for z in range(nz):
                values[z] = plane[z, x]
            _lower_envelope(values, nz, weight_z, line, sites, boundary_num, boundary_den)
            for z in range(nz):
                plane[z, x] = line[z]
        for z in range(nz):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            for x in range(nx):
                out[base + x] = plane[z, x]


@numba.njit(cache=True)
def _root(parent, i):  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True)
def label_maxima(distances, shape, per_slice, labels):  # pragma: no cover - compiled
    """Seeds: voxels with a positive distance no smaller than any neighbour's (26-neighbourhood, or the 8 in-section
    neighbours with ``per_slice``), labelled 1..n by connected plateau (same neighbourhood) in raster order of their
    first voxel, into the padded ``labels``. Returns the padded indices of the seed voxels in raster order.

    This is the reference's ``maximum_filter(d) == d & d > 0``: its 'reflect' border repeats only values already in
    the 3x3x3 footprint, so neighbours outside the array can be left out (here: padding 0).
    """
    nz, ny, nx = shape
    padded_y, padded_x = ny + 2, nx + 2
    offsets = np.empty(26, np.int64)
    count = 0
    for dz in range(-1, 2):
        if per_slice and dz != 0:
            continue
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                if dz != 0 or dy != 0 or dx != 0:
                    offsets[count] = (dz * padded_y + dy) * padded_x + dx
                    count += 1
    offsets = offsets[:count]
    earlier = offsets[: count // 2]  # the neighbours before a voxel in raster order come first
    maxima = np.empty(64, np.int64)
    found = 0
    for z in range(nz):
        for y in range(ny):
            base = _pad_index(z, y, 0, padded_y, padded_x)
            for x in range(nx):
                p = base + x
                value = distances[p]
                if value <= 0:
                    continue
                is_maximum = True
                for offset in offsets:
                    if distances[p + offset] > value:
                        is_maximum = False
                        break
                if is_maximum:
                    if found == len(maxima):
                        grown = np.empty(2 * found, np.int64)
                        grown[:found] = maxima
                        maxima = grown
                    maxima[found] = p
                    found += 1
                    labels[p] = found
    parent = np.arange(found)
    for i in range(found):
        p = maxima[i]
        for offset in earlier:
            other = labels[p + offset]
            if other > 0:
                a, b = _root(parent, i), _root(parent, other - 1)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
    component = np.empty(found, np.int64)
    seeds = 0
    for i in range(found):
        root = _root(parent, i)
        if root == i:
            seeds += 1
            component[i] = seeds
        labels[maxima[i]] = component[root]
    return seeds
