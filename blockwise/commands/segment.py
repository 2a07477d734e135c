"""``affcons segment``: affinities -> fragments -> RAG (SQLite or MongoDB) -> merge tree -> segmentations.

    affcons segment --affs OUT.zarr/affs --out OUT.zarr --thresholds 0.3 0.5 0.7 \\
        --block-size 64 256 256 --context 8 32 32 --workers 4 --graph sqlite:///run/rag.db \\
        [--run-dir DIR] [--dry-run] [--scoring mean|quantile50] [--roi-offset z y x --roi-shape z y x]
        [--agglomeration global|hierarchical [--stop-level N] [--worker-memory-gb GB]]

``--block-size``, ``--context`` and ``--chunk-shape`` are voxels; ``--roi-offset``/``--roi-shape`` are nm. A
``--config FILE`` (YAML, keys of :class:`blockwise.config.SegmentOptions`, lengths in nm) supplies defaults; options
on the command line override it. Exit codes: 0 done, 1 blocks failed (listed), 2 bad input or an existing output of
another config (nothing overwritten).
"""

import argparse
import math

from affcons.commands.arguments import non_negative_int, positive_int
from affcons.secrets import PASSWORD_ENV
from blockwise.commands.options import ZYX, add_execution_arguments, add_region_arguments, options_from_args


def gigabytes(text: str) -> int:
    """A positive, finite number of GB (1e9 bytes) as whole bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of GB, got {text!r}") from None
    if not (math.isfinite(value) and value * 1e9 >= 1):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of GB, got {text!r}")
    return round(value * 1e9)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--affs", help="affinities in.zarr/name or file.h5:name, (C >= 3, z, y, x), uint8 or float")
    parser.add_argument("--out", help="output zarr container (fragments, segmentation_<t>)")
    parser.add_argument(
        "--thresholds", dest="extract.thresholds", nargs="+", type=float, metavar="T", help="merge thresholds in [0, 1]"
    )
    parser.add_argument(
        "--block-size",
        dest="voxels.block_size",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="voxels (default 64 256 256)",
    )
    parser.add_argument(
        "--context", dest="voxels.context", nargs=3, type=non_negative_int, metavar=ZYX, help="voxels (default 8 32 32)"
    )
    parser.add_argument(
        "--graph", help="graph store URL (default sqlite:///RUN_DIR/rag.db; or mongodb://[user@]host:port/db)"
    )
    parser.add_argument(
        "--graph-credentials",
        metavar="FILE",
        help=f"file with the graph store's password on its first line (mode 600); or set {PASSWORD_ENV}",
    )
    parser.add_argument("--run-dir", dest="run_dir", help="run directory (default OUT/../NAME.affcons-run)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and estimated cost; write nothing")
    parser.add_argument(
        "--scoring",
        dest="agglomerate.scoring",
        metavar="SCORING",
        help="edge score: mean (default) or quantileQ, e.g. quantile50",
    )
    parser.add_argument(
        "--agglomeration",
        dest="agglomerate.method",
        choices=("global", "hierarchical"),
        help="global (default: the whole RAG in one process) or hierarchical (exact, one daisy task per octree level "
        "of blocks; the same merge tree, for RAGs beyond one machine)",
    )
    parser.add_argument(
        "--stop-level",
        dest="agglomerate.stop_level",
        metavar="N",
        type=positive_int,
        help="hierarchical only: finish the residual of level N in one process (default: go up to the root)",
    )
    parser.add_argument(
        "--worker-memory-gb",
        dest="agglomerate.worker_memory_bytes",
        metavar="GB",
        type=gigabytes,
        help="hierarchical only: memory of one worker (1 GB = 1e9 bytes); the first level whose largest block would "
        "exceed it is finished by the driver in one process (exact all the same)",
    )
    add_region_arguments(parser, "process")
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="nm; must match the stored voxel size if there is one",
    )
    parser.add_argument(
        "--chunk-shape",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="output chunks, voxels; must divide the block size (default: the block size)",
    )
    parser.add_argument("--config", help="YAML file of SegmentOptions keys (nm) used as defaults")
    parser.add_argument(
        "--boundary-threshold",
        dest="fragments.boundary_threshold",
        metavar="VALUE",
        type=float,
        help="watershed seeds where 1 - mean affinity < this",
    )
    parser.add_argument(
        "--min-size",
        dest="fragments.min_size",
        metavar="VOXELS",
        type=non_negative_int,
        help="dissolve fragments smaller than this (voxels)",
    )
    parser.add_argument(
        "--per-slice", dest="fragments.per_slice", action="store_true", default=None, help="2-D fragments per z-section"
    )
    add_execution_arguments(parser, "worker processes (default 1)")


def run(args: argparse.Namespace) -> int:
    from blockwise.config import SegmentOptions
    from blockwise.segment import SegmentDriver, resolve

    options = options_from_args(SegmentOptions, args, "segment")
    voxels = {"block_size": getattr(args, "voxels.block_size"), "context": getattr(args, "voxels.context")}
    config = resolve(options, voxels)
    return SegmentDriver(config, quiet=args.quiet).run(dry_run=args.dry_run)
