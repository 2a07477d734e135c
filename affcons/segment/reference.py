"""waterz as the reference agglomeration: the same fragments through ``waterz.agglomerate``, for cross-checks.

Used by the tests and ``benchmarks/segmentation.py`` to show that :func:`affcons.segment.build_merge_tree` cuts give
waterz's partitions.
"""

import os
from contextlib import contextmanager

import numpy as np

#: waterz scoring functions equivalent to affcons' ``scoring`` names (both prebuilt in waterz 0.10).
WATERZ_SCORING = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    "quantile50": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>",
}


@contextmanager
def quiet_stdout():
    """Silence file descriptor 1 (waterz prints its C++ progress there)."""
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def waterz_segmentations(affs: np.ndarray, fragments: np.ndarray, thresholds, scoring: str = "mean"):
    """waterz's segmentations (uint64 (z, y, x)) of ``fragments`` under ``affs`` (float32 (C >= 3, z, y, x)) at each
    threshold; inputs are copied (waterz overwrites its fragments and yields one array it keeps modifying)."""
    import waterz

    with quiet_stdout():
        return [
            segmentation.copy()
            for segmentation in waterz.agglomerate(
                np.ascontiguousarray(affs[:3], dtype=np.float32),
                list(thresholds),
                fragments=fragments.copy(),
                scoring_function=WATERZ_SCORING[scoring],
            )
        ]
