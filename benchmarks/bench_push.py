"""Server-to-server push on loopback: generation tokens/s with push, with the client-mediated fallback, and local.

    python -m benchmarks.bench_push [--models tiny] [--servers 2] [--transport direct|p2p] [--repeats 5]

One swarm on 127.0.0.1 (``--servers`` servers, the blocks split evenly) and two clients in this process:
one with ``ClientConfig.push_between_servers`` (client -> A -> B -> client: n + 1 legs per token), one
without (client -> A -> client -> B -> client: 2n legs). Prompt of 16 tokens, 64 new tokens, greedy,
batch 1; the three sides alternate, and each checks its tokens equal local transformers'.
Target (tiny Llama): swarm/local tokens/s >= 0.80 over p2p and over direct.

A second table pairs single-token steps: one session per client, stepping in alternation
(``--paired_steps`` each), so that load from other programs hits both paths alike; it reports each
path's median step and the median of the per-pair differences (push minus client-mediated).
"""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, median, met, print_table, setup, spread, swarm_client,
    torch_dtype,
)
from core.config import ClientConfig

PROMPT_TOKENS = 16
NEW_TOKENS = 64
TARGETS = {"tiny": 0.80, "smollm2": 0.90}


def even_spans(num_blocks: int, servers: int) -> list[tuple[int, int]]:
    """``servers`` consecutive spans covering ``num_blocks`` blocks, as even as possible."""
    bounds = [round(number * num_blocks / servers) for number in range(servers + 1)]
    return list(zip(bounds, bounds[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--servers", type=int, default=2, help="servers in the chain (the blocks split evenly)")
    parser.add_argument("--paired_steps", type=int, default=300, help="single-token steps per path in the paired table")
    parser.set_defaults(models=["tiny"])
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows, paired_rows = [], []
    for name, model in each_model(args):
        generator = torch.Generator().manual_seed(1)
        prompt = torch.randint(3, model.vocab_size, (1, PROMPT_TOKENS), generator=generator)
        spans = even_spans(model.num_blocks, args.servers)
        with local_swarm(model, args, spans) as swarm, \
                swarm_client(model, swarm, dtype, client_config=ClientConfig(push_between_servers=True)) as pushing, \
                swarm_client(model, swarm, dtype, client_config=ClientConfig(push_between_servers=False)) as carrying:
            outputs: dict[str, torch.Tensor] = {}
            pushed_hops: list[int] = []

            def run_local() -> None:
                with torch.no_grad():
                    outputs["local"] = model.local.generate(
                        prompt.to(args.device), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                        do_sample=False, eos_token_id=None, pad_token_id=0).cpu()

            def run_on(client: torch.nn.Module, side: str) -> None:
                with client.inference_session(PROMPT_TOKENS + args.new_tokens) as session:
                    outputs[side] = client.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=None)
                    if side == "push":
                        pushed_hops.append(session.inference.hops_pushed)

            times = interleaved({"local": run_local, "push": lambda: run_on(pushing, "push"),
                                 "fallback": lambda: run_on(carrying, "fallback")}, args.repeats, args.warmup)
            paired_rows.append(paired_steps(model, pushing, carrying, args.paired_steps, dtype))
        local_tps = args.new_tokens / median(times["local"])
        for side in ("push", "fallback"):
            tps = args.new_tokens / median(times[side])
            ratio = tps / local_tps
            extra_ms = 1000 * (median(times[side]) - median(times["local"])) / args.new_tokens
            same = torch.equal(outputs["local"], outputs[side])
            rows.append([model.name, side, f"{local_tps:.1f}", f"{tps:.1f}", f"{ratio:.3f}", f">= {TARGETS[name]:.2f}",
                         met(ratio >= TARGETS[name]), f"{extra_ms:.2f}", spread(times["local"]), spread(times[side]),
                         "yes" if same else "NO"])
        if not pushed_hops or min(pushed_hops) == 0:
            rows.append([model.name, "push", "", "", "", "", "", "", "", "", "NO PUSH HAPPENED"])
        del model
    print_table(
        f"Push vs client-mediated generation: prompt {PROMPT_TOKENS}, {args.new_tokens} new tokens, greedy, batch 1; "
        f"{args.servers} servers on 127.0.0.1 vs local transformers generate; medians of {args.repeats} runs after "
        f"{args.warmup} warm-up",
        ["model", "path", "local tok/s", "swarm tok/s", "ratio", "target", "verdict", "extra ms/token",
         "local run ms", "swarm run ms", "same tokens"],
        rows, args)
    print_table(
        f"Paired single-token steps through the same {args.servers} servers: push and client-mediated sessions "
        f"stepping in alternation, {args.paired_steps} steps each (first 5 left out)",
        ["model", "push step ms (median)", "client-mediated step ms (median)", "push - client-mediated, median of pairs"],
        paired_rows, args)
    return 0


def paired_steps(model, pushing: torch.nn.Module, carrying: torch.nn.Module, steps: int,
                 dtype: torch.dtype) -> list[str]:
    """One row: median step times of both paths and the median per-pair difference (ms)."""
    hidden = torch.randn(1, 1, pushing.config.hidden_size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    times: dict[str, list[float]] = {"push": [], "fallback": []}
    with pushing.transformer_blocks.inference_session(steps + 1) as pushed, \
            carrying.transformer_blocks.inference_session(steps + 1) as carried:
        sessions = {"push": pushed, "fallback": carried}
        for number in range(steps):
            for side in ("push", "fallback") if number % 2 else ("fallback", "push"):
                began = time.perf_counter()
                sessions[side].step(hidden)
                times[side].append(time.perf_counter() - began)
        if pushed.hops_pushed == 0:
            return [model.name, "NO PUSH HAPPENED", "", ""]
    push, fallback = times["push"][5:], times["fallback"][5:]
    difference = statistics.median(a - b for a, b in zip(push, fallback))
    return [model.name, f"{1000 * statistics.median(push):.3f}", f"{1000 * statistics.median(fallback):.3f}",
            f"{1000 * difference:+.3f}"]


if __name__ == "__main__":
    raise SystemExit(main())
