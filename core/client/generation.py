"""Generation through the swarm: ``model.generate`` *is* transformers' ``GenerationMixin.generate``.

Every option a Hugging Face user passes (``min_new_tokens``, ``stopping_criteria``, ``logits_processor``,
``generation_config``, ``no_repeat_ngram_size``, ``return_dict_in_generate``, ``num_return_sequences``,
beam search, a left-padded ``attention_mask`` ...) is handled by transformers itself; Blossom only supplies
what sits behind the model's cache:

- :class:`~core.client.remote_cache.RemoteCache` is the ``cache`` transformers threads through the
  decoding loop; the model's ``forward`` sends it only the tokens the servers have not seen.
- :class:`GenerationSession` is ``with model.inference_session(max_length)``: ``generate`` calls inside it
  continue one conversation (pass only the new tokens, or ``None``; each call returns every token so far).
- :class:`RemoteGenerationMixin` adapts ``GenerationMixin`` to a model that is not a ``PreTrainedModel``
  and turns transformers' ``ValueError`` for bad options into :class:`InvalidRequestError`.

Beam search keeps ``num_beams`` rows whose histories are reshuffled every step; the servers' caches cannot
be forked, so beam search runs without a cache: each step sends every beam's whole sequence.
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.generation.configuration_utils import GenerationMode

from core.client.inference_session import InferenceSession
from core.client.remote_cache import RemoteCache
from core.errors import BlossomError, InvalidRequestError

if TYPE_CHECKING:
    from core.models.base import DistributedModelForCausalLM

logger = logging.getLogger(__name__)

SUPPORTED_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH,
                   GenerationMode.BEAM_SAMPLE)
UNCACHED_MODES = (GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)
#: the options that select each mode transformers offers but the swarm does not run
MODE_OPTIONS = {
    GenerationMode.ASSISTED_GENERATION: "assistant_model / prompt_lookup_num_tokens / use_mtp (they roll the cache back)",
    GenerationMode.CONTRASTIVE_SEARCH: "penalty_alpha (contrastive search needs every layer's hidden states)",
    GenerationMode.DOLA_GENERATION: "dola_layers (DoLa needs every layer's hidden states)",
    GenerationMode.GROUP_BEAM_SEARCH: "num_beam_groups",
    GenerationMode.CONSTRAINED_BEAM_SEARCH: "constraints / force_words_ids",
}

_CALL_CACHES: ContextVar[list[RemoteCache] | None] = ContextVar("blossom_generate_caches", default=None)
Result = TypeVar("Result")


def _typed(call: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """``call(...)``, with transformers' ``ValueError`` for a bad option re-raised as :class:`InvalidRequestError`."""
    try:
        return call(*args, **kwargs)
    except BlossomError:
        raise
    except ValueError as error:
        raise InvalidRequestError(f"generate: {error}") from error


def load_generation_config(
    converted_model_name_or_path: str, config: Any, token: str | None = None
) -> GenerationConfig:
    """The converted model's ``generation_config.json`` (copied from the original), else one made from its config,
    as transformers' ``from_pretrained`` does."""
    try:
        return GenerationConfig.from_pretrained(converted_model_name_or_path, token=token)
    except OSError:
        logger.debug("No generation_config.json in %s: using the model config's", converted_model_name_or_path)
        return GenerationConfig.from_model_config(config)


