"""``affcons evaluate``: VOI split/merge and adapted Rand error of a segmentation against ground truth.

Either one segmentation (``--seg``), or the fragments of a run with its merge tree at several thresholds
(``--fragments``, ``--tree``, ``--thresholds``: the fragment x ground-truth table is counted once and each threshold
is scored from it; ``segments`` is the number of segments in the scored region). Volumes are read in z slabs, so
memory does not grow with the volume; ``--roi-offset`` and ``--roi-shape`` (nm) score a region.
"""

import json

import numpy as np
from funlib.geometry import Roi

from affcons.errors import ConfigError, VolumeError
from affcons.evaluate import format_table, fragment_contingency, scores_from_lut, segments_from_lut
from affcons.io import open_volume


def configure_parser(parser) -> None:
    parser.add_argument("--seg", help="segmentation: out.zarr/name or file.h5:dataset")
    parser.add_argument("--gt", required=True, help="ground truth (id 0 is ignored): out.zarr/name or file.h5:dataset")
    parser.add_argument("--fragments", help="instead of --seg: a run's fragments (OUT.zarr/fragments)")
    parser.add_argument("--tree", help="with --fragments: the run's merge tree (RUN_DIR/merge_tree.npz)")
    parser.add_argument("--thresholds", type=float, nargs="+", help="with --fragments: thresholds to score")
    parser.add_argument("--roi-offset", type=int, nargs=3, metavar=("Z", "Y", "X"), help="region to score: offset, nm")
    parser.add_argument("--roi-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="region to score: shape, nm")
    parser.add_argument(
        "--json", action="store_true", help="print only JSON on stdout (one object; a list of them with --fragments)"
    )


def read_labels(path: str, role: str):
    array = open_volume(path)
    if len(array.shape) != 3 or not np.issubdtype(array.dtype, np.integer):
        raise VolumeError(f"{role} {path}: expected a 3-D integer volume, got shape {array.shape}, dtype {array.dtype}")
    return array


def scored_roi(args, labels, ground_truth) -> Roi:
    """The ROI to score: ``--roi-offset/--roi-shape``, else the common ROI of both volumes (which must be equal)."""
    if (args.roi_offset is None) != (args.roi_shape is None):
        raise ConfigError("--roi-offset and --roi-shape go together (both in nm, z y x)")
    if labels.voxel_size != ground_truth.voxel_size:
        raise VolumeError(
            f"voxel size {labels.voxel_size} of {args.seg or args.fragments} differs from the ground truth's "
            f"{ground_truth.voxel_size}; re-import one of them"
        )
    if args.roi_offset is not None:
        roi = Roi(args.roi_offset, args.roi_shape)
        for role, array in (("segmentation" if args.seg else "fragments", labels), ("ground truth", ground_truth)):
            if not array.roi.contains(roi):
                raise VolumeError(f"--roi-offset/--roi-shape {roi} is not inside the {role} ROI {array.roi}")
        return roi
    if labels.roi != ground_truth.roi:
        raise VolumeError(
            f"segmentation ROI {labels.roi} (voxel size {labels.voxel_size}) differs from ground truth "
            f"ROI {ground_truth.roi} (voxel size {ground_truth.voxel_size}); pass --roi-offset and --roi-shape (nm) "
            f"to score a region inside both"
        )
    return labels.roi


def run(args) -> int:
    if (args.seg is None) == (args.fragments is None):
        raise ConfigError("give either --seg, or --fragments with --tree and --thresholds")
    if args.fragments is not None and (args.tree is None or not args.thresholds):
        raise ConfigError("--fragments needs --tree (RUN_DIR/merge_tree.npz) and --thresholds")
    if args.seg is not None and (args.tree is not None or args.thresholds):
        raise ConfigError("--tree and --thresholds go with --fragments, not --seg")
    labels = read_labels(args.seg or args.fragments, "segmentation" if args.seg else "fragments")
    ground_truth = read_labels(args.gt, "ground truth")
    table = fragment_contingency(labels, ground_truth, scored_roi(args, labels, ground_truth))
    if args.seg is not None:
        metrics = scores_from_lut(table, np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        if args.json:
            print(json.dumps(metrics))
        else:
            for key, value in metrics.items():
                print(f"{key:>16}: {value:.6f}")
        return 0
    from affcons.segment import MergeTree

    try:
        tree = MergeTree.load(args.tree)
    except (OSError, KeyError, ValueError) as error:
        raise ConfigError(f"--tree {args.tree}: not a merge tree ({error}); expected RUN_DIR/merge_tree.npz") from error
    rows = []
    for threshold in sorted(args.thresholds):
        lookup = tree.lookup(threshold)
        row = {"threshold": threshold, "segments": segments_from_lut(table, tree.ids, lookup)}
        rows.append({**row, **scores_from_lut(table, tree.ids, lookup)})
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0
