"""Command-line options shared by the blockwise commands, and how they reach the options models.

Command-line options are written into the command's options model (:mod:`blockwise.config`) by their argparse
``dest``: an option whose dest is a key of the model (dotted for nested sections, e.g. ``execution.workers``) sets
that key, over the value of the ``--config`` file. So the CLI, config files and ``affcons run`` share one schema.
"""

import argparse
import shlex

from affcons.commands.arguments import non_negative_int, positive_int
from affcons.config import read_yaml, resolve_config_path, validate

ZYX = ("Z", "Y", "X")


def add_execution_arguments(parser: argparse.ArgumentParser, workers_help: str) -> None:
    """``--workers``, ``--launcher``, ``--launcher-args``, ``--block-timeout``, ``--max-retries``, ``--quiet``."""
    parser.add_argument("--workers", dest="execution.workers", metavar="N", type=positive_int, help=workers_help)
    parser.add_argument(
        "--launcher", dest="execution.launcher.type", choices=("local", "slurm", "lsf"), help="worker launcher"
    )
    parser.add_argument(
        "--launcher-args",
        dest="execution.launcher.extra_args",
        type=shlex.split,
        metavar="ARGS",
        help='extra srun/sbatch/bsub arguments as one shell-quoted string: --launcher-args="-p cpu -t 60"',
    )
    parser.add_argument(
        "--block-timeout",
        dest="execution.block_timeout_s",
        metavar="SECONDS",
        type=float,
        help="seconds before a block's worker is killed (default 3600)",
    )
    parser.add_argument(
        "--max-retries",
        dest="execution.max_retries",
        metavar="N",
        type=non_negative_int,
        help="retries per failed block (default 2)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or messages")


def add_region_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--roi-offset``/``--roi-shape`` (nm)."""
    parser.add_argument("--roi-offset", nargs=3, type=int, metavar=ZYX, help=f"begin of the region to {what}, nm")
    parser.add_argument("--roi-shape", nargs=3, type=positive_int, metavar=ZYX, help="shape of the region, nm")


def options_from_args(model, args: argparse.Namespace, source: str):
    """``model`` (an options model) from the ``--config`` file overlaid with the command-line options whose argparse
    dest is one of its keys (dotted for nested sections); ``--quiet`` also turns off the progress bars."""
    options: dict = read_yaml(resolve_config_path(args.config)) if args.config else {}
    for dest, value in vars(args).items():
        *sections, key = dest.split(".")
        if value is None or (sections or [key])[0] not in model.model_fields:
            continue
        target = options
        for name in sections:
            if not isinstance(target.get(name), dict):
                target[name] = {}
            target = target[name]
        target[key] = value
    if getattr(args, "quiet", False):
        if not isinstance(options.get("execution"), dict):
            options["execution"] = {}
        options["execution"]["progress"] = False
    return validate(model, options, f"{source} options" + (f" with {args.config}" if args.config else ""))
