"""The worker side of every step: the worker loop that local daisy workers run, and the cluster worker

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
    """Run ``step`` on the block at ``write_roi`` and append its timer record (the proof that the block is done);
    an exception is appended to the task's error records (with the block's grid index) and raised again."""
    block_index = step.block_index(write_roi)
    try:
        inject_fault(step.name, block_index, "start")
        timers = Timers()
        started = time.time()
        step.process_block(write_roi, block_index, timers)
    except Exception as error:
        append_record(step.run_dir.errors(step.task_id), error_record(block_index, error))
        raise
    record = timers.record(block_index, started)
    append_record(step.timers_dir(), record)
    return record


def error_record(block_index: int, error: BaseException) -> dict:
    """What the driver reports of a failed block: its grid index, the error's type and message, the time."""
    message = str(error).strip() or repr(error)
    return {"block": block_index, "error": f"{type(error).__name__}: {message}", "end": time.time()}


def serve_blocks(step) -> int:
    """The loop of every worker, local or on a cluster: set ``step`` up once, process the blocks the daisy
    scheduler hands out until there are none (the scheduler is found through ``DAISY_CONTEXT``), tear down.

    A block whose processing raises is reported failed to the scheduler (with its traceback; daisy retries it up to
    ``max_retries`` times) and the worker goes on with the next block: one bad block fails that block only. A
    failure to set up (a store that is down, a model that does not load) ends the worker with the exception, a dirty
    exit that daisy counts against ``max_worker_restarts``. Returns 0."""
    import daisy.v2 as daisy

    step.ensure_setup()
    client = daisy.Client()
    try:
        while True:
            try:
                with client.acquire_block() as block:
                    if block is None:
                        break
                    process(step, block.write_roi)
            except Exception:  # reported to the scheduler by acquire_block, recorded by process
                continue
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
