"""The OpenAI-compatible API of this PC: ``blossom-api`` in a process of its own, started and stopped by the app.

The API answers HTTP requests by running generations through the swarm; that needs torch and a
hivemind client, which must stay out of the GUI process (hivemind forks). So, like the block
server's worker, it runs as a new program started with QProcess (never a fork of the window):
``python -m core.cli.api --model M --initial_peers P... --host 127.0.0.1 --port N --exit_with_stdin``.
``--exit_with_stdin`` ends it if the app dies without stopping it (its end of the pipe closes).

:class:`ApiProcess` is told what to serve with :meth:`ApiProcess.configure` whenever the setting,
the model or the swarm changes; it starts, restarts or stops the process to match and reports the
URL once the API answers, or why it failed (the program's one-line error, e.g. a port in use).
"""
from __future__ import annotations

import collections
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QByteArray, QCoreApplication, QObject, QProcess, QTimer, Signal

from app.child_process import ChildLog, child_environment
from core.launcher import python_command

logger = logging.getLogger(__name__)

READY_MARKER = "Blossom OpenAI-compatible API for"
OUTPUT_TAIL = 20
OFF, WAITING, STARTING, RUNNING, FAILED = "off", "waiting", "starting", "running", "failed"


@dataclass(frozen=True)
class ApiStatus:
    """Where the API stands: ``state`` (OFF, WAITING for a swarm, STARTING, RUNNING, FAILED), its URL while
    running, and why it failed."""

    state: str = OFF
    url: str = ""
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    @property
    def line(self) -> str:
        """One line for the dashboard (empty when the API is off)."""
        return {
            OFF: "",
            WAITING: "OpenAI-compatible API: starts once this PC is in a swarm (start serving, or join a swarm)",
            STARTING: "OpenAI-compatible API: starting…",
            RUNNING: f"OpenAI-compatible API for programs on this PC: {self.url}",
            FAILED: f"OpenAI-compatible API: {self.error}",
        }[self.state]


@dataclass(frozen=True)
class ApiTarget:
    """What the API process serves: a model of a swarm, on a port of this PC."""

    model_path: str
    initial_peers: tuple[str, ...]
    port: int

    def arguments(self) -> list[str]:
        return ["-m", "core.cli.api", "--model", self.model_path, "--initial_peers", *self.initial_peers,
                "--host", "127.0.0.1", "--port", str(self.port), "--exit_with_stdin"]


class ApiProcess(QObject):
    """Keeps one ``blossom-api`` process running for the wanted :class:`ApiTarget` (or none)."""

    status_changed = Signal(object)  # ApiStatus

    def __init__(self, parent: QObject | None = None, python: str = sys.executable,
                 log_path: Path | None = None) -> None:
        super().__init__(parent)
        self.python, self.log_path = python, log_path
        self.status = ApiStatus()
        self.target: ApiTarget | None = None  # what runs (or starts) now
        self._wanted: ApiTarget | None = None
        self._enabled = False
        self._process: QProcess | None = None
        self._stopping = False
        self._buffer = QByteArray()
        self._tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL)
        self._log = ChildLog(log_path, "API")
        self._kill_timer = QTimer(self)
        self._kill_timer.setSingleShot(True)
        self._kill_timer.timeout.connect(self.kill)
        application = QCoreApplication.instance()
        if application is not None:  # quitting with the API still there: it must not outlive the app
            application.aboutToQuit.connect(self.kill)

    @property
    def running(self) -> bool:
        """A process exists (starting, serving or stopping)."""
        return self._process is not None

    @property
    def process_id(self) -> int:
        """The API program's pid (0 when none)."""
        return int(self._process.processId()) if self._process is not None else 0

    def configure(self, target: ApiTarget | None, enabled: bool = True) -> None:
        """Serve ``target``; ``None`` means no API (WAITING for a swarm if ``enabled``, else OFF).

        A different target restarts the process; the same one after a failure is not retried until
        something changes (the user changes the port, or the swarm comes back)."""
        changed = (target, enabled) != (self._wanted, self._enabled)
        self._wanted, self._enabled = target, enabled
        if self._process is not None:
            if target != self.target:
                self._terminate()  # the finished handler starts the wanted target
            return
        if target is None:
            self._set_status(ApiStatus(WAITING if enabled else OFF))
        elif changed or self.status.state != FAILED:
            self._start(target)

    def stop(self, kill_after: float = 10.0) -> None:
        """Stop the API for good (until the next ``configure``), killing the process if it is still there after
        ``kill_after`` seconds."""
        self._wanted, self._enabled = None, False
        if self._process is not None:
            self._terminate(kill_after)
        else:
            self._set_status(ApiStatus(OFF))

    # ---- the process ----------------------------------------------------------------------------
    def _start(self, target: ApiTarget) -> None:
        self.target, self._stopping = target, False
        self._tail.clear()
        self._buffer.clear()
        self._log.open()
        process = QProcess(self)
        process.setProcessEnvironment(child_environment())
        program, *arguments = python_command(target.arguments(), self.python)
        process.setProgram(program)
        process.setArguments(arguments)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(self._read_output)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self._process = process
        self._set_status(ApiStatus(STARTING))
        process.start()  # stdin stays open: closing it (the app gone) stops the API

    def _terminate(self, kill_after: float = 10.0) -> None:
        if self._process is None or self._stopping:
            return
        self._stopping = True
        self._process.terminate()  # SIGTERM: the API stops cleanly
        self._kill_timer.start(int(kill_after * 1000))

    def kill(self) -> None:
        """End the API process at once (when it did not stop in time, or the app quits)."""
        if self._process is not None:
            logger.warning("Killing the API process")
            self._stopping = True
            self._process.kill()
            self._process.waitForFinished(5000)

    def _read_output(self) -> None:
        if self._process is None:
            return
        self._buffer.append(self._process.readAllStandardOutput())
        while (end := self._buffer.indexOf(b"\n")) >= 0:
            line = bytes(self._buffer.left(end)).decode(errors="replace").rstrip()
            self._buffer.remove(0, end + 1)
            if line.strip():
                self._handle_line(line)

    def _handle_line(self, line: str) -> None:
        self._tail.append(line)
        self._log.write(line)
        if READY_MARKER in line and (found := re.search(r"http://\S+/v1", line)):
            self._set_status(ApiStatus(RUNNING, found.group(0)))

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._read_output()
        self._kill_timer.stop()
        process, self._process = self._process, None
        if process is not None:
            process.deleteLater()
        self._log.close()
        asked = self._stopping
        self._stopping = False
        if not asked:
            self._fail(self._reason(exit_code, exit_status))
        elif self._wanted is not None:
            self._start(self._wanted)
        else:
            self._set_status(ApiStatus(WAITING if self._enabled else OFF))

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self._process is None:
            return
        reason = f"Could not start the API program: {self._process.errorString()}"
        process, self._process = self._process, None
        process.deleteLater()
        self._log.close()
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._set_status(ApiStatus(FAILED, error=reason))

    def _reason(self, exit_code: int, exit_status: QProcess.ExitStatus) -> str:
        errors = [line for line in self._tail if line.startswith("error: ")]
        if errors:
            return "The API stopped: " + errors[-1].removeprefix("error: ")
        how = "was killed" if exit_status == QProcess.ExitStatus.CrashExit else f"exited with code {exit_code}"
        last = self._tail[-1] if self._tail else ""
        return f"The API program {how}" + (f": {last}" if last else "")

    def _set_status(self, status: ApiStatus) -> None:
        if status != self.status:
            self.status = status
            self.status_changed.emit(status)
