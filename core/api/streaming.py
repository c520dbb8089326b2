"""Turning generated token ids into text as they come, honouring stop strings and departed clients.

:class:`CompletionStreamer` is the ``streamer`` passed to ``model.generate``: ``put`` receives the
prompt first and then each new token, ``end`` comes once generation finished. Two things can end
a generation early, and both are raised *from* ``put`` so that ``generate`` unwinds at once and
closes its inference session, which frees the servers' KV cache:

- a stop string appeared in the text (:class:`StopStringReached`);
- the HTTP client went away (:class:`ClientDisconnected`), seen through a ``threading.Event``.

Text is released only when it can no longer turn into a stop string, so a client never receives
the first half of a stop string that the next token completes; and never in the middle of a
multi-byte character (a decoded ``\\ufffd`` at the end means the next token completes it).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence


class GenerationInterrupted(Exception):
    """Raised from ``put`` to end ``generate`` early; not a failure."""


class StopStringReached(GenerationInterrupted):
    """A stop string was generated."""


class ClientDisconnected(GenerationInterrupted):
    """The client that asked for this generation is gone."""


class CompletionStreamer:
    """Decodes tokens incrementally, hands out safe text through ``on_text`` and records why it ended."""

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str] = (),
        eos_token_ids: Sequence[int] = (),
        on_text: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_token_ids = set(eos_token_ids)
        self.on_text = on_text
        self.cancelled = cancelled or threading.Event()
        self.tokens: list[int] = []
        self.text = ""  # what was handed out so far (the final answer once finished)
        self.finish_reason: str | None = None
        self._prompt_seen = False

    # ---- the streamer protocol of generate --------------------------------------------------------
    def put(self, token_ids: Any) -> None:
        if not self._prompt_seen:  # generate passes the prompt first
            self._prompt_seen = True
            return
        if self.finish_reason is not None:
            return
        if self.cancelled.is_set():
            self.finish_reason = "cancelled"
            raise ClientDisconnected("the client disconnected")
        new = [int(token) for token in token_ids.reshape(-1).tolist()]
        self.tokens.extend(new)
        if any(token in self.eos_token_ids for token in new):
            self.finish_reason = "stop"
            self._release(self._decode(), final=True)
            return
        self._release(self._decode(), final=False)

    def end(self) -> None:
        """Generation finished on its own: hand out what was held back."""
        if self.finish_reason is None:
            self.finish_reason = "length"
            self._release(self._decode(), final=True)

    # ---- text ------------------------------------------------------------------------------------
    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def _release(self, text: str, final: bool) -> None:
        if not text.startswith(self.text):  # a tokenizer that rewrote earlier text: wait until it settles
            if not final:
                return
            text = self.text + text[len(self.text):]
        cut = self._find_stop(text)
        if cut is not None:
            self._emit(text[:cut])
            self.finish_reason = "stop"
            raise StopStringReached()
        if not final:
            if text.endswith("\ufffd"):
                return
            text = text[: len(text) - self._partial_stop_length(text)]
        self._emit(text)

    def _find_stop(self, text: str) -> int | None:
        """Where the first stop string in the not yet released text begins."""
        found = None
        for stop in self.stop:
            index = text.find(stop, max(0, len(self.text) - len(stop) + 1))
            if index >= 0 and (found is None or index < found):
                found = index
        return found

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is the beginning of a stop string (held back)."""
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest

    def _emit(self, text: str) -> None:
        if len(text) <= len(self.text):
            return
        delta, self.text = text[len(self.text):], text
        if self.on_text is not None:
            self.on_text(delta)
