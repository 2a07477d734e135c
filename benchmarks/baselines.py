"""Monolithic baselines for the post-processing benchmark, each run in a child process sampled for memory.

    nice .venv/bin/python benchmarks/baselines.py [--size 128] [--thresholds 0.3 0.5 0.7]

:func:`run_baseline` segments a whole affinity volume (zarr, uint8 or float) in one process, the way a user without
affcons would, and returns where its segmentations are, its wall time and its peak memory:

- ``"dt-watershed"`` (the equal-quality baseline): boundary ``1 - mean(A_z, A_y, A_x)``, seeds at the plateaus of
  maximal Euclidean distance (``scipy.ndimage.distance_transform_edt`` with the voxel size) to the boundary
  ``>= boundary_threshold`` (3x3x3 maximum filter, labelled with full connectivity), flooded by
  ``skimage.segmentation.watershed`` on the float boundary, relabelled densely (``fastremap``), then
  ``waterz.agglomerate`` on those fragments (mean affinity). These are affcons' fragments computed by the usual
  libraries, so the quality is the same.
- ``"waterz"`` (second reference): ``waterz.agglomerate`` with its own watershed (mean affinity).

The stack notes' waterz pitfalls are handled: float32 affinities, fragments relabelled densely and passed as a copy,
each yielded segmentation copied, waterz's C++ progress on stdout silenced.

The child reads the affinities, segments, and writes one uint64 zarr dataset per threshold (ROI and voxel size of
the affinities) into ``OUT_DIR/segmentations.zarr``: evaluate them slab by slab with
:func:`affcons.evaluate.fragment_contingency`. Peak memory is sampled from the parent with psutil every 0.1 s and
reported by the child itself (``ru_maxrss``).

Run as a script, it makes an S^3 volume from the gala ground truth (mirrored, degraded affinities, uint8), runs both
baselines and prints time, memory and VOI at each threshold.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("dt-watershed", "waterz")


@dataclass
class BaselineResult:
    """One baseline run: segmentations by threshold (zarr dataset paths), seconds and bytes.

    ``wall_s``: the child process from start to exit (start-up, reading, segmenting, writing); ``read_s``,
    ``watershed_s``, ``agglomerate_s``, ``write_s``: its phases (``watershed_s`` is 0 for ``waterz``, whose
    watershed is inside ``waterz.agglomerate``); ``peak_rss_sampled`` / ``peak_rss_self``: peak resident memory of
    the child, sampled by the parent / from ``getrusage``; ``fragments``: number of watershed fragments
    (dt-watershed only, else -1).
    """

    method: str
    segmentations: dict[float, str]
    wall_s: float
    read_s: float
    watershed_s: float
    agglomerate_s: float
    write_s: float
    peak_rss_sampled: int
    peak_rss_self: int
    fragments: int


class RssSampler:
    """Peak RSS (bytes) of a process and its children, sampled every ``interval`` seconds in a thread: ``peak`` of
    the whole tree at one sample, ``peaks`` of each process (by pid)."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self.commands: dict[int, str] = {}  # command line of each process seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self.process] + self.process.children(recursive=True)
            except psutil.NoSuchProcess:  # the measured process has ended
                break
            total = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    if process.pid not in self.commands:
                        self.commands[process.pid] = " ".join(process.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """The peak of the whole tree."""
        self._stop.set()
        self._thread.join()
        return self.peak

    @property
    def largest(self) -> int:
        """The largest peak of any one process."""
        return max(self.peaks.values(), default=0)

    def largest_of(self, marker: str) -> int:
        """The largest peak of the processes whose command line contains ``marker``."""
        return max((peak for pid, peak in self.peaks.items() if marker in self.commands.get(pid, "")), default=0)


def run_baseline(
    method: str,
    affs_path: str,
    out_dir,
    thresholds,
    *,
    boundary_threshold: float = 0.5,
    voxel_size=None,
    log=None,
) -> BaselineResult:
    """Run baseline ``method`` (see :data:`METHODS`) on the affinities ``affs_path`` (zarr, (C >= 3, z, y, x)) in a
    child process; its segmentations go to ``out_dir/segmentations.zarr/<method>_<threshold>``.

    Args:
        thresholds: agglomeration thresholds (mean affinity score, as ``affcons segment``).
        boundary_threshold: dt-watershed only: boundary values below this are interior (affcons' default 0.5).
        voxel_size: dt-watershed only: (z, y, x) sampling of the distance transform; default: the affinities'.
        log: file for the child's stderr (default ``out_dir/<method>.log``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}; choose one of {METHODS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log is not None else out_dir / f"{method}.log"
    request = {
        "method": method,
        "affs": str(affs_path),
        "out": str(out_dir / "segmentations.zarr"),
        "thresholds": sorted(float(t) for t in thresholds),
        "boundary_threshold": boundary_threshold,
        "voxel_size": None if voxel_size is None else [int(v) for v in voxel_size],
    }
    start = time.perf_counter()
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, __file__, "child", json.dumps(request)], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        sampler = RssSampler(child.pid)
        output, _ = child.communicate()
    wall = time.perf_counter() - start
    peak = sampler.stop()
    if child.returncode != 0:
        raise RuntimeError(f"baseline {method} failed with exit code {child.returncode}; see {log}")
    report = json.loads(output.strip().splitlines()[-1])
    return BaselineResult(
        method=method,
        segmentations={float(t): path for t, path in report["segmentations"].items()},
        wall_s=wall,
        read_s=report["read_s"],
        watershed_s=report["watershed_s"],
        agglomerate_s=report["agglomerate_s"],
        write_s=report["write_s"],
        peak_rss_sampled=peak,
        peak_rss_self=report["peak_rss_self"],
        fragments=report["fragments"],
    )


def dt_watershed(affs: np.ndarray, boundary_threshold: float, voxel_size) -> np.ndarray:
    """Distance-transform watershed fragments (uint64 (z, y, x), dense 1..n) of float32 affinities, by scipy and
    scikit-image."""
    import fastremap
    from scipy import ndimage
    from skimage.segmentation import watershed

    boundary = 1.0 - affs[:3].mean(axis=0, dtype=np.float32)
    distance = ndimage.distance_transform_edt(boundary < boundary_threshold, sampling=voxel_size)
    footprint = np.ones((3, 3, 3), bool)
    maxima = (ndimage.maximum_filter(distance, footprint=footprint) == distance) & (distance > 0)
    del distance
    markers, _ = ndimage.label(maxima, structure=footprint)
    del maxima
    fragments = watershed(boundary, markers)
    del markers, boundary
    fragments, _ = fastremap.renumber(fragments, in_place=True, preserve_zero=True)
    return fragments.astype(np.uint64, copy=False)


def child(request: dict) -> None:
    """The child process: read, segment, write; print one JSON line with the timings on stdout."""
    import waterz

    from affcons.affinities import affinities_to_float
    from affcons.io import create_volume, open_volume
    from affcons.segment.reference import WATERZ_SCORING, quiet_stdout

    start = time.perf_counter()
    source = open_volume(request["affs"])
    affs = np.ascontiguousarray(affinities_to_float(source[source.roi][:3]))
    read_s = time.perf_counter() - start
    voxel_size = request["voxel_size"] or list(source.voxel_size)
    spatial_roi = source.roi
    watershed_s, fragments, count = 0.0, None, -1
    if request["method"] == "dt-watershed":
        start = time.perf_counter()
        fragments = dt_watershed(affs, request["boundary_threshold"], voxel_size)
        watershed_s = time.perf_counter() - start
        count = int(fragments.max())
    paths, agglomerate_s, write_s = {}, 0.0, 0.0
    with quiet_stdout():
        resumed = time.perf_counter()
        segmentations = waterz.agglomerate(
            affs, request["thresholds"], fragments=fragments, scoring_function=WATERZ_SCORING["mean"]
        )
        for threshold, segmentation in zip(request["thresholds"], segmentations):
            written = time.perf_counter()
            agglomerate_s += written - resumed
            path = f"{request['out']}/{request['method']}_{threshold:.2f}"
            array = create_volume(path, spatial_roi, source.voxel_size, np.uint64, mode="w")
            array[spatial_roi] = segmentation  # written before the next yield modifies it in place
            paths[threshold] = path
            resumed = time.perf_counter()
            write_s += resumed - written
    report = {
        "segmentations": paths,
        "read_s": read_s,
        "watershed_s": watershed_s,
        "agglomerate_s": agglomerate_s,
        "write_s": write_s,
        "peak_rss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "fragments": count,
    }
    print(json.dumps(report))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="edge of the volume, voxels")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = parser.parse_args()

    import cc3d

    from affcons.evaluate import fragment_contingency, scores_from_lut
    from affcons.io import open_volume
    from affcons.synthetic import degraded_affinities
    from blockwise.testing import load_labels, mirror_to, write_affinities

    labels, voxel_size = load_labels("gala")
    labels = cc3d.connected_components(mirror_to(labels, (args.size,) * 3), connectivity=6).astype(np.uint64)
    with tempfile.TemporaryDirectory(prefix="affcons-baselines-") as work:
        affs_path = f"{work}/volume.zarr/affs"
        write_affinities(affs_path, degraded_affinities(labels, seed=1), voxel_size, dtype=np.uint8)
        none = np.zeros(0, np.uint64)
        print(f"{args.size}^3 gala mirrored, uint8 degraded affinities, thresholds {args.thresholds}")
        for method in METHODS:
            result = run_baseline(method, affs_path, work, args.thresholds)
            voi = []
            for threshold, path in result.segmentations.items():
                segmentation = open_volume(path)
                metrics = scores_from_lut(fragment_contingency(segmentation[segmentation.roi], labels), none, none)
                voi.append(f"{threshold:.2f}: {metrics['voi']:.3f}")
            phases = f"read {result.read_s:.1f} s, watershed {result.watershed_s:.1f} s, agglomerate "
            phases += f"{result.agglomerate_s:.1f} s, write {result.write_s:.1f} s"
            memory = f"{result.peak_rss_sampled / 2**30:.2f} GiB sampled / {result.peak_rss_self / 2**30:.2f} GiB"
            print(
                f"{method}: wall {result.wall_s:.1f} s ({phases}), {args.size**3 / result.wall_s / 1e6:.2f} Mvoxel/s, "
                f"peak RSS {memory}, fragments {result.fragments}; VOI (nats) {', '.join(voi)}"
            )


if __name__ == "__main__":
    main()
