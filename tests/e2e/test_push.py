"""Server-to-server push on real local swarms: pushed steps give transformers' logits and tokens, as the
client-mediated path does; a server killed in the middle of a pushed chain changes no token; servers that
do not push make the chain fall back, link by link, without a failure.

Tiny Llama of 4 blocks. The pushing swarm: A 0..0, B1 and B2 both 1..2, C 3..3 (every step goes
client -> A -> B -> C -> client); B2 and C take no direct connections (``--no_direct``), so pushes and
answers travel over TLS direct connections and through the p2p daemons in one chain. The mixed swarm:
A 0..0, B 1..1, C 2..2 started with ``--no_push``, D 3..3.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import AutoDistributedModelForCausalLM, ClientConfig
from core.cli.swarm_status import format_model
from core.dht.swarm_status import fetch_swarm_status
from tests.numerics import assert_matches_reference, reference_greedy

PROMPT = torch.tensor([[5, 6, 7, 8, 9]])
NEW_TOKENS = 24
SERVER_ARGS = ["--throughput", "10"]  # no speed measurement: faster start


def start(swarm_factory, converted, spans_and_args):
    swarm = swarm_factory(converted, [], server_args=SERVER_ARGS)
    for span, extra in spans_and_args:
        swarm.add_server(span, extra)
    for server in swarm.servers:
        server.wait_for_line("is online", 180)
    return swarm


@pytest.fixture(scope="module")
def local(tiny_checkpoints):
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"][0]).eval()


@pytest.fixture(scope="module")
def expected(local):
    return reference_greedy(local, PROMPT, "pushed generation", max_new_tokens=NEW_TOKENS, eos_token_id=None,
                            pad_token_id=0)


@pytest.fixture(scope="module")
def pushing_swarm(tiny_checkpoints, swarm_factory):
    converted = tiny_checkpoints["llama"][1]
    swarm = start(swarm_factory, converted, [((0, 1), []), ((1, 3), []), ((1, 3), ["--no_direct"]),
                                             ((3, 4), ["--no_direct"])])
    models = {}
    for name, push in (("push", True), ("fallback", False)):
        config = ClientConfig(push_between_servers=push, max_retries=3, request_timeout=30)
        models[name] = AutoDistributedModelForCausalLM.from_pretrained(
            str(converted), initial_peers=swarm.initial_peers, client_config=config)
    yield swarm, models
    for model in models.values():
        model.shutdown()


def generate(model, max_length: int, streamer=None) -> tuple[torch.Tensor, object]:
    with model.inference_session(max_length) as session:
        tokens = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, eos_token_id=None, streamer=streamer)
        return tokens, session.inference


def stepped_logits(model, steps: int) -> torch.Tensor:
    """Logits of the prompt and then ``steps`` greedy tokens, one inference step each."""
    embed = model.get_input_embeddings()
    tokens, logits = PROMPT, []
    with torch.no_grad(), model.transformer_blocks.inference_session(PROMPT.shape[1] + steps) as session:
        new = PROMPT
        for _ in range(steps + 1):
            logits.append(model.head(session.step(embed(new))))
            new = logits[-1][:, -1:].argmax(-1)
            tokens = torch.cat([tokens, new], dim=1)
    return torch.cat(logits, dim=1), tokens[:, :-1]  # the last token was never fed


def test_pushed_logits_and_tokens_equal_the_fallback_and_transformers(pushing_swarm, local, expected):
    _, models = pushing_swarm
    pushed_tokens, pushed = generate(models["push"], PROMPT.shape[1] + NEW_TOKENS)
    carried_tokens, carried = generate(models["fallback"], PROMPT.shape[1] + NEW_TOKENS)
    assert len(pushed.route) == 3 and pushed.hops_pushed > 0 and carried.hops_pushed == 0
    assert pushed.hops_sent < carried.hops_sent
    assert torch.equal(pushed_tokens, expected) and torch.equal(carried_tokens, expected)

    pushed_logits, tokens = stepped_logits(models["push"], 6)
    carried_logits, _ = stepped_logits(models["fallback"], 6)
    with torch.no_grad():
        reference = local(tokens).logits
    assert_matches_reference(pushed_logits, reference, "pushed logits")
    assert_matches_reference(carried_logits, reference, "client-carried logits")


class KillWhenReached:
    """A ``generate`` streamer that SIGKILLs the server holding block 1 in ``session``'s route after ``after`` tokens."""

    def __init__(self, swarm, session_of, after: int) -> None:
        self.swarm, self.session_of, self.after = swarm, session_of, after
        self.generated, self.killed = -1, ""  # the first put() is the prompt

    def put(self, tokens: torch.Tensor) -> None:
        self.generated += 1
        if self.generated != self.after:
            return
        (peer_id,) = [span.peer_id for span in self.session_of().route if span.start == 1]
        (server,) = [server for server in self.swarm.servers if any(peer_id in line for line in server.lines)]
        server.kill()
        self.killed = peer_id

    def end(self) -> None:
        pass


def test_a_server_killed_in_the_middle_of_a_pushed_chain_changes_no_token(pushing_swarm, expected):
    swarm, models = pushing_swarm
    model = models["push"]
    with model.inference_session(PROMPT.shape[1] + NEW_TOKENS) as session:
        killer = KillWhenReached(swarm, lambda: session.inference, after=NEW_TOKENS // 2)
        tokens = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, eos_token_id=None, streamer=killer)
        inference = session.inference
        assert killer.killed and killer.killed not in [span.peer_id for span in inference.route]
        assert len(inference.route) == 3 and inference.hops_pushed > 2 * (NEW_TOKENS // 2)  # pushing went on
    assert torch.equal(tokens, expected)


def test_servers_that_do_not_push_make_their_links_fall_back(tiny_checkpoints, swarm_factory, expected):
    converted = tiny_checkpoints["llama"][1]
    swarm = start(swarm_factory, converted, [((0, 1), []), ((1, 2), []), ((2, 3), ["--no_push"]), ((3, 4), [])])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), initial_peers=swarm.initial_peers)
    try:
        tokens, session = generate(model, PROMPT.shape[1] + NEW_TOKENS)
        (status,) = fetch_swarm_status(model.dht)
    finally:
        model.shutdown()
    assert torch.equal(tokens, expected)
    steps = NEW_TOKENS  # the prompt, then one step per token but the last
    assert [span.start for span in session.route] == [0, 1, 2, 3]
    assert session.hops_pushed == steps and session.hops_sent == 3 * steps  # only A -> B is pushed
    table = format_model(status)
    assert sum("no push" in line for line in table.splitlines()) == 1, table
