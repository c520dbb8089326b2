"""Bad checkpoints and damaged conversions fail loudly with typed, actionable errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from core.convert import convert_model, load_block_state, load_blocks, load_client_state, load_manifest
from core.convert import converter as converter_module
from core.errors import ConversionError, UnsupportedModelError
from tests.numerics import assert_same_computation

from .conftest import converted_logits, reference_logits


def _copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def test_shape_mismatch_names_the_tensor(tiny_llama: Path, tmp_path: Path) -> None:
    source = _copy(tiny_llama, tmp_path / "bad")
    state = load_file(source / "model.safetensors")
    state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"model\.layers\.2\.mlp\.up_proj\.weight.*\[100, 64\].*\[128, 64\]"):
        convert_model(str(source), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_missing_and_unexpected_tensors_are_named(tiny_llama: Path, tmp_path: Path) -> None:
    source = _copy(tiny_llama, tmp_path / "bad")
    state = load_file(source / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.weight"]
    state["model.adapter.weight"] = torch.zeros(2)
    state["model.rotary_emb.inv_freq"] = torch.zeros(8)  # a known buffer: silently skipped
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="model.adapter.weight"):
        convert_model(str(source), tmp_path / "out", progress=False)
    del state["model.adapter.weight"]
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"block 1 is missing tensor\(s\) 'self_attn.k_proj.weight'"):
        convert_model(str(source), tmp_path / "out", progress=False)


def test_block_count_must_match_config(tiny_llama: Path, tmp_path: Path) -> None:
    source = _copy(tiny_llama, tmp_path / "bad")
    state = {k: v for k, v in load_file(source / "model.safetensors").items() if ".layers.3." not in k}
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"missing block\(s\) \[3\] of 4"):
        convert_model(str(source), tmp_path / "out", progress=False)


def test_truncated_safetensors_names_the_file(tiny_llama: Path, tmp_path: Path) -> None:
    source = _copy(tiny_llama, tmp_path / "bad")
    weights = source / "model.safetensors"
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    with pytest.raises(ConversionError, match=r"model\.safetensors is truncated or corrupt"):
        convert_model(str(source), tmp_path / "out", progress=False)


def test_unsupported_architecture(tmp_path: Path) -> None:
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        convert_model(str(tmp_path / "gpt2"), tmp_path / "out", progress=False)


def test_bad_arguments(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="torch_dtype must be one of"):
        convert_model(str(tiny_llama), tmp_path / "out", torch_dtype="int8")
    with pytest.raises(ConversionError, match="may only contain"):
        convert_model(str(tiny_llama), tmp_path / "out", dht_prefix="a.b")
    with pytest.raises(ConversionError, match="ORG/NAME"):
        convert_model(str(tiny_llama), tmp_path / "out", output_repo="no-slash")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_model(str(tmp_path / "missing.gguf"), tmp_path / "out")
    with pytest.raises(ConversionError, match="not a folder"):
        convert_model(str(tmp_path / "missing"), tmp_path / "out")


def test_interrupted_conversion_leaves_nothing_that_looks_complete(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = converter_module.write_tensors

    def failing_write(folder: Path, relative_path: str, tensors: dict) -> object:
        if relative_path.startswith("block_2/"):
            raise OSError("disk full (simulated)")
        return real_write(folder, relative_path, tensors)

    monkeypatch.setattr(converter_module, "write_tensors", failing_write)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="simulated"):
        convert_model(str(tiny_llama), out, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(ConversionError):
        load_manifest(out)
    monkeypatch.undo()
    convert_model(str(tiny_llama), out, progress=False)
    assert_same_computation(converted_logits(out), reference_logits(tiny_llama), "converted vs transformers logits")


def test_existing_output_is_kept_replaced_or_refused(tiny_llama: Path, tiny_bloom: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = convert_model(str(tiny_llama), out, progress=False)
    block_file = out / "block_0" / "model.safetensors"
    stamp = block_file.stat().st_mtime_ns
    assert convert_model(str(tiny_llama), out, progress=False) == first
    assert block_file.stat().st_mtime_ns == stamp
    with pytest.raises(ConversionError, match="already holds a conversion of .*--overwrite"):
        convert_model(str(tiny_bloom), out, progress=False)
    with pytest.raises(ConversionError, match="already holds"):
        convert_model(str(tiny_llama), out, torch_dtype="bfloat16", progress=False)
    replaced = convert_model(str(tiny_bloom), out, progress=False, overwrite=True)
    assert replaced.family == "bloom" and load_manifest(out).family == "bloom"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not a complete Blossom conversion"):
        convert_model(str(tiny_llama), tmp_path / "junk", progress=False)


def test_tampered_block_is_rejected_on_load(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_model(str(tiny_llama), out, progress=False)
    path = out / "block_1" / "model.safetensors"
    state = load_file(path)
    state["mlp.up_proj.weight"][0, 0] += 1.0
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"block_1/model\.safetensors is corrupt.*sha256.*again"):
        load_block_state(out, 1)
    with pytest.raises(ConversionError, match="sha256"):
        load_blocks(out, [0, 1], torch.float32)
    assert load_block_state(out, 0)  # other blocks stay usable
    (out / "client" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConversionError, match="sha256"):
        load_client_state(out)


def test_unknown_block_index(tiny_llama: Path, tmp_path: Path) -> None:
    convert_model(str(tiny_llama), tmp_path / "out", progress=False)
    with pytest.raises(ConversionError, match=r"block 7 does not exist.*4 blocks"):
        load_block_state(tmp_path / "out", 7)


def test_loading_a_folder_that_is_not_a_conversion(tiny_llama: Path) -> None:
    with pytest.raises(ConversionError, match="no manifest.json"):
        load_block_state(tiny_llama, 0)
