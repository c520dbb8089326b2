"""The client-side model every family builds on: local embeddings and head, remote blocks in between."""
from __future__ import annotations

import logging
from typing import Any, Sequence

import hivemind
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from core.client.generation import GenerationSession, generate
from core.client.remote_sequential import RemoteSequential
from core.client.sequence_manager import RemoteSequenceManager, shutdown_client_dht
from core.config import ClientConfig
from core.convert import default_dht_prefix, load_client_state
from core.errors import InvalidRequestError

logger = logging.getLogger(__name__)


class DistributedConfigMixin:
    """Adds ``dht_prefix`` to a transformers config; defaults to the converted model's name."""

    dht_prefix: str

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, **kwargs: Any) -> PretrainedConfig:
        config = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        if not getattr(config, "dht_prefix", None):
            config.dht_prefix = default_dht_prefix(str(pretrained_model_name_or_path))
        return config


def start_client_dht(initial_peers: Sequence[str]) -> hivemind.DHT:
    """A client-mode DHT node joined to the swarm through ``initial_peers``."""
    import tempfile

    if not initial_peers:
        raise InvalidRequestError("pass initial_peers=[...] (a multiaddr printed by run_dht or run_server) or dht=")
    tempfile.gettempdir()  # resolve before hivemind forks its helper process
    return hivemind.DHT(initial_peers=list(initial_peers), client_mode=True, start=True)


class DistributedModelForCausalLM(nn.Module):
    """A causal LM whose transformer blocks run on the swarm.

    Subclasses build the client-side modules (``_build_local_modules``), turn tokens into hidden
    states (``embed``) and hidden states into logits (``head``).
    """

    config_class: type[PretrainedConfig]

    def __init__(
        self,
        config: PretrainedConfig,
        dht: hivemind.DHT | None = None,
        initial_peers: Sequence[str] = (),
        client_config: ClientConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.client_config = client_config or ClientConfig(initial_peers=tuple(initial_peers))
        self._owns_dht = dht is None
        self.dht = dht or start_client_dht(initial_peers or self.client_config.initial_peers)
        dht_prefix = self.client_config.dht_prefix or config.dht_prefix
        manager = RemoteSequenceManager(self.dht, dht_prefix, config.num_hidden_layers, self.client_config)
        self._build_local_modules(config)
        self.transformer_blocks = RemoteSequential(manager, config.hidden_size)
        self._active_sessions: list[GenerationSession] = []

    def _build_local_modules(self, config: PretrainedConfig) -> None:
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (its outputs are what transformers calls ``inputs_embeds``)."""
        raise NotImplementedError

    def embeds_to_hidden(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """What happens between the embedding table and the first block (identity unless overridden)."""
        return inputs_embeds

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first block's input ``[batch, seq, hidden]`` for token ids ``[batch, seq]``."""
        return self.embeds_to_hidden(self.get_input_embeddings()(input_ids))

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for the last block's outputs."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls,
        converted_model_name_or_path: str,
        initial_peers: Sequence[str] = (),
        dht: hivemind.DHT | None = None,
        client_config: ClientConfig | None = None,
        torch_dtype: torch.dtype = torch.float32,
        token: str | None = None,
        **config_overrides: Any,
    ) -> "DistributedModelForCausalLM":
        """Load the client-side weights of a converted model and connect to the swarm serving its blocks."""
        config = cls.config_class.from_pretrained(converted_model_name_or_path, token=token)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        model = cls(config, dht=dht, initial_peers=initial_peers, client_config=client_config)
        state = load_client_state(converted_model_name_or_path, token=token)
        model.load_state_dict(state, strict=True)
        return model.to(torch_dtype).eval()

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """Raise a clear error for token ids of the wrong shape, dtype or range."""
        if input_ids.dim() != 2:
            raise InvalidRequestError(f"input_ids must be [batch, seq_len], got shape {list(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise InvalidRequestError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise InvalidRequestError(f"token ids must be in 0..{self.config.vocab_size - 1}")

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        """Logits for whole sequences (and the language-modelling loss if ``labels`` are given)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidRequestError("pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise InvalidRequestError("padding is not supported: pass sequences of equal length without padding")
        if inputs_embeds is None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        hidden = self.transformer_blocks(self.embeds_to_hidden(inputs_embeds))
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def inference_session(self, max_length: int) -> GenerationSession:
        """A session that keeps the servers' KV cache across ``generate`` calls made inside it."""
        return GenerationSession(self, max_length)

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Generate tokens like Hugging Face ``generate`` (see :func:`core.client.generation.generate`)."""
        if input_ids is not None:
            self.check_input_ids(input_ids)
        kwargs.setdefault("eos_token_id", getattr(self.config, "eos_token_id", None))
        kwargs.setdefault("pad_token_id", getattr(self.config, "pad_token_id", None))
        return generate(self, input_ids, **kwargs)

    def shutdown(self) -> None:
        """Close open sessions and leave the swarm (if this model started its own DHT node)."""
        for session in list(self._active_sessions):
            session.close()
        if self._owns_dht:
            shutdown_client_dht(self.dht)
