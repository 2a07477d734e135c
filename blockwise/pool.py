"""Warm local workers: one set of worker processes per run, reused by every step, instead of fresh ones per step.

daisy 2 starts every worker slot of every task as a fresh ``python -m daisy._subprocess_worker`` (it cannot fork),
and a fresh worker here pays ~1.7 s of CPU before its first block: Python, the step modules, numba's registries
(numba imports scipy.linalg on its first compiled call) and the cached kernels. ``affcons segment`` runs three or
more steps, so with the local launcher the driver starts ``execution.workers`` pool processes once per run
(:class:`WorkerPool`; they load the kernels while the driver prepares its outputs) and every step's workers run in
them:

- daisy still spawns its worker subprocess per slot, but that process is a thin relay (:func:`relay`, no numpy
  import): it claims an idle pool process (an exclusive ``flock`` on the slot's lock file), sends it the pickled step
  and the task's ``DAISY_CONTEXT`` over a Unix socket (authenticated with a key that exists only in memory and in
  daisy's stdin payload), and waits for the outcome;
- the pool process runs the ordinary worker loop (:func:`blockwise.worker.serve_blocks`) with its own daisy client, so
  blocks fail, time out and are retried exactly as in a fresh worker;
- a pool process that dies (an injected ``exit``, a block timeout: daisy's watchdog ends the process that holds the
  client) makes its relay exit with the same exit code, a dirty worker exit for daisy as before; a relay that finds
  no live idle pool process runs the worker loop itself (cold, the pre-pool behaviour), and the driver replaces the
  ended pool processes after each step (:meth:`WorkerPool.revive`).

Results do not depend on the pool (``execution.warm_workers: false`` turns it off; tests compare both).
"""

import fcntl
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import AuthenticationError, Client, Listener
from pathlib import Path

from affcons.files import write_text

#: Name prefix of the pool directories in ``$TMPDIR``, followed by the driver's pid.
PREFIX = "affcons-pool-"
#: Seconds a relay waits for a starting pool process to listen before it serves the step itself.
START_WAIT_S = 60.0
#: Seconds a relay waits for the driver to record the exit code of a pool process that ended during its task.
EXIT_CODE_WAIT_S = 10.0
#: Exit code of a relay whose pool process ended without a recorded exit code.
UNKNOWN_EXIT = 70


@dataclass(frozen=True)
class PoolAddress:
    """Where relays find the pool: a private directory with a socket, a lock file and exit-code files per slot, and
    the key that authenticates a relay (never written to a file)."""

    directory: str
    size: int
    authkey: bytes = field(repr=False)  # no log line or error that shows the relay's function shows the key

    def socket(self, slot: int) -> str:
        return os.path.join(self.directory, f"{slot}.sock")

    def lock(self, slot: int) -> str:
        return os.path.join(self.directory, f"{slot}.lock")

    def pid_file(self, slot: int) -> str:
        """Where the driver writes the pid of the slot's current pool process."""
        return os.path.join(self.directory, f"{slot}.pid")

    def exit_file(self, pid: int) -> str:
        """Where the driver writes the exit code of the pool process ``pid`` when it ends."""
        return os.path.join(self.directory, f"{pid}.exit")


class WorkerPool:
    """``size`` warm worker processes (``python -c ... blockwise.pool ...``) that live as long as this object and die
    with this process (Linux parent-death signal); each writes to ``LOG_DIR/pool-<slot>.log``. Use as a context
    manager, or call :meth:`close`."""

    def __init__(self, size: int, log_dir: Path):
        remove_stale_pools()
        # mode 700: the sockets are this user's only; the name carries the driver's pid (remove_stale_pools)
        directory = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
        self.address = PoolAddress(directory, size, secrets.token_bytes(32))
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._closing = threading.Event()
        self.processes = [self._start(slot) for slot in range(size)]

    def _start(self, slot: int) -> subprocess.Popen:
        """Start the slot's pool process (listening on the slot's socket) and a thread that records its exit code."""
        path = self.address.socket(slot)
        if os.path.exists(path):
            os.unlink(path)
        settings = {"socket": path, "authkey": self.address.authkey, "driver_pid": os.getpid(), "sys_path": sys.path}
        bootstrap = "import pickle, sys; s = pickle.load(sys.stdin.buffer); sys.path[:0] = s['sys_path']; "
        bootstrap += "import blockwise.pool; blockwise.pool.serve(s)"
        with open(self.log_dir / f"pool-{slot}.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-c", bootstrap], stdin=subprocess.PIPE, stdout=log, stderr=log)
        process.stdin.write(pickle.dumps(settings))
        process.stdin.close()
        write_text(self.address.pid_file(slot), str(process.pid))
        threading.Thread(target=self._watch, args=(process,), daemon=True, name=f"pool {slot}").start()
        return process

    def _watch(self, process: subprocess.Popen) -> None:
        """Record the exit code of ``process`` for its relay."""
        code = process.wait()
        if not self._closing.is_set():
            try:
                write_text(self.address.exit_file(process.pid), str(code))
            except OSError:
                pass

    def revive(self) -> None:
        """Replace the pool processes that have ended (call from the thread that made the pool: a process's
        parent-death signal fires when the thread that started it ends)."""
        for slot, process in enumerate(self.processes):
            if process.poll() is not None:
                self.processes[slot] = self._start(slot)

    def close(self) -> None:
        """End the pool processes (idle ones at once) and remove the pool's directory."""
        self._closing.set()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.address.directory, ignore_errors=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_stale_pools() -> None:
    """Remove this user's pool directories whose driver has ended without closing its pool (killed by a signal it
    could not handle): ``$TMPDIR/affcons-pool-<driver pid>-*`` with no process of that pid."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        try:
            pid = int(path.name[len(PREFIX) :].split("-", 1)[0])
            if path.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, OSError):  # not a pool directory of ours, or its driver lives
            continue


# ------------------------------------------------------------------------------------------------- pool process


def serve(settings: dict) -> None:
    """The pool process: listen on its socket, load the kernels, then run one step's worker loop per relay."""
    from blockwise.lifetime import die_with

    die_with(settings["driver_pid"])
    listener = Listener(settings["socket"], family="AF_UNIX", authkey=settings["authkey"])
    warm_up()
    while True:
        try:
            connection = listener.accept()
        except (AuthenticationError, OSError, EOFError):  # a relay that died while connecting
            continue
        with connection:
            serve_one(connection)


