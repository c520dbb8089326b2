"""The swarm heals itself: real servers on 127.0.0.1 die, leave and start together.

- a server is killed with SIGKILL in the middle of a generation: the tokens equal an undisturbed run;
- a server leaves and a spare server moves to cover its blocks;
- two servers started at the same moment choose different spans;
- ``swarm_status`` (function and CLI) shows who holds what.
"""
from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from core import AutoDistributedModelForCausalLM, ClientConfig
from core.cli import swarm_status as swarm_status_cli
from core.dht.swarm_status import ModelSwarm, fetch_swarm_status
from tests.numerics import assert_matches_reference

FAST_BALANCE = ["--mean_balance_check_period", "1", "--update_period", "5"]


def peer_of(process) -> str:
    """The peer id a server process printed in its multiaddrs."""
    for line in process.lines:
        if "/p2p/" in line:
            return line.split()[0].rsplit("/p2p/", 1)[1]
    raise AssertionError("server printed no address:\n" + process.tail())


def wait_for_status(dht, prefix: str, condition, timeout: float = 60.0) -> ModelSwarm:
    deadline = time.monotonic() + timeout
    while True:
        (model,) = fetch_swarm_status(dht, prefix) or [None]
        if model is not None and condition(model):
            return model
        if time.monotonic() > deadline:
            raise AssertionError(f"swarm never reached the expected state; last seen: {model}")
        time.sleep(0.5)


class KillOnToken:
    """A streamer that SIGKILLs the server computing the model's last blocks after a few tokens."""

    def __init__(self, model, processes: dict, after: int) -> None:
        self.model, self.processes, self.after = model, processes, after
        self.calls, self.killed = 0, None

    def put(self, tokens: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == self.after:
            self.killed = self.model.active_session.inference.route[-1].peer_id
            self.processes[self.killed].kill()

    def end(self) -> None:
        pass


def test_generation_survives_a_server_killed_mid_way(tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4), (2, 4)], server_args=["--balance_quality", "0"])
    processes = {peer_of(process): process for process in swarm.servers}
    dht = client_dht_factory(swarm.initial_peers)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), dht=dht, client_config=ClientConfig(request_timeout=15, ban_timeout=60))
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    torch.manual_seed(7)
    input_ids = torch.randint(3, model.config.vocab_size, (1, 6))
    expected = local.generate(input_ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)

    streamer = KillOnToken(model, processes, after=6)
    with model.inference_session(max_length=32):
        tokens = model.generate(input_ids, max_new_tokens=16, do_sample=False, streamer=streamer)
    model.shutdown()

    assert streamer.killed is not None, "the test never killed a server"
    assert processes[streamer.killed].process.poll() is not None
    assert tokens.tolist() == expected.tolist()


