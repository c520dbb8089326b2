"""The GUI side of the worker: starts ``python -m app.worker`` with QProcess and turns its messages into signals.

Nothing here blocks: QProcess delivers output through the event loop, so the window stays
responsive while the worker imports torch, loads blocks or drains sessions. A worker that dies
without being asked to is reported through :attr:`WorkerController.crashed` with the reason it gave
(its last fatal error, or the tail of its stderr and its exit code).

The worker can run under a command prefix: ``command_prefix=["ip", "netns", "exec", "lab-pc"]``, or
the environment variable :data:`PREFIX_VARIABLE` (``BLOSSOM_WORKER_PREFIX="ip netns exec lab-pc"``,
split like a shell would) when no prefix is passed. Tests use it to run the worker inside a network
namespace behind a simulated home router (``tests/e2e/test_app_from_home.py``); unset, nothing changes.
"""
from __future__ import annotations

import collections
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from PySide6.QtCore import QByteArray, QObject, QProcess, QTimer, Signal

from app.child_process import ChildLog, child_environment
from app.worker.messages import (
    Command,
    ErrorEvent,
    LogEvent,
    PauseCommand,
    ResumeCommand,
    ServeRequest,
    StartCommand,
    StatusEvent,
    StopCommand,
    WorkerState,
    decode,
    encode,
)
from core.errors import InvalidRequestError
from core.launcher import python_command

logger = logging.getLogger(__name__)

STDERR_TAIL = 40
PREFIX_VARIABLE = "BLOSSOM_WORKER_PREFIX"


