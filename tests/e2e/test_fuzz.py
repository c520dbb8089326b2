"""Over a thousand random and mutated requests at real servers, while a good client generates.

Runs :mod:`benchmarks.fuzz_server` with a bounded budget against its own swarm of the tiny Llama
(a DHT peer and two servers on 127.0.0.1 with direct ports; short idle timeout so half-sent frames are
closed soon).
"""
from __future__ import annotations

import pytest

from benchmarks.fuzz_server import run_campaign

REQUESTS = 1200
TIME_LIMIT = 120.0


@pytest.fixture(scope="module")
def fuzz_summary(tiny_checkpoints, swarm_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)],
                          server_args=["--throughput", "10", "--session_idle_timeout", "10",
                                       "--direct_port", "0"])
    try:
        summary = run_campaign(swarm, original, converted, REQUESTS, seed=7, time_limit=TIME_LIMIT, concurrency=8)
        print("\n".join(summary.lines()))
        yield summary
    finally:
        swarm.stop()


def test_fuzzing_never_crashes_a_server(fuzz_summary):
    assert fuzz_summary.requests >= 1000, "the time limit ran out before a thousand requests were sent"
    assert fuzz_summary.crashes == 0
    assert fuzz_summary.internal_errors == 0, "a malformed request caused an internal error instead of a typed one"
    assert fuzz_summary.timeouts == 0, "a server left a request unanswered"


def test_every_kind_of_bad_input_gets_a_clear_error(fuzz_summary):
    outcomes = fuzz_summary.outcomes
    for code in ("error:invalid_request", "error:unknown_blocks", "error:sequence_too_long", "refused:P2PHandlerError"):
        assert outcomes[code] > 0, f"no {code} among {dict(outcomes)}"
    assert fuzz_summary.errors_returned >= fuzz_summary.requests // 2
    assert {"session", "stream-frames", "unary-mutated", "unary-garbage", "unary-bitflip"} <= set(fuzz_summary.kinds)
    assert outcomes["abandoned-mid-session"] + outcomes["closed-by-fuzzer"] > 0
    assert fuzz_summary.direct_streams > 100, "the servers' direct ports were hardly fuzzed"


def test_the_good_client_is_undisturbed(fuzz_summary):
    assert fuzz_summary.generations >= 1 and not fuzz_summary.client_errors
    assert fuzz_summary.generations_equal == fuzz_summary.generations


def test_resources_return_to_baseline(fuzz_summary):
    assert fuzz_summary.cache_free_after == fuzz_summary.cache_free_before, "a session's KV-cache reservation leaked"
    assert fuzz_summary.rss_growth_after_warmup < 48 * 2**20, fuzz_summary.lines()[-2]
