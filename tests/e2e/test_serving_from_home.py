"""Serving from home: volunteers behind home routers (NAT) serve with zero configuration.

Each test builds a lab of network namespaces (:mod:`tests.netlab`, private 10.x addresses that exist
only inside it) with a public bootstrap peer, routers that masquerade their home networks, and real
``run_dht`` / ``run_server`` / client processes (:mod:`benchmarks.home_lab`). Every generation must
give local transformers' greedy tokens. The lab removes its namespaces and processes even on failure.
Needs root with ``ip`` and ``iptables`` (CI has them); elsewhere the tests skip and say why.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from benchmarks.home_lab import (
    LabProcess, generate_in, peer_id_of, start_bootstrap, start_home_scenario, start_server, wait_until_serving,
)
from tests.netlab import Lab, lab_unavailable_reason, upnp_unavailable_reason
from tests.numerics import reference_greedy

pytestmark = pytest.mark.skipif(lab_unavailable_reason() is not None, reason=str(lab_unavailable_reason()))

PROMPT = [5, 6, 7, 8]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def expected(tiny_checkpoints) -> list[int]:
    from transformers import AutoModelForCausalLM

    original, _ = tiny_checkpoints["llama"]
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    tokens = reference_greedy(local, torch.tensor([PROMPT]), "home lab generation", max_new_tokens=NEW_TOKENS,
                              eos_token_id=None, pad_token_id=0)
    return tokens[0].tolist()


@pytest.fixture
def converted(tiny_checkpoints):
    return tiny_checkpoints["llama"][1]


def test_a_home_server_with_default_flags_serves_an_internet_client(converted, expected, tmp_path):
    with Lab() as lab:
        scenario = start_home_scenario(lab, tmp_path, converted)
        assert "reachable directly at 10.77.0." in scenario.first.text()
        assert scenario.line.startswith(f"reachable through relay {scenario.bootstrap.rsplit('/', 1)[1]}"), scenario.line
        assert "is online" in scenario.volunteer.text()
        result = generate_in(scenario.user, tmp_path, "client", converted, [scenario.bootstrap], PROMPT, NEW_TOKENS)
        assert result["tokens"] == expected


def test_two_volunteers_behind_two_nats_serve_a_client_behind_a_third(converted, expected, tmp_path):
    with Lab() as lab:
        seed = lab.add_public("seed")
        first_pc = lab.add_host("pc1", home=lab.add_home("home1"))
        second_pc = lab.add_host("pc2", home=lab.add_home("home2"))
        laptop = lab.add_host("laptop", home=lab.add_home("home3"))
        _, bootstrap = start_bootstrap(seed, tmp_path)
        first = start_server(first_pc, tmp_path, "home-server-1", converted, [bootstrap], (0, 2))
        second = start_server(second_pc, tmp_path, "home-server-2", converted, [bootstrap], (2, 4))
        for server in (first, second):
            assert wait_until_serving(server).startswith("reachable through relay"), server.text()[-2000:]
        result = generate_in(laptop, tmp_path, "client", converted, [bootstrap], PROMPT, NEW_TOKENS)
        assert result["tokens"] == expected


def test_the_relay_dies_mid_generation_and_the_volunteer_finds_another(converted, expected, tmp_path):
    with Lab() as lab:
        seed, spare, public = lab.add_public("seed"), lab.add_public("spare"), lab.add_public("public")
        user = lab.add_public("user")
        pc = lab.add_host("pc", home=lab.add_home("home"))
        _, bootstrap = start_bootstrap(seed, tmp_path)
        spare_relay, spare_address = start_bootstrap(spare, tmp_path, name="spare-relay")
        first = start_server(public, tmp_path, "public-server", converted, [bootstrap], (0, 2))
        wait_until_serving(first)
        # the spare relay first: clients use a server's relays in the order it announces them
        volunteer = start_server(pc, tmp_path, "home-server", converted, [spare_address, bootstrap], (2, 4))
        spare_id, bootstrap_id, public_id = spare_address.rsplit("/", 1)[1], bootstrap.rsplit("/", 1)[1], peer_id_of(first)
        assert wait_until_serving(volunteer).startswith(f"reachable through relay {spare_id}, {bootstrap_id}")

        # a slow generation; the spare relay is killed after its first tokens went through it
        client = LabProcess(user, "client", ["-m", "benchmarks.home_lab", "client", "--model", str(converted),
                                             "--initial_peers", bootstrap, "--prompt", *map(str, PROMPT),
                                             "--new_tokens", str(NEW_TOKENS), "--pause", "0.3"], tmp_path)
        client.wait_for(r"GENERATING(\n.*)*TOKEN\n(.*\n)*TOKEN\n(.*\n)*TOKEN")
        spare_relay.kill()
        result = json.loads(client.wait_for(r"RESULT (\{.*\})").group(1))
        assert result["tokens"] == expected
        assert re.search(rf"Relay {spare_id} did not take us|Avoiding server", client.text()), client.text()[-3000:]
        # the volunteer notices at its next renewal and reserves with another public peer
        volunteer.wait_for(rf"This server is reachable through relay {bootstrap_id}, {public_id}", timeout=120)


@pytest.mark.skipif(upnp_unavailable_reason() is not None, reason=str(upnp_unavailable_reason()))
def test_a_router_with_upnp_maps_a_port_and_the_volunteer_is_dialled_directly(converted, expected, tmp_path):
    with Lab() as lab:
        scenario = start_home_scenario(lab, tmp_path, converted, upnp=True)
        assert re.fullmatch(rf"reachable directly at {re.escape(scenario.home.wan_ip)}:\d+", scenario.line), scenario.line
        assert "dnat" in scenario.home.port_mappings()  # the mapping is the router's, not a relay
        result = generate_in(scenario.user, tmp_path, "client", converted, [scenario.bootstrap], PROMPT, NEW_TOKENS)
        assert result["tokens"] == expected
