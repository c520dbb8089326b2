"""Sixteen clients generating at once against two real servers all get local transformers' tokens,
and the servers' memory stays within their budget (a lean run of :mod:`benchmarks.load_test`)."""
from __future__ import annotations

import math

from benchmarks.load_test import run_load

CLIENTS = 16
NEW_TOKENS = 4


def test_sixteen_concurrent_clients(tiny_checkpoints, swarm_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)], server_args=["--throughput", "10"])
    try:
        report = run_load(swarm, original, converted, clients=CLIENTS, new_tokens=NEW_TOKENS, seed=3)
    finally:
        swarm.stop()
    print(report.table())
    assert not report.failures, report.failures
    assert report.correct == CLIENTS
    assert len(report.first_token) == CLIENTS and len(report.steps) == CLIENTS * (NEW_TOKENS - 1)
    assert report.throughput > 0 and all(math.isfinite(step) and step > 0 for step in report.steps)
    assert len(report.rss_peak) == 2 and all(report.within_budget()), report.table()
    for server in swarm.servers:
        assert server.process.returncode == 0, server.tail()  # stopped cleanly after the load
