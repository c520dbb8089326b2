"""Reading, tokenizing and batching prompt-tuning datasets (real files, the tiny test tokenizer)."""
from __future__ import annotations

import pytest

from core.errors import DatasetError
from core.tuning import TrainingConfig
from core.tuning.dataset import IGNORE_INDEX, Example, encode_examples, iterate_batches, read_examples
from tests.tiny_models import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def test_text_file_with_one_example_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first example\n\nsecond one  \n")  # a lone blank line at the end of a pair is a paragraph break
    assert read_examples(path) == [Example("first example"), Example("second one")]
    path.write_text("first line\nsecond line\n\n")
    assert read_examples(path) == [Example("first line"), Example("second line")]


def test_text_file_with_paragraphs(tmp_path):
    path = tmp_path / "paragraphs.txt"
    path.write_text("a poem\nin two lines\n\n   \nanother\nparagraph\n")
    assert read_examples(path) == [Example("a poem\nin two lines"), Example("another\nparagraph")]


def test_jsonl_text_and_prompt_completion(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "plain"}\n\n{"prompt": "Q: hi", "completion": " A: hello", "id": 3}\n')
    assert read_examples(path) == [Example("plain"), Example(" A: hello", prompt="Q: hi")]


@pytest.mark.parametrize("line, message", [
    ('{"question": "x"}', r'data.jsonl:2: expected an object with a string "text".*got \[\'question\'\]'),
    ('["text"]', "got list"),
    ('{"prompt": "only a prompt"}', "got \\['prompt'\\]"),
    ('{"text": 3}', "got \\['text'\\]"),
    ("{not json", "data.jsonl:2: not valid JSON"),
])
def test_jsonl_records_of_other_shapes_are_refused(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DatasetError, match=message):
        read_examples(path)


def test_missing_empty_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_examples(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DatasetError, match="holds no examples"):
        read_examples(tmp_path / "empty.txt")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="must end in .txt or .jsonl"):
        read_examples(tmp_path / "data.csv")


def test_loss_only_on_the_completion(tokenizer):
    (encoded,) = encode_examples([Example(" fox jumps", prompt="the quick brown")], tokenizer, max_seq_len=64)
    prompt_ids = tokenizer("the quick brown")["input_ids"]
    completion_ids = tokenizer(" fox jumps", add_special_tokens=False)["input_ids"]
    assert encoded.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert encoded.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]


def test_long_examples_are_cut_and_useless_ones_dropped(tokenizer):
    examples = [Example("the quick brown fox jumps over the lazy dog"), Example("a", prompt="over the lazy dog")]
    encoded = encode_examples(examples, tokenizer, max_seq_len=3)
    assert len(encoded) == 1 and len(encoded[0].input_ids) == 3 == len(encoded[0].labels)
    with pytest.raises(DatasetError, match="no example has a token to learn"):
        encode_examples([Example("x", prompt="the quick brown fox")], tokenizer, max_seq_len=3)


def test_batches_are_right_padded_and_reshuffled_deterministically(tokenizer):
    encoded = encode_examples([Example("hello world"), Example("the quick brown fox jumps"), Example("a swarm")],
                              tokenizer, max_seq_len=32)
    first = iterate_batches(encoded, batch_size=2, pad_token_id=2, seed=1)
    again = iterate_batches(encoded, batch_size=2, pad_token_id=2, seed=1)
    batches = [next(first) for _ in range(4)]
    for (ids, labels), (same_ids, same_labels) in zip(batches, [next(again) for _ in range(4)]):
        assert ids.equal(same_ids) and labels.equal(same_labels)
    for ids, labels in batches:
        assert ids.shape == labels.shape and ids.shape[0] == 2  # the last partial batch is filled up
        for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
            real = [i for i, label in enumerate(row_labels) if label != IGNORE_INDEX]
            assert all(token == 2 for token in row_ids[max(real) + 1 :])  # padding only on the right


def test_training_config_lists_every_problem():
    config = TrainingConfig(model_path="", initial_peers=(), dataset_path="d.txt", tuning_mode="lora", pre_seq_len=0,
                            learning_rate=0.0)
    problems = " | ".join(config.problems())
    for expected in ("tuning_mode must be one of", "pre_seq_len must be a positive integer",
                     "learning_rate must be positive", "model_path is empty"):
        assert expected in problems
    assert TrainingConfig(model_path="m", initial_peers=("p",), dataset_path="d.txt").problems() == []
