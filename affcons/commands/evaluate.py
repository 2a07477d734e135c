"""``affcons evaluate``: VOI split/merge and adapted Rand error of a segmentation against ground truth."""

import json

import numpy as np

from affcons.errors import VolumeError
from affcons.evaluate import evaluate
from affcons.io import open_volume


def configure_parser(parser) -> None:
    parser.add_argument("--seg", required=True, help="segmentation: out.zarr/name or file.h5:dataset")
    parser.add_argument("--gt", required=True, help="ground truth (id 0 is ignored): out.zarr/name or file.h5:dataset")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")


def read_labels(path: str, role: str):
    array = open_volume(path)
    if len(array.shape) != 3 or not np.issubdtype(array.dtype, np.integer):
        raise VolumeError(f"{role} {path}: expected a 3-D integer volume, got shape {array.shape}, dtype {array.dtype}")
    return array


def run(args) -> int:
    segmentation = read_labels(args.seg, "segmentation")
    ground_truth = read_labels(args.gt, "ground truth")
    if segmentation.roi != ground_truth.roi or segmentation.voxel_size != ground_truth.voxel_size:
        raise VolumeError(
            f"segmentation ROI {segmentation.roi} (voxel size {segmentation.voxel_size}) differs from ground truth "
            f"ROI {ground_truth.roi} (voxel size {ground_truth.voxel_size}); crop or re-import one of them"
        )
    metrics = evaluate(segmentation[segmentation.roi], ground_truth[ground_truth.roi])
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:>16}: {value:.6f}")
    return 0
