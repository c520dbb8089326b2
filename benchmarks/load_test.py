"""Many clients generating at once against two servers on 127.0.0.1; prints throughput, latency and memory.

    python -m benchmarks.load_test --clients 16 --new_tokens 32

A tiny seeded Llama is converted and served by two servers (blocks 0..1 and 2..3). Each client is
its own model object (own inference sessions, shared client DHT node) in its own thread, with its
own seeded prompt; all start together. Every client's tokens are compared with local transformers'
greedy tokens for its prompt. While they run, the servers' resident memory (with their p2p daemons)
is sampled; it must stay within the idle memory plus the KV-cache budget plus a compute allowance.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.tiny_swarm import cache_free_bytes, mib, percentile, prepare_tiny_model, process_rss, reference_tokens
from core.launcher import LocalSwarm

logger = logging.getLogger(__name__)

COMPUTE_ALLOWANCE = 64 * 2**20
"""Memory a server may use beyond idle + KV budget for activations and buffers of in-flight steps."""
PROMPT_LENGTH = 6


class StepTimer:
    """A generation streamer that records when each new token arrived.

    ``generate`` hands the streamer the prompt before any remote step (the prompt goes to the servers
    with the first step), so the first token's latency includes the prompt's prefill.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.marks.append(time.perf_counter())

    def end(self) -> None:
        pass

    @property
    def first_token(self) -> float:
        """Seconds from the call to the first new token (prefill and one step)."""
        return self.marks[1] - self.started

    @property
    def steps(self) -> list[float]:
        """Seconds between consecutive new tokens (one decoding step each)."""
        return [b - a for a, b in zip(self.marks[1:], self.marks[2:])]


@dataclass
class LoadReport:
    """Figures of one load run."""

    clients: int
    new_tokens: int
    wall_seconds: float = 0.0
    correct: int = 0
    failures: list[str] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    rss_idle: list[int] = field(default_factory=list)
    rss_peak: list[int] = field(default_factory=list)
    kv_budget: list[int] = field(default_factory=list)
    spans: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.correct * self.new_tokens

    @property
    def throughput(self) -> float:
        """Generated tokens per second over all clients."""
        return self.clients * self.new_tokens / self.wall_seconds if self.wall_seconds else 0.0

    def within_budget(self) -> list[bool]:
        return [peak <= idle + budget + COMPUTE_ALLOWANCE
                for idle, peak, budget in zip(self.rss_idle, self.rss_peak, self.kv_budget)]

    def table(self) -> str:
        """The printed report."""
        rows = [
            "| clients | new tokens each | correct | wall time | throughput | first token p50 | step p50 | step p99 |",
            "|---|---|---|---|---|---|---|---|",
            f"| {self.clients} | {self.new_tokens} | {self.correct}/{self.clients} | {self.wall_seconds:.1f} s "
            f"| {self.throughput:.1f} tokens/s | {percentile(self.first_token, 50) * 1e3:.0f} ms "
            f"| {percentile(self.steps, 50) * 1e3:.0f} ms | {percentile(self.steps, 99) * 1e3:.0f} ms |",
            "",
            "| server | RSS idle | RSS peak | KV budget | peak within idle + KV budget + "
            f"{mib(COMPUTE_ALLOWANCE)} |",
            "|---|---|---|---|---|",
        ]
        for span, idle, peak, budget, ok in zip(self.spans, self.rss_idle, self.rss_peak, self.kv_budget,
                                                self.within_budget()):
            rows.append(f"| blocks {span} | {mib(idle)} | {mib(peak)} | {mib(budget)} | {'yes' if ok else 'NO'} |")
        if self.failures:
            rows += ["", "failures:", *self.failures[:5]]
        return "\n".join(rows)


class MemorySampler(threading.Thread):
    """Samples the peak RSS of some processes every ``period`` seconds until stopped."""

    def __init__(self, pids: list[int], period: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pids, self.period = pids, period
        self.peaks = [process_rss(pid) for pid in pids]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.peaks = [max(peak, process_rss(pid)) for peak, pid in zip(self.peaks, self.pids)]

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join()
        return self.peaks


def _kv_budgets(dht, converted: Path) -> tuple[list[int], list[str]]:
    """Each server's whole KV budget (free bytes while idle) and its span, ordered by first block."""
    from core import AutoDistributedConfig, ClientConfig
    from core.client.sequence_manager import RemoteSequenceManager
    from core.utils.event_loop import shared_loop

    config = AutoDistributedConfig.from_pretrained(str(converted))
    manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers, ClientConfig())
    spans = manager.make_route(0, config.num_hidden_layers)
    p2p = shared_loop().run(manager.get_p2p())
    return cache_free_bytes(p2p, spans), [f"{span.start}..{span.end - 1}" for span in spans]


def run_load(swarm: LocalSwarm, original: Path, converted: Path, clients: int = 16, new_tokens: int = 32,
             seed: int = 0) -> LoadReport:
    """Run ``clients`` concurrent greedy generations against ``swarm``; returns the figures."""
    from core import AutoDistributedModelForCausalLM
    from core.dht.node import shutdown_client_dht
    from core.dht.node import create_dht

    report = LoadReport(clients, new_tokens)
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 300, (clients, PROMPT_LENGTH), generator=generator)
    expected = reference_tokens(original, prompts, new_tokens)  # a batch of prompts of one length: no padding
    dht = create_dht(swarm.initial_peers, client_mode=True).dht
    models = []
    try:
        models = [AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht) for _ in range(clients)]
        models[0].generate(prompts[:1], max_new_tokens=2, eos_token_id=None)  # warm-up: first-use allocations
        report.kv_budget, report.spans = _kv_budgets(dht, converted)
        report.rss_idle = [process_rss(server.process.pid) for server in swarm.servers]
        sampler = MemorySampler([server.process.pid for server in swarm.servers])
        sampler.start()
        barrier = threading.Barrier(clients)
        lock = threading.Lock()

        def client(index: int) -> None:
            barrier.wait()
            timer = StepTimer()
            try:
                output = models[index].generate(prompts[index : index + 1], max_new_tokens=new_tokens,
                                                eos_token_id=None, streamer=timer)
            except Exception as error:
                with lock:
                    report.failures.append(f"client {index}: {type(error).__name__}: {error}")
                return
            with lock:
                report.first_token.append(timer.first_token)
                report.steps.extend(timer.steps)
                if torch.equal(output, expected[index : index + 1]):
                    report.correct += 1
                else:
                    report.failures.append(f"client {index}: tokens differ from local transformers")

        threads = [threading.Thread(target=client, args=(index,), name=f"client-{index}") for index in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report.wall_seconds = time.perf_counter() - began
        report.rss_peak = sampler.stop()
    finally:
        for model in models:
            model.shutdown()
        shutdown_client_dht(dht)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="blossom-load-") as folder:
        original, converted = prepare_tiny_model(Path(folder))
        with LocalSwarm(converted, [(0, 2), (2, 4)], log_dir=Path(folder) / "logs",
                        server_args=["--throughput", "10"]) as swarm:
            report = run_load(swarm, original, converted, args.clients, args.new_tokens, args.seed)
    print(report.table())
    return 0 if report.correct == report.clients and all(report.within_budget()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
