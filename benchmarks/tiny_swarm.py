"""Pieces shared by the fuzz and load scripts: a tiny converted model, reference tokens, process memory.

The scripts run against real servers on 127.0.0.1; a tiny seeded model keeps them fast on a CPU
while exercising exactly the code a large model runs through.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import psutil
import torch

if TYPE_CHECKING:
    from hivemind.p2p import P2P

    from core.dht.schema import RemoteSpanInfo

logger = logging.getLogger(__name__)


def prepare_tiny_model(folder: Path, family: str = "llama", num_layers: int = 4) -> tuple[Path, Path]:
    """Save a tiny seeded ``family`` model under ``folder`` and convert it; returns (original, converted)."""
    from core.convert import convert_model
    from tests.tiny_models import save_model

    original = save_model(family, folder / f"tiny-{family}-original", num_layers=num_layers)
    converted = folder / f"tiny-{family}"
    convert_model(str(original), converted, progress=False)
    return original, converted


def reference_tokens(original: "Path | torch.nn.Module", prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the original checkpoint (a folder, or a loaded transformers model) run locally by
    transformers: the tokens to match."""
    from transformers import AutoModelForCausalLM

    local = original if isinstance(original, torch.nn.Module) else AutoModelForCausalLM.from_pretrained(original).eval()
    with torch.no_grad():
        return local.generate(prompts, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)


def server_infos(p2p: "P2P", spans: Sequence["RemoteSpanInfo"], timeout: float = 30.0) -> list[dict]:
    """What each server of ``spans`` answers to ``rpc_info`` (free KV-cache bytes, largest batch ...)."""
    from hivemind.proto import runtime_pb2

    from core.network import call_info
    from core.utils.event_loop import shared_loop
    from core.wire import unpack_metadata

    async def ask(span: "RemoteSpanInfo") -> dict:
        response = await call_info(p2p, span.peer_id, runtime_pb2.ExpertRequest(), timeout)
        return unpack_metadata(response.metadata)

    return [shared_loop().run(ask(span), timeout=timeout + 5) for span in spans]


def cache_free_bytes(p2p: "P2P", spans: Sequence["RemoteSpanInfo"], timeout: float = 30.0) -> list[int]:
    """Free KV-cache bytes each server of ``spans`` reports through its ``rpc_info``."""
    return [int(info["cache_bytes_left"]) for info in server_infos(p2p, spans, timeout)]


def _process_tree_sum(pid: int, measure: "Callable[[psutil.Process], float]") -> float:
    """``measure`` summed over a process and all its descendants (0 for those already gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += measure(process)
        except psutil.NoSuchProcess:
            pass
    return total


def process_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants (a server and its p2p daemon), in bytes."""
    return int(_process_tree_sum(pid, lambda process: process.memory_info().rss))


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process and all its descendants have used so far."""
    return float(_process_tree_sum(pid, lambda process: sum(process.cpu_times()[:2])))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by the nearest-rank method; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def mib(size: int) -> str:
    """Bytes as MiB with one decimal."""
    return f"{size / 2**20:.1f} MiB"
