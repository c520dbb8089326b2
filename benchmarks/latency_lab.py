"""Time per token of a swarm whose hosts are 10-150 ms apart, against the floors the network sets.

    python -m benchmarks.latency_lab [--models tiny smollm2] [--one_way_ms 50 10 150] [--servers 4]
                                     [--new_tokens 64] [--transport p2p|direct] [--rate_mbit R]

Root only. It builds the latency lab (:mod:`tests.latency_lab`: namespaces whose links go through a
user-space delay switch) with a client host, a bootstrap host and ``--servers`` server hosts, the
same one-way delay between any two of them, and starts ``run_dht`` and ``run_server`` (one contiguous
span each: 2 blocks of the tiny Llama 8 x 256, 7-8 of SmolLM2-135M's 30) inside their namespaces. For
each delay (changed on the running switch) it prints:

- the lab's check: measured ICMP and TCP round trips vs the configured one, client -> first server
  and first -> second server, and a checked 10 MiB TCP transfer's throughput;
- the floors per generated token, with n servers and one-way delay d: client-mediated
  ``2n * d + compute`` (client -> A -> client -> B ...), push ``(n + 1) * d + compute`` (client -> A ->
  B -> ... -> client); compute is local transformers' time per token on this machine in the same run
  (all blocks, embeddings and head, one thread, the same greedy decode);
- the swarm's time per token (decode steps, after a warm-up generation) for each path the client
  has, with its ratio to each floor, and whether the tokens equal local transformers'.

The push path exists when ``core.config.ClientConfig`` has ``push_between_servers``; then both
paths are measured (push on and off), else only the client-mediated one and the script says so.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from benchmarks.home_lab import LabProcess, start_bootstrap, start_server, wait_until_serving

NEW_TOKENS = 64
PROMPT_TOKENS = 16
DIRECT_PORT = 31400
CLIENT_TIMEOUT = 900.0


class _Stamps:
    """A streamer that records when each ``put`` came (the first is the prompt, then one per new token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, tokens: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def per_token(self) -> float:
        """Seconds per decode step: from the first new token (after the prefill) to the last."""
        if len(self.times) < 3:
            raise ValueError("timing per token needs at least two new tokens")
        return (self.times[-1] - self.times[1]) / (len(self.times) - 2)

    def steps(self) -> list[float]:
        """Seconds of each decode step."""
        return [later - earlier for earlier, later in zip(self.times[1:], self.times[2:])]


def push_available() -> bool:
    from core.config import ClientConfig

    return "push_between_servers" in {field.name for field in dataclasses.fields(ClientConfig)}


def spans_for(num_blocks: int, servers: int) -> list[tuple[int, int]]:
    """``servers`` contiguous spans covering every block, sizes differing by at most one (larger first)."""
    if not 1 <= servers <= num_blocks:
        raise ValueError(f"--servers must be between 1 and the model's {num_blocks} blocks, got {servers}")
    base, extra = divmod(num_blocks, servers)
    spans, start = [], 0
    for index in range(servers):
        end = start + base + (1 if index < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def local_run(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> tuple[list[int], float]:
    """Local transformers' greedy tokens and seconds per decode step (the median of ``repeats`` runs: other
    programs on a shared machine make single runs vary by 2x)."""
    per_token = []
    for _ in range(repeats):
        stamps = _Stamps()
        with torch.no_grad():
            tokens = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    eos_token_id=None, pad_token_id=0, streamer=stamps)
        per_token.append(stamps.per_token())
    return tokens[0].tolist(), statistics.median(per_token)


def client_main(args: argparse.Namespace) -> None:
    """The client (runs inside the lab's client host): warm up, generate greedily, print tokens and timing."""
    from core import AutoDistributedModelForCausalLM
    from core.config import ClientConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("core").setLevel(logging.INFO)
    torch.set_num_threads(1)
    options = {} if args.push == "default" else {"push_between_servers": args.push == "on"}
    config = ClientConfig(initial_peers=tuple(args.initial_peers), **options)
    model = AutoDistributedModelForCausalLM.from_pretrained(args.model, initial_peers=args.initial_peers,
                                                            client_config=config)
    try:
        prompt = torch.tensor([args.prompt])
        model.generate(prompt, max_new_tokens=2, eos_token_id=None)  # routes, pings and connections warmed up
        stamps = _Stamps()
        tokens = model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=None, streamer=stamps)
    finally:
        model.shutdown()
    print("RESULT " + json.dumps({"tokens": tokens[0].tolist(), "seconds_per_token": stamps.per_token(),
                                  "steps": stamps.steps()}), flush=True)


def swarm_run(host, log_dir: Path, name: str, converted: Path, bootstrap: str, prompt: list[int], new_tokens: int,
              push: str) -> dict:
    """Run :func:`client_main` in ``host``; its result."""
    (log_dir / f"{name}.log").unlink(missing_ok=True)  # appended to: an earlier run's RESULT must not count
    client = LabProcess(host, name, ["-m", "benchmarks.latency_lab", "client", "--model", str(converted),
                                     "--initial_peers", bootstrap, "--prompt", *map(str, prompt),
                                     "--new_tokens", str(new_tokens), "--push", push], log_dir)
    try:
        return json.loads(client.wait_for(r"RESULT (\{.*\})", CLIENT_TIMEOUT).group(1))
    finally:
        client.kill()


@dataclasses.dataclass
class Row:
    delay_ms: float
    path: str
    per_token_s: float
    compute_s: float
    servers: int
    same_tokens: bool
    steps: list[float]

    def cells(self) -> list[str]:
        d = self.delay_ms / 1000
        mediated = 2 * self.servers * d + self.compute_s
        push = (self.servers + 1) * d + self.compute_s
        return [f"{self.delay_ms:g}", self.path, f"{self.compute_s * 1000:.1f}", f"{push * 1000:.1f}",
                f"{mediated * 1000:.1f}", f"{self.per_token_s * 1000:.1f}", f"{self.per_token_s / push:.3f}",
                f"{self.per_token_s / mediated:.3f}", "yes" if self.same_tokens else "NO",
                "/".join(f"{1000 * value:.0f}" for value in (min(self.steps), statistics.median(self.steps),
                                                              max(self.steps)))]


HEADERS = ["one-way ms", "path", "compute ms", "push floor ms", "mediated floor ms", "swarm ms/token",
           "/ push floor", "/ mediated floor", "same tokens", "step ms min/med/max"]


def print_rows(title: str, rows: Sequence[Row]) -> None:
    table = [HEADERS] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    print(f"\n{title}")
    for index, line in enumerate(table):
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(line, widths)) + " |")
        if index == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    sys.stdout.flush()


