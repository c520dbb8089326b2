"""Memory: a server's resident memory per block for each dtype / quantization, against the weights it holds;
the KV cache a session fills; the client's memory against its embeddings and head.

    python -m benchmarks.bench_memory [--model smollm2|tiny] [--dtypes float32 bfloat16 int8 nf4] [--device cpu]

For each configuration two servers are started one after the other on 127.0.0.1 with few and many
blocks; the difference of their resident memory (server process only, after a 16-token warm-up step
that touches every weight) divided by
the difference in blocks is the memory one block costs, compared with the bytes of that block's
weights as loaded (int8 / nf4: the quantized linear weights plus their scales, as bitsandbytes
stores them). The larger server then holds an inference session of ``--kv_tokens`` tokens (sent
128 at a time), and
its growth is compared with those tokens' KV-cache bytes. Target: resident memory <= 1.2 x
weights + KV-cache budget. The client is measured in a fresh process: resident memory after
``from_pretrained`` minus before, against the bytes of its parameters.
On a CUDA machine pass ``--device cuda --dtypes float16 bfloat16 int8 nf4``: the blocks then live in
GPU memory, so the table's resident memory shows the host side only; read the GPU side with
``nvidia-smi --query-compute-apps=pid,used_memory --format=csv`` while the servers run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from benchmarks.common import base_parser, converted_only, met, print_table, setup, workdir

TARGET = 1.2
DTYPES = ("float32", "bfloat16", "int8", "nf4")
KV_CHUNK = 128


def block_weight_bytes(converted: Path, index: int, dtype: str, device: str) -> int:
    """Bytes of block ``index``'s parameters and buffers as a server holds them in ``dtype`` (or quantized)."""
    from core.convert import load_blocks
    from core.server.placement import quantize_linear_layers

    torch_dtype = torch.float32 if dtype in ("int8", "nf4") else getattr(torch, dtype)
    _, (block,) = load_blocks(str(converted), range(index, index + 1), torch_dtype, torch.device("cpu"))
    if dtype in ("int8", "nf4"):
        block = quantize_linear_layers(block, dtype, torch.device(device))
    tensors = [*block.parameters(), *block.buffers()]
    for module in block.modules():  # bitsandbytes keeps int8 scales / nf4 absmax next to the weights
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None and getattr(state, "absmax", None) is not None:
            tensors.append(state.absmax)
        scales = getattr(getattr(module, "weight", None), "SCB", None)
        if scales is not None:
            tensors.append(scales)
    return sum(t.numel() * t.element_size() for t in tensors)


def rss(pid: int) -> int:
    """Resident bytes of one process."""
    return psutil.Process(pid).memory_info().rss


def settle(pid: int, seconds: float = 2.0) -> int:
    """Resident bytes once the process has been idle a moment (the largest of a few samples)."""
    samples = []
    for _ in range(4):
        time.sleep(seconds / 4)
        samples.append(rss(pid))
    return max(samples)


def server_memory(swarm: object, converted: Path, span: tuple[int, int], dtype: str, device: str,
                  kv_tokens: int, client: object) -> tuple[int, int, int]:
    """(RSS after a short warm-up step, RSS with a ``kv_tokens`` session open, KV budget bytes) of a server for
    ``span``. The warm-up step touches every weight (the fp32 ones are memory-mapped from the converted files
    and only become resident when first used)."""
    from core.convert import load_config
    from core.server.backend import kv_bytes_per_token
    from core.server.server import DEFAULT_CACHE_TOKENS

    extra = ["--device", device, "--quant_type", dtype] if dtype in ("int8", "nf4") else \
        ["--device", device, "--torch_dtype", dtype]
    if dtype in ("int8", "nf4"):
        extra += ["--torch_dtype", "float32" if device == "cpu" else "float16"]
    server = swarm.add_server(span, extra)
    try:
        server.wait_for_line("is online", swarm.start_timeout)
        blocks = client.transformer_blocks[span[0]:span[1]]
        blocks.manager.update()
        with blocks.inference_session(16) as session:
            session.step(torch.randn(1, 16, client.config.hidden_size))
        idle = settle(server.process.pid)
        compute_dtype = torch.float32 if dtype in ("int8", "nf4") and device == "cpu" else \
            (torch.float16 if dtype in ("int8", "nf4") else getattr(torch, dtype))
        budget = DEFAULT_CACHE_TOKENS * kv_bytes_per_token(load_config(str(converted)), span[1] - span[0], compute_dtype)
        with_kv = idle
        if kv_tokens:
            with blocks.inference_session(kv_tokens) as session:
                for _ in range(0, kv_tokens, KV_CHUNK):  # in chunks, as a chat fills it (bounded activations)
                    session.step(torch.randn(1, KV_CHUNK, client.config.hidden_size))
                with_kv = settle(server.process.pid)
        return idle, with_kv, budget
    finally:
        server.stop()


