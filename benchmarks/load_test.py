"""Many clients against two servers on 127.0.0.1, with server-side batching off and on side by side;
prints throughput, latency, servers' CPU and memory for each number of clients.

    python -m benchmarks.load_test --clients 1 4 16 64 --new_tokens 32 [--model tiny|smollm2]

A tiny seeded Llama (or SmolLM2) is converted and served by two swarms of two servers each (blocks
0..1 and 2..3 for the tiny one): one with ``--batch_tokens 0`` (every inference step computed alone),
one with the default batching. Both run at once; each number of clients runs against one, then the
other, in two phases (``--phases``):

generate: each client is its own model object (own inference sessions, shared client DHT node) in its
own thread, with its own seeded prompt; all start together. Every client's tokens are compared with
local transformers' greedy tokens for its prompt. While they run, the servers' resident memory (with
their p2p daemons) is sampled; it must stay within the idle memory plus the KV-cache budget plus a
compute allowance.

capacity: each client opens a raw inference session on the blocks and sends seeded random hidden
states (a prefill, then one-token steps) with no client-side model: no embeddings, LM head or
``generate``. On one small machine the clients' own compute (SmolLM2's head alone is ~8 ms a token)
shares the cores with the servers and spreads the arrival of steps, so the generate figures mostly
measure the clients; this phase measures what the servers sustain.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from benchmarks.tiny_swarm import (
    mib,
    percentile,
    prepare_tiny_model,
    process_cpu_seconds,
    process_rss,
    reference_tokens,
    server_infos,
)
from core.launcher import LocalSwarm

if TYPE_CHECKING:
    import hivemind

    from core.client.inference_session import InferenceSession
    from core.models.base import DistributedModelForCausalLM

logger = logging.getLogger(__name__)

COMPUTE_ALLOWANCE = 64 * 2**20
"""Memory a server may use beyond idle + KV budget for activations and buffers of in-flight steps."""
PROMPT_LENGTH = 6
T = TypeVar("T")


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
    """Figures of one load run: generations, or raw inference sessions (capacity; see :func:`run_steps`),
    where ``new_tokens`` counts each session's one-token steps and ``first_token`` holds prefill latencies."""

    clients: int
    new_tokens: int
    wall_seconds: float = 0.0
    correct: int = 0
    failures: list[str] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    batch_counts: list[tuple[int, int]] = field(default_factory=list)
    """Each server's (batches, steps in them) during the run."""
    server_cpu: list[float] = field(default_factory=list)
    """CPU seconds each server (with its p2p daemon) spent during the run."""
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

    @property
    def server_ms_per_token(self) -> float:
        """Servers' CPU time (all servers together) per generated token, in ms: what batching saves."""
        return sum(self.server_cpu) / (self.clients * self.new_tokens) * 1e3 if self.server_cpu else math.nan

    @property
    def mean_batch(self) -> float:
        """Inference steps per batch the servers ran during this run (1.0: no batching happened)."""
        batches = sum(count for count, _ in self.batch_counts)
        return sum(steps for _, steps in self.batch_counts) / batches if batches else math.nan

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


def _server_infos(dht, converted: Path) -> tuple[list[dict], list[str]]:
    """Each server's ``rpc_info`` answer and its span, ordered by first block."""
    from core import AutoDistributedConfig, ClientConfig
    from core.client.sequence_manager import RemoteSequenceManager
    from core.utils.event_loop import shared_loop

    config = AutoDistributedConfig.from_pretrained(str(converted))
    manager = RemoteSequenceManager(dht, config.dht_prefix, config.num_hidden_layers, ClientConfig())
    spans = manager.make_route(0, config.num_hidden_layers)
    p2p = shared_loop().run(manager.get_p2p())
    return server_infos(p2p, spans), [f"{span.start}..{span.end - 1}" for span in spans]


def _batch_counts(infos: list[dict]) -> list[tuple[int, int]]:
    """(batches, steps batched) each server has run since it started, from its ``rpc_info``."""
    return [(int(info["batches"]), int(info["batched_steps"])) for info in infos]