def measure_model(name: str, args: argparse.Namespace, folder: Path) -> list[Row]:
    from benchmarks.common import prepare
    from tests.latency_lab import latency_lab

    model = prepare(name, folder)
    spans = spans_for(model.num_blocks, args.servers)
    prompt = torch.randint(3, model.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))
    paths = [("push", "on"), ("client-mediated", "off")] if push_available() else [("client-mediated", "default")]
    rate = f"{args.rate_mbit:g} Mbit/s links" if args.rate_mbit else "links not capped"
    print(f"\n== {model.name}: {args.servers} servers, spans {spans}, {args.new_tokens} greedy tokens, transport "
          f"{args.transport}, {rate}; paths: {', '.join(path for path, _ in paths)}", flush=True)
    if not push_available():
        print("   push between servers is not available in this checkout (ClientConfig has no push_between_servers)")
    names = ["client", "bootstrap", *(f"s{index + 1}" for index in range(args.servers))]
    log_dir = folder / f"logs-{name}"
    shutil.rmtree(log_dir, ignore_errors=True)  # logs are appended to and read back: start from none
    log_dir.mkdir()
    extra = ["--direct_port", str(DIRECT_PORT)] if args.transport == "direct" else ["--no_direct"]
    rows: list[Row] = []
    (folder / f"lab-{name}").mkdir(exist_ok=True)
    with latency_lab(names, one_way_ms=args.one_way_ms[0], rate_mbit=args.rate_mbit,
                     workdir=folder / f"lab-{name}") as lab:
        _, bootstrap = start_bootstrap(lab["bootstrap"], log_dir)
        servers = [start_server(lab[f"s{index + 1}"], log_dir, f"server{index + 1}", model.converted, [bootstrap],
                                span, extra) for index, span in enumerate(spans)]
        for server in servers:
            wait_until_serving(server)
        for delay in args.one_way_ms:
            lab.switch.set_delays(delay)
            checks = [lab.measure_link("client", "s1")]
            if args.servers > 1:
                checks.append(lab.measure_link("s1", "s2", transfer_bytes=1 << 20))
            for check in checks:
                verdict = "within 5 %" if check.deviation() <= 0.05 else "NOT within 5 %"
                print(f"   lab check, one-way {delay:g} ms: {check.line()} [{verdict}]", flush=True)
            for path, push in paths:
                expected, compute = local_run(model.local, prompt, args.new_tokens)
                result = swarm_run(lab["client"], log_dir, f"client-{delay:g}-{path}", model.converted, bootstrap,
                                   prompt[0].tolist(), args.new_tokens, push)
                rows.append(Row(delay, path, result["seconds_per_token"], compute, args.servers,
                                result["tokens"] == expected, result["steps"]))
                print_rows(f"{model.name} so far", rows[-1:])
        print(f"   delay switch: {lab.switch.stats()}")
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) generate from inside a lab host")
    client.add_argument("--model", required=True)
    client.add_argument("--initial_peers", nargs="+", required=True)
    client.add_argument("--prompt", nargs="+", type=int, required=True)
    client.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    client.add_argument("--push", choices=["on", "off", "default"], default="default")
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2"], default=["tiny", "smollm2"])
    parser.add_argument("--one_way_ms", nargs="+", type=float, default=[50.0, 10.0, 150.0],
                        help="one-way delays between any two hosts, each measured in turn")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--rate_mbit", type=float, default=None,
                        help="cap every host's link at this many Mbit/s each way (the floors leave it out)")
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--transport", choices=["p2p", "direct"], default="p2p",
                        help="p2p: servers take no direct connections (--no_direct), every leg goes through the p2p "
                             "daemons; direct: servers' TLS direct ports (what default servers offer)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "client":
        client_main(args)
        return 0
    from benchmarks.common import setup, workdir
    from tests.netlab import lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason:
        raise SystemExit(f"cannot build the latency lab here: {reason}")
    if args.new_tokens < 2 or any(delay < 0 for delay in args.one_way_ms) or (args.rate_mbit or 1) <= 0:
        raise SystemExit("--new_tokens must be at least 2, every --one_way_ms at least 0 and --rate_mbit positive")
    args.threads, args.verbose = 1, False
    setup(args)
    with workdir(args) as folder:
        for name in args.models:
            rows = measure_model(name, args, folder)
            print_rows(f"{name}: time per token (mean over {args.new_tokens - 1} decode steps) vs the floors", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
