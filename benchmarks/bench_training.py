"""Prompt-tuning step (forward + backward + AdamW, ptune, 8 prompt positions) through two servers vs local transformers.

    python -m benchmarks.bench_training [--models tiny smollm2] [--batch 4] [--seq 256] [--threads 1]

Swarm: ``from_pretrained(..., tuning_mode="ptune", pre_seq_len=8)``, loss from ``labels``,
``loss.backward()``, ``AdamW.step()`` on the prompts. Local: the same transformers model with every
weight frozen, the same initial prompts prepended through ``inputs_embeds``, the same loss over
the user's tokens and the same optimizer. Both sides start from equal prompts and take the same
steps, so their losses must stay equal (checked). Each server keeps its forward's autograd graph
for the backward when the graph fits its KV-cache budget (``--attn_cache_tokens``), else it runs
the forward again inside the backward. Target: swarm step time <= 1.25 x local.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import (
    base_parser, each_model, interleaved, local_swarm, print_table, setup, swarm_client, time_ratio_row,
    torch_dtype,
)

TARGET = 1.25
PRE_SEQ_LEN = 8
LEARNING_RATE = 1e-2


class LocalPromptTuning:
    """ptune on a local transformers model: trainable prompts in front of the inputs' embeddings."""

    def __init__(self, local: nn.Module, prompts: torch.Tensor) -> None:
        self.local = local.requires_grad_(False)
        self.prompts = nn.Parameter(prompts.detach().clone())
        self.optimizer = torch.optim.AdamW([self.prompts], lr=LEARNING_RATE)

    def step(self, input_ids: torch.Tensor) -> float:
        embeds = self.local.get_input_embeddings()(input_ids)
        prefix = self.prompts.to(embeds.dtype)[None].expand(input_ids.shape[0], -1, -1)
        logits = self.local(inputs_embeds=torch.cat([prefix, embeds], dim=1)).logits[:, PRE_SEQ_LEN:]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


class SwarmPromptTuning:
    """The same through the swarm with Blossom's ptune model."""

    def __init__(self, client: nn.Module) -> None:
        self.client = client.train()
        self.optimizer = torch.optim.AdamW([p for p in client.parameters() if p.requires_grad], lr=LEARNING_RATE)

    def step(self, input_ids: torch.Tensor) -> float:
        loss = self.client(input_ids, labels=input_ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--attn_cache_tokens", type=int, default=None,
                        help="servers' KV budget in tokens (kept forward graphs are charged to it; default: the "
                             "server's default)")
    args = parser.parse_args(argv)
    setup(args)
    dtype = torch_dtype(args.dtype)
    rows = []
    for _, model in each_model(args):
        generator = torch.Generator().manual_seed(4)
        input_ids = torch.randint(3, model.vocab_size, (args.batch, args.seq), generator=generator)
        budget = [] if args.attn_cache_tokens is None else ["--attn_cache_tokens", str(args.attn_cache_tokens)]
        with local_swarm(model, args, extra_server_args=budget) as swarm, \
                swarm_client(model, swarm, dtype, tuning_mode="ptune", pre_seq_len=PRE_SEQ_LEN) as client:
            swarm_side = SwarmPromptTuning(client)
            local_side = LocalPromptTuning(model.local, client.ptune.prompts.to(args.device))
            losses: dict[str, list[float]] = {"local": [], "swarm": []}
            times = interleaved({
                "local": lambda: losses["local"].append(local_side.step(input_ids.to(args.device))),
                "swarm": lambda: losses["swarm"].append(swarm_side.step(input_ids)),
            }, args.repeats, args.warmup)
        gap = max(abs(a - b) for a, b in zip(losses["local"], losses["swarm"]))
        rows.append(time_ratio_row(model.name, args.batch * args.seq, times, TARGET, gap))
        del model
    print_table(
        f"Prompt-tuning step (ptune, {PRE_SEQ_LEN} prompts, forward + backward + AdamW) on {args.batch} x {args.seq} "
        f"tokens; two servers on 127.0.0.1 vs local transformers; medians of {args.repeats} steps after "
        f"{args.warmup} warm-up",
        ["model", "local tok/s", "swarm tok/s", "time ratio", "target", "verdict", "local step ms", "swarm step ms",
         "max |loss diff|"], rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
