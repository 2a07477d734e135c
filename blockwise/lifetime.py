"""Helper processes that must not outlive the driver that started them (the daisy scheduler, the warm pool)."""

import os
import time


def die_with(parent_pid: int) -> None:
    """End this process when the process ``parent_pid`` ends (Linux: the kernel's parent-death signal; elsewhere a
    thread that watches the parent), so a killed driver never leaves a scheduler running."""
    import ctypes
    import signal
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):

        def watch():
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the driver died before the signal was armed
        os._exit(1)
