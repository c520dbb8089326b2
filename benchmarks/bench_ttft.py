"""Time to first token of a fresh client: join the DHT, load the client weights, route, open a session, one token.

    python -m benchmarks.bench_ttft [--models tiny smollm2] [--repeats 5] [--threads 1]

Each repeat is a brand-new client (its own DHT node and p2p daemon) against two servers on
127.0.0.1 that are already running; Python imports are done beforehand. The phases are timed one
after another, as ``generate`` would run them: starting the client's DHT node, loading the
client-side weights (embeddings, norm, head), reading the servers from the DHT and pinging them
(route), then opening the inference session and computing the first token (prompt of 16 tokens).
For reference, local transformers' first token on the same prompt (model already loaded).
Target: DHT join + route + session + first token <= 1.5 s on loopback (loading weights is shown apart).
"""
from __future__ import annotations

import time

import torch

from benchmarks.common import (
    base_parser, each_model, local_swarm, median, met, print_table, setup, torch_dtype,
)

TARGET_S = 1.5
PROMPT_TOKENS = 16
PHASES = ("DHT join", "client weights", "route (DHT read + pings)", "session + first token")


def fresh_client(model: object, swarm: object, prompt: torch.Tensor, dtype: torch.dtype) -> list[float]:
    """Seconds of each phase for one new client (shut down afterwards)."""
    from core.dht.node import shutdown_client_dht
    from core.dht.node import create_dht
    from core.models.auto import AutoDistributedModelForCausalLM

    marks = [time.perf_counter()]
    dht = create_dht(swarm.initial_peers, client_mode=True).dht
    marks.append(time.perf_counter())
    try:
        client = AutoDistributedModelForCausalLM.from_pretrained(str(model.converted), dht=dht, torch_dtype=dtype)
        marks.append(time.perf_counter())
        client.transformer_blocks.manager.make_route(0, model.num_blocks, mode="latency")
        marks.append(time.perf_counter())
        client.generate(prompt, max_new_tokens=1, eos_token_id=None)
        marks.append(time.perf_counter())
        client.shutdown()
    finally:
        shutdown_client_dht(dht)
    return [b - a for a, b in zip(marks, marks[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows = []
    for _, model in each_model(args):
        prompt = torch.randint(3, model.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(3))
        with local_swarm(model, args) as swarm:
            runs = [fresh_client(model, swarm, prompt, dtype) for _ in range(args.warmup + args.repeats)]
        runs = runs[args.warmup:]
        local = []
        with torch.no_grad():
            for _ in range(args.repeats):
                began = time.perf_counter()
                model.local.generate(prompt.to(args.device), max_new_tokens=1, do_sample=False, pad_token_id=0)
                local.append(time.perf_counter() - began)
        connect = [run[0] + run[2] + run[3] for run in runs]  # what the target names: DHT, route, session, token
        phases = [median([run[i] for run in runs]) for i in range(len(PHASES))]
        ttft = median(connect)
        rows.append([model.name, *(f"{1000 * p:.0f}" for p in phases), f"{1000 * ttft:.0f}",
                     f"{1000 * min(connect):.0f}..{1000 * max(connect):.0f}", f"<= {1000 * TARGET_S:.0f}",
                     met(ttft <= TARGET_S), f"{1000 * median([sum(run) for run in runs]):.0f}",
                     f"{1000 * median(local):.0f}"])
        del model
    print_table(
        f"Time to first token of a fresh client (ms), two servers on 127.0.0.1, prompt {PROMPT_TOKENS} tokens; "
        f"medians of {args.repeats} new clients after {args.warmup} warm-up",
        ["model", *PHASES, "TTFT", "TTFT range", "target", "verdict", "with weights", "local first token"], rows, args,
        notes=["TTFT = DHT join + route + session and first token (the phases the target names); 'with weights' adds "
               "loading the client-side weights from disk (checksum verified)."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
