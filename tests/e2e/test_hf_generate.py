"""``model.generate`` is transformers' ``generate``: its options give the tokens local transformers gives.

One real swarm per family on 127.0.0.1 (a DHT peer, servers for blocks 0..1 and 2..3); every result is
compared with the local transformers model holding the same weights, for the same seed.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from core import AutoDistributedModelForCausalLM
from core.errors import InvalidRequestError
from tests.numerics import assert_matches_reference, assert_no_near_ties, reference_greedy

PAD = 2  # tests/tiny_models.py: bos 0, eos 1, pad 2


@pytest.fixture(scope="module", params=["llama", "bloom"])
def setup(request, tiny_checkpoints, swarm_factory, client_dht_factory):
    original, converted = tiny_checkpoints[request.param]
    swarm = swarm_factory(converted, [(0, 2), (2, 4)])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=client_dht_factory(swarm.initial_peers))
    local = AutoModelForCausalLM.from_pretrained(original).eval()
    yield model, local, converted, model.dht
    model.shutdown()


def _prompt(seed: int, batch: int = 1, length: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(3, 300, (batch, length))


def test_greedy_with_min_new_tokens(setup):
    model, local, *_ = setup
    input_ids = _prompt(13)
    expected = reference_greedy(local, input_ids, "greedy tokens with min_new_tokens", max_new_tokens=10,
                                min_new_tokens=10)
    output = model.generate(input_ids, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert output.shape == (1, 16)
    assert torch.equal(output, expected)


def test_sampling_with_a_generation_config(setup):
    model, local, *_ = setup
    input_ids = _prompt(12, batch=2)
    config = GenerationConfig(do_sample=True, temperature=0.8, top_k=40, top_p=0.9, max_new_tokens=8,
                              eos_token_id=1, pad_token_id=PAD)
    torch.manual_seed(5)
    expected = local.generate(input_ids, generation_config=config)
    torch.manual_seed(5)
    assert torch.equal(model.generate(input_ids, generation_config=config), expected)


class StopOnToken(StoppingCriteria):
    """Stops a row once it produced ``token`` (a criterion transformers does not ship)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
        return input_ids[:, -1] == self.token


def test_a_custom_stopping_criterion(setup):
    model, local, *_ = setup
    input_ids = _prompt(12)
    free = reference_greedy(local, input_ids, "free greedy run", max_new_tokens=8, eos_token_id=None, pad_token_id=PAD)
    token = int(free[0, 6 + 3])  # the fourth generated token
    criteria = StoppingCriteriaList([StopOnToken(token)])
    expected = local.generate(input_ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=PAD,
                              stopping_criteria=criteria)
    output = model.generate(input_ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                            stopping_criteria=criteria)
    assert torch.equal(output, expected)
    first = (free[0, 6:] == token).nonzero()[0].item()
    assert output.shape[1] == 6 + first + 1 and int(output[0, -1]) == token


def test_no_repeat_ngram_size(setup):
    model, local, *_ = setup
    input_ids = torch.tensor([[7, 7, 8, 9, 10, 8]])
    expected = reference_greedy(local, input_ids, "greedy tokens without repeated bigrams", max_new_tokens=12,
                                no_repeat_ngram_size=2, eos_token_id=None, pad_token_id=PAD)
    output = model.generate(input_ids, max_new_tokens=12, no_repeat_ngram_size=2, eos_token_id=None)
    assert torch.equal(output, expected)
    bigrams = list(zip(output[0].tolist(), output[0, 1:].tolist()))
    assert len(bigrams) == len(set(bigrams))


def test_scores_and_logits_in_a_dict(setup):
    model, local, *_ = setup
    input_ids = _prompt(12, batch=2)
    settings = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_scores=True,
                    output_logits=True, eos_token_id=None, pad_token_id=PAD, repetition_penalty=1.3)
    with torch.no_grad():
        expected = local.generate(input_ids, **settings)
    output = model.generate(input_ids, **settings)
    assert_no_near_ties(expected.scores, "scores with a repetition penalty")
    assert torch.equal(output.sequences, expected.sequences)
    assert len(output.scores) == len(expected.scores) == 6
    for step, (scores, logits) in enumerate(zip(output.scores, output.logits)):
        assert_matches_reference(scores, expected.scores[step], f"scores of step {step}")
        assert_matches_reference(logits, expected.logits[step], f"logits of step {step}")


