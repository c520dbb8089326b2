"""The log file of a child process the app runs (the worker, the API): appended to, flushed line by line.

Both are QProcess children whose output the app reads; the file keeps what they said after the app
shows only the last lines, and a failure to write it is a warning, never a reason not to run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


class ChildLog:
    """``path`` (``None``: no file), opened by :meth:`open` for one run of the child and closed by :meth:`close`."""

    def __init__(self, path: Path | None, child: str) -> None:
        self.path, self._child = path, child
        self._file: IO[str] | None = None

    def open(self) -> None:
        self.close()
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            logger.warning("Cannot write the %s log %s: %s", self._child, self.path, error)

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
