"""Relabelling one block's fragments at several thresholds: the block's local fragment indices once, then one
compiled gather per threshold into a reused buffer (numpy's ``table[local]`` costs ~3x as much, most of it in
page faults of fresh output arrays)."""

import numba
import numpy as np


class BlockRelabeller:
    """Reusable buffers for the blocks of one worker: :meth:`index` a block's fragments once, then
    :meth:`relabel` them per threshold. The array :meth:`relabel` returns is overwritten by its next call."""

    def __init__(self):
        self._local = np.empty(0, np.int32)
        self._out: dict = {}
        self._shape = None

    def index(self, fragments: np.ndarray, first_id: int, count: int) -> bool:
        """Take the fragments of a block whose ids are ``first_id + 1 .. first_id + count`` (0: no fragment);
        False when an id lies outside that range (use the general lookup, :func:`affcons.segment.apply_lookup`)."""
        fragments = np.ascontiguousarray(fragments)
        if self._local.size != fragments.size:
            self._local = np.empty(fragments.size, np.int32 if count < 2**31 else np.int64)
        elif count >= 2**31 and self._local.dtype != np.int64:
            self._local = np.empty(fragments.size, np.int64)
        self._shape = fragments.shape
        return _local_indices(fragments.reshape(-1), np.int64(first_id), np.int64(count), self._local)

    def relabel(self, table: np.ndarray) -> np.ndarray:
        """The indexed block relabelled by ``table`` (``count + 1`` entries, entry 0 for "no fragment", in the
        output dtype): voxel of id ``first_id + k`` -> ``table[k]``."""
        out = self._out.get(table.dtype)
        if out is None or out.size != self._local.size:
            out = self._out[table.dtype] = np.empty(self._local.size, table.dtype)
        _gather(self._local, table, out)
        return out.reshape(self._shape)


@numba.njit(cache=True, nogil=True)
def _local_indices(fragments, first_id, count, local):  # pragma: no cover - compiled
    for voxel in range(fragments.size):
        value = np.int64(fragments[voxel])
        if value == 0:
            local[voxel] = 0
            continue
        index = value - first_id
        if index < 1 or index > count:
            return False
        local[voxel] = index
    return True


@numba.njit(cache=True, nogil=True)
def _gather(local, table, out):  # pragma: no cover - compiled
    for voxel in range(local.size):
        out[voxel] = table[local[voxel]]
