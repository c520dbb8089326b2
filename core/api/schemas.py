"""What travels over the OpenAI-compatible API: request bodies (validated) and response bodies.

Only the fields Blossom acts on are declared. Unknown fields are ignored, as OpenAI's own server
does for fields a model does not use, so tools that send extra options keep working. Options
that would change the answer and that Blossom cannot honour (``n`` > 1, penalties, tools, logprobs)
are refused with a 400 naming the option instead of being silently dropped.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from core.api.engine import GenerationResult

MAX_STOP_STRINGS = 4  # as OpenAI


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> "_Request":
        unsupported = {
            "n": self.n != 1,
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logprobs": bool(self.logprobs),
        }
        for name, used in unsupported.items():
            if used:
                raise ValueError(f"Blossom does not support '{name}' yet; leave it at its default")
        return self

    @property
    def stop_strings(self) -> list[str]:
        """``stop`` as a list (the validator already made it one)."""
        return list(self.stop or [])  # type: ignore[arg-type]

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a chunk carrying ``usage``."""
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    """One part of a message's content given as a list (only text parts are understood)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict] | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _refuse_tools(self) -> "ChatCompletionRequest":
        if self.tools:
            raise ValueError("Blossom does not support 'tools' (function calling) yet; leave it out")
        return self

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"Blossom answers one prompt per request, got {len(value)}; send one request each")
        return value

    @model_validator(mode="after")
    def _refuse_unsupported_text_options(self) -> "CompletionRequest":
        if self.echo:
            raise ValueError("Blossom does not support 'echo' yet; leave it at false")
        if self.suffix:
            raise ValueError("Blossom does not support 'suffix' (insertion) yet; leave it out")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


# ---- responses (plain dicts keep the streaming path cheap) ----------------------------------------
def new_id(prefix: str) -> str:
    """An id in OpenAI's style (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "blossom"}


@dataclass(frozen=True)
class Envelope:
    """What wraps every answer to one request in OpenAI's format: its id, object kind (``chunk_kind`` for the
    chunks of a streamed answer), time and model around the choices."""

    answer_id: str
    kind: str
    chunk_kind: str
    model: str

    def _wrap(self, kind: str, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.answer_id, "object": kind, "created": now(), "model": self.model, "choices": choices,
                **extra}

    @staticmethod
    def _choice(content: dict, finish_reason: str | None) -> dict:
        return {"index": 0, **content, "finish_reason": finish_reason, "logprobs": None}

    def whole(self, content: dict, result: GenerationResult) -> dict:
        """The one-piece answer: ``content`` (the message or the text) as the only choice, and the usage."""
        return self._wrap(self.kind, [self._choice(content, result.finish_reason)],
                          usage=usage(result.prompt_tokens, result.completion_tokens))

    def chunk(self, content: dict, finish_reason: str | None, include_usage: bool) -> dict:
        """One chunk of a streamed answer; with ``include_usage`` it carries ``"usage": null``, as OpenAI's do
        until the usage chunk."""
        return self._wrap(self.chunk_kind, [self._choice(content, finish_reason)],
                          **({"usage": None} if include_usage else {}))

    def usage_chunk(self, counts: dict) -> dict:
        """The last chunk of a streamed answer that asked for usage: no choices, the token counts."""
        return self._wrap(self.chunk_kind, [], usage=counts)