class ServerWatch:
    """What the swarm's servers use over one run, written into ``report``: idle memory, KV budget and batch
    counters when made (no session open yet); peak memory, CPU seconds and the batches run from
    :meth:`begin` to :meth:`end`."""

    def __init__(self, swarm: LocalSwarm, dht: "hivemind.DHT", converted: Path, report: LoadReport) -> None:
        self.dht, self.converted, self.report = dht, converted, report
        self.pids = [server.process.pid for server in swarm.servers]
        infos, report.spans = _server_infos(dht, converted)
        report.kv_budget = [int(info["cache_bytes_left"]) for info in infos]
        self._batches_before = _batch_counts(infos)
        report.rss_idle = [process_rss(pid) for pid in self.pids]
        self._sampler = MemorySampler(self.pids)
        self._cpu_before: list[float] = []

    def begin(self) -> None:
        self._sampler.start()
        self._cpu_before = [process_cpu_seconds(pid) for pid in self.pids]

    def end(self) -> None:
        self.report.rss_peak = self._sampler.stop()
        self.report.server_cpu = [process_cpu_seconds(pid) - before for pid, before in zip(self.pids, self._cpu_before)]
        after = _batch_counts(_server_infos(self.dht, self.converted)[0])
        self.report.batch_counts = [(batches - batches_before, steps - steps_before) for (batches, steps), (
            batches_before, steps_before) in zip(after, self._batches_before)]


@contextlib.contextmanager
def _client_models(swarm: LocalSwarm, converted: Path, clients: int
                   ) -> Iterator[tuple["hivemind.DHT", list["DistributedModelForCausalLM"]]]:
    """One client DHT node and ``clients`` model objects on it, all shut down on leaving."""
    from core import AutoDistributedModelForCausalLM
    from core.dht.node import create_dht, shutdown_client_dht

    dht = create_dht(swarm.initial_peers, client_mode=True).dht
    models = []
    try:
        models = [AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht) for _ in range(clients)]
        yield dht, models
    finally:
        for model in models:
            model.shutdown()
        shutdown_client_dht(dht)


def _run_together(clients: int, work: Callable[[int, Callable[[], None]], T], watch: ServerWatch
                  ) -> tuple[float, list["T | Exception"]]:
    """Run ``work(index, start)`` for each client in its own thread; each calls ``start()`` once ready, which
    waits for all the others (a client that fails first is counted ready). Returns the seconds from when all
    were ready (``watch`` begins then) to when the last finished, and each client's result or exception."""
    results: list["T | Exception"] = [RuntimeError("client did not finish")] * clients
    began: list[float] = []

    def all_ready() -> None:
        watch.begin()
        began.append(time.perf_counter())

    barrier = threading.Barrier(clients, action=all_ready)

    def client(index: int) -> None:
        waited = False

        def start() -> None:
            nonlocal waited
            waited = True
            barrier.wait()

        try:
            results[index] = work(index, start)
        except Exception as error:
            results[index] = error
        finally:
            if not waited:
                barrier.wait()

    threads = [threading.Thread(target=client, args=(index,), name=f"client-{index}") for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began[0]
    watch.end()
    return wall, results


def _failure(index: int, error: Exception) -> str:
    return f"client {index}: {type(error).__name__}: {error}"


def run_load(swarm: LocalSwarm, original: "Path | torch.nn.Module", converted: Path, clients: int = 16,
             new_tokens: int = 32, seed: int = 0) -> LoadReport:
    """Run ``clients`` concurrent greedy generations against ``swarm``; returns the figures."""
    report = LoadReport(clients, new_tokens)
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 300, (clients, PROMPT_LENGTH), generator=generator)
    expected = reference_tokens(original, prompts, new_tokens)  # a batch of prompts of one length: no padding
    with _client_models(swarm, converted, clients) as (dht, models):
        models[0].generate(prompts[:1], max_new_tokens=2, eos_token_id=None)  # warm-up: first-use allocations
        watch = ServerWatch(swarm, dht, converted, report)

        def client(index: int, start: Callable[[], None]) -> tuple[StepTimer, torch.Tensor]:
            start()
            timer = StepTimer()
            output = models[index].generate(prompts[index : index + 1], max_new_tokens=new_tokens,
                                            eos_token_id=None, streamer=timer)
            return timer, output

        report.wall_seconds, results = _run_together(clients, client, watch)
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            report.failures.append(_failure(index, result))
            continue
        timer, output = result
        report.first_token.append(timer.first_token)
        report.steps.extend(timer.steps)
        if torch.equal(output, expected[index : index + 1]):
            report.correct += 1
        else:
            report.failures.append(f"client {index}: tokens differ from local transformers")
    return report


def _step_checked(session: "InferenceSession", hidden_states: torch.Tensor) -> torch.Tensor:
    """``session.step(hidden_states)``, raising ValueError unless its output is finite and of the same shape."""
    output = session.step(hidden_states)
    if output.shape != hidden_states.shape:
        raise ValueError(f"step output has shape {list(output.shape)}, expected {list(hidden_states.shape)}")
    if not torch.isfinite(output).all():
        raise ValueError("step output is not finite")
    return output


