"""Pieces shared by the command-line tools: logging set-up, signal handling, error exits."""
from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Callable

from core.errors import BlossomError


def setup_logging(verbose: bool = False) -> None:
    """Human-readable logs on stderr; hivemind's own handler is kept quieter."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("hivemind", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def on_termination(callback: Callable[[], None], again: Callable[[], None] | None = None) -> threading.Event:
    """Call ``callback`` on the first SIGINT or SIGTERM and ``again`` (if given) on any later one; returns an
    event set when the first came. Either may raise (e.g. ``KeyboardInterrupt``) to interrupt the main thread."""
    fired = threading.Event()

    def handle(signum: int, frame: object) -> None:
        if not fired.is_set():
            fired.set()
            callback()
        elif again is not None:
            again()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return fired


def interrupt() -> None:
    """Stop what the main thread is doing now (used from a signal handler)."""
    raise KeyboardInterrupt


def fail(error: BlossomError | ValueError) -> int:
    """Print a one-line error for a person and return the CLI's error exit code."""
    print(f"error: {error}", file=sys.stderr)
    return 2
