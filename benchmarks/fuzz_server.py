"""Fuzz real Blossom servers on 127.0.0.1 while a well-behaved client generates, and print the figures.

    python -m benchmarks.fuzz_server --requests 3000 --seed 0 --time_limit 300

A tiny seeded Llama is converted, a DHT peer and two servers (blocks 0..1 and 2..3) start as child
processes, and a client generates greedily in a loop the whole time. Meanwhile :class:`Fuzzer`
sends random and mutated requests at both servers, several at a time (see
:mod:`benchmarks.fuzz_requests`):

- unary ``rpc_forward`` / ``rpc_backward`` / ``rpc_info`` requests built valid and then mutated
  (uids, tensor shapes, dtypes, buffers, compression, metadata, tensor counts), random bytes, and
  valid serialized requests with bytes flipped or cut off (sent raw, under the protobuf layer);
- streams with raw frames: random bytes, unknown marker bytes, frame headers announcing huge
  messages, payloads that are not protobufs, frames cut off by a closed connection, and over-long
  streams of many small messages;
- inference sessions with mutated steps (NaN, batch changes, bad rollbacks, steps past max_length)
  and sessions abandoned mid-way by closing the connection without a goodbye.

At the end it checks that no server crashed or logged an internal error, that every generation of
the good client equals local transformers, that the KV-cache budget is whole again, and how the
servers' memory (RSS, with their p2p daemons) moved.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.fuzz_requests import CALL_TIMEOUT, Fuzzer
from benchmarks.tiny_swarm import cache_free_bytes, mib, prepare_tiny_model, process_rss, reference_tokens
from core.client.sequence_manager import RemoteSequenceManager
from core.dht.node import shutdown_client_dht
from core.config import ClientConfig
from core.dht.node import create_dht
from core.launcher import LocalSwarm
from core.utils.event_loop import shared_loop

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MARK = "Unexpected failure serving"
WARMUP_SHARE = 0.2  # memory is compared from here on: allocators and lazy imports grow it once at the start


# ---- a whole campaign ----------------------------------------------------------------------------

@dataclass
class FuzzSummary:
    """Figures of one fuzz campaign."""

    requests: int = 0
    messages: int = 0
    direct_streams: int = 0  # streams sent to the servers' direct ports (the rest went over p2p)
    kinds: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    crashes: int = 0
    internal_errors: int = 0
    generations: int = 0
    generations_equal: int = 0
    client_errors: list[str] = field(default_factory=list)
    rss_before: list[int] = field(default_factory=list)
    rss_warm: list[int] = field(default_factory=list)  # after the first WARMUP_SHARE of the requests
    rss_after: list[int] = field(default_factory=list)
    cache_free_before: list[int] = field(default_factory=list)
    cache_free_after: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors_returned(self) -> int:
        """Requests the servers answered with a typed error or refused at the p2p layer."""
        return sum(count for outcome, count in self.outcomes.items() if outcome.startswith(("error:", "refused:")))

    @property
    def timeouts(self) -> int:
        return self.outcomes.get("timeout", 0)

    @property
    def rss_growth_after_warmup(self) -> int:
        """The largest growth of a server's memory between the end of the warm-up and the end."""
        return max((after - warm for warm, after in zip(self.rss_warm, self.rss_after)), default=0)

    def lines(self) -> list[str]:
        """The printed summary."""
        top = ", ".join(f"{name} {count}" for name, count in self.outcomes.most_common())
        return [
            f"fuzz: {self.requests} requests ({', '.join(f'{k} {v}' for k, v in sorted(self.kinds.items()))}), "
            f"{self.messages} messages ({self.direct_streams} streams over direct ports) in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f} requests/s)",
            f"  errors returned: {self.errors_returned}; outcomes: {top}",
            f"  crashes: {self.crashes}; internal errors logged: {self.internal_errors}; timeouts: {self.timeouts}",
            f"  good client: {self.generations} generations, {self.generations_equal} equal to local transformers"
            + (f"; failures: {self.client_errors[:3]}" if self.client_errors else ""),
            f"  server memory (RSS incl. p2p daemon) at start -> after {WARMUP_SHARE:.0%} of the requests -> end: "
            + "; ".join(f"{mib(a)} -> {mib(w)} -> {mib(b)} ({(b - w) / 2**20:+.1f} MiB after warm-up)"
                        for a, w, b in zip(self.rss_before, self.rss_warm, self.rss_after)),
            "  KV-cache budget free before -> after: "
            + "; ".join(f"{mib(a)} -> {mib(b)}" for a, b in zip(self.cache_free_before, self.cache_free_after)),
        ]


