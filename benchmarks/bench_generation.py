"""Generation speed: tokens/s of greedy ``generate`` through two servers on 127.0.0.1 vs local transformers.

    python -m benchmarks.bench_generation [--models tiny smollm2] [--threads 1] [--repeats 5]

Prompt of 16 tokens, 64 new tokens, greedy, batch 1. Local: transformers ``generate`` with its KV
cache. Swarm: a DHT peer and two servers (half the blocks each) started by ``LocalSwarm``, and a
client in this process. Both sides produce the same tokens (checked); the runs alternate.
Targets: swarm/local tokens/s >= 0.80 on the tiny Llama, >= 0.90 on SmolLM2-135M.
"""
from __future__ import annotations

import torch

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, median, met, print_table, setup, spread, swarm_client,
    torch_dtype,
)

PROMPT_TOKENS = 16
NEW_TOKENS = 64
TARGETS = {"tiny": 0.80, "smollm2": 0.90}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=NEW_TOKENS)
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows = []
    for name, model in each_model(args):
        generator = torch.Generator().manual_seed(1)
        prompt = torch.randint(3, model.vocab_size, (1, PROMPT_TOKENS), generator=generator)
        with local_swarm(model, args) as swarm, swarm_client(model, swarm, dtype) as client:
            outputs: dict[str, torch.Tensor] = {}

            def run_local() -> None:
                with torch.no_grad():
                    outputs["local"] = model.local.generate(
                        prompt.to(args.device), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                        do_sample=False, eos_token_id=None, pad_token_id=0).cpu()

            def run_swarm() -> None:
                outputs["swarm"] = client.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=None)

            times = interleaved({"local": run_local, "swarm": run_swarm}, args.repeats, args.warmup)
            same = torch.equal(outputs["local"], outputs["swarm"])
        local_tps = args.new_tokens / median(times["local"])
        swarm_tps = args.new_tokens / median(times["swarm"])
        ratio = swarm_tps / local_tps
        per_token_ms = 1000 * (median(times["swarm"]) - median(times["local"])) / args.new_tokens
        rows.append([model.name, f"{local_tps:.1f}", f"{swarm_tps:.1f}", f"{ratio:.3f}", f">= {TARGETS[name]:.2f}",
                     met(ratio >= TARGETS[name]), f"{per_token_ms:.2f}", spread(times["local"]),
                     spread(times["swarm"]), "yes" if same else "NO"])
        del model
    print_table(
        f"Generation: prompt {PROMPT_TOKENS}, {args.new_tokens} new tokens, greedy, batch 1; two servers on 127.0.0.1 "
        f"vs local transformers generate (KV cache); medians of {args.repeats} runs after {args.warmup} warm-up",
        ["model", "local tok/s", "swarm tok/s", "ratio", "target", "verdict", "extra ms/token", "local run ms",
         "swarm run ms", "same tokens"],
        rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
