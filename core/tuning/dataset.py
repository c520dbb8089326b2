"""Training examples for prompt tuning: read ``.txt`` / ``.jsonl`` files, tokenize, batch.

- ``.txt``: paragraphs separated by blank lines are examples; a file without blank lines has one
  example per line. The loss covers every token.
- ``.jsonl``: one JSON object per line, either ``{"text": ...}`` (loss on every token) or
  ``{"prompt": ..., "completion": ...}`` (loss on the completion only; an end-of-sequence token
  follows it so the model learns to stop).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from core.errors import DatasetError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` gets no loss, ``text`` does."""

    text: str
    prompt: str = ""


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and their labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def read_examples(path: str | Path) -> list[Example]:
    """All examples of a ``.txt`` or ``.jsonl`` file; raises :class:`DatasetError` with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    suffix = path.suffix.lower()
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"dataset file '{path}' is not UTF-8 text: {error}") from None
    if suffix == ".txt":
        examples = _text_examples(content)
    elif suffix == ".jsonl":
        examples = _jsonl_examples(content, path)
    else:
        raise DatasetError(f"dataset file '{path}' must end in .txt or .jsonl, not '{suffix or '(none)'}'")
    if not examples:
        raise DatasetError(f"dataset file '{path}' holds no examples")
    return examples


def _text_examples(content: str) -> list[Example]:
    if re.search(r"\n[ \t]*\n", content.strip()):
        chunks = re.split(r"\n[ \t]*\n", content)
    else:
        chunks = content.splitlines()
    return [Example(text=chunk.strip()) for chunk in chunks if chunk.strip()]


def _jsonl_examples(content: str, path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        examples.append(_record_example(record, f"{path}:{number}"))
    return examples


def _record_example(record: Any, where: str) -> Example:
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return Example(text=record["text"])
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return Example(text=record["completion"], prompt=record["prompt"])
    shape = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DatasetError(
        f'{where}: expected an object with a string "text", or string "prompt" and "completion"; got {shape}'
    )


def encode_examples(examples: list[Example], tokenizer: Any, max_seq_len: int) -> list[EncodedExample]:
    """Tokenize ``examples`` (cut to ``max_seq_len`` tokens); examples with nothing to learn are dropped."""
    encoded = []
    eos = getattr(tokenizer, "eos_token_id", None)
    for example in examples:
        if example.prompt:
            prompt_ids = tokenizer(example.prompt)["input_ids"]
            target_ids = tokenizer(example.text, add_special_tokens=False)["input_ids"]
            if eos is not None:
                target_ids = target_ids + [eos]
            input_ids = prompt_ids + target_ids
            labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
        else:
            input_ids = tokenizer(example.text)["input_ids"]
            labels = list(input_ids)
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
        if sum(label != IGNORE_INDEX for label in labels[1:]) == 0:
            continue  # no token is predicted from a previous one
        encoded.append(EncodedExample(input_ids, labels))
    if not encoded:
        raise DatasetError(
            f"no example has a token to learn within max_seq_len={max_seq_len}; use longer texts or a larger max_seq_len"
        )
    dropped = len(examples) - len(encoded)
    if dropped:
        logger.info("Dropped %d example(s) too short to learn from", dropped)
    return encoded


def collate(batch: list[EncodedExample], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with ``IGNORE_INDEX``.

    Padding goes on the right, so with causal attention no real token ever sees a pad.
    """
    length = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
    return input_ids, labels


def iterate_batches(
    encoded: list[EncodedExample], batch_size: int, pad_token_id: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches, reshuffled every pass over the data (deterministic for a given ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for first in range(0, len(order), batch_size):
            chunk = [encoded[index] for index in order[first : first + batch_size]]
            if len(chunk) < batch_size and len(encoded) >= batch_size:
                chunk += [encoded[index] for index in order[: batch_size - len(chunk)]]
            yield collate(chunk, pad_token_id)
