"""Prompt tuning through a real local swarm equals the same prompt tuning done locally with transformers.

One swarm per family on 127.0.0.1: Llama has servers for blocks 0..1, 2..3 and 0..3 (so deep
prompts are cut into per-server slices, and the last test kills the third); BLOOM has one server.
The local reference is the original transformers model with the prompts given through
``inputs_embeds`` and, for ``deep_ptune``, forward pre-hooks that add each layer's prompt to the
first ``pre_seq_len`` positions of its input.
"""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import hivemind

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel

from core import (
    ClientConfig,
    AutoDistributedModelForCausalLM,
    DistributedBloomForSequenceClassification,
    DistributedLlamaForSequenceClassification,
)
from core.errors import InvalidRequestError, PromptsMismatchError
from core.launcher import ChildProcess, LocalSwarm
from core.tuning import StepReport, TrainingConfig, load_prompts, read_prompts_metadata, save_prompts, train_prompts
from tests.numerics import assert_matches_reference, assert_no_near_ties

FAMILIES = ["llama", "bloom"]
PRE_SEQ_LEN = 3
BAN_SECONDS = 2.0
SEQ_CLS = {"llama": DistributedLlamaForSequenceClassification, "bloom": DistributedBloomForSequenceClassification}


@dataclass
class Setup:
    converted: Path
    dht: hivemind.DHT
    local: PreTrainedModel  # the original transformers model
    original: Path
    swarm: LocalSwarm


@pytest.fixture(scope="module")
def swarms(tiny_checkpoints, swarm_factory, client_dht_factory):
    """Both families' swarms, started side by side (Llama has a spare server for the retry test)."""
    layouts = {"llama": [(0, 2), (2, 4), (0, 4)], "bloom": [(0, 4)]}
    with ThreadPoolExecutor(len(layouts)) as pool:
        futures = {family: pool.submit(swarm_factory, tiny_checkpoints[family][1], spans)
                   for family, spans in layouts.items()}
    try:
        result = {}
        for family, future in futures.items():
            original, converted = tiny_checkpoints[family]
            swarm = future.result()
            local = AutoModelForCausalLM.from_pretrained(original).eval()
            result[family] = Setup(converted, client_dht_factory(swarm.initial_peers), local, original, swarm)
        yield result
    finally:
        with ThreadPoolExecutor(len(futures)) as pool:
            for future in futures.values():
                if future.exception() is None:
                    pool.submit(future.result().stop)


def _model(swarms, family: str, mode: str | None, pre_seq_len: int | None = PRE_SEQ_LEN, seed: int = 0):
    converted, dht = swarms[family].converted, swarms[family].dht
    torch.manual_seed(seed)
    return AutoDistributedModelForCausalLM.from_pretrained(
        str(converted), dht=dht, tuning_mode=mode, pre_seq_len=pre_seq_len if mode else None
    )