def client_probe(converted: str) -> None:
    """In a fresh process: print the client's memory growth for ``from_pretrained`` and its parameters' bytes."""
    import gc

    from core.dht.node import shutdown_client_dht
    from core.dht.node import create_dht
    from core.models.auto import AutoDistributedModelForCausalLM

    dht = create_dht([], client_mode=False).dht
    gc.collect()
    before = rss(psutil.Process().pid)
    model = AutoDistributedModelForCausalLM.from_pretrained(converted, dht=dht)
    gc.collect()
    after = rss(psutil.Process().pid)
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    print(json.dumps({"growth": after - before, "params": sum(storages.values()),
                      "tied": model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()}))
    model.shutdown()
    shutdown_client_dht(dht)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=["float32", "bfloat16", "float16",
                                                                              "int8", "nf4"])
    parser.add_argument("--blocks", nargs=2, type=int, default=None, metavar=("FEW", "MANY"),
                        help="block counts of the two servers (default: 2 and all but 2)")
    parser.add_argument("--kv_tokens", type=int, default=1024,
                        help="tokens of the session that fills the KV cache (a multiple of 128)")
    parser.add_argument("--client_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client_probe:
        client_probe(args.client_probe)
        return 0
    setup(args)
    from core.convert import load_config
    from core.launcher import LocalSwarm
    from core.server.backend import kv_bytes_per_token

    rows, notes = [], []
    with workdir(args) as folder:
        converted, total = converted_only(args.model, folder)
        few, many = args.blocks or (2, total - 2)
        config = load_config(str(converted))
        with LocalSwarm(converted, [], server_args=["--throughput", "100", "--attn_cache_tokens", "16384"],
                        num_threads=args.threads) as swarm:
            from core.models.auto import AutoDistributedModelForCausalLM

            client = AutoDistributedModelForCausalLM.from_pretrained(str(converted), initial_peers=swarm.initial_peers)
            try:
                for dtype in args.dtypes:
                    try:
                        weights = block_weight_bytes(converted, 0, dtype, args.device)
                        small, _, _ = server_memory(swarm, converted, (0, few), dtype, args.device, 0, client)
                        large, with_kv, budget = server_memory(swarm, converted, (0, many), dtype, args.device,
                                                               args.kv_tokens, client)
                    except Exception as error:  # e.g. bitsandbytes missing or unable to run here
                        notes.append(f"{dtype}: not measured ({type(error).__name__}: {error})")
                        continue
                    per_block = (large - small) / (many - few)
                    kv_dtype = torch.float32 if dtype in ("int8", "nf4") else getattr(torch, dtype)
                    kv_used = args.kv_tokens * kv_bytes_per_token(config, many, kv_dtype)
                    bound = TARGET * weights * many + budget
                    runtime = small - few * per_block  # what a server costs before any block: Python, torch, hivemind
                    rows.append([dtype, f"{weights / 2**20:.2f}", f"{per_block / 2**20:.2f}", f"{per_block / weights:.2f}",
                                 f"{runtime / 2**20:.0f}", f"{large / 2**20:.0f}", f"{bound / 2**20:.0f}",
                                 met(large <= bound),
                                 f"{(with_kv - large) / 2**20:.1f}", f"{kv_used / 2**20:.1f}"])
            finally:
                client.shutdown()
        # in the workdir still: the tiny model's folder goes with it
        probe = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--client_probe", str(converted)],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"the client memory probe failed:\n{probe.stderr[-2000:]}")
    client_figures = json.loads(probe.stdout.strip().splitlines()[-1])
    notes.append(
        f"Client ({args.model}): from_pretrained grew resident memory by {client_figures['growth'] / 2**20:.0f} MiB for "
        f"{client_figures['params'] / 2**20:.0f} MiB of parameters (embeddings, norm, head; head tied to the "
        f"embeddings: {client_figures['tied']}); ratio {client_figures['growth'] / client_figures['params']:.2f}.")
    print_table(
        f"Server memory, {args.model} ({total} blocks): servers of {few} and {many} blocks on {args.device}; "
        f"per block = RSS difference / {many - few}; KV session of {args.kv_tokens} tokens on the larger server",
        ["dtype", "weights MiB/block", "RSS MiB/block", "RSS/weights", "runtime MiB", f"RSS MiB ({many} blocks)",
         "1.2 x weights + KV budget MiB", "verdict", "KV session growth MiB", "KV bytes MiB"],
        rows, args, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
