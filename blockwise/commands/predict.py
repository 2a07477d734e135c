"""``affcons predict``: blockwise affinity prediction with a trained CRAC network, on every GPU or on CPU workers.

    affcons predict --checkpoint models/demo.pt --raw in.zarr/raw --out out.zarr/affs \\
        --block-size 40 512 512 --workers 4 [--gpus 0,1,2,3] [--dtype uint8|float16] \\
        [--map implicit|explicit|mean] [--disagreement out.zarr/disagreement] [--use-ema] [--run-dir DIR] [-c FILE]

``--block-size``, ``--patch``, ``--margin`` and ``--chunk-shape`` are voxels; ``--roi-offset``/``--roi-shape`` and
the lengths of a ``-c`` config file (keys of :class:`blockwise.predict.PredictConfig`) are nm. Options on the command
line override the file. Exit codes: 0 done, 1 blocks failed (listed; re-run to retry), 2 bad input (checkpoint that
does not match its config, raw of the wrong dimensionality or voxel size, an existing output of another config).
"""

import argparse

from affcons.commands.arguments import non_negative_int, positive_int
from affcons.errors import ConfigError
from blockwise.commands import apply_execution_overrides


def _gpu_list(text: str) -> list[int]:
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated indices like 0,1,2, got {text!r}") from None
    if not gpus or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"--gpus takes comma-separated non-negative indices, got {text!r}")
    return gpus


def configure_parser(parser: argparse.ArgumentParser) -> None:
    zyx = ("Z", "Y", "X")
    parser.add_argument("-c", "--config", help="YAML file of PredictConfig keys (lengths in nm) used as defaults")
    parser.add_argument("--checkpoint", help="training checkpoint of affcons train (e.g. models/demo.pt)")
    parser.add_argument("--raw", help="raw EM in.zarr/raw or file.h5:raw, (z, y, x)")
    parser.add_argument("--out", help="output affinities out.zarr/affs, (channels, z, y, x)")
    parser.add_argument(
        "--block-size",
        nargs=3,
        type=positive_int,
        metavar=zyx,
        help="block (write ROI) in voxels: whole output tiles and chunks (default 4x8x8 tiles)",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="CPU worker processes (default 1); with GPUs one worker per GPU"
    )
    parser.add_argument("--gpus", type=_gpu_list, help="GPU indices, e.g. 0,1,2,3 (default: all visible GPUs)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: CUDA if available")
    parser.add_argument("--dtype", choices=("uint8", "float16"), help="output dtype (default uint8)")
    parser.add_argument(
        "--map",
        choices=("implicit", "explicit", "mean"),
        help="which representation becomes the affinities (default: the best on validation data)",
    )
    parser.add_argument(
        "--channels",
        choices=("all", "short"),
        help="all offsets of the model (default) or only the 3 short-range channels",
    )
    parser.add_argument("--disagreement", help="also write out.zarr/NAME: mean |implicit - explicit| (uint8)")
    parser.add_argument("--use-ema", action="store_true", default=None, help="use the EMA weights (EMA runs)")
    parser.add_argument("--run-dir", help="run directory (default OUT.CONTAINER/../NAME.DATASET.predict-run)")
    parser.add_argument("--patch", nargs=3, type=positive_int, metavar=zyx, help="network input, voxels")
    parser.add_argument(
        "--margin", nargs=3, type=non_negative_int, metavar=zyx, help="output crop per side of each patch, voxels"
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
    parser.add_argument("--roi-offset", nargs=3, type=int, metavar=zyx, help="begin of the region to predict, nm")
    parser.add_argument("--roi-shape", nargs=3, type=positive_int, metavar=zyx, help="shape of the region, nm")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, metavar=zyx, help="output chunks, voxels")
    parser.add_argument(
        "--voxel-size",
        nargs=3,
        type=positive_int,
        metavar=zyx,
        help="raw voxel size, nm (only for raw without one; must match a stored one)",
    )
    parser.add_argument(
        "--model-voxel-size",
        nargs=3,
        type=positive_int,
        metavar=zyx,
        help="voxel size the model was trained at, nm (default: read from its training volume)",
    )
    parser.add_argument("--launcher", choices=("local", "slurm", "lsf"), help="worker launcher (default local)")
    parser.add_argument(
        "--launcher-args",
        metavar="ARGS",
        help='extra srun/sbatch/bsub arguments as one shell-quoted string: --launcher-args="-p gpu"',
    )
    parser.add_argument("--block-timeout", type=float, help="seconds before a block's worker is killed (default 3600)")
    parser.add_argument("--max-retries", type=non_negative_int, help="retries per failed block (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the plan; write nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def options_from_args(args: argparse.Namespace) -> dict:
    """Config-file values (if any) overlaid with the command-line options; voxel lengths converted later."""
    from affcons.config import read_yaml, resolve_config_path

    options: dict = read_yaml(resolve_config_path(args.config)) if args.config else {}
    for key in (
        "checkpoint",
        "raw",
        "out",
        "run_dir",
        "device",
        "dtype",
        "map",
        "channels",
        "disagreement",
        "batch_size",
        "precision",
        "threads",
        "use_ema",
        "channels_last",
        "writer_threads",
    ):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    for key in ("patch", "margin", "chunk_shape", "voxel_size", "model_voxel_size", "roi_offset", "roi_shape"):
        if getattr(args, key) is not None:
            options[key] = tuple(getattr(args, key))
    if args.gpus is not None:
        options["gpus"] = args.gpus
        options.setdefault("device", "cuda")
    if (args.roi_offset is None) != (args.roi_shape is None):
        raise ConfigError("--roi-offset and --roi-shape go together (nm)")
    options["execution"] = apply_execution_overrides(options.get("execution") or {}, args)
    return options


def run(args: argparse.Namespace) -> int:
    from blockwise.predict import PredictJob, format_plan, resolve

    options = options_from_args(args)
    config, _ = resolve(options, block_voxels=tuple(args.block_size) if args.block_size else None)
    job = PredictJob(config, quiet=args.quiet)
    if args.dry_run:
        job.check_existing()
        print(format_plan(config))
        return 0
    return job.run()