def _randomize_deep_prompts(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.ptune.deep_prompts.copy_(torch.randn(model.ptune.deep_prompts.shape, generator=generator) * 0.5)


def _layers(local) -> torch.nn.ModuleList:
    return local.model.layers if hasattr(local, "model") and hasattr(local.model, "layers") else local.transformer.h


@contextlib.contextmanager
def _deep_prompt_hooks(local, deep_prompts: torch.Tensor | None) -> Iterator[None]:
    """Add ``deep_prompts[i]`` ``[batch, p, hidden]`` to layer ``i``'s input at its first ``p`` positions."""
    handles = []
    if deep_prompts is not None:
        for index, layer in enumerate(_layers(local)):
            def hook(module, args, kwargs, prompt=deep_prompts[index]):
                hidden = args[0] if args else kwargs["hidden_states"]
                padded = torch.nn.functional.pad(prompt, (0, 0, 0, hidden.shape[1] - prompt.shape[1]))
                if args:
                    return (hidden + padded, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden + padded}

            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _local_logits(local, input_ids, prompts, deep_prompts) -> torch.Tensor:
    """Logits of the user's tokens with ``prompts`` ``[p, hidden]`` in front and deep prompts ``[layers, p, hidden]``."""
    batch = input_ids.shape[0]
    embeds = local.get_input_embeddings()(input_ids)
    inputs = torch.cat([prompts[None].expand(batch, -1, -1), embeds], dim=1)
    deep = None if deep_prompts is None else deep_prompts[:, None].expand(-1, batch, -1, -1)
    with _deep_prompt_hooks(local, deep):
        return local(inputs_embeds=inputs).logits[:, prompts.shape[0] :]


def _shifted_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_gradients_match_local_prompt_tuning(swarms, family, mode):
    local = swarms[family].local
    model = _model(swarms, family, mode)
    if mode == "deep_ptune":
        _randomize_deep_prompts(model, seed=1)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == ({"ptune.prompts"} | ({"ptune.deep_prompts"} if mode == "deep_ptune" else set()))

    torch.manual_seed(2)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 6))
    outputs = model(input_ids, labels=input_ids)
    outputs.loss.backward()

    prompts = model.ptune.prompts.detach().clone().requires_grad_(True)
    deep = None if mode == "ptune" else model.ptune.deep_prompts.detach().clone().requires_grad_(True)
    local_logits = _local_logits(local, input_ids, prompts, deep)
    _shifted_loss(local_logits, input_ids).backward()

    assert outputs.logits.shape == (2, 6, model.config.vocab_size)  # the user's tokens only
    assert_matches_reference(outputs.logits, local_logits, "logits")
    assert_matches_reference(model.ptune.prompts.grad, prompts.grad, "gradients of the prompts")
    if mode == "deep_ptune":
        assert deep.grad.abs().sum() > 0
        assert_matches_reference(model.ptune.deep_prompts.grad, deep.grad, "gradients of the deep prompts")
    assert all(parameter.grad is None for name, parameter in model.named_parameters() if name not in trainable)


def test_the_plain_training_loop_changes_the_prompts_only(swarms):
    """The loop from the issue, as written: AdamW over model.parameters(), logits of the user's tokens."""
    model = _model(swarms, "llama", "deep_ptune")
    frozen = {name: tensor.clone() for name, tensor in model.state_dict().items() if not name.startswith("ptune.")}
    before = {name: tensor.clone() for name, tensor in model.ptune.prompt_tensors().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    torch.manual_seed(3)
    data_loader = [(ids, ids.roll(-1, dims=1)) for ids in torch.randint(3, 300, (3, 2, 5))]
    for input_ids, labels in data_loader:
        outputs = model.forward(input_ids)
        loss = torch.nn.functional.cross_entropy(outputs.logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in frozen.items())
    assert all(not torch.equal(after[f"ptune.{name}"], tensor) for name, tensor in before.items())


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_classification_matches_transformers(swarms, family):
    converted, dht, original = swarms[family].converted, swarms[family].dht, swarms[family].original
    reference = AutoModelForSequenceClassification.from_pretrained(original, num_labels=3).eval()
    model = SEQ_CLS[family].from_pretrained(str(converted), dht=dht, num_labels=3)
    with torch.no_grad():
        model.score.weight.copy_(reference.score.weight)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"score.weight"}
    pad = model.config.pad_token_id
    input_ids = torch.tensor([[5, 17, 42, 9, 11, 30, 8], [7, 7, 8, 9, 12, pad, pad]])
    attention_mask = (input_ids != pad).long()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
    labels = torch.tensor([0, 2])
    outputs = model(input_ids, labels=labels)
    assert_matches_reference(outputs.logits, expected, "classification logits")
    assert_matches_reference(outputs.loss, torch.nn.functional.cross_entropy(expected, labels), "classification losses")

    prompted = SEQ_CLS[family].from_pretrained(str(converted), dht=dht, num_labels=3, tuning_mode="ptune",
                                               pre_seq_len=PRE_SEQ_LEN)
    with torch.no_grad():
        prompted.score.weight.copy_(reference.score.weight)
    assert {name for name, p in prompted.named_parameters() if p.requires_grad} == {"score.weight", "ptune.prompts"}
    unpadded = input_ids[:1]
    embeds = reference.get_input_embeddings()(unpadded)
    with torch.no_grad():
        expected = reference(inputs_embeds=torch.cat([prompted.ptune.prompts[None], embeds], dim=1)).logits
        assert_matches_reference(prompted(unpadded).logits, expected, "classification logits with prompts")


