"""One job at a time in a background thread, for the bridges that hold a client model (chat, tuning).

:class:`JobBridge` is what :class:`~app.bridges.chat.ChatBridge` and
:class:`~app.bridges.tuning.TuningBridge` share. :meth:`JobBridge.start_job` runs a function in a
daemon thread unless one is running (:attr:`~JobBridge.busy`); :meth:`~JobBridge.stop` asks it to
end early (the job watches :attr:`~JobBridge.stop_event`); its outcome arrives as ``finished``
(whatever the job returned) or ``failed`` (a reason a person can act on), always *after*
``busy_changed(False)``, so a new job may be started as soon as the outcome is shown.

The job's client model lives in ``_model`` and is used under ``_lock``. It is shut down after a
failure (the swarm may have changed: the next job reconnects) and on :meth:`~JobBridge.shutdown`;
a job still running then shuts it down itself when it ends.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, Signal

from app.formatting import describe_error

logger = logging.getLogger(__name__)


class JobBridge(QObject):
    """Runs one job at a time off the GUI thread and reports with signals (subclasses name the job)."""

    busy_changed = Signal(bool)
    status_changed = Signal(str)  # what the bridge is doing, for a status line
    finished = Signal(object)  # what the job returned (each subclass says which dataclass)
    failed = Signal(str)  # why the job could not be done

    job_name = "Background job"
    """For the log: "<job_name> failed: …"."""
    failure_status = "Failed"
    """``status_changed`` after a failed job."""
    shutdown_timeout = 10.0
    """Default seconds :meth:`shutdown` waits for a running job."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.stop_event = threading.Event()
        self._model: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._busy

    def start_job(self, job: Callable[[], Any], thread_name: str) -> bool:
        """Run ``job()`` in a new thread; False (and nothing runs) while another job is going on."""
        if self._busy:
            return False
        self.stop_event.clear()
        self._busy = True
        self._thread = threading.Thread(target=self._run, args=(job,), name=thread_name, daemon=True)
        self.busy_changed.emit(True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask the running job to end early (it decides when: after the token or step being computed)."""
        self.stop_event.set()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the job, wait up to ``timeout`` seconds for it, and leave the swarm."""
        self.stop_event.set()
        self._closed = True
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout if timeout is None else timeout)
        if self._lock.acquire(timeout=0.1):  # else the job is still running and unloads when it ends
            try:
                self._unload()
            finally:
                self._lock.release()

    # ---- background thread --------------------------------------------------------------------
    def _run(self, job: Callable[[], Any]) -> None:
        outcome: tuple[Any, Any] | None = None  # (signal, payload)
        try:
            outcome = (self.finished, job())
        except Exception as error:  # reported to the GUI, never raised into Qt
            reason = describe_error(error)
            logger.warning("%s failed: %s", self.job_name, reason, exc_info=True)
            self.status_changed.emit(self.failure_status)
            with self._lock:
                self._unload()  # reconnect on the next job: the swarm may have changed
            outcome = (self.failed, reason)
        finally:
            if self._closed:
                with self._lock:
                    self._unload()
            self._busy = False  # before the outcome: a new job may start as soon as this one is shown
            self.busy_changed.emit(False)
            if outcome is not None:
                outcome[0].emit(outcome[1])

    def _unload(self) -> None:
        """Shut the model down (call with ``_lock`` held)."""
        model, self._model = self._model, None
        if model is not None:
            try:
                model.shutdown()
            except Exception:
                logger.debug("%s: the model did not shut down cleanly", type(self).__name__, exc_info=True)
