"""How fast a server is: compute speed of its blocks (measured once per model/device/dtype and cached)
and the speed of its network link, combined into the throughput it announces."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

from core.server.backend import SpanBackend

logger = logging.getLogger(__name__)

FORWARD_TOKENS = 128  # sequence length of the forward-pass measurement
CACHE_VERSION = 1


@dataclass(frozen=True)
class ComputeSpeed:
    """Speeds through ONE block, so servers with spans of different lengths compare directly."""

    inference_rps: float  # single-token inference steps per second
    forward_rps: float  # tokens per second in a forward pass over a whole sequence


@dataclass(frozen=True)
class Throughput:
    """What a server announces: the overall figure and its parts (all per block)."""

    throughput: float  # min(forward compute, network): what load balancing uses
    inference_rps: float
    forward_rps: float
    network_rps: float  # 0 when unknown (not measured yet): does not limit the throughput


def combine(compute: ComputeSpeed, network_rps: float | None) -> Throughput:
    """The announced throughput: the forward speed, capped by the network when that is known."""
    limit = compute.forward_rps if not network_rps else min(compute.forward_rps, network_rps)
    return Throughput(limit, compute.inference_rps, compute.forward_rps, network_rps or 0.0)


def measure_compute_speed(backend: SpanBackend, steps: int = 8) -> ComputeSpeed:
    """Time single-token inference steps and one forward pass through the whole span (after warm-up)."""
    num_blocks = backend.end - backend.start
    hidden = torch.randn(1, 1, backend.hidden_size, dtype=torch.float32)
    cache = DynamicCache()
    backend.inference_step(hidden, cache, 0, backend.start, backend.end)  # warm-up
    began = time.perf_counter()
    for position in range(1, steps + 1):
        backend.inference_step(hidden, cache, position, backend.start, backend.end)
    step_time = max(time.perf_counter() - began, 1e-9) / steps

    sequence = torch.randn(1, FORWARD_TOKENS, backend.hidden_size, dtype=torch.float32)
    backend.forward(sequence[:, :8], backend.start, backend.end)  # warm-up
    began = time.perf_counter()
    backend.forward(sequence, backend.start, backend.end)
    forward_time = max(time.perf_counter() - began, 1e-9)
    speed = ComputeSpeed(inference_rps=num_blocks / step_time, forward_rps=FORWARD_TOKENS * num_blocks / forward_time)
    logger.info("Measured compute: %.1f ms per token step, %.0f tokens/s forward (%d blocks)",
                1000 * step_time, FORWARD_TOKENS / forward_time, num_blocks)
    return speed


def network_rps(bytes_per_second: float, hidden_size: int, dtype_bytes: int = 4) -> float:
    """Tokens per second a link of ``bytes_per_second`` carries (each token's hidden state goes in and out)."""
    return bytes_per_second / (2 * hidden_size * dtype_bytes)


class ThroughputCache:
    """A small JSON file of measured compute speeds keyed by model, device, dtype and quantization."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def key(model: str, device: torch.device, dtype: torch.dtype, quant_type: str) -> str:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}"
        return f"{model}|{device.type}|{name}|{dtype}|{quant_type}|threads={torch.get_num_threads()}"

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> ComputeSpeed | None:
        entry = self._read().get("speeds", {}).get(key)
        try:
            return ComputeSpeed(float(entry["inference_rps"]), float(entry["forward_rps"]))
        except (TypeError, KeyError, ValueError):
            return None

    def put(self, key: str, speed: ComputeSpeed) -> None:
        data = self._read() or {"version": CACHE_VERSION, "speeds": {}}
        data.setdefault("speeds", {})[key] = asdict(speed)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=1))
            temporary.replace(self.path)
        except OSError as error:
            logger.warning("Could not save the throughput cache %s: %s", self.path, error)


def compute_speed(backend: SpanBackend, cache: ThroughputCache | None, key: str) -> ComputeSpeed:
    """The cached speed for ``key`` or a fresh measurement (then cached)."""
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        logger.info("Using the compute speed measured earlier on this PC for this model and device")
        logger.debug("Compute speed cache key: %s", key)
        return cached
    speed = measure_compute_speed(backend)
    if cache is not None:
        cache.put(key, speed)
    return speed
