"""Throughput: measured on a real span of blocks, cached per model/device/dtype, capped by the network."""
from __future__ import annotations

import json

import torch

from core.convert import load_blocks
from core.models.registry import family_for_config
from core.server.backend import SpanBackend, SpanLimits
from core.server.throughput import (
    ComputeSpeed,
    ThroughputCache,
    combine,
    compute_speed,
    measure_compute_speed,
    network_rps,
)


def tiny_backend(converted) -> SpanBackend:
    config, blocks = load_blocks(str(converted), range(0, 2), torch.float32, torch.device("cpu"))
    span = family_for_config(config).make_span(config, blocks, 0).eval().requires_grad_(False)
    return SpanBackend(config, span, 0, 2, torch.float32, torch.device("cpu"), SpanLimits(8, 4096, 256))


def test_measured_speeds_are_per_block_and_positive(tiny_checkpoints):
    speed = measure_compute_speed(tiny_backend(tiny_checkpoints["llama"][1]), steps=2)
    assert speed.inference_rps > 0 and speed.forward_rps > 0
    # a forward pass over a sequence moves far more tokens per second than single-token steps
    assert speed.forward_rps > speed.inference_rps


def test_cache_round_trip_and_reuse(tmp_path, tiny_checkpoints):
    cache = ThroughputCache(tmp_path / "throughput.json")
    key = ThroughputCache.key("tiny", torch.device("cpu"), torch.float32, "none")
    assert cache.get(key) is None
    first = compute_speed(tiny_backend(tiny_checkpoints["llama"][1]), cache, key)
    assert cache.get(key) == first
    # a second server on the same model/device/dtype reuses it without measuring
    assert compute_speed(None, cache, key) == first  # type: ignore[arg-type]
    assert key in json.loads((tmp_path / "throughput.json").read_text())["speeds"]


def test_corrupt_or_foreign_cache_files_are_ignored(tmp_path):
    path = tmp_path / "throughput.json"
    cache = ThroughputCache(path)
    for content in ["not json", "[]", json.dumps({"version": 999, "speeds": {"k": {}}}),
                    json.dumps({"version": 1, "speeds": {"k": {"inference_rps": "x"}}})]:
        path.write_text(content)
        assert cache.get("k") is None
    cache.put("k", ComputeSpeed(2.0, 3.0))
    assert cache.get("k") == ComputeSpeed(2.0, 3.0)


def test_network_caps_the_announced_throughput():
    compute = ComputeSpeed(inference_rps=50.0, forward_rps=1000.0)
    assert combine(compute, None).throughput == 1000.0
    slow_link = network_rps(bytes_per_second=64 * 4 * 2 * 300, hidden_size=64)  # 300 tokens/s of hidden states
    assert abs(slow_link - 300.0) < 1e-9
    capped = combine(compute, slow_link)
    assert capped.throughput == 300.0 and capped.network_rps == 300.0 and capped.inference_rps == 50.0
