"""Errors of the API, answered in OpenAI's error format with the HTTP status OpenAI would use.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` is what the ``openai``
client libraries parse into their exception classes, so a tool pointed at Blossom shows the
message a person can act on (say, which blocks no server holds) instead of a bare status.
"""
from __future__ import annotations

from core.errors import (
    BlossomError,
    InvalidRequestError,
    LookupTimeoutError,
    MissingBlocksError,
    RemoteCallError,
    SequenceTooLongError,
    ServerFullError,
    SessionExpiredError,
    SwarmJoinError,
)


class ApiError(Exception):
    """An answer that is an error: HTTP ``status`` plus OpenAI's ``type``, ``code`` and ``param``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class QueueTimeoutError(BlossomError):
    """A request waited too long for a free generation slot or for the random generator."""

    code = "overloaded"

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"waited {timeout:g} s for {what}; the API is busy with other requests. Try again later, "
                         f"or start blossom-api with a larger --max_sessions / --queue_timeout")


class ContextLengthError(InvalidRequestError):
    """A prompt plus the tokens asked for do not fit the model's context window."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"this model's context window is {context_length} tokens, but the prompt has {prompt_tokens} tokens "
            f"and {max_tokens} more were asked for ({prompt_tokens + max_tokens} in all). Shorten the messages or "
            f"lower max_tokens")


def from_blossom_error(error: BlossomError) -> ApiError:
    """The API answer for a typed Blossom error raised while serving a request."""
    message = str(error)
    if isinstance(error, MissingBlocksError):
        return ApiError(503, message, "server_error", "missing_blocks")
    if isinstance(error, (SequenceTooLongError, ContextLengthError)):
        return ApiError(400, message, "invalid_request_error", "context_length_exceeded")
    if isinstance(error, InvalidRequestError):
        return ApiError(400, message, "invalid_request_error", error.code)
    if isinstance(error, (QueueTimeoutError, ServerFullError)):
        return ApiError(503, message, "server_error", error.code)
    if isinstance(error, (RemoteCallError, SessionExpiredError, LookupTimeoutError, SwarmJoinError)):
        return ApiError(503, f"the swarm failed this request: {message}", "server_error", error.code)
    return ApiError(500, message, "server_error", error.code)


def unknown_model(requested: str, served: str) -> ApiError:
    return ApiError(404, f"the model '{requested}' does not exist here; this Blossom API serves '{served}' "
                         f"(GET /v1/models lists it)", "invalid_request_error", "model_not_found", "model")


def bad_api_key() -> ApiError:
    return ApiError(401, "incorrect or missing API key: send 'Authorization: Bearer <key>' with the key "
                         "blossom-api was started with (--api_key)", "invalid_request_error", "invalid_api_key")