class WorkerController(QObject):
    """Starts, commands and watches one worker process at a time."""

    state_changed = Signal(object)  # WorkerState
    status_updated = Signal(object)  # StatusEvent
    log_received = Signal(str, str)  # level, text
    error_reported = Signal(str)  # a non-fatal problem the worker reported
    crashed = Signal(str)  # the worker died or failed: the reason, for a person
    exited = Signal()  # the worker process is gone (after a stop or a crash)

    def __init__(self, parent: QObject | None = None, log_path: Path | None = None,
                 python: str = sys.executable, command_prefix: Sequence[str] | None = None) -> None:
        super().__init__(parent)
        self.python = python
        self.command_prefix = (list(command_prefix) if command_prefix is not None
                               else shlex.split(os.environ.get(PREFIX_VARIABLE, "")))
        self.log_path = log_path
        self.state = WorkerState.STOPPED
        self.status = StatusEvent(WorkerState.STOPPED)
        self.last_request: ServeRequest | None = None
        self.last_error = ""
        self._process: QProcess | None = None
        self._stop_requested = False
        self._stdout_buffer = QByteArray()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._log_file = ChildLog(log_path, "worker")
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self._kill_if_running)

    # ---- queries ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A worker process exists (it may still be starting or stopping)."""
        return self._process is not None

    @property
    def stopping(self) -> bool:
        """A worker process exists and was asked to stop (or killed)."""
        return self._process is not None and self._stop_requested

    @property
    def command(self) -> list[str]:
        """The worker's command line: the prefix (if any), then ``python -m app.worker``."""
        return [*self.command_prefix, *python_command(["-m", "app.worker"], self.python)]  # a frozen bundle has no -m

    @property
    def process_id(self) -> int:
        """The worker's pid (0 when none)."""
        return int(self._process.processId()) if self._process is not None else 0

    # ---- commands -----------------------------------------------------------------------------
    def start(self, request: ServeRequest) -> None:
        """Start a worker process serving ``request``."""
        if self._process is not None:
            self.error_reported.emit("The worker is already running; stop it first")
            return
        self.last_request, self.last_error = request, ""
        self._stop_requested = False
        self._stderr_tail.clear()
        self._stdout_buffer.clear()
        self._log_file.open()
        process = QProcess(self)
        process.setProcessEnvironment(child_environment())
        program, *arguments = self.command
        process.setProgram(program)
        process.setArguments(arguments)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._process = process
        self._set_state(WorkerState.STARTING, StatusEvent(WorkerState.STARTING, "Starting the worker process"))
        process.start()
        self._send(StartCommand(request))

    def restart(self) -> None:
        """Start again with the last request (after a crash or a stop)."""
        if self.last_request is not None and self._process is None:
            self.start(self.last_request)

    def pause(self) -> None:
        """Stop taking new work and free the memory once open sessions end."""
        self._send(PauseCommand())

    def resume(self) -> None:
        """Serve the same blocks again."""
        self._send(ResumeCommand())

    def stop(self, kill_after: float = 90.0) -> None:
        """Ask the worker to stop and exit; kill it if it is still there after ``kill_after`` seconds."""
        if self._process is None:
            return
        self._stop_requested = True
        self._send(StopCommand())
        self._kill_timer.start(int(kill_after * 1000))

    def kill(self) -> None:
        """End the worker at once (last resort: its blocks stay announced until their records expire)."""
        if self._process is not None:
            self._stop_requested = True
            self._process.kill()

    def _kill_if_running(self) -> None:
        if self._process is not None:
            logger.warning("The worker did not stop in time; killing it")
            self.kill()

    def _send(self, command: Command) -> None:
        if self._process is None:
            self.error_reported.emit(f"No worker is running to {type(command).__name__.removesuffix('Command').lower()}")
            return
        self._process.write((encode(command) + "\n").encode())

    # ---- process output -----------------------------------------------------------------------
    def _read_stdout(self) -> None:
        if self._process is None:
            return
        self._stdout_buffer.append(self._process.readAllStandardOutput())
        while (end := self._stdout_buffer.indexOf(b"\n")) >= 0:
            line = bytes(self._stdout_buffer.left(end)).decode(errors="replace")
            self._stdout_buffer.remove(0, end + 1)
            if line.strip():
                self._handle_line(line)

    def _handle_line(self, line: str) -> None:
        try:
            event = decode(line)
        except InvalidRequestError:
            self._log("INFO", line)
            return
        if isinstance(event, StatusEvent):
            self._set_state(event.state, event)
        elif isinstance(event, LogEvent):
            self._log(event.level, event.text)
        elif isinstance(event, ErrorEvent):
            if event.fatal:
                self.last_error = event.message
            else:
                self.error_reported.emit(event.message)

    def _read_stderr(self) -> None:
        if self._process is None:
            return
        text = bytes(self._process.readAllStandardError()).decode(errors="replace")
        for line in text.splitlines():
            if line.strip():
                self._stderr_tail.append(line)
                self._log("OUTPUT", line)

    def _log(self, level: str, text: str) -> None:
        self._log_file.write(f"{level} {text}")
        self.log_received.emit(level, text)

    def _set_state(self, state: WorkerState, status: StatusEvent) -> None:
        self.status = status
        changed = state != self.state
        self.state = state
        self.status_updated.emit(status)
        if changed:
            self.state_changed.emit(state)

    # ---- process end --------------------------------------------------------------------------
    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        self._kill_timer.stop()
        process, self._process = self._process, None
        if process is not None:
            process.deleteLater()
        clean = exit_status == QProcess.ExitStatus.NormalExit and exit_code == 0
        if clean or (self._stop_requested and not self.last_error):
            self._set_state(WorkerState.STOPPED, StatusEvent(WorkerState.STOPPED, "Not serving"))
        else:
            reason = self.last_error or self._crash_reason(exit_code, exit_status)
            self.last_error = reason
            self._set_state(WorkerState.ERROR, StatusEvent(WorkerState.ERROR, reason))
            self.crashed.emit(reason)
        self._log_file.close()
        self.exited.emit()

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self._process is None:
            return
        reason = f"Could not start the worker ({shlex.join(self.command)}): {self._process.errorString()}"
        process, self._process = self._process, None
        process.deleteLater()
        self.last_error = reason
        self._set_state(WorkerState.ERROR, StatusEvent(WorkerState.ERROR, reason))
        self.crashed.emit(reason)
        self._log_file.close()
        self.exited.emit()

    def _crash_reason(self, exit_code: int, exit_status: QProcess.ExitStatus) -> str:
        how = ("was killed" if exit_status == QProcess.ExitStatus.CrashExit
               else f"exited with code {exit_code}")
        tail = [line.strip() for line in self._stderr_tail if line.strip()]
        last = next((line for line in reversed(tail) if not line.startswith(("File ", "^", "~"))), "")
        return f"The worker {how} unexpectedly" + (f": {last}" if last else "")
