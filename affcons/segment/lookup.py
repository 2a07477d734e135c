"""Relabelling fragments through a lookup table (a light module: evaluation imports it)."""

import numpy as np


def apply_lookup(fragments: np.ndarray, ids: np.ndarray, segment_of: np.ndarray) -> np.ndarray:
    """Relabel ``fragments`` (uint64, 0 = none) by the table ``ids`` (sorted) -> ``segment_of``.

    Fragments missing from ``ids`` keep their own id.
    """
    flat = fragments.ravel()
    position = np.searchsorted(ids, flat)
    position = np.minimum(position, max(len(ids) - 1, 0))
    found = (len(ids) > 0) & (ids[position] == flat) if len(ids) else np.zeros(flat.shape, bool)
    out = flat.copy()
    out[found] = segment_of[position[found]]
    out[flat == 0] = 0
    return out.reshape(fragments.shape)
