"""The API's streamer with a real (tiny byte-level BPE) tokenizer: text as it comes, stop strings, early ends."""
from __future__ import annotations

import threading

import pytest
import torch

from core.api.streaming import ClientDisconnected, CompletionStreamer, StopStringReached
from tests.tiny_models import make_tokenizer

EOS = 1


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def feed(streamer: CompletionStreamer, token_ids: list[int]) -> None:
    """What generate does: the prompt first, then one token per step, then end()."""
    streamer.put(torch.tensor([[5, 6]]))
    for token in token_ids:
        streamer.put(torch.tensor([token]))
    streamer.end()


def test_pieces_add_up_to_the_decoded_text(tokenizer):
    ids = tokenizer("hello world, hello blossom").input_ids
    pieces: list[str] = []
    streamer = CompletionStreamer(tokenizer, on_text=pieces.append)
    feed(streamer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == streamer.text
    assert len(pieces) > 1 and streamer.finish_reason == "length" and streamer.tokens == ids


def test_eos_finishes_with_stop_and_is_counted_not_shown(tokenizer):
    ids = tokenizer("the lazy dog").input_ids + [EOS]
    streamer = CompletionStreamer(tokenizer, eos_token_ids=[EOS])
    feed(streamer, ids)
    assert streamer.text == "the lazy dog" and streamer.finish_reason == "stop" and len(streamer.tokens) == len(ids)


def test_a_stop_string_cuts_the_text_and_its_start_is_never_sent(tokenizer):
    ids = tokenizer("the quick brown fox jumps over the lazy dog").input_ids
    pieces: list[str] = []
    streamer = CompletionStreamer(tokenizer, stop=["fox jumps", "zebra"], on_text=pieces.append)
    streamer.put(torch.tensor([[5]]))
    with pytest.raises(StopStringReached):
        for token in ids:
            streamer.put(torch.tensor([token]))
    assert "".join(pieces) == streamer.text == "the quick brown "
    assert not any("fox" in piece for piece in pieces)  # "fox" was held back until "jumps" decided it
    assert streamer.finish_reason == "stop"


def test_held_back_text_is_released_when_the_stop_string_does_not_come(tokenizer):
    ids = tokenizer("hello blossom, hello bl").input_ids
    pieces: list[str] = []
    streamer = CompletionStreamer(tokenizer, stop=["blue"], on_text=pieces.append)
    feed(streamer, ids)
    assert "".join(pieces) == "hello blossom, hello bl" and streamer.finish_reason == "length"


def test_a_stop_string_across_tokens_in_the_earliest_place(tokenizer):
    text = "petals and blossoms share their blocks"
    ids = tokenizer(text).input_ids
    streamer = CompletionStreamer(tokenizer, stop=["share", "and b"])
    with pytest.raises(StopStringReached):
        feed(streamer, ids)
    assert streamer.text == "petals "


def test_multibyte_characters_are_never_split(tokenizer):
    ids = tokenizer("blossom 🌸 fox").input_ids  # the flower is several byte-level tokens
    pieces: list[str] = []
    streamer = CompletionStreamer(tokenizer, on_text=pieces.append)
    feed(streamer, ids)
    assert "".join(pieces) == "blossom 🌸 fox" and not any("\ufffd" in piece for piece in pieces)


def test_a_departed_client_ends_generation_at_the_next_token(tokenizer):
    cancelled = threading.Event()
    streamer = CompletionStreamer(tokenizer, cancelled=cancelled)
    streamer.put(torch.tensor([[5]]))
    streamer.put(torch.tensor([40]))
    cancelled.set()
    with pytest.raises(ClientDisconnected):
        streamer.put(torch.tensor([41]))
    assert streamer.finish_reason == "cancelled" and streamer.tokens == [40]
