"""The command-line tools as a person runs them: real processes on 127.0.0.1, their output and exit codes.

One swarm for the module: a DHT peer started by ``core.cli.run_dht`` and two servers started by
``core.cli.run_server --num_blocks 2`` that choose their blocks themselves.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import AutoDistributedConfig, AutoDistributedModelForCausalLM
from core.dht.records import get_block_servers
from core.dht.schema import ServerState
from core.launcher import PACKAGE_ROOT, ChildProcess, LocalSwarm, parse_addresses
from tests.numerics import assert_matches_reference

START_TIMEOUT = 120.0
LOCALHOST = "/ip4/127.0.0.1/tcp/0"


@dataclass
class AutoSwarm:
    swarm: LocalSwarm
    first: ChildProcess
    second: ChildProcess
    first_after_online: list[str]  # what each server printed after its "is online" line
    second_after_online: list[str]
    prefix: str
    original: Path
    converted: Path


@pytest.fixture(scope="module")
def auto_swarm(tiny_checkpoints, swarm_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [])  # only the DHT peer
    try:
        first = swarm.add_server(None, ["--num_blocks", "2"])
        first_after = first.wait_for_line("is online", START_TIMEOUT)
        second = swarm.add_server(None, ["--num_blocks", "2"])  # started once the first one is announced
        second_after = second.wait_for_line("is online", START_TIMEOUT)
        prefix = AutoDistributedConfig.from_pretrained(str(converted)).dht_prefix
        yield AutoSwarm(swarm, first, second, first_after, second_after, prefix, original, converted)
    finally:
        swarm.stop()


def _online_line(server: ChildProcess) -> str:
    return next(line for line in server.lines if "is online" in line)


def _peer_id(address: str) -> str:
    return address.rsplit("/p2p/", 1)[1]


def _wait_for_line(process: ChildProcess, text: str, timeout: float = 10.0) -> bool:
    """Whether ``text`` was printed, waiting a little for the output reader thread after an exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in process.lines):
            return True
        time.sleep(0.1)
    return False


def test_servers_choose_the_uncovered_blocks(auto_swarm):
    first, second = _online_line(auto_swarm.first), _online_line(auto_swarm.second)
    assert f"Blossom server for '{auto_swarm.prefix}' is online: blocks 0..1 (2 of 4)" in first
    assert f"Blossom server for '{auto_swarm.prefix}' is online: blocks 2..3 (2 of 4)" in second


def test_server_prints_its_addresses_and_clients_join_through_it(auto_swarm):
    addresses = parse_addresses(auto_swarm.second_after_online)
    assert addresses, "no multiaddr printed after the online line:\n" + auto_swarm.second.tail()
    assert all(address.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/" in address for address in addresses)
    assert any("--initial_peers" in line for line in auto_swarm.second.lines)
    dht_peer_ids = {_peer_id(address) for address in auto_swarm.swarm.initial_peers}
    assert {_peer_id(address) for address in addresses}.isdisjoint(dht_peer_ids), "that is the DHT's address"
    first_ids = {_peer_id(address) for address in parse_addresses(auto_swarm.first_after_online)}
    assert len(first_ids) == 1 and first_ids != {_peer_id(addresses[0])}

    # A client that knows only the second server's address finds both servers through it.
    model = AutoDistributedModelForCausalLM.from_pretrained(str(auto_swarm.converted), initial_peers=addresses[:1])
    try:
        local = AutoModelForCausalLM.from_pretrained(auto_swarm.original).eval()
        input_ids = torch.tensor([[5, 17, 42, 9, 3, 77]])
        with torch.no_grad():
            assert_matches_reference(model(input_ids).logits, local(input_ids).logits, "logits")
    finally:
        model.shutdown()


def test_ctrl_c_stops_a_server_and_marks_its_blocks_offline(auto_swarm, client_dht_factory):
    server = auto_swarm.second
    peer_id = _peer_id(parse_addresses(auto_swarm.second_after_online)[0])
    dht = client_dht_factory(auto_swarm.swarm.initial_peers)
    before = get_block_servers(dht, auto_swarm.prefix, [2, 3])
    assert all(blocks[peer_id].state == ServerState.ONLINE for blocks in before)

    server.process.send_signal(signal.SIGINT)
    try:
        assert server.process.wait(30) == 0, server.tail()
    finally:
        server.kill()  # no-op when it has exited; kills its helpers' process group otherwise
    assert _wait_for_line(server, "Server stopped."), server.tail()
    assert "Traceback" not in "\n".join(server.lines) and "KeyboardInterrupt" not in "\n".join(server.lines)

    after = get_block_servers(dht, auto_swarm.prefix, [2, 3])
    for index, blocks in zip([2, 3], after):
        info = blocks.get(peer_id)
        assert info is None or info.state == ServerState.OFFLINE, f"block {index} still announced as {info}"
    still_serving = get_block_servers(dht, auto_swarm.prefix, [0, 1])
    assert all(any(info.state == ServerState.ONLINE for info in blocks.values()) for blocks in still_serving)
    assert auto_swarm.first.process.poll() is None, auto_swarm.first.tail()


def _run_server_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "core.cli.run_server", "--host_maddrs", LOCALHOST, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=env, start_new_session=True)