def _local_greedy(local, input_ids, prompts, deep_prompts, new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the local model with prompts, none of them a near tie (see tests/numerics.py)."""
    tokens, scores = input_ids, []
    with torch.no_grad():
        for _ in range(new_tokens):
            scores.append(_local_logits(local, tokens, prompts, deep_prompts)[:, -1])
            tokens = torch.cat([tokens, scores[-1].argmax(-1, keepdim=True)], dim=1)
    assert_no_near_ties(scores, "greedy tokens with prompts")
    return tokens


@pytest.mark.parametrize("family, mode", [("llama", "deep_ptune"), ("bloom", "deep_ptune"), ("llama", "ptune")])
def test_saved_prompts_load_and_generate_like_local(swarms, tmp_path, family, mode):
    local = swarms[family].local
    trained = _model(swarms, family, mode, seed=5)
    if mode == "deep_ptune":
        _randomize_deep_prompts(trained, seed=6)
    path = tmp_path / "prompts.safetensors"
    save_prompts(trained, path)
    metadata = read_prompts_metadata(path)
    assert (metadata.model_name, metadata.tuning_mode, metadata.pre_seq_len) == (trained.dht_prefix, mode, PRE_SEQ_LEN)

    fresh = _model(swarms, family, mode, seed=7)
    assert not torch.equal(fresh.ptune.prompts, trained.ptune.prompts)
    load_prompts(fresh, path)
    for name, tensor in trained.ptune.prompt_tensors().items():
        assert torch.equal(fresh.ptune.prompt_tensors()[name], tensor)

    input_ids = torch.tensor([[5, 17, 42, 9], [8, 30, 31, 12]])
    deep = fresh.ptune.deep_prompts.detach() if mode == "deep_ptune" else None
    expected = _local_greedy(local, input_ids, fresh.ptune.prompts.detach(), deep, new_tokens=6)
    assert torch.equal(fresh.generate(input_ids, max_new_tokens=6, eos_token_id=None), expected)
    with fresh.inference_session(max_length=16):  # prompts go with the first step only, later calls continue
        fresh.generate(input_ids, max_new_tokens=2, eos_token_id=None)
        assert torch.equal(fresh.generate(None, max_new_tokens=4, eos_token_id=None), expected)


def test_prompts_for_another_model_or_length_are_refused(swarms, tmp_path):
    path = tmp_path / "llama.safetensors"
    save_prompts(_model(swarms, "llama", "ptune"), path)
    with pytest.raises(PromptsMismatchError, match="trained for model 'tiny-llama'.*this model is 'tiny-bloom'"):
        load_prompts(_model(swarms, "bloom", "ptune"), path)
    expected = "length 3, but this model uses ptune with pre_seq_len=5; create the model with tuning_mode='ptune', pre_seq_len=3"
    with pytest.raises(PromptsMismatchError, match=expected):
        load_prompts(_model(swarms, "llama", "ptune", pre_seq_len=5), path)
    with pytest.raises(PromptsMismatchError, match="ptune prompts of length 3, but this model uses deep_ptune"):
        load_prompts(_model(swarms, "llama", "deep_ptune"), path)
    with pytest.raises(InvalidRequestError, match="has no prompts"):
        load_prompts(_model(swarms, "llama", None), path)
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidRequestError, match="not a safetensors file"):
        read_prompts_metadata(tmp_path / "other.safetensors")


def test_bad_tuning_arguments_are_refused_before_joining(swarms):
    converted, dht = swarms["llama"].converted, swarms["llama"].dht
    with pytest.raises(InvalidRequestError, match="tuning_mode must be one of"):
        AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht, tuning_mode="lora", pre_seq_len=4)
    with pytest.raises(InvalidRequestError, match="needs pre_seq_len"):
        AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht, tuning_mode="ptune")
    model = _model(swarms, "llama", "deep_ptune")
    with pytest.raises(InvalidRequestError, match="prompts must have shape"):
        model.transformer_blocks(torch.zeros(1, 2, 64), prompts=torch.zeros(4, 1, 3, 64))  # longer than the input


DATASET = [
    '{"prompt": "hello world,", "completion": " hello blossom."}',
    '{"prompt": "the quick brown", "completion": " fox jumps over"}',
    '{"prompt": "a swarm of", "completion": " volunteers runs"}',
    '{"text": "petals and blossoms share their blocks"}',
]


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_train_prompts_lowers_the_loss_and_saves(swarms, tmp_path, mode):
    converted = swarms["bloom"].converted
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("\n".join(DATASET) + "\n")
    config = TrainingConfig(
        model_path=str(converted), initial_peers=(), dataset_path=str(dataset), tuning_mode=mode, pre_seq_len=4,
        steps=30, learning_rate=0.1, batch_size=4, save_path=str(tmp_path / "trained.safetensors"),
    )
    model = _model(swarms, "bloom", mode, pre_seq_len=4)
    reports: list[StepReport] = []
    result = train_prompts(config, on_step=reports.append, model=model)
    assert [report.step for report in reports] == list(range(1, 31))
    assert [report.loss for report in reports] == result.losses
    assert result.steps_done == 30 and not result.stopped
    first, last = result.losses[0], min(result.losses[-5:])
    print(f"{mode}: loss {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first
    assert read_prompts_metadata(result.saved_path).tuning_mode == mode


def test_train_prompts_stops_between_steps_and_still_saves(swarms, tmp_path):
    converted = swarms["llama"].converted
    dataset = tmp_path / "data.txt"
    dataset.write_text("the quick brown fox jumps over the lazy dog\nhello world, hello blossom.\n")
    config = TrainingConfig(
        model_path=str(converted), initial_peers=(), dataset_path=str(dataset), pre_seq_len=2, steps=50,
        batch_size=2, save_path=str(tmp_path / "stopped.safetensors"),
    )
    stop = threading.Event()

    def on_step(report: StepReport) -> None:
        if report.step == 3:
            stop.set()

    model = _model(swarms, "llama", "ptune", pre_seq_len=2)
    result = train_prompts(config, on_step=on_step, stop_event=stop, model=model)
    assert result.stopped and result.steps_done == 3 and len(result.losses) == 3
    fresh = _model(swarms, "llama", "ptune", pre_seq_len=2, seed=9)
    load_prompts(fresh, result.saved_path)
    assert torch.equal(fresh.ptune.prompts, model.ptune.prompts)
    with pytest.raises(InvalidRequestError, match="config asks for tuning_mode='deep_ptune'"):
        train_prompts(TrainingConfig(**{**config.__dict__, "tuning_mode": "deep_ptune"}), model=model)


def test_cli_trains_until_ctrl_c_then_saves(swarms, tmp_path):
    converted = swarms["bloom"].converted
    dataset = tmp_path / "data.txt"
    dataset.write_text("the quick brown fox jumps over the lazy dog\n\nhello world, hello blossom.\n")
    save = tmp_path / "cli.safetensors"
    peers = swarms["bloom"].swarm.initial_peers
    process = ChildProcess("train_prompts", [
        "-m", "core.cli.train_prompts", "--model", str(converted), "--initial_peers", *peers, "--dataset", str(dataset),
        "--mode", "deep_ptune", "--pre_seq_len", "2", "--steps", "1000", "--batch_size", "2", "--save_path", str(save),
        "--log_every", "1",
    ])
    try:
        process.wait_for_line("step 2/1000 loss", timeout=60)
        process.process.send_signal(signal.SIGINT)
        assert process.process.wait(60) == 0, process.tail()
    finally:
        process.stop()
    output = "\n".join(process.lines)
    assert "Stopped after" in output and f"Saved deep_ptune prompts to {save}" in output, output
    assert read_prompts_metadata(save).pre_seq_len == 2
    logged = [line for line in process.lines if " INFO core." in line]
    assert logged and all(re.match(r"\d\d:\d\d:\d\d INFO core\.", line) for line in logged), \
        f"a log line ran into the progress bar: {logged}"


def test_cli_reports_bad_arguments(tmp_path, capsys):
    from core.cli.train_prompts import main

    assert main(["--model", "m", "--initial_peers", "/ip4/127.0.0.1/tcp/1", "--dataset", "d.txt", "--steps", "0"]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_servers_refuse_malformed_prompts(swarms):
    model = _model(swarms, "bloom", None)
    manager = model.transformer_blocks.manager
    (span,) = manager.make_route(0, 4)
    hidden = torch.randn(2, 5, 64)
    cases = [
        (torch.zeros(3, 2, 2, 64), "prompts must have shape \\[num_blocks=4, batch=2, pre_seq_len<=5, 64\\]"),
        (torch.zeros(4, 2, 6, 64), "pre_seq_len<=5"),
        (torch.zeros(4, 1, 2, 64), "batch=2"),
        (torch.zeros(4, 2, 2, 64, dtype=torch.int64), "prompts must be float32"),
        (torch.full((4, 2, 2, 64), float("nan")), "NaN"),
    ]
    for prompts, message in cases:
        with pytest.raises(InvalidRequestError, match=message):
            manager.call(span, "rpc_forward", [hidden, prompts], metadata={"prompts": True})
    with pytest.raises(InvalidRequestError, match="expected 3 tensor"):
        manager.call(span, "rpc_backward", [hidden, hidden], metadata={"prompts": True})
    grads = manager.call(span, "rpc_backward", [hidden, hidden, torch.zeros(4, 2, 2, 64)], metadata={"prompts": True})[0]
    assert [list(grad.shape) for grad in grads] == [[2, 5, 64], [4, 2, 2, 64]]
    with model.transformer_blocks.inference_session(max_length=8) as session:
        session.step(hidden, prompts=torch.zeros(4, 2, 2, 64))
        with pytest.raises(InvalidRequestError, match="only be sent with the first step"):
            session.step(hidden[:, :1], prompts=torch.zeros(4, 2, 1, 64))


def test_retries_give_each_server_its_own_slice_of_the_prompts(swarms):
    """Runs last: a server holding all blocks dies between forward and backward and in the middle of a
    generation session. Its blocks move to the two servers holding 0..1 and 2..3, which must get the
    right rows of the deep prompts: gradients and tokens still equal the local ones."""
    setup = swarms["llama"]
    spare = setup.swarm.servers[2]
    torch.manual_seed(11)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        str(setup.converted), dht=setup.dht, tuning_mode="deep_ptune", pre_seq_len=PRE_SEQ_LEN,
        client_config=ClientConfig(request_timeout=20, ban_timeout=BAN_SECONDS),
    )
    _randomize_deep_prompts(model, seed=12)
    manager = model.transformer_blocks.manager
    spans = manager.update()
    spare_peer = next(span.peer_id for span in spans if (span.start, span.end) == (0, 4))
    for span in spans:
        if span.peer_id != spare_peer:
            manager.ban(span.peer_id, "steering this test's first route to the spare server")
    banned_at = time.monotonic()

    input_ids = torch.tensor([[5, 17, 42, 9], [8, 30, 31, 12]])
    outputs = model(input_ids, labels=input_ids)  # the spare server is the only one not banned
    with model.inference_session(max_length=12):
        model.generate(input_ids, max_new_tokens=2, eos_token_id=None)
        time.sleep(max(0.0, banned_at + BAN_SECONDS + 0.5 - time.monotonic()))  # the others are usable again
        spare.kill()
        outputs.loss.backward()
        tokens = model.generate(None, max_new_tokens=4, eos_token_id=None)

    prompts = model.ptune.prompts.detach().clone().requires_grad_(True)
    deep = model.ptune.deep_prompts.detach().clone().requires_grad_(True)
    _shifted_loss(_local_logits(setup.local, input_ids, prompts, deep), input_ids).backward()
    assert_matches_reference(model.ptune.prompts.grad, prompts.grad, "gradients of the prompts")
    assert_matches_reference(model.ptune.deep_prompts.grad, deep.grad, "gradients of the deep prompts")
    assert torch.equal(tokens, _local_greedy(setup.local, input_ids, prompts.detach(), deep.detach(), new_tokens=6))
