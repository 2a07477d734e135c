"""Test-only fault injection into the workers of every step (never set :data:`FAULT_ENV` in production).

:data:`FAULT_ENV` holds a JSON object: ``{"step": "fragments", "block": 3, "action": "exit" | "raise" | "hang" |
"sleep", "point": "start" | "partial-write", "once": "/path/marker", "seconds": 0.1}``. ``block`` -1 (default)
matches every block; with ``once`` the fault fires only while the marker file does not exist (it is created first).
``sleep`` slows every matching block (to kill a run midway), ``hang`` sleeps ``seconds`` (to exceed the block
timeout), ``exit`` ends the worker process at once with :data:`FAULT_EXIT_CODE`.
"""

import json
import os
import time

FAULT_ENV = "AFFCONS_FAULT_INJECTION"
#: Exit code of an injected worker death.
FAULT_EXIT_CODE = 73


class InjectedFault(RuntimeError):
    """Raised by the test-only fault injection (action ``raise``)."""


def inject_fault(step_name: str, block_index: int, point: str) -> None:
    """Act as :data:`FAULT_ENV` says when ``step_name``, ``block_index`` and ``point`` match."""
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