BAD_ARGUMENTS = {
    "reversed block indices": (["--block_indices", "3:1", "--new_swarm"],
                               "error: block_indices must be START:END with 0 <= START < END, got 3:1"),
    "no swarm to join": ([], "error: pass --initial_peers of a swarm to join, or --new_swarm to start a new one"),
    "missing converted model": (["--new_swarm"], "is not a folder on this machine"),
    # a bare name cannot be a converted Hub repo (ORG/NAME): answered at once, no Hub retries
    "bare model name": (["--new_swarm", "--model", "my_model"],
                        "error: 'my_model' is not a folder on this machine"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad command line, run at the same time: name -> (exit code, stdout, stderr)."""
    converted = tmp_path_factory.mktemp("cli") / "no-such-converted-model"
    processes = {name: _run_server_cli("--converted_model_name_or_path", str(converted), *args)
                 for name, (args, _) in BAD_ARGUMENTS.items()}
    results = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=60)
            results[name] = (process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    return results


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_exit_with_code_2_and_one_line(bad_runs, case):
    code, stdout, stderr = bad_runs[case]
    expected = BAD_ARGUMENTS[case][1]
    assert code == 2, f"exit code {code}; stderr:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr:\n{stderr}"
    assert expected in lines[0]
    assert "Traceback" not in stderr + stdout and "is online" not in stdout


def test_dht_prints_its_address_and_stops_on_sigterm():
    dht = ChildProcess("dht-cli", ["-m", "core.cli.run_dht", "--host_maddrs", LOCALHOST])
    try:
        after = dht.wait_for_line("Running a DHT peer", START_TIMEOUT)
        assert "--initial_peers" in next(line for line in dht.lines if "Running a DHT peer" in line)
        addresses = parse_addresses(after)
        assert addresses and all(address.startswith("/ip4/127.0.0.1/tcp/") for address in addresses), dht.tail()
        assert dht.stop(timeout=20) == 0, dht.tail()
        assert _wait_for_line(dht, "DHT peer stopped."), dht.tail()
    finally:
        dht.kill()


def test_kv_cache_budget_flag_refuses_sessions_that_do_not_fit(tiny_checkpoints, swarm_factory, client_dht_factory):
    import torch

    from core.errors import ServerFullError
    from core.models.auto import AutoDistributedModelForCausalLM

    _, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 4)], server_args=["--attn_cache_tokens", "8"])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=client_dht_factory(swarm.initial_peers))
    blocks, hidden_size = model.transformer_blocks, model.config.hidden_size  # all 4 blocks of the one server
    with blocks.inference_session(max_length=8) as session:  # 8 tokens through 4 blocks: fits exactly
        session.step(torch.randn(1, 2, hidden_size))
    with pytest.raises(ServerFullError, match="larger than this server's whole budget"):
        with blocks.inference_session(max_length=9) as session:
            session.step(torch.randn(1, 2, hidden_size))
