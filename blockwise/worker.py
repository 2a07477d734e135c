"""The worker side of every step: a local daisy worker's block function, and the cluster worker

    python -m blockwise.worker --config RUN_DIR/config.yaml --step NAME [--thresholds T ...]

which rebuilds the step from the run's resolved config file alone (``config.yaml`` of ``affcons segment``,
``predict.yaml`` of ``affcons predict``), connects to the daisy scheduler named by ``DAISY_CONTEXT`` (set by the
driver and forwarded by srun/sbatch/bsub), and processes blocks until the scheduler has none left. An exception
fails the block (daisy records it and retries it elsewhere) and ends this worker with a non-zero exit, as daisy's
own local workers do. Every processed block appends its timer record (:mod:`blockwise.timers`).
"""

import argparse
import sys
import time

from blockwise.faults import inject_fault
from blockwise.timers import Timers, append_record


def process(step, write_roi) -> dict:
    """Run ``step`` on the block at ``write_roi``, append its timer record, return the record."""
    block_index = step.block_index(write_roi)
    inject_fault(step.name, block_index, "start")
    timers = Timers()
    started = time.time()
    step.process_block(write_roi, block_index, timers)
    record = timers.record(block_index, started)
    append_record(step.timers_dir(), record)
    return record


def run_block(step, block) -> None:
    """Process one daisy block with ``step`` (the local launcher's process function, bound with ``partial``)."""
    step.ensure_setup()
    process(step, block.write_roi)


def serve_blocks(step) -> int:
    """Cluster worker loop: set ``step`` up once, process the blocks the daisy scheduler hands out until there are
    none (the scheduler is found through ``DAISY_CONTEXT``), tear down. Returns 0."""
    import daisy.v2 as daisy

    step.ensure_setup()
    client = daisy.Client()
    try:
        while True:
            with client.acquire_block() as block:
                if block is None:
                    break
                process(step, block.write_roi)
    finally:
        step.teardown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockwise.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run directory's resolved config file")
    parser.add_argument("--step", required=True, help="predict, fragments, edges or extract")
    parser.add_argument("--thresholds", nargs="+", type=float, help="extract only: the thresholds of this task")
    args = parser.parse_args(argv)

    from blockwise.registry import load_step

    parameters = {"thresholds": args.thresholds} if args.thresholds else {}
    return serve_blocks(load_step(args.step, args.config, **parameters))


if __name__ == "__main__":
    sys.exit(main())
