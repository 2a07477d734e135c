"""Blockwise vs monolithic segmentation, end to end, with and without stitching of face-cut fragments.

For each volume and block layout, runs ``affcons segment`` (real daisy workers, SQLite store) on degraded
ground-truth affinities (``affcons.synthetic.degraded_affinities``, seed 0) and prints VOI (split + merge, nats)
against the ground truth minus that of the monolithic run (:func:`affcons.segment.segment_affinities`) at each
threshold:

- ``stitched``: the pipeline's output (fragments cut by block faces stitched by the face links);
- ``unstitched``: the same blockwise fragments agglomerated without the links (what the pipeline did before).

    python benchmarks/stitching.py [--volumes gala gala-test] [--thresholds 0.3 0.5 0.7]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from affcons.evaluate import evaluate  # noqa: E402
from affcons.segment import agglomerate_fragments, apply_lookup, segment_affinities  # noqa: E402
from affcons.synthetic import degraded_affinities  # noqa: E402
from blockwise.testing import load_labels, run_cli, segment_argv, write_affinities  # noqa: E402

#: (block, context) in voxels: the layouts of tests/test_blockwise_equals_monolithic.py plus smaller and larger ones.
LAYOUTS = [
    ((25, 25, 25), (8, 8, 8)),
    ((25, 50, 50), (8, 8, 8)),
    ((25, 50, 100), (16, 16, 16)),
    ((25, 100, 100), (16, 16, 16)),
    ((50, 50, 100), (8, 16, 16)),
    ((50, 100, 100), (8, 8, 8)),
]


def voi(segmentation: np.ndarray, labels: np.ndarray) -> float:
    return evaluate(segmentation, labels)["voi"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", default=["gala", "gala-test"], help="gala, gala-test")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    thresholds = tuple(args.thresholds)
    print("VOI (split + merge, nats) of blockwise minus monolithic; negative = blockwise better")
    header = f"{'volume':<10} {'block':<14} {'context':<10} {'method':<11}" + "".join(f" t={t:<6}" for t in thresholds)
    print(header)
    print("-" * len(header))
    worst = {"stitched": 0.0, "unstitched": 0.0}
    with tempfile.TemporaryDirectory() as scratch:
        for volume in args.volumes:
            labels, voxel_size = load_labels(volume)
            affs = degraded_affinities(labels, seed=0)
            path = str(Path(scratch) / f"{volume}.zarr" / "affs")
            write_affinities(path, affs, voxel_size, chunk_shape=(25, 25, 25))
            monolithic = segment_affinities(affs, thresholds, voxel_size=voxel_size)
            reference = {t: voi(monolithic[t], labels) for t in thresholds}
            for block, context in LAYOUTS:
                out = Path(scratch) / f"{volume}-{'x'.join(map(str, block))}-{context[0]}.zarr"
                start = time.perf_counter()
                status = run_cli(segment_argv(path, str(out), thresholds, block, context, workers=args.workers))
                if status != 0:
                    print(f"affcons segment failed for {volume} {block}: exit {status}")
                    return 1
                seconds = time.perf_counter() - start
                fragments = zarr.open_array(str(out / "fragments"))[:]
                stitched = {t: voi(zarr.open_array(str(out / f"segmentation_{t:.2f}"))[:], labels) for t in thresholds}
                tree = agglomerate_fragments(fragments, affs)
                unstitched = {t: voi(apply_lookup(fragments, tree.ids, tree.lookup(t)), labels) for t in thresholds}
                for method, scores in (("stitched", stitched), ("unstitched", unstitched)):
                    differences = [scores[t] - reference[t] for t in thresholds]
                    worst[method] = max(worst[method], *(abs(d) for d in differences))
                    print(
                        f"{volume:<10} {'x'.join(map(str, block)):<14} {'x'.join(map(str, context)):<10} "
                        f"{method:<11}"
                        + "".join(f" {d:+.4f} " for d in differences)
                        + (f"  ({seconds:.0f} s)" if method == "stitched" else "")
                    )
            print(f"{volume}: monolithic VOI " + ", ".join(f"t={t}: {reference[t]:.4f}" for t in thresholds))
    print(f"largest |difference|: stitched {worst['stitched']:.4f}, unstitched {worst['unstitched']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
