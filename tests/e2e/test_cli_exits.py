"""``run_server`` ends on every error path and on the first SIGTERM at any moment of its start-up
(a server that raised after its DHT had started used to hang, deaf to Ctrl-C and SIGTERM)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from core.launcher import ChildProcess

EXIT_TIMEOUT = 60.0


def _server(converted, *args: str) -> ChildProcess:
    return ChildProcess("server", ["-m", "core.cli.run_server", "--converted_model_name_or_path", str(converted),
                                   "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--throughput", "10", *args])


def _exit_code(server: ChildProcess) -> int:
    try:
        return server.process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError(f"run_server did not exit within {EXIT_TIMEOUT:.0f} s:\n{server.tail()}") from None


def test_blocks_past_the_model_end_the_server_with_one_clear_line(tiny_checkpoints, swarm_factory):
    _, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [])
    server = _server(converted, "--initial_peers", *swarm.initial_peers, "--block_indices", "2:9")
    try:
        assert _exit_code(server) == 2
        assert any(line.startswith("error: --block_indices 2:9 is past the model's 4 blocks") for line in server.lines)
    finally:
        server.kill()


@pytest.mark.parametrize("phase", ["", "Loading blocks", "is online"])  # "": while importing and joining the DHT
def test_a_sigterm_at_any_phase_of_the_start_ends_the_server(tiny_checkpoints, phase):
    _, converted = tiny_checkpoints["llama"]
    server = _server(converted, "--new_swarm", "--block_indices", "0:4")
    try:
        if phase:
            server.wait_for_line(phase, 180)
        else:
            time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        code = _exit_code(server)
        if phase:  # its own handler is installed: it says how it stopped
            assert code in (0, 130)
            assert "Server stopped." in server.lines or "Interrupted while starting; stopping." in server.lines
        else:  # still importing: the default action ends it
            assert code in (0, 130, -signal.SIGTERM)
    finally:
        server.kill()


@pytest.mark.parametrize("peer", ["/ip4/127.0.0.1/tcp/9/p2p/QmWLHvLzSZEzVvgCDUTXC7U8ZnEWJ8T2fMCML7Ukm1TyFL",
                                  "127.0.0.1:31337"])
@pytest.mark.parametrize("program", ["run_server", "run_dht"])
def test_initial_peers_that_cannot_be_reached_end_in_one_clear_line(tiny_checkpoints, program, peer):
    _, converted = tiny_checkpoints["llama"]
    args = ["--converted_model_name_or_path", str(converted)] if program == "run_server" else []
    process = ChildProcess(program, ["-m", f"core.cli.{program}", *args, "--initial_peers", peer])
    try:
        assert _exit_code(process) == 2
        errors = [line for line in process.lines if line.startswith("error: ")]
        assert len(errors) == 1 and ("could not reach any of --initial_peers" in errors[0]
                                     or "is not a peer address" in errors[0]), process.tail()
        assert not any("Traceback" in line for line in process.lines)
    finally:
        process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _assert_refused_port(process: ChildProcess, port: int, flag: str = "--port") -> None:
    assert _exit_code(process) == 2, process.tail()
    errors = [line for line in process.lines if line.startswith("error: ")]
    assert errors == [f"error: port {port} is already in use on this machine (by another program, or another Blossom "
                      f"server or DHT peer): stop that one, or choose another {flag} (leave it out for a free one)"], \
        process.tail()
    assert not any("Traceback" in line for line in process.lines)


@pytest.mark.parametrize("program", ["run_server", "run_dht"])
def test_a_port_held_by_another_program_is_refused_in_one_line(tiny_checkpoints, program):
    _, converted = tiny_checkpoints["llama"]
    args = ["--converted_model_name_or_path", str(converted), "--new_swarm"] if program == "run_server" else []
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        process = ChildProcess(program, ["-m", f"core.cli.{program}", *args, "--port", str(port)])
        try:
            _assert_refused_port(process, port)
        finally:
            process.kill()


def test_a_port_another_blossom_peer_listens_on_is_refused(tiny_checkpoints):
    """libp2p listens with SO_REUSEPORT: without the check a second peer started silently on the same port."""
    _, converted = tiny_checkpoints["llama"]
    port = _free_port()
    first = ChildProcess("dht", ["-m", "core.cli.run_dht", "--host_maddrs", f"/ip4/127.0.0.1/tcp/{port}"])
    late = []
    try:
        first.wait_for_line("Running a DHT peer", 120)
        late.append(ChildProcess("dht-2", ["-m", "core.cli.run_dht", "--port", str(port)]))
        late.append(ChildProcess("server", ["-m", "core.cli.run_server", "--converted_model_name_or_path",
                                            str(converted), "--new_swarm", "--port", str(port)]))
        for process in late:
            _assert_refused_port(process, port)
        assert first.process.poll() is None, "the first peer must keep running"
    finally:
        for process in [first, *late]:
            process.kill()


def test_a_taken_direct_port_ends_the_started_server_in_one_line(tiny_checkpoints):
    """The direct listener starts after the DHT and the blocks: that error path must shut them down and exit."""
    _, converted = tiny_checkpoints["llama"]
    with socket.socket() as other_program:
        other_program.bind(("0.0.0.0", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        server = _server(converted, "--new_swarm", "--block_indices", "0:4", "--direct_port", str(port))
        try:
            _assert_refused_port(server, port, "--direct_port")
        finally:
            server.kill()


def test_ctrl_c_in_the_terminal_stops_run_dht_cleanly():
    """A terminal's Ctrl-C goes to the whole foreground process group. The DHT process and its p2p daemon
    keep out of it, so the program stops them in order: no go-libp2p ERROR, no 'terminating it the hard way'."""
    dht = ChildProcess("dht", ["-m", "core.cli.run_dht", "--host_maddrs", "/ip4/127.0.0.1/tcp/0"])
    try:
        dht.wait_for_line("Running a DHT peer", 120)
        os.killpg(dht.process.pid, signal.SIGINT)  # what the terminal does
        assert _exit_code(dht) == 0, dht.tail()
        assert dht.lines[-1] == "DHT peer stopped.", dht.tail()
        noise = [line for line in dht.lines if "ERROR" in line or "WARN" in line or "hard way" in line]
        assert not noise, dht.tail()
    finally:
        dht.kill()


def test_the_dht_process_and_its_daemon_end_with_a_killed_parent():
    dht = ChildProcess("dht", ["-m", "core.cli.run_dht", "--host_maddrs", "/ip4/127.0.0.1/tcp/0"])
    try:
        dht.wait_for_line("Running a DHT peer", 120)
        helpers = psutil.Process(dht.process.pid).children(recursive=True)
        assert any(helper.name() == "p2pd" for helper in helpers)
        dht.process.kill()  # only the program: its helpers run in a process group of their own
        dht.process.wait(10)
        gone, alive = psutil.wait_procs(helpers, timeout=10)
        assert not alive, [helper.cmdline()[:2] for helper in alive]
    finally:
        dht.kill()


def test_a_local_swarm_stops_with_the_program_that_started_it_even_killed(tiny_checkpoints):
    """A program that started a private swarm (blossom-api, the terminal demo, a script) and is killed leaves
    no DHT peer, server or p2p daemon behind: they stop when their end of its stdin pipe closes."""
    _, converted = tiny_checkpoints["llama"]
    script = ("import time\n"
              "from core.launcher import LocalSwarm\n"
              f"swarm = LocalSwarm({str(converted)!r}, [(0, 2), (2, 4)], server_args=['--throughput', '10'])\n"
              "swarm.start()\n"
              "print('pids', swarm.dht_process.process.pid, *[s.process.pid for s in swarm.servers], flush=True)\n"
              "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    children: list[psutil.Process] = []
    try:
        line = owner.stdout.readline()
        assert line.startswith("pids "), line
        pids = [int(pid) for pid in line.split()[1:]]
        children = [process for pid in pids for process in
                    [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
        assert any(process.name() == "p2pd" for process in children)
        owner.kill()  # no clean-up runs in the owner
        owner.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=EXIT_TIMEOUT)
        assert not alive, [process.cmdline()[:4] for process in alive]
    finally:
        owner.kill()
        for process in children:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
