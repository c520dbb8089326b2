"""Swarms in the network lab (:mod:`tests.netlab`): bootstrap peers, servers and clients as real
processes in "public" and "home" (NAT) namespaces; used by ``tests/e2e/test_serving_from_home.py``.

As a script (root only) it measures what a relay costs per generated token::

    python -m benchmarks.home_lab [--new_tokens 64]

It builds the lab twice: a home server behind a router without UPnP (the server reserves a relay
with the public bootstrap peer) and behind a router with UPnP (the server maps a port and is dialled
directly); each time a public client generates greedily, and the script prints the seconds per
token of both runs side by side (the lab adds no link latency: this is the relay's own overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
BOOTSTRAP_PORT = 31337
START_TIMEOUT = 240.0
SERVER_ARGS = ["--throughput", "10", "--num_threads", "1"]


def lab_env() -> dict[str, str]:
    """What every lab process runs with: this checkout importable, output unbuffered."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                PYTHONUNBUFFERED="1")


class LabProcess:
    """A process started in a lab host, with its output in a log file that can be waited on."""

    def __init__(self, host, name: str, args: Sequence[str], log_dir: Path) -> None:
        self.host, self.name = host, name
        self.log_path = log_dir / f"{name}.log"
        self.process: Popen = host.popen([sys.executable, *args], env=lab_env(), log_path=self.log_path)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first match of ``pattern`` in the output; raises with the output's tail if it does not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not print /{pattern}/ (exit code {self.process.poll()}):\n"
                           + self.text()[-3000:])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def start_bootstrap(host, log_dir: Path, name: str = "bootstrap", port: int = BOOTSTRAP_PORT) -> tuple[LabProcess, str]:
    """``run_dht`` on ``host``; returns it and its multiaddr on the host's lab address."""
    process = LabProcess(host, name, ["-m", "core.cli.run_dht", "--host_maddrs", f"/ip4/0.0.0.0/tcp/{port}"], log_dir)
    address = process.wait_for(rf"(/ip4/{re.escape(host.ip)}/tcp/{port}/p2p/\w+)").group(1)
    return process, address


def start_server(host, log_dir: Path, name: str, converted: Path, initial_peers: Sequence[str],
                 blocks: tuple[int, int], extra: Sequence[str] = ()) -> LabProcess:
    """``run_server`` for ``blocks`` on ``host``; does not wait (see :func:`wait_until_serving`)."""
    return LabProcess(host, name, ["-m", "core.cli.run_server", "--converted_model_name_or_path", str(converted),
                                   "--initial_peers", *initial_peers, "--block_indices", f"{blocks[0]}:{blocks[1]}",
                                   *SERVER_ARGS, *extra], log_dir)


def wait_until_serving(server: LabProcess) -> str:
    """Wait for the server's start; returns its reachability line ("reachable directly at ...")."""
    server.wait_for(r"Blossom server for .* (is online|NOT online)")
    return server.wait_for(r"This server is (.*)").group(1)


def peer_id_of(server: LabProcess) -> str:
    return server.wait_for(r"/p2p/(\w+)").group(1)


@dataclass
class HomeScenario:
    """The lab's first scenario: a bootstrap peer and a server of blocks 0..1 on the internet, a volunteer
    serving blocks 2..3 from a PC behind a home router, and a public host for the client."""

    bootstrap: str
    user: object  # the client's host
    home: object  # the volunteer's router (tests.netlab.Home)
    first: LabProcess
    volunteer: LabProcess
    line: str  # the volunteer's reachability line


def start_home_scenario(lab, log_dir: Path, converted: Path, upnp: bool = False) -> HomeScenario:
    """Build :class:`HomeScenario` in ``lab`` (the router speaks UPnP when ``upnp``) and wait until both serve."""
    seed, public, user = lab.add_public("seed"), lab.add_public("public"), lab.add_public("user")
    home = lab.add_home("home", upnp=upnp)
    pc = lab.add_host("pc", home=home)
    _, bootstrap = start_bootstrap(seed, log_dir)
    first = start_server(public, log_dir, "public-server", converted, [bootstrap], (0, 2))
    volunteer = start_server(pc, log_dir, "home-server", converted, [bootstrap], (2, 4))
    wait_until_serving(first)
    return HomeScenario(bootstrap, user, home, first, volunteer, wait_until_serving(volunteer))


