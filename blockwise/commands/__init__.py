"""Command-line entry points of the blockwise pipeline (dispatched by :mod:`affcons.cli`)."""

import shlex


def apply_execution_overrides(execution: dict, args) -> dict:
    """``execution`` (a config section as a dict) updated by the shared command-line options: ``--workers``,
    ``--block-timeout``, ``--max-retries``, ``--launcher``, ``--launcher-args`` (one shell-quoted string) and
    ``--quiet``."""
    execution = dict(execution)
    if args.workers is not None:
        execution["workers"] = args.workers
    if args.block_timeout is not None:
        execution["block_timeout_s"] = args.block_timeout
    if args.max_retries is not None:
        execution["max_retries"] = args.max_retries
    if args.launcher is not None or args.launcher_args is not None:
        launcher = dict(execution.get("launcher") or {})
        if args.launcher is not None:
            launcher["type"] = args.launcher
        if args.launcher_args is not None:
            launcher["extra_args"] = shlex.split(args.launcher_args)
        execution["launcher"] = launcher
    if args.quiet:
        execution["progress"] = False
    return execution