def warm_up() -> None:
    """Import the steps and run the fragments kernel once on a tiny volume: numba's first compiled call loads its
    registries (most of a fresh worker's start-up), and the kernel's own cache."""
    import numpy as np

    import blockwise.steps.edges
    import blockwise.steps.extract
    import blockwise.steps.fragments  # noqa: F401
    from affcons.segment import block_fragments

    affs = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 12), dtype=np.uint8)
    block_fragments(affs, (slice(2, 10),) * 3, first_id=1, voxel_size=(1, 1, 1))


def serve_one(connection) -> None:
    """One relay's task: the worker loop of the step it sent, under the task's ``DAISY_CONTEXT``; answers ``None``
    or the error (a failure to set up, a scheduler that went away) in one line."""
    import gc

    from blockwise.worker import serve_blocks

    try:
        connection.send(os.getpid())
        payload, context = connection.recv()
    except (EOFError, OSError):
        return
    os.environ["DAISY_CONTEXT"] = context
    outcome = None
    try:
        serve_blocks(pickle.loads(payload))
    except Exception as error:
        traceback.print_exc()
        outcome = "".join(traceback.format_exception_only(error)).strip()
    finally:
        gc.collect()
        _return_freed_memory()
    try:
        connection.send(outcome)
    except OSError:  # the relay is gone; the scheduler counted its exit
        pass


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim``), so a step's peak does not stay in the
    pool process's resident memory during the next step."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -------------------------------------------------------------------------------------------------------- relay


def relay(address: PoolAddress, payload: bytes) -> None:
    """daisy's worker function of a local step with a pool (runs in daisy's worker subprocess): have an idle pool
    process serve the step pickled in ``payload``, or serve it here when none is alive and idle. A pool process that
    ends during the task ends this process with the same exit code."""
    for slot in range(address.size):
        with open(address.lock(slot), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another relay uses that pool process
                continue
            connection = _connect(address, slot)
            if connection is None:
                continue
            pid = None
            with connection:
                try:
                    pid = connection.recv()
                    connection.send((payload, os.environ["DAISY_CONTEXT"]))
                    outcome = connection.recv()
                except (EOFError, OSError):
                    _exit_like(address, slot, pid)
            if outcome is not None:
                raise RuntimeError(outcome)
            return
    from blockwise.worker import serve_blocks

    serve_blocks(pickle.loads(payload))


def _connect(address: PoolAddress, slot: int):
    """A connection to the slot's pool process, waiting while it starts (up to :data:`START_WAIT_S`); None when
    it has ended (its replacement may not be listening yet)."""
    deadline = time.monotonic() + START_WAIT_S
    while True:
        try:
            return Client(address.socket(slot), family="AF_UNIX", authkey=address.authkey)
        except (OSError, EOFError, AuthenticationError):
            pass
        try:
            with open(address.pid_file(slot)) as file:
                os.kill(int(file.read()), 0)  # alive: still starting
        except (OSError, ValueError):
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _exit_like(address: PoolAddress, slot: int, pid: int | None) -> None:
    """End this relay with the exit code of the pool process ``pid`` that ended during its task (recorded by the
    driver), so daisy reports it as it would a worker of its own."""
    code = None
    deadline = time.monotonic() + EXIT_CODE_WAIT_S
    while pid is not None and code is None and time.monotonic() < deadline:
        try:
            with open(address.exit_file(pid)) as file:
                code = int(file.read())
        except (OSError, ValueError):
            time.sleep(0.05)
    if code is None or code == 0:
        code = UNKNOWN_EXIT
    print(
        f"pool worker {slot} (pid {pid}) exited with code {code} while serving this task", file=sys.stderr, flush=True
    )
    os._exit(code if code > 0 else 128 - code)
