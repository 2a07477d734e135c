"""Measurements: seconds per phase of each block, the per-task timer records, and a peak-memory sampler.

A worker appends one JSON line per processed block to ``RUN_DIR/timers/<task_id>/<host>-<pid>.jsonl``
(:func:`append_record`): ``block`` (grid index), ``start``/``end`` (epoch seconds), ``pid``, ``<phase>_s`` seconds
and counters. A retried block leaves several lines; readers keep the last one per block. The records also prove that
a block was processed (:func:`recorded_blocks`, the driver's coverage check).
"""

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class Timers:
    """Seconds spent per phase of one block (``read``, ``compute``, ``write`` and any others) and counters."""

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

    def add(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere (e.g. the phases inside one compute call) to ``phase``."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def count(self, key: str, value: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(value)

    def record(self, block_index: int, started: float) -> dict:
        """The JSON record of a block processed since ``started`` (epoch seconds)."""
        return {
            "block": block_index,
            "start": started,
            "end": time.time(),
            "pid": os.getpid(),
            **{f"{phase}_s": round(seconds, 6) for phase, seconds in self.seconds.items()},
            **self.counts,
        }


def append_record(directory: Path, record: dict) -> None:
    """Append ``record`` to this process's record file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{socket.gethostname()}-{os.getpid()}.jsonl", "a") as stream:
        stream.write(json.dumps(record) + "\n")


def read_records(directory: Path) -> dict[int, dict]:
    """The last timer record per block index of a task's timer directory."""
    last: dict[int, dict] = {}
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a killed worker
                continue
            if record["block"] not in last or record["end"] >= last[record["block"]]["end"]:
                last[record["block"]] = record
    return last


def recorded_blocks(directory: Path) -> set[int]:
    """Grid indices of the blocks with a record."""
    return set(read_records(directory))


def summarise(directory: Path, since: float | None = None) -> dict:
    """Sum the last record per block of a task: seconds of read/compute/write (and other phases), blocks, counters.

    ``processed_this_run`` counts blocks that started at or after ``since``; ``span_s`` is the time from the first
    start to the last end among them; ``workers_seen`` the processes that ran them.
    """
    last = read_records(directory)
    totals: dict = {"blocks": len(last), "read_s": 0.0, "compute_s": 0.0, "write_s": 0.0}
    for record in last.values():
        for key, value in record.items():
            if key not in ("block", "start", "end", "pid"):
                totals[key] = totals.get(key, 0) + value
    recent = [r for r in last.values() if since is None or r["start"] >= since]
    totals["processed_this_run"] = len(recent)
    totals["span_s"] = round(max(r["end"] for r in recent) - min(r["start"] for r in recent), 3) if recent else 0.0
    totals["workers_seen"] = len({r["pid"] for r in recent})
    for key, value in totals.items():
        if key.endswith("_s") and key != "span_s":
            totals[key] = round(value, 3)
    return totals


def voxels_since(directory: Path, since: float) -> int:
    """Output voxels (the ``voxels`` counter) of the blocks that started at or after ``since``."""
    return sum(int(r.get("voxels", 0)) for r in read_records(directory).values() if r["start"] >= since)


def peak_rss_bytes() -> int:
    """This process's peak resident memory, bytes, since it started or since :func:`reset_peak_rss` (Linux's
    ``VmHWM``; elsewhere ``ru_maxrss``, which cannot be reset)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Restart :func:`peak_rss_bytes` from the current resident memory (Linux's ``clear_refs``), so that the peak of a
    warm worker (``blockwise.pool``) belongs to the step it serves, not to the steps it served before."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass


class RssSampler:
    """Peak resident memory (bytes) of this process while the ``with`` block runs (a thread samples every
    ``interval`` seconds)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