def run_steps(swarm: LocalSwarm, converted: Path, clients: int = 16, steps: int = 32, seed: int = 0) -> LoadReport:
    """Server capacity: ``clients`` concurrent raw inference sessions on ``swarm``'s blocks, each a prefill of
    ``PROMPT_LENGTH`` positions then ``steps`` one-token steps of seeded random hidden states, with no
    client-side model. All start stepping together once prefilled; only those steps are timed (the wall time
    and servers' CPU included). ``correct`` counts sessions whose steps all succeeded."""
    report = LoadReport(clients, steps)
    with _client_models(swarm, converted, clients) as (dht, models):
        hidden = models[0].config.hidden_size
        generator = torch.Generator().manual_seed(seed)
        inputs = [(torch.randn(1, PROMPT_LENGTH, hidden, generator=generator),
                   torch.randn(steps, 1, 1, hidden, generator=generator)) for _ in range(clients)]
        with models[0].transformer_blocks.inference_session(max_length=PROMPT_LENGTH + 1) as session:
            _step_checked(session, inputs[0][0])  # warm-up: first-use allocations
            _step_checked(session, inputs[0][1][0])
        watch = ServerWatch(swarm, dht, converted, report)

        def client(index: int, start: Callable[[], None]) -> tuple[float, list[float]]:
            prefill, tokens = inputs[index]
            with models[index].transformer_blocks.inference_session(max_length=PROMPT_LENGTH + steps) as session:
                began = time.perf_counter()
                _step_checked(session, prefill)
                prefilled = time.perf_counter() - began
                start()
                latencies = []
                for token in tokens:
                    began = time.perf_counter()
                    _step_checked(session, token)
                    latencies.append(time.perf_counter() - began)
            return prefilled, latencies

        report.wall_seconds, results = _run_together(clients, client, watch)
    for index, result in enumerate(results):
        if isinstance(result, Exception):
            report.failures.append(_failure(index, result))
            continue
        report.first_token.append(result[0])
        report.steps.extend(result[1])
        report.correct += 1
    return report


def _model(name: str, folder: Path) -> tuple["Path | torch.nn.Module", Path, list[tuple[int, int]]]:
    """The reference (a folder or a loaded transformers model), the converted model and the two servers' spans."""
    if name == "smollm2":
        from benchmarks.common import prepare_smollm2

        model = prepare_smollm2()
        half = model.num_blocks // 2
        return model.local, model.converted, [(0, half), (half, model.num_blocks)]
    original, converted = prepare_tiny_model(folder)
    return original, converted, [(0, 2), (2, 4)]


MODES = {"off": ["--batch_tokens", "0"], "on": []}
"""Server arguments of each side: every step alone, or the default batching."""
PHASES = ("generate", "capacity")


def _rows(reports: dict[tuple[str, int], LoadReport]) -> list[tuple[str, int, LoadReport]]:
    """(batching, clients, report), by number of clients then batching."""
    return [(mode, clients, report)
            for (mode, clients), report in sorted(reports.items(), key=lambda item: (item[0][1], item[0][0]))]


def curve_table(reports: dict[tuple[str, int], LoadReport]) -> str:
    """One row per (clients, batching): throughput, latencies, correctness, memory and the mean batch."""
    rows = ["| clients | batching | correct | throughput | first token p50 | step p50 | step p99 | mean batch "
            "| servers' CPU per token | memory within budget |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, clients, report in _rows(reports):
        rows.append(
            f"| {clients} | {mode} | {report.correct}/{clients} | {report.throughput:.1f} tokens/s "
            f"| {percentile(report.first_token, 50) * 1e3:.0f} ms | {percentile(report.steps, 50) * 1e3:.1f} ms "
            f"| {percentile(report.steps, 99) * 1e3:.1f} ms | {report.mean_batch:.1f} "
            f"| {report.server_ms_per_token:.2f} ms "
            f"| {'yes' if report.rss_peak and all(report.within_budget()) else 'NO'} |")
    return "\n".join(rows)


def capacity_table(reports: dict[tuple[str, int], LoadReport]) -> str:
    """One row per (clients, batching) of :func:`run_steps`: steps per second, step latencies, mean batch and
    the servers' CPU per step."""
    rows = ["| clients | batching | sessions ok | steps/s | step p50 | step p99 | mean batch "
            "| servers' CPU per step |", "|---|---|---|---|---|---|---|---|"]
    for mode, clients, report in _rows(reports):
        rows.append(
            f"| {clients} | {mode} | {report.correct}/{clients} | {report.throughput:.1f} "
            f"| {percentile(report.steps, 50) * 1e3:.1f} ms | {percentile(report.steps, 99) * 1e3:.1f} ms "
            f"| {report.mean_batch:.1f} | {report.server_ms_per_token:.2f} ms |")
    return "\n".join(rows)


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}" if denominator and math.isfinite(numerator / denominator) else "n/a"


