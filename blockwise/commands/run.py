"""``affcons run -c CONFIG``: the main job, raw volume -> affinities -> segmentations -> evaluation
(:mod:`blockwise.job`).

    affcons run -c demo                 # configs/demo.yaml: the bundled ISBI volume, the committed demo model
    affcons run -c my_run.yaml --run-dir /scratch/run1 [--workers 4] [--gpus 0,1] [--dry-run]

Config files (keys of :class:`blockwise.config.JobConfig`) give lengths in nm (z, y, x) except ``patch``, ``margin``
and ``chunk_shape`` (voxels); relative paths are taken from the repository root, so ``affcons run -c demo`` works
from any directory. Exit codes: 0 done, 1 blocks failed in a stage (listed), 2 bad input or an existing output of
another config.
"""

import argparse
from pathlib import Path

from affcons.commands.arguments import positive_int
from blockwise.commands.predict import gpu_list


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="config name (configs/NAME.yaml) or path")
    parser.add_argument(
        "--run-dir",
        dest="job_run_dir",
        metavar="RUN_DIR",
        help="run directory (default: the config's run_dir, else runs/<config name>)",
    )
    parser.add_argument(
        "--workers", dest="execution.workers", metavar="N", type=positive_int, help="override execution.workers"
    )
    parser.add_argument(
        "--gpus", dest="predict.gpus", metavar="GPUS", type=gpu_list, help="GPU indices for prediction, e.g. 0,1"
    )
    parser.add_argument(
        "--device", dest="predict.device", choices=("auto", "cpu", "cuda"), help="override predict.device"
    )
    parser.add_argument("--checkpoint", dest="predict.checkpoint", metavar="PATH", help="override predict.checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="check the config and print the plan; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_job(args: argparse.Namespace):
    """The job's config (the file overlaid with the command-line options) and its run directory."""
    from affcons.config import REPO_ROOT, resolve_config_path
    from blockwise.commands.options import options_from_args
    from blockwise.config import JobConfig
    from blockwise.job import resolve_path

    path = resolve_config_path(args.config)
    checkpoint = getattr(args, "predict.checkpoint")
    if checkpoint is not None:
        setattr(args, "predict.checkpoint", str(Path(checkpoint).absolute()))
    if getattr(args, "predict.gpus") is not None and getattr(args, "predict.device") is None:
        setattr(args, "predict.device", "cuda")
    args.config = str(path)
    config = options_from_args(JobConfig, args, "run")
    if args.job_run_dir:
        run_dir = Path(args.job_run_dir).absolute()
    elif config.run_dir:
        run_dir = Path(resolve_path(config.run_dir))
    else:
        run_dir = REPO_ROOT / "runs" / path.stem
    return config, run_dir


def run(args: argparse.Namespace) -> int:
    from blockwise.job import Job

    config, run_dir = load_job(args)
    return Job(config, run_dir, quiet=args.quiet).run(dry_run=args.dry_run)
