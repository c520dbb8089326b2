"""``python -m app.worker``: the server worker process the desktop app starts (never forks).

Protocol: commands arrive on stdin and events leave on stdout, one JSON message per line
(:mod:`app.worker.messages`). Anything else the process prints goes to stderr, which the GUI shows
as log lines and quotes when the worker dies. When stdin closes (the GUI exited), the worker stops
serving and exits, so no server outlives its app. Exit code: 0 after a stop, 1 after a fatal error.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
from typing import IO

from app.worker.messages import (
    Command,
    ErrorEvent,
    Event,
    LogEvent,
    PauseCommand,
    ResumeCommand,
    StartCommand,
    StopCommand,
    WorkerState,
    decode,
    encode,
)
from app.worker.node import WorkerNode
from core.errors import InvalidRequestError

logger = logging.getLogger("app.worker")

STATUS_PERIOD = 1.0
PEERS_PERIOD = 10.0


class Channel:
    """Thread-safe writer of events to the GUI.

    hivemind forks helper processes from the worker; a forked child must never write to the GUI's
    stream (nor wait on a lock another thread held at the fork), so the channel goes quiet there.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._owner = os.getpid()
        os.register_at_fork(after_in_child=self._forget_lock)

    def _forget_lock(self) -> None:
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        if os.getpid() != self._owner:
            return
        line = encode(event) + "\n"
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the GUI is gone; stdin's end will stop us


class ForwardingHandler(logging.Handler):
    """Sends log records to the GUI as :class:`LogEvent`."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send(LogEvent(record.levelname, self.format(record)))
        except Exception:
            self.handleError(record)


def claim_stdio() -> tuple[IO[str], IO[str]]:
    """The protocol's (input, output) streams, taken away from ``sys.stdin`` / ``sys.stdout``.

    File descriptor 1 is pointed at stderr so stray prints (by libraries or child processes) cannot
    corrupt the message stream, and ``sys.stdin`` becomes ``/dev/null``: multiprocessing closes
    ``sys.stdin`` in every forked child, which would hang on the lock of a thread blocked reading it.
    """
    commands = os.fdopen(os.dup(sys.stdin.fileno()), "r", encoding="utf-8")
    sys.stdin = open(os.devnull, encoding="utf-8")
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return commands, events


def setup_logging(channel: Channel) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(ForwardingHandler(channel))
    for noisy in ("hivemind", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_commands(stream: IO[str], commands: "queue.Queue[Command]", channel: Channel) -> None:
    """Parse stdin into ``commands``; a closed stdin means the GUI is gone: stop."""
    for line in stream:
        if not line.strip():
            continue
        try:
            message = decode(line)
        except InvalidRequestError as error:
            channel.send(ErrorEvent(f"the worker ignored a message: {error}"))
            continue
        commands.put(message)
    commands.put(StopCommand())


def report_status(node: WorkerNode, channel: Channel, stopped: threading.Event) -> None:
    """Send a status snapshot every second while serving; count peers every ten seconds."""
    ticks = 0
    while not stopped.wait(STATUS_PERIOD):
        if node.state == WorkerState.SERVING:
            if ticks % int(PEERS_PERIOD / STATUS_PERIOD) == 0:
                node.refresh_peers()
            ticks += 1
            channel.send(node.snapshot())


def run(commands: "queue.Queue[Command]", node: WorkerNode) -> int:
    """Execute commands in order until the node is done; returns the exit code."""
    while not node.done:
        try:
            command = commands.get(timeout=0.5)
        except queue.Empty:
            continue
        if isinstance(command, StartCommand):
            node.start(command.request)
        elif isinstance(command, PauseCommand):
            node.pause()
        elif isinstance(command, ResumeCommand):
            node.resume()
        elif isinstance(command, StopCommand):
            node.stop()
        else:
            node.emit(ErrorEvent(f"the worker does not take {type(command).__name__} messages"))
    return 0 if node.state == WorkerState.STOPPED else 1


def main() -> int:
    command_stream, event_stream = claim_stdio()
    channel = Channel(event_stream)
    setup_logging(channel)
    commands: queue.Queue[Command] = queue.Queue()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the app's terminal is the GUI's to handle
    signal.signal(signal.SIGTERM, lambda *_: commands.put(StopCommand()))
    node = WorkerNode(channel.send)
    stopped = threading.Event()
    threading.Thread(target=read_commands, args=(command_stream, commands, channel), name="commands", daemon=True).start()
    threading.Thread(target=report_status, args=(node, channel, stopped), name="status", daemon=True).start()
    try:
        return run(commands, node)
    finally:
        stopped.set()
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
