"""Per-step overhead of a server hop: an inference step's latency minus the compute of its blocks.

    python -m benchmarks.bench_hop [--threads 1] [--steps 64] [--repeats 5]

On the tiny Llama (8 blocks, hidden 256), one token per step, batch 1. The blocks' compute is
measured in this process with the very code a server runs (``SpanBackend.inference_step`` on the
same converted weights, dtype and thread count). Then the same steps go through one server
(blocks 0..3) and through two (0..3 and 4..7). The floor under our own code is hivemind's: a bare
``rpc_info`` round trip (client -> p2p daemon -> TCP -> daemon -> server and back), timed on
the client's event loop and through the synchronous facade the client uses per step.
Target: overhead per hop <= 1.5 ms on loopback.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

from benchmarks.common import (
    base_parser, local_swarm, median, met, prepare_tiny_llama, print_table, setup, swarm_client, torch_dtype, workdir,
)

TARGET_MS = 1.5


def local_backend(converted: Path, start: int, end: int, dtype: torch.dtype, device: str) -> object:
    """Blocks ``[start, end)`` loaded exactly as a server loads them, in this process."""
    from core.convert import load_blocks
    from core.models.registry import family_for_config
    from core.server.backend import SpanBackend, SpanLimits

    config, blocks = load_blocks(str(converted), range(start, end), dtype, torch.device(device))
    span = family_for_config(config).make_span(config, blocks, start).to(device).eval().requires_grad_(False)
    return SpanBackend(config, span, start, end, dtype, torch.device(device), SpanLimits(64, 8192, 2048))


def timed_call(function, *args: object) -> float:
    """Seconds one call takes."""
    began = time.perf_counter()
    function(*args)
    return time.perf_counter() - began


def one_round(first: object, whole: object, blocks: object, half: int, inputs: list[torch.Tensor],
              ping_once) -> dict[str, list[float]]:
    """One session of ``len(inputs)`` steps on every path, interleaved step by step so that the load of
    the moment hits all paths alike: local blocks 0..half, one server, local blocks 0..n, two servers, a ping."""
    times: dict[str, list[float]] = {key: [] for key in ("local1", "swarm1", "local2", "swarm2", "ping")}
    caches = DynamicCache(), DynamicCache()
    with blocks[0:half].inference_session(len(inputs)) as one_hop, blocks.inference_session(len(inputs)) as two_hops:
        for position, hidden in enumerate(inputs):
            times["local1"].append(timed_call(first.inference_step, hidden, caches[0], position, first.start, first.end))
            times["swarm1"].append(timed_call(one_hop.step, hidden))
            times["local2"].append(timed_call(whole.inference_step, hidden, caches[1], position, whole.start, whole.end))
            times["swarm2"].append(timed_call(two_hops.step, hidden))
            times["ping"].append(timed_call(ping_once))
    return times


async def ping_loop(p2p: object, peer: str, count: int) -> list[float]:
    """``count`` sequential rpc_info round trips, timed on the event loop itself."""
    from core.network import ping

    return [await ping(p2p, peer) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="single-token steps per session")
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    with workdir(args) as folder:
        model = prepare_tiny_llama(folder, dtype)
        half = model.num_blocks // 2
        first, whole = (local_backend(model.converted, 0, half, dtype, args.device),
                        local_backend(model.converted, 0, model.num_blocks, dtype, args.device))
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(1, 1, model.local.config.hidden_size, generator=generator).to(dtype)
                  for _ in range(args.steps)]
        times: dict[str, list[float]] = {}
        with local_swarm(model, args) as swarm, swarm_client(model, swarm, dtype) as client:
            blocks = client.transformer_blocks
            manager = blocks.manager
            peer = manager.make_route(0, half)[0].peer_id
            p2p = manager.loop.run(manager.get_p2p())
            loop_pings: list[float] = []
            for round_index in range(args.warmup + args.repeats):
                results = one_round(first, whole, blocks, half, inputs,
                                    lambda: manager.loop.run(ping_loop(p2p, peer, 1)))
                if round_index >= args.warmup:
                    for key, values in results.items():
                        times.setdefault(key, []).extend(values[2:])  # the first steps carry session set-up
                    loop_pings.extend(manager.loop.run(ping_loop(p2p, peer, args.steps)))
    ms = {key: 1000 * median(values) for key, values in times.items()}
    # paired differences: each swarm step minus the local compute of the same blocks timed right before it
    one_hop = 1000 * median([s - c for s, c in zip(times["swarm1"], times["local1"])])
    per_hop_two = 1000 * median([(s - c) / 2 for s, c in zip(times["swarm2"], times["local2"])])
    ping_loop_ms = 1000 * median(loop_pings)
    rows = [
        ["1 server (blocks 0..3)", f"{ms['local1']:.3f}", f"{ms['swarm1']:.3f}", "1", f"{one_hop:.3f}",
         f"<= {TARGET_MS}", met(one_hop <= TARGET_MS)],
        ["2 servers (0..3, 4..7)", f"{ms['local2']:.3f}", f"{ms['swarm2']:.3f}", "2", f"{per_hop_two:.3f}",
         f"<= {TARGET_MS}", met(per_hop_two <= TARGET_MS)],
        ["bare rpc_info, on the loop", "0", f"{ping_loop_ms:.3f}", "1", f"{ping_loop_ms:.3f}", "(floor)", ""],
        ["bare rpc_info, sync facade", "0", f"{ms['ping']:.3f}", "1", f"{ms['ping']:.3f}", "(floor)", ""],
    ]
    print_table(
        f"Per-hop overhead: tiny Llama 8x256, 1 token per step, batch 1, {args.steps} steps per session, paths "
        f"interleaved step by step; medians over {args.repeats} sessions after {args.warmup} warm-up (first 2 steps "
        f"left out); overhead = median of (step - compute of the same blocks timed just before)",
        ["path", "blocks' compute ms", "step ms", "hops", "overhead ms/hop", "target", "verdict"], rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