def verdicts(reports: dict[tuple[str, int], LoadReport]) -> list[str]:
    """The issue's targets, each with its measured ratio."""
    lines = []
    counts = sorted({clients for _, clients in reports})
    for clients in counts:
        off, on = reports.get(("off", clients)), reports.get(("on", clients))
        if off and on and off.throughput:
            lines.append(f"{clients} clients: tokens/s with batching / without = {on.throughput / off.throughput:.2f}"
                         + (" (target >= 4)" if clients == 16 else "")
                         + f"; servers' CPU per token without / with = "
                           f"{off.server_ms_per_token / on.server_ms_per_token:.2f}")
    alone = reports.get(("on", 1))
    for clients in counts:
        on = reports.get(("on", clients))
        if alone and on and clients > 1 and alone.steps and on.steps:
            ratio = percentile(on.steps, 50) / percentile(alone.steps, 50)
            lines.append(f"{clients} clients: step p50 with batching / one client alone = {ratio:.2f}"
                         + (" (target <= 1.3)" if clients == 16 else ""))
    return lines


def capacity_verdicts(reports: dict[tuple[str, int], LoadReport]) -> list[str]:
    """For each number of clients run on both sides: what batching gains in steps per second and saves in CPU."""
    lines = []
    for clients in sorted({clients for _, clients in reports}):
        off, on = reports.get(("off", clients)), reports.get(("on", clients))
        if off and on:
            lines.append(f"{clients} clients: steps/s with batching / without = {_ratio(on.throughput, off.throughput)}"
                         f"; servers' CPU per step without / with = "
                         f"{_ratio(off.server_ms_per_token, on.server_ms_per_token)}")
    return lines


def _print_progress(label: str, unit: str, report: LoadReport) -> None:
    print(f"{label}: {report.throughput:.1f} {unit}/s, {report.correct}/{report.clients} ok", flush=True)
    for failure in report.failures[:3]:
        print("   ", failure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64],
                        help="numbers of concurrent clients to run, each against both swarms")
    parser.add_argument("--new_tokens", type=int, default=32,
                        help="tokens each client generates (generate), one-token steps each session takes (capacity)")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="tiny: a seeded Llama of 4 blocks, hidden 64 (overhead-bound); smollm2: the bundled "
                             "SmolLM2-135M, 15 blocks per server (compute-bound)")
    parser.add_argument("--batching", nargs="+", choices=sorted(MODES), default=["off", "on"],
                        help="which sides to run (off: --batch_tokens 0; on: the servers' default)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                        help="generate: whole models calling generate; capacity: raw inference steps, no "
                             "client-side model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    generated: dict[tuple[str, int], LoadReport] = {}
    stepped: dict[tuple[str, int], LoadReport] = {}
    with tempfile.TemporaryDirectory(prefix="blossom-load-") as folder, contextlib.ExitStack() as stack:
        original, converted, spans = _model(args.model, Path(folder))
        swarms = {mode: stack.enter_context(LocalSwarm(converted, spans, log_dir=Path(folder) / f"logs-{mode}",
                                                       server_args=["--throughput", "10", *MODES[mode]]))
                  for mode in args.batching}
        for clients in args.clients:
            for mode, swarm in swarms.items():
                if "generate" in args.phases:
                    report = generated[(mode, clients)] = run_load(swarm, original, converted, clients,
                                                                   args.new_tokens, args.seed)
                    _print_progress(f"generate, batching {mode}, {clients} clients", "tokens", report)
                if "capacity" in args.phases:
                    report = stepped[(mode, clients)] = run_steps(swarm, converted, clients, args.new_tokens,
                                                                  args.seed)
                    _print_progress(f"capacity, batching {mode}, {clients} clients", "steps", report)
    if generated:
        print()
        print(curve_table(generated))
        print()
        for line in verdicts(generated):
            print(line)
    if stepped:
        print()
        print("server capacity (raw inference steps, no client-side model)")
        print()
        print(capacity_table(stepped))
        print()
        for line in capacity_verdicts(stepped):
            print(line)
    ok = (all(report.correct == report.clients and all(report.within_budget()) for report in generated.values())
          and all(report.correct == report.clients and not report.failures for report in stepped.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