def test_left_padded_batch_with_attention_mask(setup):
    model, local, *_ = setup
    long, short = _prompt(15, length=7)[0], _prompt(1015, length=3)[0]
    input_ids = torch.full((2, 7), PAD)
    input_ids[0], input_ids[1, 4:] = long, short
    attention_mask = (input_ids != PAD).long()
    attention_mask[0] = 1
    expected = reference_greedy(local, input_ids, "greedy tokens of a left-padded batch", attention_mask=attention_mask,
                                max_new_tokens=6, eos_token_id=None, pad_token_id=PAD)
    output = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(output, expected)
    alone = reference_greedy(local, short[None], "greedy tokens of the short prompt alone", max_new_tokens=6,
                             eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(output[1, 7:], alone[0, 3:])  # the padding changed nothing for the short prompt


def test_beam_search_and_several_return_sequences(setup):
    model, local, *_ = setup
    input_ids = _prompt(17, batch=2, length=5)
    settings = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6, do_sample=False, eos_token_id=None,
                    pad_token_id=PAD, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        expected = local.generate(input_ids, **settings)
    output = model.generate(input_ids, **settings)
    assert output.sequences.shape == (4, 11)
    assert torch.equal(output.sequences, expected.sequences)
    assert_matches_reference(output.sequences_scores, expected.sequences_scores, "beam scores")


def test_several_sampled_sequences_per_prompt(setup):
    model, local, *_ = setup
    input_ids = _prompt(18, length=4)
    settings = dict(do_sample=True, num_return_sequences=3, max_new_tokens=6, top_k=0, eos_token_id=None,
                    pad_token_id=PAD)
    torch.manual_seed(9)
    expected = local.generate(input_ids, **settings)
    torch.manual_seed(9)
    output = model.generate(input_ids, **settings)
    assert output.shape == (3, 10)
    assert torch.equal(output, expected)


def test_generation_from_inputs_embeds(setup):
    model, local, *_ = setup
    input_ids = _prompt(13)
    expected = reference_greedy(local, input_ids, "greedy tokens", max_new_tokens=6, min_new_tokens=6)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
    output = model.generate(inputs_embeds=embeds, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(output, expected[:, 6:])  # as in transformers: only the new tokens


def test_a_padded_batch_carries_each_rows_deep_prompts(setup):
    """Deep prompt tuning with a left-padded batch: each row's own session gets the prompts, and every row
    generates what it generates alone (the unpadded path is compared with transformers elsewhere)."""
    _, _, converted, dht = setup
    torch.manual_seed(3)  # the prompts start from random tokens' embeddings
    tuned = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=dht, tuning_mode="deep_ptune",
                                                            pre_seq_len=3)
    with torch.no_grad():
        tuned.ptune.deep_prompts.normal_(0, 0.5)  # fresh deep prompts are zeros: make them matter
    long, short = _prompt(15, length=7), _prompt(1015, length=3)
    input_ids = torch.cat([long, torch.cat([torch.full((1, 4), PAD), short], dim=1)])
    attention_mask = (torch.arange(7)[None] >= torch.tensor([[0], [4]])).long()
    settings = dict(max_new_tokens=5, eos_token_id=None, do_sample=False, return_dict_in_generate=True,
                    output_logits=True)
    output = tuned.generate(input_ids, attention_mask=attention_mask, **settings)
    for row, alone in enumerate([tuned.generate(long, **settings), tuned.generate(short, **settings)]):
        new = alone.sequences.shape[1] - 5
        assert_no_near_ties(alone.logits, f"greedy tokens of row {row} alone")
        assert torch.equal(output.sequences[row, -5:], alone.sequences[0, new:])
        for step in range(5):
            assert_matches_reference(output.logits[step][row], alone.logits[step][0], f"row {row}, step {step}")
    untuned = setup[0].generate(short, **settings)
    difference = (output.logits[0][1] - untuned.logits[0][0]).abs().max()
    assert difference > 1e-2, "the prompts did not reach the servers"


def test_two_generate_calls_with_options_in_one_session(setup):
    model, local, *_ = setup
    prompt, follow_up = _prompt(19, length=4), torch.tensor([[40, 41]])
    with model.inference_session(max_length=32):
        first = model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        second = model.generate(follow_up, max_new_tokens=5, no_repeat_ngram_size=2, eos_token_id=None)
    expected_first = reference_greedy(local, prompt, "first turn", max_new_tokens=4, min_new_tokens=4)
    expected_second = reference_greedy(local, torch.cat([first, follow_up], dim=1), "second turn", max_new_tokens=5,
                                       no_repeat_ngram_size=2, eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(first, expected_first)
    assert torch.equal(second, expected_second)


class StopAfter:
    """A streamer that raises after ``count`` new tokens, as a client that went away would."""

    class Stop(Exception):
        pass

    def __init__(self, count: int) -> None:
        self.count, self.tokens = count, []

    def put(self, value: torch.Tensor) -> None:
        if self.tokens or value.dim() == 1:
            self.tokens.append(int(value[0]))
        else:
            self.tokens.append(None)  # the prompt
        if len(self.tokens) > self.count:
            raise StopAfter.Stop()

    def end(self) -> None:
        pass


def test_a_streamer_that_raises_stops_generation(setup):
    model, local, *_ = setup
    prompt = _prompt(11, length=5)
    expected = reference_greedy(local, prompt, "uninterrupted run", max_new_tokens=9, eos_token_id=None,
                                pad_token_id=PAD)
    streamer = StopAfter(3)
    with pytest.raises(StopAfter.Stop):
        model.generate(prompt, max_new_tokens=9, eos_token_id=None, streamer=streamer)
    assert streamer.tokens[1:] == expected[0, 5:8].tolist()

    with model.inference_session(max_length=16) as session:
        with pytest.raises(StopAfter.Stop):
            model.generate(prompt, max_new_tokens=9, eos_token_id=None, streamer=StopAfter(3))
        assert torch.equal(session.token_ids, expected[:, :7])  # what the servers hold: the third token was lost
        rest = model.generate(expected[:, 7:8], max_new_tokens=6, eos_token_id=None)  # continue with it
    assert torch.equal(rest, expected)


def test_options_the_swarm_cannot_run_are_refused_by_name(setup):
    model, *_ = setup
    input_ids = _prompt(21)
    refusals = {
        "penalty_alpha": dict(penalty_alpha=0.6, top_k=4),
        "num_beam_groups": dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
        "output_hidden_states": dict(output_hidden_states=True, return_dict_in_generate=True),
        "cache_implementation": dict(cache_implementation="static"),
        "no_such_option": dict(no_such_option=3),
        "temperature": dict(do_sample=True, temperature=-1.0),
        "max_new_tokens": dict(max_new_tokens=-1),
        "num_beams": dict(num_beams=0),
    }
    for name, options in refusals.items():
        with pytest.raises(InvalidRequestError, match=name):
            model.generate(input_ids, **{"max_new_tokens": 2, **options})
    with model.inference_session(max_length=16):
        model.generate(input_ids, max_new_tokens=1)
        with pytest.raises(InvalidRequestError, match="num_beams"):
            model.generate(None, max_new_tokens=2, num_beams=2)
    right_padded = torch.tensor([[5, 6, 7], [8, 9, PAD]])
    with pytest.raises(InvalidRequestError, match="pad batches on the left"):
        model.generate(right_padded, attention_mask=(right_padded != PAD).long(), max_new_tokens=2)


@pytest.mark.slow
def test_smollm2_chat_template_with_stop_strings(tmp_path_factory, swarm_factory, client_dht_factory):
    """The bundled SmolLM2-135M-Instruct: its own chat template, then transformers-only options (a stop string
    that needs the tokenizer, a repetition penalty), the same tokens as local transformers."""
    from transformers import AutoTokenizer

    from core.convert import convert_model, find_smollm2_gguf

    gguf = find_smollm2_gguf()
    converted = tmp_path_factory.mktemp("smollm2-chat") / "SmolLM2-135M-Instruct"
    convert_model(str(gguf), converted, progress=False)
    local = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    swarm = swarm_factory(converted, [(0, 15), (15, 30)])
    model = AutoDistributedModelForCausalLM.from_pretrained(str(converted), dht=client_dht_factory(swarm.initial_peers))
    try:
        tokenizer = AutoTokenizer.from_pretrained(converted)
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        input_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True).input_ids
        settings = dict(max_new_tokens=24, repetition_penalty=1.1, stop_strings=["Paris"], tokenizer=tokenizer)
        expected = reference_greedy(local, input_ids, "SmolLM2 chat reply", **settings)
        output = model.generate(input_ids, do_sample=False, **settings)
        assert torch.equal(output, expected)
        answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        assert answer.endswith("Paris"), answer
    finally:
        model.shutdown()