def test_a_spare_server_moves_to_cover_blocks_a_leaving_server_held(
    tiny_checkpoints, swarm_factory, client_dht_factory
):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)], server_args=FAST_BALANCE)
    fixed = {peer_of(process): process for process in swarm.servers}
    spare = swarm.add_server(None, ["--num_blocks", "2"])
    spare.wait_for_line("is online", 120)
    spare_peer = peer_of(spare)
    dht = client_dht_factory(swarm.initial_peers)
    prefix = converted.name
    before = wait_for_status(dht, prefix, lambda m: len([r for r in m.servers if r.state == "online"]) == 3)

    # the fixed server whose blocks the spare does not already duplicate leaves
    spare_row = next(row for row in before.servers if row.peer_id == spare_peer)
    leaving_peer = next(row.peer_id for row in before.servers if row.peer_id in fixed
                        and (row.start_block, row.end_block) != (spare_row.start_block, spare_row.end_block))
    leaving = next(row for row in before.servers if row.peer_id == leaving_peer)
    assert fixed[leaving_peer].stop() == 0

    after = wait_for_status(dht, prefix, lambda m: m.is_complete and any(
        row.peer_id == spare_peer and row.state == "online"
        and row.start_block <= leaving.start_block and row.end_block >= leaving.end_block for row in m.servers))
    assert after.uncovered == ()
    assert any("Moving from blocks" in line for line in spare.lines)

    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht)
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    input_ids = torch.tensor([[5, 9, 13, 21]])
    expected = local.generate(input_ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert model.generate(input_ids, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()
    model.shutdown()


def test_servers_started_together_choose_different_spans(tiny_checkpoints, swarm_factory, client_dht_factory):
    _, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [], server_args=["--balance_quality", "0"])
    first = swarm.add_server(None, ["--num_blocks", "2"])
    second = swarm.add_server(None, ["--num_blocks", "2"])
    first.wait_for_line("is online", 120)
    second.wait_for_line("is online", 120)
    dht = client_dht_factory(swarm.initial_peers)
    status = wait_for_status(dht, converted.name, lambda m: len(m.servers) == 2)
    spans = sorted((row.start_block, row.end_block) for row in status.servers)
    assert spans == [(0, 2), (2, 4)], spans
    assert status.is_complete


def test_swarm_status_lists_servers_and_uncovered_blocks(tiny_checkpoints, swarm_factory, client_dht_factory,
                                                         capsys):
    _, converted = tiny_checkpoints["bloom"]
    swarm = swarm_factory(converted, [(0, 2)], server_args=["--public_name", "alice"])
    dht = client_dht_factory(swarm.initial_peers)
    (model,) = wait_for_status(dht, converted.name, lambda m: len(m.servers) == 1),
    row = model.servers[0]
    assert (row.start_block, row.end_block, row.state, row.public_name) == (0, 2, "online", "alice")
    assert row.throughput > 0 and row.version
    assert model.uncovered == (2, 3) and not model.is_complete

    assert swarm_status_cli.main(["--initial_peers", *swarm.initial_peers]) == 0
    out = capsys.readouterr().out
    assert f"Model '{converted.name}': 4 blocks, 1 server(s), UNCOVERED blocks: 2..3" in out
    assert "alice" in out and "[##..]" in out


@pytest.mark.parametrize("indices, text", [((0, 1, 2, 5), "0..2, 5"), ((3,), "3"), ((), "")])
def test_block_ranges_are_described_compactly(indices, text):
    assert swarm_status_cli.describe_ranges(indices) == text


def test_forward_and_backward_survive_killed_servers(tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints["llama"]
    swarm = swarm_factory(converted, [(0, 4), (0, 2), (2, 4), (2, 4)], server_args=["--balance_quality", "0"])
    processes = {peer_of(process): process for process in swarm.servers}
    whole_model_server = peer_of(swarm.servers[0])
    dht = client_dht_factory(swarm.initial_peers)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), dht=dht, client_config=ClientConfig(request_timeout=15, ban_timeout=60))
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    manager = model.transformer_blocks.manager
    used: list[str] = []
    original_call = manager.call  # every forward/backward call goes through it

    def recording_call(span, method, tensors, metadata=None):
        used.append(span.peer_id)
        return original_call(span, method, tensors, metadata)

    manager.call = recording_call
    torch.manual_seed(3)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 9))
    embeds = model.get_input_embeddings()(input_ids).detach()
    remote_embeds, local_embeds = embeds.clone().requires_grad_(True), embeds.clone().requires_grad_(True)

    manager.update()  # the client now believes every server is online
    processes[whole_model_server].kill()  # dies before the forward pass: its blocks are retried elsewhere
    remote_loss = model(inputs_embeds=remote_embeds, labels=input_ids).loss
    second_victim = used[-1]
    processes[second_victim].kill()  # the last hop of the route dies before the backward pass
    remote_loss.backward()
    local_loss = local(inputs_embeds=local_embeds, labels=input_ids).loss
    local_loss.backward()
    model.shutdown()

    assert_matches_reference(remote_loss, local_loss, "losses")
    assert_matches_reference(remote_embeds.grad, local_embeds.grad, "gradients of the input embeddings")
    assert used.count(second_victim) >= 1 and used[-1] != second_victim
