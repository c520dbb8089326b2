"""Forward throughput: logits of a batch of 4 x 256 tokens through two servers on 127.0.0.1 vs local transformers.

    python -m benchmarks.bench_forward [--models tiny smollm2] [--batch 4] [--seq 256] [--threads 1]

Both sides compute the full model's logits (no grad); the swarm's match local ones (atol 1e-4 in
float32, checked). Requests over 2 MiB travel as streams of 1 MiB parts. Target: swarm time <= 1.25 x local.
"""
from __future__ import annotations

import torch

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, print_table, setup, swarm_client, time_ratio_row,
    torch_dtype,
)

TARGET = 1.25


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows = []
    for _, model in each_model(args):
        generator = torch.Generator().manual_seed(2)
        input_ids = torch.randint(3, model.vocab_size, (args.batch, args.seq), generator=generator)
        with local_swarm(model, args) as swarm, swarm_client(model, swarm, dtype) as client:
            logits: dict[str, torch.Tensor] = {}

            @torch.no_grad()
            def run_local() -> None:
                logits["local"] = model.local(input_ids.to(args.device)).logits.cpu()

            @torch.no_grad()
            def run_swarm() -> None:
                logits["swarm"] = client(input_ids).logits

            times = interleaved({"local": run_local, "swarm": run_swarm}, args.repeats, args.warmup)
        error = (logits["local"].float() - logits["swarm"].float()).abs().max().item()
        rows.append(time_ratio_row(model.name, args.batch * args.seq, times, TARGET, error))
        del model
    print_table(
        f"Forward: logits of {args.batch} x {args.seq} tokens; two servers on 127.0.0.1 vs local transformers; "
        f"medians of {args.repeats} runs after {args.warmup} warm-up",
        ["model", "local tok/s", "swarm tok/s", "time ratio", "target", "verdict", "local run ms", "swarm run ms",
         "max |logit diff|"], rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
