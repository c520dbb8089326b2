"""The client-side models every family builds on: local embeddings and head, remote blocks in between.

- :class:`DistributedModelBase`: the swarm connection, the embeddings -> blocks path and prompt tuning
  (``tuning_mode="ptune" | "deep_ptune"``, see :mod:`core.client.ptune`).
- :class:`DistributedModelForCausalLM`: adds the LM head, ``generate`` and inference sessions.
- :class:`DistributedModelForSequenceClassification`: adds a ``score`` head pooled at the last non-pad token.

A family (``core/models/<family>/model.py``) supplies ``_build_local_modules``, ``get_input_embeddings``,
``final_norm`` and, if something runs between the embedding table and the first block, ``embeds_to_hidden``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import hivemind
import torch
from torch import nn
from transformers import GenerationConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutputWithPast

from core.client.generation import GenerationSession, RemoteGenerationMixin, load_generation_config
from core.client.ptune import PromptTuning, check_tuning_args
from core.client.remote_cache import RemoteCache
from core.client.remote_sequential import RemoteSequential
from core.client.sequence_manager import RemoteSequenceManager
from core.config import ClientConfig
from core.convert import default_dht_prefix, load_client_state
from core.dht.node import client_dht, shutdown_client_dht
from core.errors import ConversionError, InvalidRequestError

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


class DistributedModelBase(nn.Module):
    """Local embeddings, transformer blocks on the swarm, optional trainable prompts; the head is the task's.

    With ``config.tuning_mode`` set, ``self.ptune`` holds the prompts and every other local
    weight is frozen, so ``torch.optim.AdamW(model.parameters())`` trains the prompts only
    (plus what a task keeps trainable, like the classifier's ``score``).
    """

    config_class: type[PretrainedConfig]
    #: parameter names starting with these are not in the converted checkpoint (created fresh)
    new_parameter_prefixes: tuple[str, ...] = ("ptune.",)
    #: checkpoint tensors this task does not use
    unused_checkpoint_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        config: PretrainedConfig,
        dht: hivemind.DHT | None = None,
        initial_peers: Sequence[str] = (),
        client_config: ClientConfig | None = None,
    ) -> None:
        super().__init__()
        tuning_mode = getattr(config, "tuning_mode", None)
        pre_seq_len = getattr(config, "pre_seq_len", None)
        check_tuning_args(tuning_mode, pre_seq_len)
        self.config = config
        self.client_config = client_config or ClientConfig(initial_peers=tuple(initial_peers))
        self._owns_dht = dht is None
        self.dht = dht or client_dht(initial_peers or self.client_config.initial_peers)
        dht_prefix = self.client_config.dht_prefix or config.dht_prefix
        manager = RemoteSequenceManager(self.dht, dht_prefix, config.num_hidden_layers, self.client_config)
        self._build_local_modules(config)
        self._build_head(config)
        self.transformer_blocks = RemoteSequential(manager, config.hidden_size)
        self.ptune = (
            PromptTuning(tuning_mode, pre_seq_len, config.hidden_size, config.num_hidden_layers) if tuning_mode else None
        )
        self._freeze_pretrained()

    # ---- what families and tasks provide --------------------------------------------------
    def _build_local_modules(self, config: PretrainedConfig) -> None:
        """Create the family's client-side modules (embeddings, final norm)."""
        raise NotImplementedError

    def _build_head(self, config: PretrainedConfig) -> None:
        """Create the task's head."""
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (its outputs are what transformers calls ``inputs_embeds``)."""
        raise NotImplementedError

    def embeds_to_hidden(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """What happens between the embedding table and the first block (identity unless overridden)."""
        return inputs_embeds

    def final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The norm applied to the last block's outputs before the head."""
        raise NotImplementedError

    def trainable_prefixes(self) -> tuple[str, ...] | None:
        """Names of the parameters left trainable (``None``: all of them)."""
        return ("ptune.",) if self.ptune is not None else None

    # ---- prompt tuning ------------------------------------------------------------------------
    @property
    def tuning_mode(self) -> str | None:
        """``"ptune"``, ``"deep_ptune"`` or ``None``."""
        return None if self.ptune is None else self.ptune.tuning_mode

    @property
    def pre_seq_len(self) -> int:
        """Number of prompt positions in front of every sequence (0 without prompt tuning)."""
        return 0 if self.ptune is None else self.ptune.pre_seq_len

    @property
    def dht_prefix(self) -> str:
        """The model's name in the swarm."""
        return self.transformer_blocks.manager.dht_prefix

    def _freeze_pretrained(self) -> None:
        prefixes = self.trainable_prefixes()
        if prefixes is None:
            return
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.startswith(prefixes))

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        converted_model_name_or_path: str,
        initial_peers: Sequence[str] = (),
        dht: hivemind.DHT | None = None,
        client_config: ClientConfig | None = None,
        torch_dtype: torch.dtype = torch.float32,
        token: str | None = None,
        tuning_mode: str | None = None,
        pre_seq_len: int | None = None,
        **config_overrides: Any,
    ) -> "DistributedModelBase":
        """Load the client-side weights of a converted model and connect to the swarm serving its blocks.

        ``tuning_mode="ptune" | "deep_ptune"`` with ``pre_seq_len=N`` adds ``N`` trainable prompt
        positions (initialised from random tokens' embeddings; deep prompts start at zero).
        Other keyword arguments override config fields (e.g. ``num_labels=3``).
        """
        check_tuning_args(tuning_mode, pre_seq_len)
        config = cls.config_class.from_pretrained(converted_model_name_or_path, token=token)
        for key, value in config_overrides.items():
            setattr(config, key, value)
        config.tuning_mode, config.pre_seq_len = tuning_mode, pre_seq_len
        model = cls(config, dht=dht, initial_peers=initial_peers, client_config=client_config)
        try:
            model.load_client_weights(load_client_state(converted_model_name_or_path, token=token))
        except BaseException:
            model.shutdown()
            raise
        if model.ptune is not None:
            model.ptune.init_from_embeddings(model.get_input_embeddings().weight)
        return model.to(torch_dtype).eval()

    def load_client_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a converted model's client tensors; this task's new parameters keep their initial values."""
        own = self.state_dict()
        needed = {name for name in own if not name.startswith(self.new_parameter_prefixes)}
        usable = {name: tensor for name, tensor in state.items() if not name.startswith(self.unused_checkpoint_prefixes)}
        missing, unexpected = sorted(needed - set(usable)), sorted(set(usable) - set(own))
        if missing or unexpected:
            raise ConversionError(
                f"the converted client weights do not fit {type(self).__name__}: missing {missing}, unexpected "
                f"{unexpected}; convert the model again with this version of Blossom"
            )
        self.load_state_dict(usable, strict=False)

    # ---- the shared path ------------------------------------------------------------------------
    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """Raise a clear error for token ids of the wrong shape, dtype or range."""
        if input_ids.dim() != 2:
            raise InvalidRequestError(f"input_ids must be [batch, seq_len], got shape {list(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise InvalidRequestError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise InvalidRequestError(f"token ids must be in 0..{self.config.vocab_size - 1}")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first block's input ``[batch, seq, hidden]`` for token ids ``[batch, seq]`` (no prompts)."""
        return self.embeds_to_hidden(self.get_input_embeddings()(input_ids))

    def first_block_inputs(
        self, inputs_embeds: torch.Tensor, with_prompts: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first block's input for ``inputs_embeds``, with the prompts in front when tuning, and the
        deep prompts ``[num_blocks, batch, pre_seq_len, hidden]`` for the servers (``None`` unless ``deep_ptune``)."""
        if self.ptune is None or not with_prompts:
            return self.embeds_to_hidden(inputs_embeds), None
        batch_size, dtype = inputs_embeds.shape[0], inputs_embeds.dtype
        inputs_embeds = torch.cat([self.ptune.prefix(batch_size, dtype), inputs_embeds], dim=1)
        return self.embeds_to_hidden(inputs_embeds), self.ptune.per_block(batch_size, dtype)

    def last_hidden_states(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last block's outputs ``[batch, seq, hidden]`` for the given tokens only (prompt positions removed)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidRequestError("pass exactly one of input_ids or inputs_embeds")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise InvalidRequestError(
                "attention masks with zeros are not supported: pad sequences on the right (causal attention never "
                "looks ahead, so right padding leaves the real tokens' outputs unchanged) and drop attention_mask"
            )
        if inputs_embeds is None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        hidden, deep_prompts = self.first_block_inputs(inputs_embeds)
        return self.transformer_blocks(hidden, prompts=deep_prompts)[:, self.pre_seq_len :]

    def shutdown(self) -> None:
        """Leave the swarm (if this model started its own DHT node)."""
        if self._owns_dht:
            shutdown_client_dht(self.dht)


class DistributedModelForCausalLM(DistributedModelBase, RemoteGenerationMixin):
    """A causal LM whose transformer blocks run on the swarm; ``generate`` is transformers' own
    (see :mod:`core.client.generation`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active_sessions: list[GenerationSession] = []
        self.generation_config = GenerationConfig.from_model_config(self.config)
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.get_input_embeddings().weight  # as transformers does: one tensor, not two

    @classmethod
    def from_pretrained(cls, converted_model_name_or_path: str, *args: Any, **kwargs: Any) -> "DistributedModelForCausalLM":
        """As :meth:`DistributedModelBase.from_pretrained`, plus the model's ``generation_config.json`` (if any)."""
        model = super().from_pretrained(converted_model_name_or_path, *args, **kwargs)
        model.generation_config = load_generation_config(converted_model_name_or_path, model.config, kwargs.get("token"))
        return model

    def _build_head(self, config: PretrainedConfig) -> None:
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for the last block's outputs."""
        return self.lm_head(self.final_norm(hidden_states))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache: RemoteCache | None = None,
        logits_to_keep: int = 0,
        return_dict: bool = True,
    ) -> CausalLMOutputWithPast:
        """Logits for whole sequences (and the language-modelling loss if ``labels`` are given).

        With prompt tuning, the logits cover the given tokens only: ``logits[:, i]`` predicts token ``i + 1``.
        With ``cache`` (what ``generate`` passes), the tokens continue that cache's inference session and
        ``attention_mask`` covers every position so far; ``logits_to_keep=n`` computes the last ``n`` only.
        """
        if cache is None:
            hidden = self.last_hidden_states(input_ids, attention_mask, inputs_embeds)
        else:
            hidden = self._cached_hidden_states(cache, input_ids, attention_mask, inputs_embeds, labels)
        logits = self.head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def _cached_hidden_states(
        self,
        cache: RemoteCache,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if not isinstance(cache, RemoteCache):
            raise InvalidRequestError(f"cache must be a RemoteCache (the servers' caches), got {type(cache).__name__}")
        if labels is not None:
            raise InvalidRequestError("labels cannot be used with a cache: compute the loss on whole sequences")
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidRequestError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.get_input_embeddings()(input_ids)
        return cache.step(inputs_embeds, attention_mask, input_ids)

    def inference_session(self, max_length: int) -> GenerationSession:
        """A session that keeps the servers' KV cache across ``generate`` calls made inside it."""
        return GenerationSession(self, max_length)

    @property
    def active_session(self) -> GenerationSession | None:
        """The innermost ``with model.inference_session(...)`` block open now; ``generate`` continues it."""
        return self._active_sessions[-1] if self._active_sessions else None

    def session_opened(self, session: GenerationSession) -> None:
        """Called by a session entering its ``with`` block."""
        self._active_sessions.append(session)

    def session_closed(self, session: GenerationSession) -> None:
        """Called by a session leaving its ``with`` block."""
        if session in self._active_sessions:
            self._active_sessions.remove(session)

    def shutdown(self) -> None:
        """Close open sessions and leave the swarm (if this model started its own DHT node)."""
        for session in list(self._active_sessions):
            session.close()
        super().shutdown()


class DistributedModelForSequenceClassification(DistributedModelBase):
    """Sequence classification as in transformers: a ``score`` head over the last non-pad token's state.

    The backbone's local weights are always frozen; ``score`` and the prompts (if any) train.
    Pad sequences on the right with ``config.pad_token_id``.
    """

    new_parameter_prefixes = ("ptune.", "score.")
    unused_checkpoint_prefixes = ("lm_head.",)

    def _build_head(self, config: PretrainedConfig) -> None:
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def trainable_prefixes(self) -> tuple[str, ...]:
        return ("ptune.", "score.")

    def _pooled_positions(self, input_ids: torch.Tensor | None, batch_size: int, seq_len: int) -> torch.Tensor:
        pad_token_id = getattr(self.config, "pad_token_id", None)
        if pad_token_id is None or input_ids is None:
            if batch_size > 1 and pad_token_id is None:
                raise InvalidRequestError("batches need config.pad_token_id to find each sequence's last token")
            return torch.full((batch_size,), seq_len - 1, dtype=torch.long)
        positions = torch.arange(seq_len, device=input_ids.device)
        return (positions * (input_ids != pad_token_id).long()).argmax(dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutputWithPast:
        """Class logits ``[batch, num_labels]`` (and the loss if ``labels`` are given, chosen as in transformers)."""
        hidden = self.last_hidden_states(input_ids, attention_mask, inputs_embeds)
        batch_size, seq_len, _ = hidden.shape
        last = self._pooled_positions(input_ids, batch_size, seq_len).to(hidden.device)
        logits = self.score(self.final_norm(hidden[torch.arange(batch_size, device=hidden.device), last]))
        loss = None if labels is None else self._loss(logits, labels.to(logits.device))
        return SequenceClassifierOutputWithPast(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem = getattr(self.config, "problem_type", None)
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
        if problem == "single_label_classification":
            return nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
