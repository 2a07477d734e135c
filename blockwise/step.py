"""The contract of a blockwise step, and what every worker does around it.

A step (:class:`BlockwiseStep`) is built from the run's :class:`~blockwise.config.SegmentConfig` alone, so the
driver can pickle it to daisy's local worker processes and a cluster worker can rebuild it from
``RUN_DIR/config.yaml``. Its interface:

- ``name`` / ``task_id``: the step's name and daisy task id (the extract task id names its thresholds);
- ``rois()``: daisy's total, read and write ROIs in nm (one block at the origin; blocks tile at the write stride);
- ``setup()``: per worker process, once (open arrays and the graph store);
- ``process_block(write_roi, block_index, timers)``: read, compute, write one block; idempotent, so a retried or
  resumed block overwrites its own earlier output with the same bytes;
- ``teardown()``: per worker process, at the end.

Blocks are identified by their *grid index* (:meth:`BlockwiseStep.block_index`), the linear index of the write
ROI's position in the block grid of the run's ROI. It depends only on geometry, never on daisy's scheduling, so
fragment ids (``local_id + grid_index * (voxels_per_block + 1)``) and graph-store keys are the same in every run.

:func:`run_block` wraps ``process_block`` for the workers: lazy setup, timers appended to
``RUN_DIR/timers/<task_id>/<host>-<pid>.jsonl`` (one JSON line per block; the summary keeps the last line per
block), and the test-only fault injection of :func:`inject_fault`.
"""

import atexit
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from funlib.geometry import Coordinate, Roi

from blockwise.config import SegmentConfig

#: Test-only fault injection, a JSON object in this environment variable: ``{"step": "fragments", "block": 3,
#: "action": "exit" | "raise" | "hang" | "sleep", "point": "start" | "partial-write", "once": "/path/marker",
#: "seconds": 0.1}``. ``block`` -1 (default) matches every block; with ``once`` the fault fires only while the
#: marker file does not exist (it is created first). ``sleep`` slows every matching block (to kill a run midway),
#: ``hang`` sleeps ``seconds`` (to exceed the block timeout). Never set it in production.
FAULT_ENV = "AFFCONS_FAULT_INJECTION"
#: Exit code of an injected worker death.
FAULT_EXIT_CODE = 73


class InjectedFault(RuntimeError):
    """Raised by the test-only fault injection (action ``raise``)."""


class Timers:
    """Seconds spent per phase of one block (``read``, ``compute``, ``write``) and counters."""

    def __init__(self):
        self.seconds: dict[str, float] = {"read": 0.0, "compute": 0.0, "write": 0.0}
        self.counts: dict[str, int] = {}

    @contextmanager
    def time(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def count(self, key: str, value: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(value)


class BlockwiseStep:
    """Base class of the blockwise steps (see the module docstring for the contract)."""

    #: Step name, as in ``SegmentConfig`` and ``--step``.
    name: str = ""

    def __init__(self, config: SegmentConfig):
        self.config = config
        self.voxel_size = Coordinate(config.voxel_size)
        self.roi = Roi(config.roi_offset, config.roi_shape)
        self.block_shape = Coordinate(config.block_size)
        self.grid_shape = tuple(math.ceil(r / b) for r, b in zip(config.roi_shape, config.block_size))
        self.voxels_per_block = math.prod(config.block_voxels)
        self._ready = False

    # ------------------------------------------------------------------------------------------- the contract

    @property
    def task_id(self) -> str:
        return self.name

    def rois(self) -> tuple[Roi, Roi, Roi]:
        """``(total_roi, read_roi, write_roi)`` for daisy, nm."""
        raise NotImplementedError

    def setup(self) -> None:
        """Open what ``process_block`` needs (once per worker process)."""

    def process_block(self, write_roi: Roi, block_index: int, timers: Timers) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Close what ``setup`` opened."""

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block_index(self, write_roi: Roi) -> int:
        """Linear (C-order) index of the block whose write ROI begins at ``write_roi.begin`` in the block grid."""
        position = (write_roi.begin - self.roi.begin) / self.block_shape
        if (write_roi.begin - self.roi.begin) % self.block_shape != Coordinate((0, 0, 0)):
            raise ValueError(f"{self.task_id}: write ROI {write_roi} is not on the block grid of {self.roi}")
        index = 0
        for p, n in zip(position, self.grid_shape):
            index = index * n + int(p)
        return index

    def block_roi(self, block_index: int) -> Roi:
        """Write ROI of the block with this grid index (clipped to the run's ROI)."""
        position = []
        for n in reversed(self.grid_shape):
            position.append(block_index % n)
            block_index //= n
        begin = self.roi.begin + Coordinate(tuple(reversed(position))) * self.block_shape
        return Roi(begin, self.block_shape).intersect(self.roi)

    def first_id(self, block_index: int) -> int:
        """Fragment ids of a block are ``first_id + 1 .. first_id + voxels_per_block``."""
        return block_index * (self.voxels_per_block + 1)

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True
            atexit.register(self.teardown)

    def timers_dir(self) -> Path:
        return self.run_dir / "timers" / self.task_id


def run_block(step: BlockwiseStep, block) -> None:
    """Process one daisy block with ``step`` (the local launcher's process function, bound with ``partial``)."""
    step.ensure_setup()
    process(step, block.write_roi)


def serve_blocks(step: BlockwiseStep) -> int:
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


def process(step: BlockwiseStep, write_roi: Roi) -> dict:
    """Run ``step`` on one block, record its timers, return the timer record."""
    block_index = step.block_index(write_roi)
    inject_fault(step.name, block_index, "start")
    timers = Timers()
    started = time.time()
    step.process_block(write_roi, block_index, timers)
    record = {
        "block": block_index,
        "start": started,
        "end": time.time(),
        "pid": os.getpid(),
        **{f"{phase}_s": round(seconds, 6) for phase, seconds in timers.seconds.items()},
        **timers.counts,
    }
    directory = step.timers_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a") as stream:
        stream.write(json.dumps(record) + "\n")
    return record


def inject_fault(step_name: str, block_index: int, point: str) -> None:
    """Test-only: act as :data:`FAULT_ENV` says when ``step_name``, ``block_index`` and ``point`` match."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault = json.loads(spec)
    if fault.get("step") != step_name or fault.get("point", "start") != point:
        return
    if fault.get("block", -1) not in (-1, block_index):
        return
    action = fault.get("action", "raise")
    if action == "sleep":
        time.sleep(float(fault.get("seconds", 0.1)))
        return
    once = fault.get("once")
    if once:
        try:
            with open(once, "x"):
                pass
        except FileExistsError:
            return
    if action == "exit":
        os._exit(FAULT_EXIT_CODE)
    if action == "hang":
        time.sleep(float(fault.get("seconds", 3600)))
        return
    raise InjectedFault(f"injected fault in step {step_name}, block {block_index}, at {point}")
