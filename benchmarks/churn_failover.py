"""Failover while servers keep dying: greedy generations stay identical to local transformers.

A tiny Llama (8 blocks) on three servers: A holds 0..3, B and C both hold 4..7. Each round:

1. a client generates greedily; after ``kill_after`` tokens the server its session uses for blocks
   4..7 is killed with SIGKILL (no goodbye: its DHT record lingers until it expires);
2. a fresh server (new peer id, same blocks) is started in its place and waits to be online;
3. a second generation starts and, again after ``kill_after`` tokens, the server it uses for 4..7 is
   killed, so the client must find the newcomer, not retry the dead server's stale record.

Both generations must equal local transformers' tokens. ``python -m benchmarks.churn_failover
--rounds 10`` prints how many rounds were identical; ``tests/e2e/test_churn.py`` runs one round.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core import AutoDistributedModelForCausalLM, ClientConfig
from core.launcher import ChildProcess, LocalSwarm

logger = logging.getLogger(__name__)

NUM_BLOCKS = 8
SPLIT = 4
SERVER_ARGS = ["--throughput", "10"]
START_TIMEOUT = 180.0


@dataclass
class RoundResult:
    """What one round saw: the tokens of each generation and which servers were killed."""

    generations: list[torch.Tensor] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


class KillWhenReached:
    """A ``generate`` streamer that SIGKILLs the server holding blocks ``SPLIT..`` in ``session``'s route
    once ``after`` tokens were generated."""

    def __init__(self, session, servers: list[ChildProcess], after: int) -> None:
        self.session, self.servers, self.after = session, servers, after
        self.generated, self.killed = -1, ""  # the first put() is the prompt

    def put(self, tokens: torch.Tensor) -> None:
        self.generated += 1
        if self.generated != self.after:
            return
        (peer_id,) = [span.peer_id for span in self.session.inference.route if span.start == SPLIT]
        (server,) = [server for server in self.servers if any(peer_id in line for line in server.lines)]
        server.kill()
        self.killed = peer_id
        logger.info("Killed server %s (blocks %d..%d) after %d tokens", peer_id, SPLIT, NUM_BLOCKS - 1, self.after)

    def end(self) -> None:
        pass


def start_churn_swarm(converted: Path, log_dir: Path | None = None) -> LocalSwarm:
    """The DHT peer, A (0..SPLIT) and two servers of SPLIT..NUM_BLOCKS, all online."""
    swarm = LocalSwarm(converted, [(0, SPLIT), (SPLIT, NUM_BLOCKS), (SPLIT, NUM_BLOCKS)], log_dir=log_dir,
                       server_args=SERVER_ARGS)
    swarm.__enter__()
    return swarm


def run_round(swarm: LocalSwarm, converted: Path, prompt: torch.Tensor, new_tokens: int, kill_after: int,
              client_config: ClientConfig | None = None) -> RoundResult:
    """Two generations, each losing the server it uses for blocks SPLIT.. midway; a fresh server joins between."""
    result = RoundResult()
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), initial_peers=swarm.initial_peers, client_config=client_config or ClientConfig())
    try:
        for generation in range(2):
            if generation == 1:
                newcomer = swarm.add_server((SPLIT, NUM_BLOCKS))
                newcomer.wait_for_line("is online", START_TIMEOUT)
            started = time.perf_counter()
            with model.inference_session(prompt.shape[1] + new_tokens) as session:
                killer = KillWhenReached(session, swarm.servers, kill_after)
                tokens = model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=None, streamer=killer)
            result.seconds.append(time.perf_counter() - started)
            result.generations.append(tokens)
            result.killed.append(killer.killed)
    finally:
        model.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--new_tokens", type=int, default=200)
    parser.add_argument("--kill_after", type=int, default=40)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    tempfile.gettempdir()

    from benchmarks.tiny_swarm import prepare_tiny_model, reference_tokens

    with tempfile.TemporaryDirectory() as folder:
        original, converted = prepare_tiny_model(Path(folder), "llama", num_layers=NUM_BLOCKS)
        prompt = torch.tensor([[5, 6, 7, 8]])  # no pad token (0), no near-tie in 200 tokens (top-2 gap >= 0.009)
        expected = reference_tokens(original, prompt, args.new_tokens)
        identical, failed = 0, 0
        for number in range(args.rounds):
            swarm = start_churn_swarm(converted, Path(folder) / f"logs{number}")
            try:
                result = run_round(swarm, converted, prompt, args.new_tokens, args.kill_after)
                same = all(torch.equal(tokens, expected) for tokens in result.generations)
                identical += same
                print(f"round {number + 1}: {'identical' if same else 'DIFFERENT'} tokens, "
                      f"generations took {', '.join(f'{s:.1f} s' for s in result.seconds)}", flush=True)
            except Exception as error:
                failed += 1
                print(f"round {number + 1}: FAILED: {type(error).__name__}: {error}", flush=True)
            finally:
                swarm.stop()
        print(f"{identical} of {args.rounds} rounds identical to transformers, {failed} failed")


if __name__ == "__main__":
    main()
