"""Chat with the swarm's model: the client model lives here, generation runs in a background thread.

:class:`ChatBridge` (GUI thread) takes a conversation and sampling settings and emits the reply
token by token (``token_received``), then ``reply_finished``; any failure (swarm incomplete,
server lost, bad prompts file) arrives as ``reply_failed`` with a reason a person can act on.
``stop()`` ends a reply early. The model is loaded on the first message and reloaded when the
swarm, the model or the trained prompts change.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.formatting import describe_error

logger = logging.getLogger(__name__)

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


class ChatBridge(QObject):
    """The chat tab's link to ``core``'s client."""

    status_changed = Signal(str)  # what the chat is doing, for a status line
    reply_started = Signal()
    token_received = Signal(str)
    reply_finished = Signal(str, bool)  # full reply, stopped early
    reply_failed = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.target: ChatTarget | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._loaded_for: ChatTarget | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._busy

    def set_target(self, target: ChatTarget | None) -> None:
        """Chat with this model through this swarm from the next message on."""
        self.target = target

    def send(self, messages: list[dict[str, str]], sampling: Sampling) -> bool:
        """Generate the assistant's next turn for ``messages`` (role/content dicts); False if busy or unset."""
        if self.busy:
            return False
        if self.target is None or not self.target.initial_peers:
            self.reply_failed.emit("No swarm to chat with yet: start serving on the Dashboard (private swarm) "
                                   "or join a swarm in Settings")
            return False
        self._stop.clear()
        self._busy = True
        target = self.target
        self._thread = threading.Thread(target=self._generate, args=(target, list(messages), sampling),
                                        name="blossom-chat", daemon=True)
        self.busy_changed.emit(True)
        self.reply_started.emit()
        self._thread.start()
        return True

    def stop(self) -> None:
        """End the current reply after the token being computed."""
        self._stop.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop generating and leave the swarm."""
        self._stop.set()
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock.acquire(timeout=0.1):  # else the thread is still busy and unloads when it ends
            try:
                self._unload()
            finally:
                self._lock.release()

    # ---- background thread --------------------------------------------------------------------
    def _generate(self, target: ChatTarget, messages: list[dict[str, str]], sampling: Sampling) -> None:
        streamer: SignalStreamer | None = None
        outcome: tuple[Signal, tuple] | None = None
        try:
            with self._lock:
                self._ensure_model(target)
                import torch

                input_ids = build_input_ids(self._tokenizer, messages, sampling.max_new_tokens)
                streamer = SignalStreamer(self._tokenizer, self.token_received.emit, self._stop)
                self.status_changed.emit("Generating…")
                sample = sampling.temperature > 0
                with torch.no_grad():
                    self._model.generate(input_ids, max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                                         temperature=sampling.temperature if sample else 1.0,
                                         top_p=sampling.top_p if sample else 1.0, streamer=streamer,
                                         max_length=input_ids.shape[1] + sampling.max_new_tokens)
            self.status_changed.emit(self._connected_text(target))
            outcome = (self.reply_finished, (streamer.text, False))
        except GenerationStopped:
            self.status_changed.emit(self._connected_text(target))
            outcome = (self.reply_finished, (streamer.text if streamer else "", True))
        except Exception as error:
            logger.warning("Chat generation failed: %s", describe_error(error), exc_info=True)
            self.status_changed.emit("Not connected")
            with self._lock:
                self._unload()  # reconnect on the next message: the swarm may have changed
            outcome = (self.reply_failed, (describe_error(error),))
        finally:
            if self._closed:
                with self._lock:
                    self._unload()
            self._busy = False  # before the outcome: a reply may be asked for as soon as this one is shown
            self.busy_changed.emit(False)
            if outcome is not None:
                outcome[0].emit(*outcome[1])

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
        model, self._model, self._loaded_for = self._model, None, None
        if model is not None:
            try:
                model.shutdown()
            except Exception:
                logger.debug("The chat model did not shut down cleanly", exc_info=True)