def generate_in(host, log_dir: Path, name: str, converted: Path, initial_peers: Sequence[str], prompt: list[int],
                new_tokens: int, timeout: float = START_TIMEOUT) -> dict:
    """Run a client on ``host`` that generates greedily; returns ``{"tokens": [...], "seconds_per_token": s}``."""
    client = LabProcess(host, name, ["-m", "benchmarks.home_lab", "client", "--model", str(converted),
                                     "--initial_peers", *initial_peers, "--prompt", *map(str, prompt),
                                     "--new_tokens", str(new_tokens)], log_dir)
    line = client.wait_for(r"RESULT (\{.*\})", timeout).group(1)
    client.process.wait(30)
    return json.loads(line)


def client_main(args: argparse.Namespace) -> None:
    """The client side of :func:`generate_in` (runs inside a lab host)."""
    import logging

    import torch

    from core import AutoDistributedModelForCausalLM

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("core").setLevel(logging.INFO)
    model = AutoDistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers)
    try:
        prompt = torch.tensor([args.prompt])
        model.generate(prompt, max_new_tokens=2, eos_token_id=None)  # routes, pings and connections warmed up
        print("GENERATING", flush=True)
        began = time.perf_counter()
        tokens = model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=None,
                                streamer=_Pause(args.pause) if args.pause else None)
        seconds = (time.perf_counter() - began) / args.new_tokens
    finally:
        model.shutdown()
    print("RESULT " + json.dumps({"tokens": tokens[0].tolist(), "seconds_per_token": seconds}), flush=True)


class _Pause:
    """A streamer that waits after each token (so a test can act while a generation runs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def put(self, tokens) -> None:
        print("TOKEN", flush=True)
        time.sleep(self.seconds)

    def end(self) -> None:
        pass


def measure(new_tokens: int) -> None:
    """Per-token time from a public client to a home server: relayed, then direct through a UPnP mapping."""
    from benchmarks.tiny_swarm import prepare_tiny_model, reference_tokens
    from tests.netlab import Lab, lab_unavailable_reason, upnp_unavailable_reason

    reason = lab_unavailable_reason() or upnp_unavailable_reason()
    if reason:
        raise SystemExit(f"cannot build the lab here: {reason}")
    prompt = [5, 6, 7, 8]
    with tempfile.TemporaryDirectory() as folder:
        original, converted = prepare_tiny_model(Path(folder))
        import torch

        expected = reference_tokens(original, torch.tensor([prompt]), new_tokens)[0].tolist()
        rows = []
        for upnp in (False, True):
            log_dir = Path(folder) / f"logs-upnp{int(upnp)}"
            log_dir.mkdir()
            with Lab() as lab:
                scenario = start_home_scenario(lab, log_dir, converted, upnp)
                result = generate_in(scenario.user, log_dir, "client", converted, [scenario.bootstrap], prompt,
                                     new_tokens)
                rows.append((("direct (UPnP)" if upnp else "relayed"), scenario.line, result["seconds_per_token"],
                             result["tokens"] == expected))
        print(f"{'home server':<16} {'ms/token':>9} {'same tokens':>12}  reachability")
        for label, line, seconds, same in rows:
            print(f"{label:<16} {seconds * 1000:9.2f} {str(same):>12}  {line}")
        print(f"relayed / direct: {rows[0][2] / rows[1][2]:.2f}x per token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) generate from inside a lab host")
    client.add_argument("--model", required=True)
    client.add_argument("--initial_peers", nargs="+", required=True)
    client.add_argument("--prompt", nargs="+", type=int, required=True)
    client.add_argument("--new_tokens", type=int, default=16)
    client.add_argument("--pause", type=float, default=0.0, help="seconds to wait after each token")
    parser.add_argument("--new_tokens", type=int, default=64)
    args = parser.parse_args()
    if args.command == "client":
        client_main(args)
    else:
        measure(args.new_tokens)


if __name__ == "__main__":
    main()
