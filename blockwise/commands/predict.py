"""``affcons predict``: blockwise affinity prediction with a trained CRAC network, on every GPU or on CPU workers.

    affcons predict --checkpoint models/demo.pt --raw in.zarr/raw --out out.zarr/affs \\
        --block-size 40 512 512 --workers 4 [--gpus 0,1,2,3] [--dtype uint8|float16] \\
        [--map implicit|explicit|mean] [--disagreement out.zarr/disagreement] [--use-ema] [--run-dir DIR] [-c FILE]

``--block-size``, ``--patch``, ``--margin`` and ``--chunk-shape`` are voxels; ``--roi-offset``/``--roi-shape`` and
the lengths of a ``-c`` config file (keys of :class:`blockwise.config.PredictOptions`) are nm. Options on the command
line override the file. Exit codes: 0 done, 1 blocks failed (listed; re-run to retry), 2 bad input (checkpoint that
does not match its config, raw of the wrong dimensionality or voxel size, an existing output of another config).
"""

import argparse

from affcons.commands.arguments import non_negative_int, positive_int
from blockwise.commands.options import ZYX, add_execution_arguments, add_region_arguments, options_from_args


def gpu_list(text: str) -> list[int]:
    """``0,1,2`` -> ``[0, 1, 2]``."""
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated indices like 0,1,2, got {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated non-negative indices, got {text!r}")
    return gpus


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML file of PredictOptions keys (lengths in nm) used as defaults")
    parser.add_argument("--checkpoint", help="training checkpoint of affcons train (e.g. models/demo.pt)")
    parser.add_argument("--raw", help="raw EM in.zarr/raw or file.h5:raw, (z, y, x)")
    parser.add_argument("--out", help="output affinities out.zarr/affs, (channels, z, y, x)")
    parser.add_argument(
        "--block-size",
        dest="voxels.block_size",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="block (write ROI) in voxels: whole output tiles and chunks (default 4x8x8 tiles)",
    )
    parser.add_argument("--gpus", type=gpu_list, help="GPU indices, e.g. 0,1,2,3 (default: all visible GPUs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: CUDA if available")
    parser.add_argument("--dtype", choices=("uint8", "float16"), help="output dtype (default uint8)")
    parser.add_argument(
        "--map",
        choices=("auto", "implicit", "explicit", "mean"),
        help="which representation becomes the affinities (default auto: the mean of both maps for a CRAC model, "
        "the explicit map for a supervised-only one)",
    )
    parser.add_argument(
        "--channels", choices=("all", "short"), help="all offsets of the model (default) or only the 3 short-range"
    )
    parser.add_argument("--disagreement", help="also write out.zarr/NAME: mean |implicit - explicit| (uint8)")
    parser.add_argument("--use-ema", action="store_true", default=None, help="use the EMA weights (EMA runs)")
    parser.add_argument("--run-dir", help="run directory (default OUT.CONTAINER/../NAME.DATASET.predict-run)")
    parser.add_argument("--patch", nargs=3, type=positive_int, metavar=ZYX, help="network input, voxels")
    parser.add_argument(
        "--margin", nargs=3, type=non_negative_int, metavar=ZYX, help="output crop per side of each patch, voxels"
    )
    parser.add_argument("--batch-size", type=positive_int, help="patches per forward pass (default 8 GPU, 4 CPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="default auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="channels_last_3d memory format for the networks (GPU tuning)",
    )
    parser.add_argument("--writer-threads", type=positive_int, help="compress/write threads per worker (default 2)")
    parser.add_argument("--threads", type=positive_int, help="torch threads per CPU worker (default cores/workers)")
    add_region_arguments(parser, "predict")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, metavar=ZYX, help="output chunks, voxels")
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="raw voxel size, nm (only for raw without one; must match a stored one)",
    )
    parser.add_argument(
        "--model-voxel-size",
        nargs=3,
        type=positive_int,
        metavar=ZYX,
        help="voxel size the model was trained at, nm (default: read from its training volume)",
    )
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the plan; write nothing")
    add_execution_arguments(parser, "CPU worker processes (default 1); with GPUs one worker per GPU")


def run(args: argparse.Namespace) -> int:
    from blockwise.config import PredictOptions
    from blockwise.predict import PredictDriver, resolve

    if args.gpus is not None and args.device is None:
        args.device = "cuda"
    options = options_from_args(PredictOptions, args, "predict")
    config, _ = resolve(options, {"block_size": getattr(args, "voxels.block_size")})
    driver = PredictDriver(config, quiet=args.quiet)
    if args.dry_run:
        print(driver.plan())
        return 0
    return driver.run()
