"""Concurrent sessions are batched on the servers and each still gets transformers' numbers.

A real swarm on 127.0.0.1 (blocks 0..1 and 2..3, the second server fed by pushes from the first).
Clients of different prompt lengths, answer lengths, batch sizes and with or without deep prompts
generate at the same time; every one's tokens must equal local transformers' (deep prompts: the same
model generating alone, whose steps each run alone). Misbehaving sessions next to them must not
change a single token.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Callable

import pytest
import torch
from hivemind.proto import runtime_pb2
from transformers import AutoModelForCausalLM

from benchmarks.tiny_swarm import server_infos
from core import AutoDistributedModelForCausalLM
from core.wire import pack_metadata, serialize_tensors, unpack_metadata
from tests.numerics import assert_matches_reference, reference_greedy
from tests.remote_calls import handler_stub

PAD = 2
TIMEOUT = 120
NAN = float("nan")
REFERENCE = dict(eos_token_id=None, pad_token_id=PAD)  # what reference_greedy passes on (it is greedy itself)


@pytest.fixture(scope="module", params=["llama", "bloom"])
def setup(request, tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints[request.param]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)], server_args=["--throughput", "10"])
    dht = client_dht_factory(swarm.initial_peers)
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    yield converted, dht, local


def _client(converted, dht, **kwargs) -> AutoDistributedModelForCausalLM:
    return AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht, **kwargs)


def _prompt(seed: int, rows: int, length: int) -> torch.Tensor:
    return torch.randint(3, 300, (rows, length), generator=torch.Generator().manual_seed(seed))


def _run_together(jobs: list[Callable[[], object]]) -> list[object]:
    """Run every job in its own thread, all released at once; returns results (or the exceptions raised)."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = jobs[index]()
        except BaseException as error:  # reported by the test
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"
    return results


def _largest_batches(model: AutoDistributedModelForCausalLM) -> list[int]:
    manager = model.transformer_blocks.manager
    spans = manager.make_route(0, model.config.num_hidden_layers)
    return [int(info["largest_batch"]) for info in server_infos(manager.loop.run(manager.get_p2p()), spans)]


def _deep_tuned(converted, dht, seed: int) -> AutoDistributedModelForCausalLM:
    torch.manual_seed(seed)
    model = _client(converted, dht, tuning_mode="deep_ptune", pre_seq_len=3)
    with torch.no_grad():
        model.ptune.deep_prompts.normal_(0, 0.5)  # fresh deep prompts are zeros: make them matter
    return model


def test_concurrent_sessions_of_different_shapes_each_get_their_own_tokens(setup):
    converted, dht, local = setup
    # (rows, prompt length, new tokens): single tokens to long prompts, short and long answers, a 2-row batch
    plain = [(1, 1, 10), (1, 3, 7), (1, 5, 12), (1, 8, 5), (1, 12, 9), (2, 4, 8), (1, 2, 11)]
    settings = dict(do_sample=False, **REFERENCE)
    prompts = [_prompt(seed, rows, length) for seed, (rows, length, _) in enumerate(plain)]
    models = [_client(converted, dht) for _ in plain]
    tuned = [_deep_tuned(converted, dht, seed) for seed in (31, 32)]
    tuned_prompts = [_prompt(40, 1, 6), _prompt(41, 1, 9)]
    try:
        jobs = [lambda model=model, ids=ids, new=new: model.generate(ids, max_new_tokens=new, **settings)
                for model, ids, (_, _, new) in zip(models, prompts, plain)]
        jobs += [lambda model=model, ids=ids: model.generate(ids, max_new_tokens=8, return_dict_in_generate=True,
                                                             output_logits=True, **settings)
                 for model, ids in zip(tuned, tuned_prompts)]
        results = _run_together(jobs)
        assert max(_largest_batches(models[0])) >= 2, "no two sessions' steps were ever batched"

        for index, (output, ids, (_, _, new)) in enumerate(zip(results, prompts, plain)):
            assert isinstance(output, torch.Tensor), output
            expected = reference_greedy(local, ids, f"client {index}", max_new_tokens=new, **REFERENCE)
            assert torch.equal(output, expected), f"client {index} got other tokens than transformers"
        for index, (output, model, ids) in enumerate(zip(results[len(plain):], tuned, tuned_prompts)):
            assert not isinstance(output, BaseException), output
            alone = model.generate(ids, max_new_tokens=8, return_dict_in_generate=True, output_logits=True,
                                   **settings)
            assert torch.equal(output.sequences, alone.sequences), f"deep-prompt client {index}"
            for step, (logits, expected) in enumerate(zip(output.logits, alone.logits)):
                assert_matches_reference(logits, expected, f"deep-prompt client {index}, step {step}")
    finally:
        for model in [*models, *tuned]:
            model.shutdown()


