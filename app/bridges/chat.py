"""Chat with the swarm's model: the client model lives here, generation runs in a background thread.

:class:`ChatBridge` (GUI thread; a :class:`~app.bridges.job.JobBridge`) takes a conversation and
sampling settings and emits the reply token by token (``token_received``), then ``reply_finished``
with a :class:`ChatReply`; any failure (swarm incomplete, server lost, bad prompts file) arrives as
``reply_failed`` with a reason a person can act on. ``stop()`` ends a reply early. The model is
loaded on the first message and reloaded when the swarm, the model or the trained prompts change.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance

from app.bridges.job import JobBridge

CONTEXT_TOKENS = 1024  # prompt + reply; older turns are dropped beyond this
CONNECT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: ``temperature`` 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 160


@dataclass(frozen=True)
class ChatTarget:
    """Which model, through which swarm, with which trained prompts (empty: none)."""

    model_path: str
    initial_peers: tuple[str, ...]
    prompts_path: str = ""


@dataclass(frozen=True)
class ChatReply:
    """A finished reply: its whole ``text``, and whether the user ``stopped`` it early."""

    text: str
    stopped: bool = False


class GenerationStopped(Exception):
    """Raised inside ``generate`` (from the streamer) when the user pressed Stop."""


class SignalStreamer:
    """A ``generate`` streamer that turns new tokens into text pieces, holding back half-decoded characters."""

    def __init__(self, tokenizer: Any, emit: Any, stop_event: threading.Event) -> None:
        self.tokenizer, self.emit, self.stop_event = tokenizer, emit, stop_event
        self.tokens: list[int] = []
        self.text = ""
        self._prompt_seen = False

    def put(self, token_ids: Any) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        if self.stop_event.is_set():
            raise GenerationStopped()
        self.tokens.extend(int(token) for token in token_ids.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > len(self.text) and text.startswith(self.text):
            self.emit(text[len(self.text):])
        self.text = text


def build_input_ids(tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int) -> Any:
    """The conversation as token ids (the chat template where the model has one), oldest turns dropped to fit."""
    import torch

    budget = max(CONTEXT_TOKENS - max_new_tokens, 32)
    kept = list(messages)
    while True:
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(kept, tokenize=False, add_generation_prompt=True)
        else:
            turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in kept]
            text = "\n".join(turns) + "\nAssistant:"
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        if ids.shape[1] <= budget or len(kept) <= 1:
            return ids[:, -budget:].to(torch.long)
        kept = kept[2:] if len(kept) > 2 else kept[1:]


NO_SWARM = "No swarm to chat with yet: start serving on the Dashboard (private swarm) or join a swarm in Settings"


class ChatBridge(JobBridge):
    """The chat tab's link to ``core``'s client: one reply at a time."""

    reply_started = Signal()
    token_received = Signal(str)

    job_name = "Chat generation"
    failure_status = "Not connected"

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.target: ChatTarget | None = None
        self.unavailable = ""  # why the chat cannot answer now although a swarm is known (e.g. serving is paused)
        self._tokenizer: Any = None
        self._loaded_for: ChatTarget | None = None

    @property
    def reply_finished(self) -> SignalInstance:
        """:attr:`finished`, with the :class:`ChatReply`."""
        return self.finished

    @property
    def reply_failed(self) -> SignalInstance:
        """:attr:`failed`, with the reason."""
        return self.failed

    def set_target(self, target: ChatTarget | None, unavailable: str = "", ready: str = "") -> None:
        """Chat with this model through this swarm from the next message on; ``unavailable`` says why replies
        cannot come now (sent without trying), ``ready`` is the status line to show while idle."""
        self.target, self.unavailable = target, unavailable
        if not self.busy:
            self.status_changed.emit(unavailable or (ready if target is not None else NO_SWARM))

    def send(self, messages: list[dict[str, str]], sampling: Sampling) -> bool:
        """Generate the assistant's next turn for ``messages`` (role/content dicts); False if busy or unset."""
        if self.busy:
            return False
        if self.target is None or not self.target.initial_peers:
            self.reply_failed.emit(NO_SWARM)
            return False
        if self.unavailable:
            self.reply_failed.emit(self.unavailable)
            return False
        job = functools.partial(self._generate, self.target, list(messages), sampling)
        if not self.start_job(job, "blossom-chat"):
            return False
        self.reply_started.emit()  # in this thread, so before any token the job sends
        return True

    # ---- background thread --------------------------------------------------------------------
    def _generate(self, target: ChatTarget, messages: list[dict[str, str]], sampling: Sampling) -> ChatReply:
        streamer: SignalStreamer | None = None
        try:
            with self._lock:
                self._ensure_model(target)
                import torch

                input_ids = build_input_ids(self._tokenizer, messages, sampling.max_new_tokens)
                streamer = SignalStreamer(self._tokenizer, self.token_received.emit, self.stop_event)
                self.status_changed.emit("Generating…")
                sample = sampling.temperature > 0
                with torch.no_grad():
                    self._model.generate(input_ids, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                                         temperature=sampling.temperature if sample else 1.0,
                                         top_p=sampling.top_p if sample else 1.0, streamer=streamer)
            stopped = False
        except GenerationStopped:
            stopped = True
        self.status_changed.emit(self._connected_text(target))
        return ChatReply(streamer.text if streamer else "", stopped)

    def _connected_text(self, target: ChatTarget) -> str:
        prompts = " with trained prompts" if target.prompts_path else ""
        name = getattr(getattr(self._model, "config", None), "dht_prefix", "") or "the model"
        return f"Connected to {name}{prompts}"

    def _ensure_model(self, target: ChatTarget) -> None:
        if self._model is not None and self._loaded_for == target:
            return
        self._unload()
        self.status_changed.emit("Connecting to the swarm…")
        from transformers import AutoTokenizer

        from core.config import ClientConfig
        from core.models.auto import AutoDistributedModelForCausalLM

        extra: dict[str, Any] = {}
        if target.prompts_path:
            from core.tuning import read_prompts_metadata

            metadata = read_prompts_metadata(target.prompts_path)
            extra = {"tuning_mode": metadata.tuning_mode, "pre_seq_len": metadata.pre_seq_len}
        client_config = ClientConfig(initial_peers=target.initial_peers, connect_timeout=CONNECT_TIMEOUT)
        self._tokenizer = AutoTokenizer.from_pretrained(target.model_path)
        model = AutoDistributedModelForCausalLM.from_pretrained(target.model_path, initial_peers=target.initial_peers,
                                                               client_config=client_config, **extra)
        try:
            if target.prompts_path:
                from core.tuning import load_prompts

                load_prompts(model, target.prompts_path)
        except BaseException:
            model.shutdown()
            raise
        self._model, self._loaded_for = model, target

    def _unload(self) -> None:
        self._loaded_for = None
        super()._unload()
