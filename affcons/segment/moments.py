"""Per-fragment voxel counts and coordinate sums in one compiled pass (for :func:`affcons.segment.node_table`)."""

import numba
import numpy as np


@numba.njit(cache=True)
def sizes_and_coordinate_sums(index, count):  # pragma: no cover - compiled
    """Per dense id ``0..count-1`` of ``index`` (z, y, x): voxel count (int64) and coordinate sums (float64 (n, 3)),
    added in raster order."""
    sizes = np.zeros(count, np.int64)
    sums = np.zeros((count, 3), np.float64)
    nz, ny, nx = index.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                i = index[z, y, x]
                sizes[i] += 1
                sums[i, 0] += z
                sums[i, 1] += y
                sums[i, 2] += x
    return sizes, sums
