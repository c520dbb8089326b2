"""Generation speed: tokens/s of greedy ``generate`` through two servers on 127.0.0.1 vs local transformers.

    python -m benchmarks.bench_generation [--models tiny smollm2] [--threads 1] [--repeats 5]

Prompt of 16 tokens, 64 new tokens, greedy, batch 1. Local: transformers ``generate`` with its KV
cache. Swarm: a DHT peer and two servers (half the blocks each) started by ``LocalSwarm``, and a
client in this process. Both sides produce the same tokens (checked); the runs alternate.
Targets: swarm/local tokens/s >= 0.80 on the tiny Llama, >= 0.90 on SmolLM2-135M.

A third side, "bare loop", is the least a greedy token can cost through the same client: embed, one
inference-session step, head, argmax (what the hand-written loop did before ``generate`` became
transformers' own). ``generate/bare`` is the swarm ``generate``'s tokens/s over it: what transformers'
loop (logits processors, stopping criteria, the cache hooks) costs on top; no slowdown means ~1.0.
The client's own CPU time per token (this process only, so less sensitive to a loaded machine) is
printed for both.
"""
from __future__ import annotations

import time

import torch

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, median, met, print_table, setup, spread, swarm_client,
    torch_dtype,
)

PROMPT_TOKENS = 16
NEW_TOKENS = 64
TARGETS = {"tiny": 0.80, "smollm2": 0.90}


@torch.no_grad()
def bare_greedy(client: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The baseline: greedy tokens with nothing but embed, one session step, head and argmax per token."""
    tokens, pending = prompt, prompt
    with client.transformer_blocks.inference_session(prompt.shape[1] + new_tokens) as session:
        for _ in range(new_tokens):
            hidden = session.step(client.embed(pending))
            pending = client.head(hidden[:, -1:])[:, -1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, pending], dim=1)
    return tokens


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

            cpu: dict[str, list[float]] = {"swarm": [], "bare": []}  # this process's CPU time: the client's own work

            def run_swarm() -> None:
                started = time.process_time()
                outputs["swarm"] = client.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=None)
                cpu["swarm"].append(time.process_time() - started)

            def run_bare() -> None:
                started = time.process_time()
                outputs["bare"] = bare_greedy(client, prompt, args.new_tokens)
                cpu["bare"].append(time.process_time() - started)

            times = interleaved({"local": run_local, "swarm": run_swarm, "bare": run_bare}, args.repeats, args.warmup)
            same = torch.equal(outputs["local"], outputs["swarm"]) and torch.equal(outputs["bare"], outputs["swarm"])
        local_tps = args.new_tokens / median(times["local"])
        swarm_tps = args.new_tokens / median(times["swarm"])
        bare_tps = args.new_tokens / median(times["bare"])
        ratio = swarm_tps / local_tps
        per_token_ms = 1000 * (median(times["swarm"]) - median(times["local"])) / args.new_tokens
        rows.append([model.name, f"{local_tps:.1f}", f"{swarm_tps:.1f}", f"{ratio:.3f}", f">= {TARGETS[name]:.2f}",
                     met(ratio >= TARGETS[name]), f"{bare_tps:.1f}", f"{swarm_tps / bare_tps:.3f}",
                     f"{1000 * median(cpu['swarm']) / args.new_tokens:.2f} / {1000 * median(cpu['bare']) / args.new_tokens:.2f}",
                     f"{per_token_ms:.2f}", spread(times["local"]), spread(times["swarm"]), "yes" if same else "NO"])
        del model
    print_table(
        f"Generation: prompt {PROMPT_TOKENS}, {args.new_tokens} new tokens, greedy, batch 1; two servers on 127.0.0.1 "
        f"vs local transformers generate (KV cache); medians of {args.repeats} runs after {args.warmup} warm-up",
        ["model", "local tok/s", "swarm tok/s", "ratio", "target", "verdict", "bare loop tok/s", "generate/bare",
         "client CPU ms/token generate / bare",
         "extra ms/token", "local run ms", "swarm run ms", "same tokens"],
        rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