class _LeaveAfter:
    """A streamer that raises after ``count`` new tokens: a client that goes away mid-answer."""

    class Gone(Exception):
        pass

    def __init__(self, count: int) -> None:
        self.count, self.seen = count, 0

    def put(self, value: torch.Tensor) -> None:
        self.seen += 1
        if self.seen > self.count:
            raise _LeaveAfter.Gone()

    def end(self) -> None:
        pass


def _bad_sessions(model: AutoDistributedModelForCausalLM, rounds: int) -> list[str]:
    """Sessions on the first server that open properly, then send a NaN step: each must be refused alone.
    Returns the error messages the server answered."""
    manager = model.transformer_blocks.manager
    span = manager.make_route(0, model.config.num_hidden_layers)[0]
    stub = handler_stub(manager, span.peer_id)
    uid = " ".join(f"{manager.dht_prefix}.{index}" for index in range(span.start, span.end))
    hidden = model.config.hidden_size

    async def one_session() -> str:
        requests = [runtime_pb2.ExpertRequest(uid=uid, tensors=serialize_tensors([torch.randn(1, 4, hidden)]),
                                              metadata=pack_metadata({"max_length": 32})),
                    runtime_pb2.ExpertRequest(uid=uid, tensors=serialize_tensors([torch.full((1, 1, hidden), NAN)]))]

        async def outgoing():
            for request in requests:
                yield request
                await asyncio.sleep(0.01)

        answers = [response async for response in await stub.rpc_inference(outgoing())]
        return str(unpack_metadata(answers[-1].metadata).get("error", ""))

    async def all_sessions() -> list[str]:
        return [await one_session() for _ in range(rounds)]

    return manager.loop.run(asyncio.wait_for(all_sessions(), TIMEOUT), timeout=TIMEOUT + 5)


def test_bad_requests_and_departures_leave_the_other_sessions_untouched(setup):
    converted, dht, local = setup
    settings = dict(do_sample=False, **REFERENCE)
    prompts = [_prompt(seed, 1, 3 + seed % 4) for seed in (65, 66, 67, 68)]  # no near ties in 12 tokens
    models = [_client(converted, dht) for _ in range(6)]
    try:
        jobs = [lambda model=model, ids=ids: model.generate(ids, max_new_tokens=12, **settings)
                for model, ids in zip(models, prompts)]
        jobs.append(lambda: models[4].generate(_prompt(70, 1, 5), max_new_tokens=12, streamer=_LeaveAfter(3),
                                               **settings))
        jobs.append(lambda: _bad_sessions(models[5], rounds=4))
        results = _run_together(jobs)

        assert isinstance(results[4], _LeaveAfter.Gone), results[4]
        assert all("NaN" in error for error in results[5]), results[5]
        for index, (output, ids) in enumerate(zip(results[:4], prompts)):
            assert isinstance(output, torch.Tensor), output
            expected = reference_greedy(local, ids, f"client {index}", max_new_tokens=12, **REFERENCE)
            assert torch.equal(output, expected), f"client {index} was disturbed by its neighbours"
        after = models[0].generate(prompts[0], max_new_tokens=4, **settings)  # the servers still serve
        assert torch.equal(after, reference_greedy(local, prompts[0], "after", max_new_tokens=4, **REFERENCE))
    finally:
        for model in models:
            model.shutdown()
