"""The latency lab (tests/latency_lab.py, tests/delay_switch.py): the delay it promises is the delay hosts see.

Lab tests need root with ``ip`` (CI runs as root) and skip elsewhere, saying why. The round trips are checked
against the configured ones with the 5 % the lab promises (on the median of ten, both ICMP and TCP); that a
round trip is never *shorter* than configured holds by construction (the switch never sends early) and is
checked exactly. The schedule's arithmetic (delays per pair, the bandwidth cap, full queues) is checked
without a lab.
"""
from __future__ import annotations

import os

import pytest

from tests.delay_switch import DelayTable, Link, Schedule
from tests.netlab import iter_lab_namespaces, lab_unavailable_reason

needs_lab = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))
TOLERANCE = 0.05


def test_the_schedule_adds_each_pairs_delay_and_serialises_capped_links() -> None:
    delays = DelayTable(50, [("a", "b", 10)])
    assert delays.between("b", "a") == pytest.approx(0.010) and delays.between("a", "c") == pytest.approx(0.050)
    assert Schedule(delays).due("a", "c", 100.0, 1500) == pytest.approx(100.050)

    capped = Schedule(DelayTable(20), rate_mbit=8.0, queue_ms=5.0)  # 8 Mbit/s: 1000 bytes take 1 ms per link
    first = capped.due("a", "b", 0.0, 1000)
    second = capped.due("a", "b", 0.0, 1000)  # waits for the first on a's uplink
    assert first == pytest.approx(0.001 + 0.020 + 0.001)
    assert second == pytest.approx(0.002 + 0.020 + 0.001)
    for _ in range(4):
        capped.due("a", "b", 0.0, 1000)
    assert capped.due("a", "b", 0.0, 1000) is None  # would wait 6 ms > 5 ms queue: dropped


def test_bad_delays_and_rates_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="one_way_ms must be >= 0"):
        DelayTable(-1)
    with pytest.raises(ValueError, match="between a and b must be >= 0 ms"):
        DelayTable(10, [("a", "b", -5)])
    with pytest.raises(ValueError, match="rate_mbit must be a positive"):
        Schedule(DelayTable(10), rate_mbit=0)
    assert Link(8.0, 1.0).transmit(2.0, 1000) == pytest.approx(2.001)


@needs_lab
def test_round_trips_match_the_configured_delay_and_tcp_carries_10_mib() -> None:
    from tests.latency_lab import latency_lab

    with latency_lab(["client", "boot", "server"], one_way_ms=25, pairs=[("boot", "server", 40)]) as lab:
        report = lab.measure_link("client", "server")  # 10 MiB, checksum compared by the probe
        print(report.line())
        assert report.configured_rtt_ms == 50
        assert min(report.icmp_rtt_ms, report.tcp_rtt_ms) >= 50
        assert report.deviation() <= TOLERANCE, report.line()
        assert report.transfer_bytes == 10 << 20

        pair = lab.measure_link("boot", "server", transfer_bytes=1 << 20)  # a pair with its own delay
        print(pair.line())
        assert pair.configured_rtt_ms == 80 and pair.deviation() <= TOLERANCE, pair.line()

        lab.switch.set_delays(60)  # while the lab runs; the pair's override is gone too
        changed = lab.measure_link("boot", "server", transfer_bytes=1 << 20)
        print(changed.line())
        assert changed.configured_rtt_ms == 120 and changed.deviation() <= TOLERANCE, changed.line()
        stats = lab.switch.stats()
        print(stats)
        assert stats["forwarded"] > 0


@needs_lab
def test_a_capped_link_never_carries_more_than_its_rate() -> None:
    from tests.latency_lab import latency_lab

    with latency_lab(["a", "b"], one_way_ms=10, rate_mbit=40) as lab:
        report = lab.measure_link("a", "b", pings=3, transfer_bytes=2 << 20)
        print(report.line())
        assert report.throughput_mib_s * 8 * 2**20 / 1e6 <= 40  # the switch serialises at 40 Mbit/s
        assert report.tcp_rtt_ms >= 20


@needs_lab
def test_the_lab_removes_its_namespaces_and_switch_even_when_the_body_fails() -> None:
    from tests.latency_lab import latency_lab

    with pytest.raises(RuntimeError, match="the test body failed"), \
            latency_lab(["a", "b"], one_way_ms=5) as lab:
        prefix, pid = lab.lab.prefix, lab.switch._process.pid
        assert len(list(iter_lab_namespaces(prefix))) == 3  # the internet and two hosts
        raise RuntimeError("the test body failed")
    assert list(iter_lab_namespaces(prefix)) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@needs_lab
def test_a_swarm_across_the_delayed_lab_generates_transformers_tokens_no_faster_than_the_links_allow(
        tiny_checkpoints, tmp_path) -> None:
    """Real run_dht / run_server / client processes on hosts 10 ms apart: the same greedy tokens as local
    transformers, and no decode step shorter than the fewest legs a step can take ((n + 1) one-way delays,
    pushed or not), which proves the swarm's traffic crosses the switch."""
    import torch

    from benchmarks.home_lab import start_bootstrap, start_server, wait_until_serving
    from benchmarks.latency_lab import swarm_run
    from tests.latency_lab import latency_lab
    from tests.numerics import reference_greedy
    from transformers import AutoModelForCausalLM

    original, converted = tiny_checkpoints["llama"]
    prompt, new_tokens, one_way_ms = [5, 6, 7, 8], 6, 10
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    expected = reference_greedy(local, torch.tensor([prompt]), "latency lab generation", max_new_tokens=new_tokens,
                                eos_token_id=None, pad_token_id=0)[0].tolist()
    with latency_lab(["client", "boot", "s1", "s2"], one_way_ms=one_way_ms, workdir=tmp_path) as lab:
        _, bootstrap = start_bootstrap(lab["boot"], tmp_path)
        servers = [start_server(lab[name], tmp_path, name, converted, [bootstrap], span)
                   for name, span in (("s1", (0, 2)), ("s2", (2, 4)))]
        for server in servers:
            wait_until_serving(server)
        result = swarm_run(lab["client"], tmp_path, "client", converted, bootstrap, prompt, new_tokens, "default")
    assert result["tokens"] == expected
    assert result["seconds_per_token"] >= (len(servers) + 1) * one_way_ms / 1000
