"""A line every few seconds while a long step runs without output of its own.

Some steps cannot report progress (transformers reading a GGUF file, a tokenizer being built, a
checksum pass over gigabytes): ``with still_working("Reading the tokenizer"):`` logs what is being
done when it starts, then ``... still at it (15 s)`` every ``period`` seconds until it ends, so a
person never looks at a silent terminal wondering whether it hangs.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

HEARTBEAT_PERIOD = 5.0

ProgressCallback = Callable[[str, int, int], None]
"""``(stage, done, total)``: a long job's progress for a progress bar; ``total`` 0 while it cannot be counted."""


@contextmanager
def still_working(what: str, logger: logging.Logger, period: float = HEARTBEAT_PERIOD,
                  on_progress: ProgressCallback | None = None) -> Iterator[None]:
    """Log ``what`` now and a reminder every ``period`` seconds until the block ends (and tell ``on_progress``
    that an uncounted stage began)."""
    logger.info("%s ...", what)
    if on_progress is not None:
        on_progress(what, 0, 0)
    done = threading.Event()
    began = time.monotonic()

    def remind() -> None:
        while not done.wait(period):
            logger.info("%s: still at it (%.0f s)", what, time.monotonic() - began)

    reminder = threading.Thread(target=remind, name="blossom-heartbeat", daemon=True)
    reminder.start()
    try:
        yield
    finally:
        done.set()
        reminder.join()
