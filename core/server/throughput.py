"""Measuring how fast a span computes, for the throughput a server announces."""
from __future__ import annotations

import logging
import time

import torch
from transformers.cache_utils import DynamicCache

from core.server.backend import SpanBackend

logger = logging.getLogger(__name__)


def measure_throughput(backend: SpanBackend, steps: int = 8) -> float:
    """Single-token inference steps per second through one block of this span (higher is faster).

    Runs a short warmed-up session on random activations; the per-block figure makes servers
    with different span lengths comparable.
    """
    num_blocks = backend.end - backend.start
    hidden = torch.randn(1, 1, backend.hidden_size, dtype=torch.float32)
    cache = DynamicCache()
    backend.inference_step(hidden, cache, 0, backend.start, backend.end)  # warm-up
    began = time.perf_counter()
    for position in range(1, steps + 1):
        backend.inference_step(hidden, cache, position, backend.start, backend.end)
    elapsed = max(time.perf_counter() - began, 1e-9)
    throughput = steps * num_blocks / elapsed
    logger.info("Measured throughput: %.1f block-steps/s (%d blocks, %.2f ms per step)",
                throughput, num_blocks, 1000 * elapsed / steps)
    return throughput
