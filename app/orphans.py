"""No process outlives the GUI: children that hivemind forks from the GUI process exit when the GUI is gone.

The chat, tuning and swarm bridges start hivemind DHT nodes, which are processes forked from the
GUI. If the GUI is killed (SIGKILL, a crash), nothing would tell them to stop; a watchdog thread
started in every forked child ends the child's own children (the p2p daemon) and the child itself
once its parent has changed. The worker process needs no watchdog: it stops when its stdin closes.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
_installed = False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(CHECK_SECONDS)
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
        for child in children:
            child.terminate()
        psutil.wait_procs(children, timeout=5)
    except Exception:  # nothing more can be done from an orphan
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _start_watchdog(parent_pid: int) -> None:
    threading.Thread(target=_watch, args=(parent_pid,), name="blossom-orphan-watchdog", daemon=True).start()


def exit_children_with_parent() -> None:
    """From now on, every child forked by this process watches it and exits when it is gone (idempotent)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    _installed = True
    os.register_at_fork(after_in_child=lambda: _start_watchdog(os.getppid()))
