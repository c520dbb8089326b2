"""Run one function in a background thread and get its result (or error) back as a Qt signal."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from app.formatting import describe_error

logger = logging.getLogger(__name__)


class BackgroundCall(QObject):
    """Calls ``function()`` in a daemon thread; emits ``succeeded(result)`` or ``failed(reason)`` in the GUI thread.

    The object keeps itself alive until it has reported (signals from the thread are queued to the
    thread this QObject lives in).
    """

    succeeded = Signal(object)
    failed = Signal(str)

    _running: set["BackgroundCall"] = set()

    def __init__(self, function: Callable[[], Any], name: str = "blossom-task", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.function = function
        self.name = name

    def start(self) -> "BackgroundCall":
        BackgroundCall._running.add(self)
        self.succeeded.connect(self._forget)
        self.failed.connect(self._forget)
        threading.Thread(target=self._run, name=self.name, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            result = self.function()
        except Exception as error:  # reported to the GUI, never raised into Qt
            logger.warning("%s failed: %s", self.name, describe_error(error), exc_info=True)
            self.failed.emit(describe_error(error))
        else:
            self.succeeded.emit(result)

    def _forget(self, *_: object) -> None:
        BackgroundCall._running.discard(self)


def run_in_background(function: Callable[[], Any], on_success: Callable[[Any], None],
                      on_failure: Callable[[str], None], name: str = "blossom-task") -> BackgroundCall:
    """Start ``function`` in a thread; ``on_success(result)`` or ``on_failure(reason)`` run in the GUI thread."""
    call = BackgroundCall(function, name)
    call.succeeded.connect(on_success)
    call.failed.connect(on_failure)
    return call.start()
