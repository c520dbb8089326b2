"""Starting a private swarm on this machine: a DHT bootstrap peer and block servers as child processes.

Used by the demo (``core.cli.demo``), the app's private swarm and the end-to-end tests. Every
process is stopped on :meth:`LocalSwarm.stop` (also on errors, via the context manager).
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Sequence

from core.errors import BlossomError

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
FROZEN_RUN_MODULE = "--run-module"  # how a frozen bundle's program is told to run a module (installers/)


def python_command(args: Sequence[str], executable: str | None = None) -> list[str]:
    """The command line that runs ``[executable, *args]`` as a child process (``args`` start with ``-m MODULE``).

    Inside a frozen bundle (PyInstaller sets ``sys.frozen``) the executable is Blossom's own program,
    which has no ``-m``: it runs a module when given ``--run-module MODULE`` instead.
    """
    args = list(args)
    if getattr(sys, "frozen", False) and args[:1] == ["-m"]:
        args[0] = FROZEN_RUN_MODULE
    return [executable or sys.executable, *args]


class ChildProcess:
    """A child process whose output lines are kept (and mirrored to a log file when given).

    Its standard input is a pipe that only this process holds: a child run with ``--exit_with_stdin`` stops
    when this process ends, even killed (its end of the pipe closes)."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path | None = None) -> None:
        self.name = name
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            python_command(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
            env=env, text=True, bufsize=1, start_new_session=True,
        )
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str | None] = queue.Queue()
        self._output_closed = threading.Event()
        self._log: IO[str] | None = open(log_path, "w") if log_path else None
        threading.Thread(target=self._read, name=f"{name}-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._new_lines.put(line)
            if self._log:
                self._log.write(line + "\n")
                self._log.flush()
        self._output_closed.set()
        self._new_lines.put(None)

    def wait_for_line(self, marker: str, timeout: float) -> list[str]:
        """Wait until a line containing ``marker`` is printed; returns the lines printed after it so far."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for index in range(seen, len(self.lines)):
                if marker in self.lines[index]:
                    time.sleep(0.2)  # let the lines that follow the marker arrive
                    return self.lines[index + 1 :]
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BlossomError(f"{self.name} did not start within {timeout:.0f} s; its output:\n" + self.tail())
            try:
                self._new_lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                pass
            if self._output_closed.is_set() and len(self.lines) == seen:
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    continue
                raise BlossomError(f"{self.name} exited with code {self.process.returncode}; its output:\n" + self.tail())

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
                self.kill()
        self._close_files()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process group (the process and the helpers hivemind started)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self._close_files()

    def _close_files(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:  # the child is gone: nothing to flush to
                pass


def parse_addresses(lines: Sequence[str]) -> list[str]:
    """Multiaddrs printed by run_dht / run_server (indented lines with a ``/p2p/`` part, then who can dial it)."""
    return [line.split()[0] for line in lines if line.strip().startswith("/") and "/p2p/" in line]


class LocalSwarm:
    """A DHT peer plus one server per span, all on 127.0.0.1; they stop with this process, even if it is killed."""

    def __init__(
        self,
        converted_path: str | Path,
        spans: Sequence[tuple[int, int]],
        log_dir: Path | None = None,
        server_args: Sequence[str] = (),
        num_threads: int | None = 1,
        start_timeout: float = 180.0,
    ) -> None:
        self.converted_path = str(converted_path)
        self.spans = list(spans)
        self.log_dir = log_dir
        self.server_args = list(server_args)
        self.num_threads = num_threads
        self.start_timeout = start_timeout
        self.dht_process: ChildProcess | None = None
        self.servers: list[ChildProcess] = []
        self.initial_peers: list[str] = []

    def __enter__(self) -> "LocalSwarm":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _log_path(self, name: str) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    def start(self) -> list[str]:
        """Start the DHT and every server; returns the swarm's initial peers once all servers are online."""
        self.dht_process = ChildProcess(
            "dht", ["-m", "core.cli.run_dht", "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--exit_with_stdin"],
            self._log_path("dht")
        )
        after = self.dht_process.wait_for_line("Running a DHT peer", self.start_timeout)
        self.initial_peers = parse_addresses(after)
        if not self.initial_peers:
            raise BlossomError("the DHT peer printed no address:\n" + self.dht_process.tail())
        for span in self.spans:
            self.add_server(span)
        for server in self.servers:
            server.wait_for_line("is online", self.start_timeout)
        return self.initial_peers

    def add_server(self, span: tuple[int, int] | None, extra_args: Sequence[str] = ()) -> ChildProcess:
        """Start one more server (``span=None`` lets it choose its blocks); does not wait for it."""
        args = ["-m", "core.cli.run_server", "--converted_model_name_or_path", self.converted_path,
                "--initial_peers", *self.initial_peers, "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--exit_with_stdin",
                *self.server_args, *extra_args]
        if span is not None:
            args += ["--block_indices", f"{span[0]}:{span[1]}"]
        if self.num_threads:
            args += ["--num_threads", str(self.num_threads)]
        server = ChildProcess(f"server{len(self.servers)}", args, self._log_path(f"server{len(self.servers)}"))
        self.servers.append(server)
        return server

    def stop(self) -> None:
        """Stop every server, then the DHT peer."""
        for server in self.servers:
            server.stop()
        if self.dht_process is not None:
            self.dht_process.stop()
