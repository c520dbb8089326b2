"""What the app's Python children (the worker, the API) share: their environment and their log file.

Both are QProcess children whose output the app reads; the log file keeps what they said after the
app shows only the last lines, and a failure to write it is a warning, never a reason not to run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from PySide6.QtCore import QProcessEnvironment

from core.launcher import PACKAGE_ROOT

logger = logging.getLogger(__name__)


def child_environment() -> QProcessEnvironment:
    """The environment of a Python child the app runs: this checkout importable first, output unbuffered so
    its lines arrive as they are written."""
    environment = QProcessEnvironment.systemEnvironment()
    pythonpath = environment.value("PYTHONPATH", "")
    environment.insert("PYTHONPATH", os.pathsep.join(filter(None, [str(PACKAGE_ROOT), pythonpath])))
    environment.insert("PYTHONUNBUFFERED", "1")
    return environment


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
