"""Cluster worker: ``python -m blockwise.worker --config RUN_DIR/config.yaml --step NAME [--thresholds T ...]``.

Rebuilds the step from the run's resolved config alone, connects to the daisy scheduler named by ``DAISY_CONTEXT``
(set by the driver and forwarded by srun/sbatch/bsub), and processes blocks until the scheduler has none left.
An exception fails the block (daisy records it and retries it elsewhere) and ends this worker with a non-zero
exit, as daisy's own local workers do.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockwise.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="RUN_DIR/config.yaml written by affcons segment")
    parser.add_argument("--step", required=True, help="fragments, edges or extract")
    parser.add_argument("--thresholds", nargs="+", type=float, help="extract only: the thresholds of this task")
    args = parser.parse_args(argv)

    from affcons.config import load_config
    from affcons.errors import ConfigError
    from blockwise.config import SegmentConfig
    from blockwise.registry import BLOCKWISE_STEPS, build_step
    from blockwise.step import serve_blocks

    config = load_config(SegmentConfig, args.config)
    if args.step not in BLOCKWISE_STEPS:
        raise ConfigError(f"step {args.step!r} does not run on workers; blockwise steps: {', '.join(BLOCKWISE_STEPS)}")
    parameters = {"thresholds": args.thresholds} if args.step == "extract" and args.thresholds else {}
    return serve_blocks(build_step(config, args.step, **parameters))


if __name__ == "__main__":
    sys.exit(main())