def _good_client(converted: Path, peers: list[str], prompts: torch.Tensor, expected: torch.Tensor,
                 stop: threading.Event, summary: FuzzSummary) -> None:
    """Generate greedily again and again until ``stop``; count generations equal to ``expected``."""
    from core import AutoDistributedModelForCausalLM

    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), initial_peers=peers)
    try:
        while not stop.is_set() or summary.generations == 0:
            try:
                output = model.generate(prompts, max_new_tokens=expected.shape[1] - prompts.shape[1], eos_token_id=None)
            except Exception as error:
                summary.client_errors.append(f"{type(error).__name__}: {error}")
                summary.generations += 1
                continue
            summary.generations += 1
            summary.generations_equal += int(torch.equal(output, expected))
    finally:
        model.shutdown()


def run_campaign(swarm: LocalSwarm, original: Path, converted: Path, requests: int, seed: int = 0,
                 time_limit: float = 300.0, concurrency: int = 8, new_tokens: int = 10) -> FuzzSummary:
    """Fuzz the servers of a running ``swarm`` while a good client generates; returns the figures."""
    from core import AutoDistributedConfig

    config = AutoDistributedConfig.from_pretrained(str(converted))
    summary = FuzzSummary()
    prompts = torch.tensor([[5, 17, 42, 9]])
    expected = reference_tokens(original, prompts, new_tokens)
    dht = create_dht(swarm.initial_peers, client_mode=True).dht
    stop = threading.Event()
    client = threading.Thread(target=_good_client, args=(converted, swarm.initial_peers, prompts, expected, stop,
                                                         summary), name="good-client", daemon=True)
    try:
        manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers, ClientConfig())
        spans = manager.make_route(0, config.num_hidden_layers)
        p2p = shared_loop().run(manager.get_p2p())
        summary.cache_free_before = cache_free_bytes(p2p, spans)
        summary.rss_before = [process_rss(server.process.pid) for server in swarm.servers]
        fuzzer = Fuzzer(p2p, spans, config.dht_prefix, config.hidden_size, seed)
        client.start()
        began = time.monotonic()
        warmup = int(requests * WARMUP_SHARE)
        for share in (warmup, requests - warmup):
            shared_loop().run(fuzzer.run(share, began + time_limit, concurrency), timeout=time_limit + 2 * CALL_TIMEOUT)
            summary.rss_warm = summary.rss_warm or [process_rss(server.process.pid) for server in swarm.servers]
        summary.seconds = time.monotonic() - began
        stop.set()
        client.join(timeout=120)
        summary.requests, summary.messages = sum(fuzzer.kinds.values()), fuzzer.messages
        summary.direct_streams = fuzzer.direct_streams
        summary.kinds, summary.outcomes = fuzzer.kinds, fuzzer.outcomes
        summary.crashes = sum(server.process.poll() is not None for server in swarm.servers)
        if not summary.crashes:
            deadline = time.monotonic() + 15  # abandoned sessions end once the servers notice the closed streams
            while (free := cache_free_bytes(p2p, spans)) != summary.cache_free_before and time.monotonic() < deadline:
                time.sleep(0.5)
            summary.cache_free_after = free
        summary.rss_after = [process_rss(server.process.pid) for server in swarm.servers]
        summary.internal_errors = sum(INTERNAL_ERROR_MARK in line for server in swarm.servers for line in server.lines)
    finally:
        stop.set()
        client.join(timeout=60)
        shutdown_client_dht(dht)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="how many fuzz requests to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time_limit", type=float, default=300.0, help="stop sending after this many seconds")
    parser.add_argument("--concurrency", type=int, default=8, help="fuzz requests in flight at once")
    parser.add_argument("--new_tokens", type=int, default=10, help="tokens per generation of the good client")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="blossom-fuzz-") as folder:
        original, converted = prepare_tiny_model(Path(folder))
        with LocalSwarm(converted, [(0, 2), (2, 4)], log_dir=Path(folder) / "logs",
                        server_args=["--throughput", "10", "--session_idle_timeout", "10"]) as swarm:
            summary = run_campaign(swarm, original, converted, args.requests, args.seed, args.time_limit,
                                   args.concurrency, args.new_tokens)
    print("\n".join(summary.lines()))
    healthy = (not summary.crashes and not summary.internal_errors and summary.generations_equal == summary.generations
               and summary.cache_free_after == summary.cache_free_before)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
