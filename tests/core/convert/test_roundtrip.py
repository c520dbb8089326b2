"""Converted tiny models reproduce the original logits exactly; dtypes, sharding and tied heads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.convert import convert_model, load_block_state, load_client_state, load_config, load_manifest
from core.convert.manifest import sha256_file
from tests.numerics import assert_same_computation
from tests.tiny_models import build_model, make_tokenizer

from .conftest import converted_logits, reference_logits


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_converted_model_reproduces_logits_exactly(
    family: str, tiny_llama: Path, tiny_bloom: Path, tmp_path: Path
) -> None:
    source = tiny_llama if family == "llama" else tiny_bloom
    manifest = convert_model(str(source), tmp_path / f"tiny-{family}", progress=False)
    assert manifest.family == family and manifest.num_blocks == 4 and manifest.torch_dtype == "float32"
    assert_same_computation(converted_logits(tmp_path / f"tiny-{family}"), reference_logits(source),
                            "converted vs transformers logits")


def test_manifest_lists_every_file_with_its_sha256(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.model v2"
    manifest = convert_model(str(tiny_llama), out, progress=False)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["format_version"] == 1
    assert on_disk["dht_prefix"] == "my-model-v2" == manifest.dht_prefix
    assert on_disk["source"] == str(tiny_llama.resolve())
    assert load_manifest(out) == manifest
    assert load_config(out).dht_prefix == "my-model-v2"
    assert set(manifest.client.tensors) == {"embed_tokens.weight", "norm.weight", "lm_head.weight"}
    assert manifest.client.tensors["embed_tokens.weight"].shape == (384, 64)
    for entry in manifest.files():
        assert sha256_file(out / entry.path) == entry.sha256
        stored = load_file(out / entry.path)
        assert {k: tuple(v.shape) for k, v in stored.items()} == {k: i.shape for k, i in entry.tensors.items()}
    assert [b.path for b in manifest.blocks] == [f"block_{i}/model.safetensors" for i in range(4)]
    assert "self_attn.q_proj.weight" in manifest.blocks[0].tensors
    assert (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_block_tensors_equal_the_original_layers(tiny_llama: Path, tmp_path: Path) -> None:
    convert_model(str(tiny_llama), tmp_path / "out", progress=False)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    for index in range(4):
        state = load_block_state(tmp_path / "out", index)
        for key, tensor in state.items():
            assert torch.equal(tensor, original[f"model.layers.{index}.{key}"]), key
    client = load_client_state(tmp_path / "out")
    assert torch.equal(client["lm_head.weight"], original["lm_head.weight"])


def test_tied_bloom_head_is_copied_from_embeddings(tiny_bloom: Path, tmp_path: Path) -> None:
    assert "lm_head.weight" not in load_file(tiny_bloom / "model.safetensors")
    convert_model(str(tiny_bloom), tmp_path / "bloom", progress=False)
    client = load_client_state(tmp_path / "bloom")
    assert torch.equal(client["lm_head.weight"], client["word_embeddings.weight"])
    assert set(client) == {
        "word_embeddings.weight", "word_embeddings_layernorm.weight", "word_embeddings_layernorm.bias",
        "ln_f.weight", "ln_f.bias", "lm_head.weight",
    }


def test_sharded_checkpoint_is_streamed_shard_by_shard(tmp_path: Path) -> None:
    source = tmp_path / "sharded"
    build_model("llama").save_pretrained(source, max_shard_size="50KB")
    make_tokenizer().save_pretrained(source)
    assert len(list(source.glob("model-*.safetensors"))) > 3 and (source / "model.safetensors.index.json").is_file()
    convert_model(str(source), tmp_path / "out", progress=False)
    assert_same_computation(converted_logits(tmp_path / "out"), reference_logits(source),
                            "converted vs transformers logits")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_output(dtype: torch.dtype, tiny_bloom: Path, tmp_path: Path) -> None:
    name = str(dtype).removeprefix("torch.")
    manifest = convert_model(str(tiny_bloom), tmp_path / "out", torch_dtype=name, progress=False)
    assert manifest.torch_dtype == name and load_config(tmp_path / "out").dtype == dtype
    assert all(info.dtype == name for entry in manifest.files() for info in entry.tensors.values())
    original = AutoModelForCausalLM.from_pretrained(tiny_bloom).state_dict()
    block = load_block_state(tmp_path / "out", 2)
    for key, tensor in block.items():
        assert tensor.dtype == dtype and torch.equal(tensor, original[f"transformer.h.2.{key}"].to(dtype)), key


def test_auto_dtype_keeps_the_checkpoint_dtype(tmp_path: Path) -> None:
    source = tmp_path / "half"
    build_model("llama").to(torch.float16).save_pretrained(source)
    manifest = convert_model(str(source), tmp_path / "out", progress=False)
    assert manifest.torch_dtype == "float16"
    assert load_block_state(tmp_path / "out", 0)["mlp.up_proj.weight"].dtype == torch.float16


def test_bin_checkpoint_is_read_when_no_safetensors(tmp_path: Path) -> None:
    source = tmp_path / "bin"
    model = build_model("llama")
    model.config.save_pretrained(source)
    torch.save(model.state_dict(), source / "pytorch_model.bin")
    convert_model(str(source), tmp_path / "out", progress=False)
    with torch.no_grad():
        expected = model(torch.tensor([[0, 5, 17, 42]])).logits
    assert_same_computation(converted_logits(tmp_path / "out", torch.tensor([[0, 5, 17, 42]])), expected,
                            "converted vs transformers logits")
