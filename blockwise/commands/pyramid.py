"""``affcons pyramid``: a multiscale OME-Zarr copy of a volume, blockwise (:mod:`blockwise.pyramid`).

    affcons pyramid OUT.zarr/segmentation_0.50 [--out OUT.zarr/segmentation_0.50_multiscale] [--mode auto|mean|mode]
        [--max-extent 256] [--chunk-shape 64 256 256] [--workers N] [--dry-run]

Exit codes: 0 done, 1 blocks failed (listed; re-run to retry), 2 bad input or an output of another config.
"""

import argparse

from affcons.commands.arguments import positive_int
from blockwise.commands.options import ZYX, add_execution_arguments, options_from_args


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the zarr array to downsample, c.zarr/name")
    parser.add_argument("--out", help="the multiscale group to write (default: c.zarr/name_multiscale)")
    parser.add_argument(
        "--mode",
        choices=("auto", "mean", "mode"),
        help="mean for intensities, mode (most frequent id) for ids; auto (default) decides by dtype and name",
    )
    parser.add_argument(
        "--max-extent", type=positive_int, metavar="N", help="coarsest level: at most N voxels per axis (default 256)"
    )
    parser.add_argument(
        "--chunk-shape", nargs=3, type=positive_int, metavar=ZYX, help="chunks = blocks per level (default 64 256 256)"
    )
    parser.add_argument("--run-dir", help="run directory (default: next to the container, NAME.pyramid-run)")
    parser.add_argument("--config", help="YAML file of PyramidOptions keys used as defaults")
    parser.add_argument("--dry-run", action="store_true", help="print the levels and blocks; write nothing")
    add_execution_arguments(parser, "worker processes (default 1)")


def run(args: argparse.Namespace) -> int:
    from blockwise.config import PyramidOptions
    from blockwise.pyramid import PyramidDriver, resolve

    config = resolve(options_from_args(PyramidOptions, args, "pyramid"))
    return PyramidDriver(config, quiet=args.quiet).run(dry_run=args.dry_run)
