"""Fixtures for converter tests: tiny saved checkpoints and a way to run a converted model locally."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from core.convert import load_blocks, load_client_state, load_manifest
from core.models.registry import family_for_config
from tests.tiny_models import save_model

PROMPT_IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 250, 3], [0, 11, 12, 13, 300, 301, 2, 9]])


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama checkpoint (untied head, grouped-query attention)."""
    return save_model("llama", tmp_path_factory.mktemp("src") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny BLOOM checkpoint (head tied to the word embeddings, so no lm_head in the file)."""
    return save_model("bloom", tmp_path_factory.mktemp("src") / "tiny-bloom")


def reference_logits(checkpoint: Path, ids: torch.Tensor = PROMPT_IDS) -> torch.Tensor:
    """Logits of the original checkpoint run by transformers."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def _client_modules(config: PretrainedConfig, family: str, state: dict[str, torch.Tensor]) -> nn.ModuleDict:
    hidden, vocab = config.hidden_size, config.vocab_size
    if family == "llama":
        modules = nn.ModuleDict({
            "embed_tokens": nn.Embedding(vocab, hidden),
            "norm": LlamaRMSNorm(hidden, eps=config.rms_norm_eps),
            "lm_head": nn.Linear(hidden, vocab, bias=False),
        })
    else:
        modules = nn.ModuleDict({
            "word_embeddings": nn.Embedding(vocab, hidden),
            "word_embeddings_layernorm": nn.LayerNorm(hidden, eps=config.layer_norm_epsilon),
            "ln_f": nn.LayerNorm(hidden, eps=config.layer_norm_epsilon),
            "lm_head": nn.Linear(hidden, vocab, bias=False),
        })
    modules.load_state_dict(state, strict=True)
    return modules.eval()


def converted_logits(path_or_repo: str | Path, ids: torch.Tensor = PROMPT_IDS) -> torch.Tensor:
    """Logits of a converted model: client embeddings -> every block as one span -> client norm and head."""
    manifest = load_manifest(path_or_repo)
    config, blocks = load_blocks(path_or_repo, range(manifest.num_blocks), torch.float32)
    family = family_for_config(config)
    client = _client_modules(config, family.name, {k: v.float() for k, v in load_client_state(path_or_repo).items()})
    span = family.make_span(config, blocks, 0)
    with torch.no_grad():
        if family.name == "llama":
            return client["lm_head"](client["norm"](span(client["embed_tokens"](ids))))
        hidden = client["word_embeddings_layernorm"](client["word_embeddings"](ids))
        return client["lm_head"](client["ln_f"](span(hidden)))
