"""Helpers for the check tests: run code inside a lab namespace, in this process.

setns(2) moves only the calling thread into a network namespace, and threads
it creates afterwards inherit that namespace. So `in_netns` runs a function
in a fresh thread that first enters the lab namespace: the probe's sockets,
pynetdicom's association threads and the runner's worker threads all live
in the lab, while pytest's own thread stays in the root namespace. Python
3.11 has no os.setns: lab.netns.enter_netns calls it through ctypes.
"""

from __future__ import annotations

import os
import shutil
import threading

from lab.netns import enter_netns


def in_netns(namespace: str, function, *args, timeout_s: float = 60.0):
    """Call function(*args) in a new thread inside `namespace`; return its result or raise its error."""
    outcome: dict = {}

    def body():
        try:
            enter_netns(namespace)
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"in-netns-{namespace}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(f"function {function.__name__} still running in {namespace} after {timeout_s} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def require_tools(*paths: str) -> None:
    """Fail (never skip) when a binary the test needs is missing, or when not root."""
    if os.geteuid() != 0:
        raise AssertionError("these check tests need root: they build network namespaces and mount "
                             "file systems. Run them as root.")
    missing = [path for path in paths if not (os.path.isabs(path) and os.access(path, os.X_OK))
               and shutil.which(path) is None]
    if missing:
        raise AssertionError(f"missing programs needed by this test: {', '.join(missing)}")