class GenerationSession:
    """``with model.inference_session(max_length=...)``: one conversation whose tokens stay on the servers.

    ``token_ids`` holds every token so far; the servers have processed all but the last generated one
    (it goes with the next call). Inside the ``with`` block, ``model.generate(new_ids)`` (or ``None``)
    continues the conversation and returns all of its tokens.
    """

    def __init__(self, model: "DistributedModelForCausalLM", max_length: int) -> None:
        if max_length < 1:
            raise InvalidRequestError(f"max_length must be positive, got {max_length}")
        self.model = model
        self.max_length = max_length
        self.cache = RemoteCache(model, max_length)
        self.token_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None

    def __enter__(self) -> "GenerationSession":
        self.model.session_opened(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.model.session_closed(self)
        self.close()

    @property
    def inference(self) -> InferenceSession | None:
        """The (first) inference session through the servers; ``None`` before the first step."""
        sessions = self.cache.sessions
        return sessions[0] if sessions else None

    def close(self) -> None:
        """End the session on every server."""
        self.cache.close()

    def inputs(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The conversation so far plus ``input_ids``, and its mask: what transformers expects with a filled cache."""
        if self.token_ids is None:
            if input_ids is None:
                raise InvalidRequestError("nothing to generate from: pass input_ids (the prompt)")
            return input_ids, attention_mask
        batch = self.token_ids.shape[0]
        if input_ids is None:
            input_ids = self.token_ids.new_zeros(batch, 0)
        elif input_ids.shape[0] != batch:
            raise InvalidRequestError(f"batch size {input_ids.shape[0]} differs from the session's {batch}")
        token_ids = torch.cat([self.token_ids, input_ids.to(self.token_ids.device)], dim=1)
        if token_ids.shape[1] == self.cache.seen:
            raise InvalidRequestError("nothing to generate from: pass input_ids (the next user turn)")
        new_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        if tuple(new_mask.shape) != tuple(input_ids.shape):
            raise InvalidRequestError(
                f"attention_mask must cover the new tokens only, {list(input_ids.shape)}, got {list(new_mask.shape)}")
        return token_ids, torch.cat([self.attention_mask.to(new_mask), new_mask], dim=1)

    def update(self, sequences: torch.Tensor | None = None) -> None:
        """Remember the conversation after a ``generate`` call (``None``: it failed; keep what the servers hold)."""
        cache = self.cache
        if sequences is None:
            if cache.token_ids is None:
                self.token_ids = self.attention_mask = None
                return
            sequences = cache.token_ids
        self.token_ids = sequences.detach().cpu()
        sent = cache.attention_mask if cache.attention_mask is not None else torch.ones(
            sequences.shape[0], cache.seen, dtype=torch.bool)
        unsent = torch.ones(sequences.shape[0], sequences.shape[1] - cache.seen, dtype=torch.bool)
        self.attention_mask = torch.cat([sent, unsent], dim=1).long()


class RemoteGenerationMixin(GenerationMixin):
    """transformers' ``GenerationMixin`` for :class:`~core.models.base.DistributedModelForCausalLM`.

    The model supplies ``config``, ``generation_config``, ``forward(input_ids, attention_mask, inputs_embeds,
    cache=..., logits_to_keep=...)``, ``check_input_ids`` and ``active_session``.
    """

    main_input_name = "input_ids"
    _is_stateful = False
    generation_config: GenerationConfig

    @classmethod
    def can_generate(cls) -> bool:
        return True

    @classmethod
    def is_remote_code(cls) -> bool:
        return False

    def get_experts_implementation(self) -> dict[str, str]:
        return {}  # no mixture-of-experts layers on the client

    @property
    def device(self) -> torch.device:
        """Where the client-side weights (embeddings, head) are."""
        return self.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.get_input_embeddings().weight.dtype

    # ---- the entry point --------------------------------------------------------------------------
    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 **kwargs: Any) -> Any:
        """transformers' ``generate`` (every option of it), with the transformer blocks on the swarm.

        Outside ``with model.inference_session(...)`` each call opens its own session and closes it when it
        returns or raises (a streamer's ``put`` may raise to stop early). Inside one, pass only the new tokens
        (or ``None``) and get back every token of the conversation.
        """
        if kwargs.get("input_ids") is not None:
            if inputs is not None:
                raise InvalidRequestError("pass the prompt once: as the first argument or as input_ids=")
            inputs = kwargs.pop("input_ids")
        if inputs is not None:
            self.check_input_ids(inputs)
        session = self.active_session
        owned = _CALL_CACHES.set([])
        try:
            if session is None:
                return super().generate(inputs, generation_config, **kwargs)
            return self._continue(session, inputs, generation_config, kwargs)
        finally:
            for cache in _CALL_CACHES.get():
                cache.close()
            _CALL_CACHES.reset(owned)

    def _continue(self, session: GenerationSession, inputs: torch.Tensor | None,
                  generation_config: GenerationConfig | None, kwargs: dict[str, Any]) -> Any:
        for name in ("cache", "inputs_embeds"):
            if kwargs.get(name) is not None:
                raise InvalidRequestError(f"{name} cannot be passed inside model.inference_session(...): the session "
                                          "holds the cache and continues from token ids")
        token_ids, attention_mask = session.inputs(inputs, kwargs.pop("attention_mask", None))
        try:
            result = super().generate(token_ids, generation_config, attention_mask=attention_mask,
                                      cache=session.cache, **kwargs)
        except BaseException:
            session.update(None)
            raise
        session.update(result if isinstance(result, torch.Tensor) else result.sequences)
        return result

    # ---- hooks of GenerationMixin -----------------------------------------------------------------
    def _prepare_generation_config(self, generation_config: GenerationConfig | None, **kwargs: Any) -> Any:
        config, model_kwargs = _typed(super()._prepare_generation_config, generation_config, **kwargs)
        for name in ("num_beams", "num_return_sequences"):
            if getattr(config, name) is not None and getattr(config, name) < 1:
                raise InvalidRequestError(f"generate: {name} must be at least 1, got {getattr(config, name)}")
        return config, model_kwargs

    def _get_logits_processor(self, *args: Any, **kwargs: Any) -> Any:
        return _typed(super()._get_logits_processor, *args, **kwargs)

    def _get_stopping_criteria(self, *args: Any, **kwargs: Any) -> Any:
        return _typed(super()._get_stopping_criteria, *args, **kwargs)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        _typed(super()._validate_model_kwargs, model_kwargs)

    def _validate_generated_length(self, *args: Any, **kwargs: Any) -> None:
        _typed(super()._validate_generated_length, *args, **kwargs)

    def _prepare_special_tokens(self, *args: Any, **kwargs: Any) -> None:
        _typed(super()._prepare_special_tokens, *args, **kwargs)

    def _validate_generation_mode(self, generation_mode: GenerationMode, *args: Any) -> None:
        _typed(super()._validate_generation_mode, generation_mode, *args)

    def _get_deprecated_gen_repo(self, generation_mode: GenerationMode, trust_remote_code: bool,
                                 custom_generate: str | None = None) -> str | None:
        if generation_mode not in SUPPORTED_MODES and custom_generate is None:
            raise InvalidRequestError(
                f"generate: {generation_mode.value.replace('_', ' ')} does not run on the swarm; drop "
                f"{MODE_OPTIONS.get(generation_mode, 'the option that selects it')}")
        return _typed(super()._get_deprecated_gen_repo, generation_mode, trust_remote_code, custom_generate)

    def _prepare_cache_for_generation(self, generation_config: GenerationConfig, model_kwargs: dict[str, Any],
                                      generation_mode: GenerationMode, batch_size: int, max_cache_length: int) -> None:
        """Put a :class:`RemoteCache` for ``max_cache_length`` tokens in ``model_kwargs`` (closed when ``generate``
        ends), or size and check the session's; beam search runs without one."""
        if generation_config.cache_implementation is not None:
            raise InvalidRequestError(f"generate: cache_implementation={generation_config.cache_implementation!r} "
                                      "cannot apply: the KV caches live on the servers; leave it unset")
        cache = model_kwargs.get("cache")
        uncached = generation_mode in UNCACHED_MODES
        if cache is not None:
            if not isinstance(cache, RemoteCache):
                raise InvalidRequestError(f"generate: cache must be left out (got a {type(cache).__name__}); the KV "
                                          "caches live on the servers: use model.inference_session(...) to keep them")
            if uncached:
                raise InvalidRequestError("generate: num_beams > 1 cannot continue an inference session (beam search "
                                          "runs without the servers' caches); call it outside model.inference_session")
            if generation_config.num_return_sequences > 1:
                raise InvalidRequestError("generate: num_return_sequences > 1 cannot continue an inference session "
                                          "(its cache holds one row per prompt); call it outside the session")
            cache.reserve(max_cache_length)
            return
        if uncached:
            if "inputs_embeds" in model_kwargs:
                raise InvalidRequestError("generate: num_beams > 1 needs input_ids, not inputs_embeds")
            return
        if not generation_config.use_cache:
            return
        cache = RemoteCache(self, max_cache_length)
        opened = _CALL_CACHES.get()
        if opened is None:
            raise InvalidRequestError("call model.generate(...), not transformers' internals, to generate")
        opened.append(cache)
        model_kwargs["cache"] = cache

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        next_sequence_length: int | None = None,
        cache: RemoteCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """What one forward pass gets: with a cache, only the positions the servers have not seen (the cache
        knows how many); without one (beam search), the whole sequences."""
        for name in ("output_attentions", "output_hidden_states"):
            if kwargs.get(name):
                raise InvalidRequestError(f"generate: {name} is not available: attention weights and hidden "
                                          "states stay on the servers")
        inputs: dict[str, Any] = {"attention_mask": attention_mask, "logits_to_keep": kwargs.get("logits_to_keep", 0)}
        if cache is None:
            if attention_mask is not None and not bool(attention_mask.all()):
                raise InvalidRequestError(
                    "generate: a padded attention_mask needs the servers' caches, which beam search (num_beams > 1) "
                    "and use_cache=False do without; generate the prompts one by one instead")
            inputs["input_ids"] = input_ids.to(self.device)
            return inputs
        inputs["cache"] = cache
        if inputs_embeds is not None and is_first_iteration:
            inputs["inputs_embeds"] = inputs_embeds[:, cache.seen :].to(self.device)
        elif next_sequence_length:
            inputs["input_ids"] = input_ids[:, -next_sequence_length:].to(self.device)
        else:  # transformers could not tell: the cache knows which positions the servers hold
            inputs["input_ids"] = input_ids[:, cache.seen :].to(self.device)
        return inputs
