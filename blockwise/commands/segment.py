"""``affcons segment``: affinities -> fragments -> RAG (SQLite or MongoDB) -> merge tree -> segmentations.

    affcons segment --affs OUT.zarr/affs --out OUT.zarr --thresholds 0.3 0.5 0.7 \\
        --block-size 64 256 256 --context 8 32 32 --workers 4 --graph sqlite:///run/rag.db \\
        [--run-dir DIR] [--dry-run] [--scoring mean|quantile50] [--roi-offset z y x --roi-shape z y x]

``--block-size``, ``--context`` and ``--chunk-shape`` are voxels; ``--roi-offset``/``--roi-shape`` are nm. A
``--config FILE`` (YAML, keys of :class:`blockwise.config.SegmentConfig`, lengths in nm) supplies defaults; options
on the command line override it. Exit codes: 0 done, 1 blocks failed (listed), 2 bad input or an existing output of
another config (nothing overwritten).
"""

import argparse
import logging

from affcons.commands.arguments import non_negative_int, positive_int
from affcons.errors import ConfigError
from blockwise.commands import apply_execution_overrides


def configure_parser(parser: argparse.ArgumentParser) -> None:
    zyx = ("Z", "Y", "X")
    parser.add_argument("--affs", help="affinities in.zarr/name or file.h5:name, (C >= 3, z, y, x), uint8 or float")
    parser.add_argument("--out", help="output zarr container (fragments, segmentation_<t>)")
    parser.add_argument("--thresholds", nargs="+", type=float, metavar="T", help="merge thresholds in [0, 1]")
    parser.add_argument("--block-size", nargs=3, type=positive_int, metavar=zyx, help="voxels (default 64 256 256)")
    parser.add_argument("--context", nargs=3, type=non_negative_int, metavar=zyx, help="voxels (default 8 32 32)")
    parser.add_argument("--workers", type=positive_int, help="worker processes (default 1)")
    parser.add_argument("--graph", help="graph store URL (default sqlite:///RUN_DIR/rag.db; or mongodb://host:port/db)")
    parser.add_argument("--run-dir", help="run directory (default OUT/../NAME.affcons-run)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and estimated cost; write nothing")
    parser.add_argument("--scoring", help="edge score: mean (default) or quantileQ, e.g. quantile50")
    parser.add_argument("--roi-offset", nargs=3, type=int, metavar=zyx, help="begin of the region to process, nm")
    parser.add_argument("--roi-shape", nargs=3, type=positive_int, metavar=zyx, help="shape of the region, nm")
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=positive_int,
        metavar=zyx,
        help="nm; must match the stored voxel size if there is one",
    )
    parser.add_argument(
        "--chunk-shape",
        nargs=3,
        type=positive_int,
        metavar=zyx,
        help="output chunks, voxels; must divide the block size (default: the block size)",
    )
    parser.add_argument("--config", help="YAML file of SegmentConfig keys (nm) used as defaults")
    parser.add_argument("--launcher", choices=("local", "slurm", "lsf"), help="worker launcher (default local)")
    parser.add_argument(
        "--launcher-args",
        metavar="ARGS",
        help='extra srun/sbatch/bsub arguments as one shell-quoted string: --launcher-args="-p cpu -t 60"',
    )
    parser.add_argument("--boundary-threshold", type=float, help="watershed seeds where 1 - mean affinity < this")
    parser.add_argument("--min-size", type=non_negative_int, help="dissolve fragments smaller than this (voxels)")
    parser.add_argument("--per-slice", action="store_true", default=None, help="2-D fragments per z-section")
    parser.add_argument("--block-timeout", type=float, help="seconds before a block's worker is killed (default 3600)")
    parser.add_argument("--max-retries", type=non_negative_int, help="retries per failed block (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def options_from_args(args: argparse.Namespace) -> dict:
    """Config-file values (if any) overlaid with the command-line options (voxel lengths are converted later)."""
    from affcons.config import read_yaml, resolve_config_path

    options: dict = read_yaml(resolve_config_path(args.config)) if args.config else {}
    for key in ("affs", "out", "run_dir", "graph"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.roi_offset is not None:
        options["roi_offset"] = tuple(args.roi_offset)
    if args.roi_shape is not None:
        options["roi_shape"] = tuple(args.roi_shape)
    if (args.roi_offset is None) != (args.roi_shape is None) and "roi_offset" not in options:
        raise ConfigError("--roi-offset and --roi-shape go together (nm)")
    if args.chunk_shape is not None:
        options["chunk_shape"] = tuple(args.chunk_shape)

    def section(name: str) -> dict:
        value = dict(options.get(name) or {})
        options[name] = value
        return value

    if args.thresholds is not None:
        section("extract")["thresholds"] = args.thresholds
    if args.scoring is not None:
        section("agglomerate")["scoring"] = args.scoring
    for key in ("boundary_threshold", "min_size", "per_slice"):
        if getattr(args, key) is not None:
            section("fragments")[key] = getattr(args, key)
    options["execution"] = apply_execution_overrides(section("execution"), args)
    if not options.get("extract", {}).get("thresholds"):
        raise ConfigError("no thresholds: pass --thresholds T [T ...] (values in [0, 1])")
    return options


def run(args: argparse.Namespace) -> int:
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # its import-time INFO line is noise here
    from blockwise.pipeline import Pipeline, resolve

    options = options_from_args(args)
    config = resolve(
        options,
        voxel_size_override=tuple(args.voxel_size) if args.voxel_size else None,
        block_voxels=tuple(args.block_size) if args.block_size else None,
        context_voxels=tuple(args.context) if args.context else None,
    )
    return Pipeline(config, quiet=args.quiet).run(dry_run=args.dry_run)
